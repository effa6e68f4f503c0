"""The analysts' side on the real ClickHouse engine: migrations, rollups, queries, the page's server.

Rows are inserted into the source tables the way the workers write them
(including a re-delivered batch); the per-minute and per-hour rollups and every
analyst query are then checked against figures computed here by hand.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from dashboards import queries
from dashboards.migrate import load_migrations, migrate
from feedbackloop import dashboard
from dashboards.connection import connect
from feedbackloop.settings import Settings

NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=10)
T0 = NOW.replace(minute=0)  # the data's minutes 0-3 lie inside one hour, in the past
REASONS = [["uncertain"], ["override"], ["control"], ["uncertain", "disagreement"]]
ANNOTATORS = ["ann-1", "ann-2", "ann-3"]
CLASSES = ["a"] * 150 + ["b"] * 45 + ["c"] * 5


def at(minute: int, second: float = 0.0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def insert(client, table: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    client.insert(table, [[row[c] for c in columns] for row in rows], column_names=columns)


def task(i: int) -> dict:
    return {"task_id": f"t{i}", "event_id": f"e{i}", "item_id": f"i{i}", "kind": "prediction",
            "created_at": at(i // 10, i % 10), "source_ts": at(i // 10), "reasons": REASONS[i % 4], "signals": {},
            "selection_probability": 0.5, "priority": 0.5, "confidence": 0.6, "model_version": "7",
            "shadow_version": 1, "policy_version": "p", "predicted_label": "a"}


def label(i: int) -> dict:
    # ann-1 labels 0, 3, 6, ...; the model was right before learning on even items
    return {"event_id": f"l{i}", "task_id": f"t{i}", "item_id": f"i{i}", "label": CLASSES[i * 7 % 200],
            "annotator_id": ANNOTATORS[i % 3], "ts": at(i // 10, i % 10 + 5), "duration_ms": 2000 + 1000 * (i % 3),
            "learned_by_version": 1, "shadow_prediction": CLASSES[i * 7 % 200] if i % 2 == 0 else "zzz",
            "reasons": REASONS[i % 4], "control": int("control" in REASONS[i % 4])}


def settled(i: int) -> str:
    """The consensus label of task ``i`` (0-20): c rare, b less so."""
    return "c" if i % 10 == 3 else "b" if i % 3 == 1 else "a"


def seed(client) -> None:
    """30 tasks over three minutes, 21 labels, 200 predictions, and the quality signals."""
    insert(client, "labeling_tasks", [task(i) for i in range(30)])
    insert(client, "labeling_tasks", [task(i) for i in range(5)])  # re-delivered
    insert(client, "labels", [label(i) for i in range(21)])
    insert(client, "labels", [label(i) for i in range(3)])  # re-delivered
    insert(client, "predictions", [
        {"event_id": f"p{i}", "item_id": f"i{i}", "ts": at(i % 3), "model_name": "prod", "model_version": "7",
         "predicted_label": c, "confidence": 0.7, "shadow_version": 1, "scored_at": at(i % 3, 1)}
        for i, c in enumerate(CLASSES)])
    insert(client, "routing_decisions", [
        {"event_id": f"p{i}", "item_id": f"i{i}", "ts": at(i % 3), "kind": "prediction", "selected": int(i < 30),
         "reasons": [], "selection_probability": 0.1, "priority": 0.1, "signals": {}, "policy_version": "p",
         "model_version": "7", "shadow_version": 1, "decided_at": at(i % 3, 2)} for i in range(200)])
    insert(client, "model_versions", [
        {"model_name": "shadow", "version": v, "ts": at(v - 1, 30), "labels_seen": 5 * v,
         "prequential_accuracy": 0.4 + 0.05 * v, "control_accuracy": [0.5, 0.6, 0.7, 0.72][v - 1],
         "control_labels": 3} for v in (1, 2, 3, 4)])
    insert(client, "dead_letters", [
        {"event_id": f"d{i}", "ts": at(1), "topic": "predictions", "partition": 0, "offset": i,
         "reason": "bad bytes" if i < 2 else "NaN probability", "error": "undecodable" if i < 2 else "nan",
         "payload": "x"} for i in range(3)])
    insert(client, "drift_events", [
        {"ts": at(1, 10), "model_name": "shadow", "version": 2, "detector": "adwin:control_error", "detail": "{}"},
        {"ts": at(2, 10), "model_name": "shadow", "version": 3, "detector": "adwin:control_error", "detail": "{}"}])
    insert(client, "policy_lift", [
        {"ts": at(m, 40), "version": m + 1, "policy_accuracy": 0.7 + m / 100, "control_accuracy": 0.65,
         "lift": 0.05 + m / 100, "ci_low": 0.01, "ci_high": 0.1, "n_policy": 40, "n_control": 10} for m in range(3)])
    insert(client, "label_savings", [
        {"ts": at(m, 45), "version": m + 1, "policy_labels": 20 * (m + 1), "random_labels_needed": 30 * (m + 1),
         "target_accuracy": 0.7, "ratio": 2 / 3, "ci_low": 0.4, "ci_high": 1.1, "policy_labels_seen": 40 * (m + 1),
         "policy_accuracy": 0.75, "random_labels_seen": 30 * (m + 1), "random_accuracy": 0.7, "n_eval": 30}
        for m in range(3)])
    insert(client, "stopping_signals", [
        {"ts": at(0), "version": 1, "metric": "control_accuracy_slope", "value": 0.02, "recommendation": "continue"},
        {"ts": at(2), "version": 3, "metric": "control_accuracy_slope", "value": 0.001, "recommendation": "stop"}])
    insert(client, "annotator_agreement", [
        {"window_start": at(m), "window_seconds": 60, "annotator_a": a, "annotator_b": b, "metric": "cohen_kappa",
         "value": kappa, "n": n}
        for m in range(3) for a, b, kappa, n in [("ann-1", "ann-2", 0.8, 10), ("ann-1", "ann-3", 0.2, 10),
                                                  ("ann-2", "ann-3", 0.5, 30)]])
    insert(client, "budget_state", [
        {"ts": at(m, s), "spent_hour": 10 * m + s // 10, "spent_day": 10 * m + s // 10, "spent_week": 10 * m + s // 10,
         "cap_hour": 40, "cap_day": None, "cap_week": None, "target_fraction": 0.1, "realised_fraction": 0.12}
        for m in range(3) for s in (10, 50)])
    insert(client, "consensus_labels", [  # the labeled tasks settled (after adjudications) on these classes
        {"task_id": f"t{i}", "item_id": f"i{i}", "label": settled(i), "confidence": 1.0,
         "method": "adaptive_single", "annotators": [ANNOTATORS[i % 3]], "n_labels": 1, "round": 0,
         "ts": at(i // 10, i % 10 + 5), "learned_by_version": 1} for i in range(21)])
    insert(client, "production_accuracy", [  # two estimates of release prod 7; the newer (version 2) counts
        {"ts": at(v), "version": v, "model_name": "prod", "model_version": "7", "estimator": e, "metric": m,
         "class": c, "value": 0.1 * v + (0.5 if e == "control" else 0.6), "ci_low": 0.4, "ci_high": 0.9,
         "n": 10 * v, "weight": 20.0 * v}
        for v in (1, 2) for e in ("control", "weighted")
        for m, c in [("accuracy", ""), ("precision", "a"), ("recall", "a"), ("recall", "b")]])
    insert(client, "agent_stats", [
        {"ts": at(m, 30), "worker": w, "agent": "score", "events": 100 * (m + 1), "seconds": 3.0, "lag": 50 - 20 * m}
        for m in range(3) for w in ("w1", "w2")])
    insert(client, "suspect_labels", [  # labels found suspect after versions 2 and 3; one confirmed, corrected
        {"ts": at(v), "task_id": f"t{i}", "item_id": f"i{i}", "status": status, "version": v, "label": "a",
         "suggested_label": "b", "probability": 0.1, "threshold": 0.6, "suggested_probability": 0.8, "score": 0.7,
         "reason": "", "annotators": ["ann-3"]}
        for v, i, status in [(2, 1, "found"), (2, 2, "found"), (3, 4, "found"), (2, 1, "confirmed"),
                             (2, 1, "corrected"), (2, 2, "cleared")]])


@pytest.fixture
def client(clickhouse_dsn):
    client = connect(clickhouse_dsn)
    migrate(client)
    seed(client)
    yield client
    client.close()


def rows(client, sql: str) -> list[tuple]:
    return client.query(sql).result_rows


def answer(client, name: str) -> list[dict]:
    query = next(q for q in queries.load() if q.name == name)
    result = queries.run(client, query)
    assert "error" not in result, result["error"]
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


# -- migrations ---------------------------------------------------------------

def test_migrations_apply_once_and_create_every_rollup(clickhouse_dsn):
    client = connect(clickhouse_dsn)
    try:
        assert migrate(client) == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
        assert migrate(client) == []
        tables = {name: engine for name, engine in rows(
            client, "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")}
    finally:
        client.close()
    for source in ("drift_events", "policy_lift", "stopping_signals", "annotator_agreement", "budget_state",
                   "agent_stats"):
        assert tables[source] == "ReplacingMergeTree"
    rollups = {"reasons", "budget", "labeling", "agreement", "accuracy", "models", "lift", "classes", "drift",
               "dead_letters", "stages", "agents"}
    for name in rollups:
        assert tables[f"{name}_1m"] == tables[f"{name}_1h"] == "AggregatingMergeTree"
    views = {name for name, engine in tables.items() if engine == "MaterializedView"}
    assert {v.rsplit("_from_", 1)[0] for v in views if "_from_" in v} >= {f"{r}_1m" for r in rollups}
    assert {f"{r}_1h_from_1m" for r in rollups} <= views


def test_a_reopened_database_keeps_its_rollups(clickhouse_dsn, client):
    client.close()
    again = connect(clickhouse_dsn)
    try:
        assert migrate(again) == []
        assert rows(again, "SELECT uniqExactMerge(tasks) FROM reasons_1h WHERE reason = 'override'") == [(8,)]
    finally:
        again.close()


# -- rollups --------------------------------------------------------------------

def test_tasks_and_labels_by_reason_count_each_id_once(client):
    expected = dict(rows(client, "SELECT reason, count() FROM labeling_tasks FINAL ARRAY JOIN reasons AS reason "
                                 "GROUP BY reason"))
    assert expected == {"uncertain": 15, "override": 8, "control": 7, "disagreement": 7}
    per_minute = rows(client, "SELECT bucket, reason, uniqExactMerge(tasks) FROM reasons_1m GROUP BY ALL")
    assert sum(n for _, r, n in per_minute if r == "uncertain") == 15
    assert {b for b, _, _ in per_minute} == {at(0).replace(tzinfo=None), at(1).replace(tzinfo=None),
                                             at(2).replace(tzinfo=None)} or len({b for b, _, _ in per_minute}) == 3
    assert dict(rows(client, "SELECT reason, uniqExactMerge(tasks) FROM reasons_1h GROUP BY reason")) == expected
    labels = dict(rows(client, "SELECT reason, uniqExactMerge(labels) FROM reasons_1h GROUP BY reason"))
    assert labels == dict(rows(client, "SELECT reason, count() FROM labels FINAL ARRAY JOIN reasons AS reason "
                                       "GROUP BY reason"))
    assert sum(labels.values()) == 21 + 5  # 21 labels, five of them also 'disagreement'


def test_budget_rollup_keeps_the_last_state_of_each_minute_and_hour(client):
    minutes = rows(client, "SELECT bucket, uniqExactMerge(tasks), argMaxMerge(spent_hour), argMaxMerge(cap_hour) "
                           "FROM budget_1m GROUP BY bucket ORDER BY bucket")
    assert [(tasks, spent, cap) for _, tasks, spent, cap in minutes] == [(10, 5, 40), (10, 15, 40), (10, 25, 40)]
    assert rows(client, "SELECT uniqExactMerge(tasks), argMaxMerge(spent_hour), argMaxMerge(cap_day), "
                        "argMaxMerge(realised_fraction) FROM budget_1h") == [(30, 25, None, 0.12)]


def test_time_to_label_agreement_with_the_model_per_annotator(client):
    per_annotator = {a: (n, agreed, compared, work, wait) for a, n, agreed, compared, work, wait in rows(
        client, "SELECT annotator_id, uniqExactMerge(labels), uniqExactIfMerge(model_agreed), "
                "uniqExactIfMerge(model_compared), quantilesMerge(0.5, 0.9)(work_seconds), "
                "quantilesMerge(0.5, 0.9)(wait_seconds) FROM labeling_1h GROUP BY annotator_id")}
    assert {a: v[0] for a, v in per_annotator.items()} == {"ann-1": 7, "ann-2": 7, "ann-3": 7}
    # ann-1 labels items 0, 3, 6, ...: the model was right on the even ones
    assert per_annotator["ann-1"][1:3] == (4, 7)
    assert per_annotator["ann-2"][3][0] == pytest.approx(3.0)  # every ann-2 label took 3 s of work
    assert per_annotator["ann-3"][4] == [pytest.approx(5.0), pytest.approx(5.0)]  # task to label: 5 s


def test_model_accuracy_lift_and_cost_per_point(client):
    slices = {s: (hits, scored) for s, hits, scored in rows(
        client, "SELECT slice, uniqExactIfMerge(hits), uniqExactIfMerge(scored) FROM accuracy_1h GROUP BY slice")}
    expected = {}
    for i in range(21):
        hits, scored = expected.get("control" if i % 4 == 2 else "policy", (0, 0))
        expected["control" if i % 4 == 2 else "policy"] = (hits + (i % 2 == 0), scored + 1)
    assert slices == expected == {"control": (5, 5), "policy": (6, 16)}
    assert rows(client, "SELECT uniqExactMerge(versions), argMinMerge(first_labels_seen), argMaxMerge(last_labels_seen), "
                        "argMinMerge(first_control_accuracy), argMaxMerge(last_control_accuracy) FROM models_1h") \
        == [(4, 5, 20, 0.5, 0.72)]
    assert rows(client, "SELECT argMaxMerge(lift), maxMerge(version), argMaxMerge(n_control) FROM lift_1h") \
        == [(pytest.approx(0.07), 3, 10)]


def test_coverage_drift_dead_letters_throughput_and_agents(client):
    coverage = {c: (p, n) for c, p, n in rows(
        client, "SELECT class, countMerge(predicted), uniqExactMerge(labeled) FROM classes_1h GROUP BY class")}
    labeled = dict(rows(client, "SELECT label, count() FROM labels FINAL GROUP BY label"))
    assert coverage == {c: (CLASSES.count(c), labeled.get(c, 0)) for c in "abc"}
    assert rows(client, "SELECT detector, countMerge(events) FROM drift_1h GROUP BY detector") \
        == [("adwin:control_error", 2)]
    assert sorted(rows(client, "SELECT error, uniqExactMerge(letters) FROM dead_letters_1h GROUP BY error")) \
        == [("nan", 1), ("undecodable", 2)]
    assert dict(rows(client, "SELECT stage, countMerge(events) FROM stages_1h GROUP BY stage")) \
        == {"score": 200, "route": 200, "learn": 24}
    agents = rows(client, "SELECT worker, sumMerge(events), maxMerge(max_lag), argMaxMerge(lag) FROM agents_1h "
                          "GROUP BY worker ORDER BY worker")
    assert agents == [("w1", 600, 50, 10), ("w2", 600, 50, 10)]


def test_agreement_pools_windows_by_items(client):
    pooled = dict(rows(client, "SELECT annotator_b, avgWeightedMerge(value) FROM agreement_1h "
                               "WHERE annotator_a = 'ann-1' GROUP BY annotator_b"))
    assert pooled == {"ann-2": pytest.approx(0.8), "ann-3": pytest.approx(0.2)}
    assert rows(client, "SELECT avgWeightedMerge(value), sumMerge(n) FROM agreement_1h") \
        == [(pytest.approx((0.8 * 10 + 0.2 * 10 + 0.5 * 30) / 50), 150)]


# -- analyst queries ------------------------------------------------------------

def test_every_query_states_its_question_and_runs(client):
    loaded = queries.load()
    assert len(loaded) >= 15 and len({q.question for q in loaded}) == len(loaded)
    for query in loaded:
        result = queries.run(client, query)
        assert "error" not in result, f"{query.name}: {result.get('error')}"
        assert result["rows"], f"{query.name} answered nothing"
        if query.plot and query.plot.kind != "tiles":
            columns = {query.plot.x, query.plot.y} | ({query.plot.series} if query.plot.series else set())
            assert columns <= set(result["columns"]), query.name
        json.dumps(result, allow_nan=False)


def test_every_query_runs_on_an_empty_database(clickhouse_dsn):
    client = connect(clickhouse_dsn)
    try:
        migrate(client)
        for query in queries.load():
            assert "error" not in queries.run(client, query), query.name
    finally:
        client.close()


def test_the_answers(client):
    overview = answer(client, "overview")[0]
    assert overview == {"predictions": 200, "decisions": 200, "tasks": 30, "labels": 21, "dead_letters": 3,
                        "model_version": 4, "control_accuracy": 0.72}
    curve = answer(client, "learning_curve")
    assert [(r["labels_seen"], r["accuracy"]) for r in curve if r["curve"] == "control slice"] \
        == [(5, 0.5), (10, 0.6), (15, 0.7), (20, 0.72)]
    burn = [(r["series"], r["labels"]) for r in answer(client, "budget_burn")]
    assert [n for s, n in burn if s == "tasks this hour"] == [10, 20, 30]
    assert {n for s, n in burn if s == "hourly cap"} == {40}
    mix = answer(client, "reasons_mix")
    assert sum(r["tasks"] for r in mix if r["reason"] == "override") == 8
    last = answer(client, "last_1000_labels")[0]
    assert (last["from_version"], last["to_version"], last["labels"], last["gain_points"]) == (1, 4, 15, 22.0)
    assert last["labels_per_point"] == pytest.approx(15 / 22, abs=0.05)
    assert last["bought_for"] == "uncertain 11, control 5, disagreement 5, override 5"
    pairs = answer(client, "annotator_pairs")
    assert [(p["annotator_a"], p["annotator_b"]) for p in pairs][0] == ("ann-1", "ann-3")
    under = answer(client, "under_covered_classes")
    assert under[0]["coverage"] <= under[-1]["coverage"]
    annotators = {r["annotator_id"]: r for r in answer(client, "annotators")}
    assert annotators["ann-1"]["labels"] == 7 and annotators["ann-1"]["agrees_with_model"] == round(4 / 7, 3)
    assert annotators["ann-3"]["mean_kappa"] == pytest.approx((0.2 * 30 + 0.5 * 90) / 120, abs=1e-3)
    assert {r["metric"] for r in answer(client, "agreement_over_time")} == {"cohen_kappa"}
    assert sum(r["events"] for r in answer(client, "drift_events")) == 2
    assert {r["stage"] for r in answer(client, "throughput")} == {"score", "route", "learn"}
    assert [r["recommendation"] for r in answer(client, "should_we_stop")] == ["stop"]
    waits = {r["series"]: r["seconds"] for r in answer(client, "time_to_label") if r["series"] == "wait p50"}
    assert waits == {"wait p50": 5.0}
    accuracy = answer(client, "accuracy_over_time")
    assert sum(r["scored"] for r in accuracy) == 21
    assert {r["accuracy"] for r in accuracy if r["slice"] == "control"} == {1.0}
    cost = answer(client, "cost_per_point")
    assert (cost[0]["labels"], cost[0]["gain_points"]) == (15, 22.0)


# -- the page's server ----------------------------------------------------------

def test_the_server_answers_the_page_and_the_panels(clickhouse_dsn, client):
    client.close()
    server = dashboard.start(Settings(clickhouse_dsn=clickhouse_dsn), port=0)
    try:
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "<svg" not in page and 'src="page/app.js"' in page  # drawn by the script, from no CDN
        assert "http://" not in page and "https://" not in page
        script = urllib.request.urlopen(server.url + "page/app.js", timeout=10).read().decode()
        assert "function" in script and "https://" not in script
        data = json.loads(urllib.request.urlopen(server.url + "api/panels", timeout=30).read())
        panels = {p["name"]: p for p in data["panels"]}
        assert list(panels)[:3] == ["overview", "learning_curve", "budget_burn"]
        assert panels["learning_curve"]["plot"] == {"kind": "line", "x": "labels_seen", "y": "accuracy",
                                                    "series": "curve"}
        assert panels["overview"]["rows"][0][panels["overview"]["columns"].index("tasks")] == 30
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "page/../../pyproject.toml", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()


def test_the_production_model_release_by_release_and_the_labeling_demand(client):
    from streams.evaluation.production import wilson

    accuracy = answer(client, "production_accuracy")
    assert {r["version"] for r in accuracy} == {1, 2}
    newest = {r["series"]: (r["accuracy"], r["n"]) for r in accuracy if r["version"] == 2}
    assert newest == {"prod 7 control": (0.7, 20), "prod 7 control 95% low": (0.4, 20),
                      "prod 7 control 95% high": (0.9, 20), "prod 7 weighted": (0.8, 20),
                      "prod 7 weighted 95% low": (0.4, 20), "prod 7 weighted 95% high": (0.9, 20)}
    per_class = {(r["class"], r["estimator"]): r for r in answer(client, "production_per_class")}
    assert set(per_class) == {(c, e) for c in "ab" for e in ("control", "weighted")}
    assert per_class["b", "weighted"]["precision"] is None and per_class["b", "weighted"]["recall"] == 0.8
    assert (per_class["a", "control"]["recall"], per_class["a", "control"]["n_labeled"]) == (0.7, 20)

    coverage = answer(client, "rare_class_coverage")
    expected = {}
    for i in range(21):  # every task has selection probability 0.5, the production model always says 'a'
        labels, control, found = expected.get(settled(i), (0, 0, 0))
        is_control = "control" in REASONS[i % 4]
        expected[settled(i)] = (labels + 1, control + is_control, found + (is_control and settled(i) == "a"))
    assert [r["class"] for r in coverage] == sorted(expected, key=lambda c: (expected[c][1], c))  # rarest first
    for r in coverage:
        labels, control, found = expected[r["class"]]
        assert (r["labels"], r["control_labels"], r["stream_share"]) == (labels, control, round(labels / 21, 4))
        if control:
            low, high = wilson(found, control)
            assert r["control_recall"] == round(found / control, 3)
            assert r["recall_half_width"] == pytest.approx((high - low) / 2, abs=1e-3)
        else:
            assert r["control_recall"] is None and r["recall_half_width"] is None

    demand = answer(client, "labeling_demand")[0]
    # 30 tasks over 129 s, 21 labels over 120 s (re-delivered rows count once); 9 tasks never labeled
    assert demand == {"tasks_waiting": 9, "tasks_per_hour": round(30 * 3600 / 129, 1),
                      "labels_per_hour": round(21 * 3600 / 120, 1), "hours_to_drain": round(9 / 630, 2)}
    over_time = answer(client, "labeling_demand_over_time")
    series = {s: [r["count"] for r in over_time if r["series"] == s] for s in {r["series"] for r in over_time}}
    assert (sum(series["tasks created"]), sum(series["labels received"]), series["tasks waiting"][-1]) == (30, 21, 9)
