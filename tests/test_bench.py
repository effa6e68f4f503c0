"""The benchmark: the limit loop's pieces against the core's own signals and the real ClickHouse
engine, the in-process measurements, and a small ``feedbackloop bench`` end to end on the real
broker and ClickHouse, whose report must hold together."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from dashboards.connection import connect
from dashboards.migrate import migrate
from feedbackloop import bench, cli, limit_loop
from feedbackloop.settings import Settings
from schemas import codec
from streams.learning.models import KNN
from streams.selection import signals as core_signals
from streams.selection.router import stable_draw, task_id_of

CLASSES, FEATURES = ("no", "yes"), tuple(f"f{j}" for j in range(10))


def batch(n: int, seed: int = 3) -> list[dict]:
    return list(bench._events(n, seed))


def trained_knn(n: int = 200) -> KNN:
    knn = KNN()
    for e in batch(n, seed=8):
        knn.learn_one(e["features"], bench.truth(e["features"]))
    return knn


def test_decode_reads_a_batch_and_refuses_anything_else():
    events = batch(20)
    decoded = limit_loop.decode(codec.encode("PredictionBatch", {"events": events}))
    assert [e["event_id"] for e in decoded] == [e["event_id"] for e in events]
    assert decoded[7]["features"] == pytest.approx(events[7]["features"])
    with pytest.raises(ValueError):
        limit_loop.decode(codec.encode("Prediction", events[0]))


def test_scores_equal_the_core_signals_event_by_event():
    events, knn = batch(300), trained_knn()
    cols = limit_loop.to_columns(events, CLASSES, FEATURES)
    assert cols.X.shape == (300, 10) and cols.proba.shape == (300, 2)
    s = limit_loop.score(cols, knn, CLASSES, FEATURES)
    for i in random.Random(0).sample(range(300), 40):
        p = events[i]["probabilities"]
        shadow = knn.predict_proba_one(events[i]["features"])
        assert s["uncertainty"][i] == pytest.approx(core_signals.least_confidence(p), abs=1e-9)
        assert s["margin"][i] == pytest.approx(core_signals.margin(p), abs=1e-9)
        assert s["entropy"][i] == pytest.approx(core_signals.entropy(p), abs=1e-9)
        assert s["disagreement"][i] == pytest.approx(core_signals.disagreement(p, shadow), abs=1e-6)
    # the trained shadow model knows the truth: it disagrees with a random production model
    assert s["disagreement"].mean() > 0.2


def test_selection_is_fixed_by_the_event_ids_and_spends_the_fraction():
    events = batch(5000)
    cols = limit_loop.to_columns(events, CLASSES, FEATURES)
    s = limit_loop.score(cols, trained_knn(), CLASSES, FEATURES)
    probability, selected = limit_loop.select(cols.event_id, s, fraction=0.1, seed=4)
    again, same = limit_loop.select(cols.event_id, s, fraction=0.1, seed=4)
    assert np.array_equal(selected, same) and np.array_equal(probability, again)
    assert probability.mean() == pytest.approx(0.1, rel=0.05)
    assert abs(selected.mean() - 0.1) < 0.02
    draws = np.array([stable_draw(e, 4) for e in cols.event_id])
    assert np.array_equal(selected, draws < probability)
    uncertain = s["uncertainty"] > np.median(s["uncertainty"])
    assert probability[uncertain].mean() > probability[~uncertain].mean()


def test_decisions_go_into_clickhouse_one_row_per_event_and_tasks_decode(clickhouse_dsn):
    events, now = batch(1000), int(time.time() * 1000)
    cols = limit_loop.to_columns(events, CLASSES, FEATURES)
    s = limit_loop.score(cols, trained_knn(), CLASSES, FEATURES)
    probability, selected = limit_loop.select(cols.event_id, s, 0.2, 0)
    client = connect(clickhouse_dsn)
    try:
        migrate(client)
        client.insert_arrow("routing_decisions", limit_loop.decisions(cols, s, probability, selected, now))
        rows = client.query("SELECT event_id, selected, task_id, reasons, signals['disagreement'], "
                            "selection_probability FROM routing_decisions").result_rows
    finally:
        client.close()
    assert len(rows) == 1000 and len({r[0] for r in rows}) == 1000
    by_id = {r[0]: r for r in rows}
    for i, event_id in enumerate(cols.event_id):
        _, chosen, task_id, reasons, disagreement, p = by_id[event_id]
        assert chosen == int(selected[i])
        assert task_id == (task_id_of(event_id) if selected[i] else None)
        assert reasons == (["uncertain"] if selected[i] else [])
        assert disagreement == pytest.approx(s["disagreement"][i]) and p == pytest.approx(probability[i])
    tasks = limit_loop.tasks(cols, events, s, probability, selected, CLASSES, now)
    assert len(tasks) == int(selected.sum()) > 0
    decoded = [codec.decode(t, ("LabelingTask",))[1] for t in tasks]
    assert {t["event_id"] for t in decoded} == {e for e, c in zip(cols.event_id, selected) if c}


def test_percentiles_are_ordered_and_deep_size_counts_what_is_held():
    values = [random.Random(1).expovariate(1 / 50) for _ in range(1000)]
    p = bench._percentiles(values)
    assert p["p50"] <= p["p95"] <= p["p99"] <= p["max"] and p["n"] == 1000
    assert bench._percentiles([3.0])["p99"] is None
    small, big = {"k": "x"}, {"k": "x" * 100_000}
    assert bench.deep_size(big) - bench.deep_size(small) >= 99_000
    shared = ["y" * 10_000]
    assert bench.deep_size([shared, shared]) < bench.deep_size([shared, ["y" * 10_000]])


def test_owner_admission_and_state_memory_in_process():
    settings = Settings(budget_per_hour=10**9, budget_per_day=10**9)
    owner = bench.owner_admission(settings, 2000)
    assert owner["input_events"] == 2000 and 0 < owner["candidates"] <= 2000
    assert owner["us_per_input_event"] == pytest.approx(owner["decode_us_per_input_event"]
                                                        + owner["admit_us_per_input_event"], abs=0.02)
    assert owner["events_per_second"] == pytest.approx(1e6 / owner["us_per_input_event"], rel=0.01)
    assert owner["cpu_us_per_input_event"] == pytest.approx(owner["cpu_decode_us_per_input_event"]
                                                            + owner["cpu_admit_us_per_input_event"], abs=0.02)
    assert owner["events_per_cpu_second"] == pytest.approx(1e6 / owner["cpu_us_per_input_event"], rel=0.01)
    assert owner["repeats"] == 5 and 0 < owner["selected"] <= owner["candidates"] < 0.3 * 2000  # only the preselected
    memory = bench.state_memory(settings, 4000)["structures"]
    for name in ("recent items", "decided ids", "waiting tasks", "novelty sketch"):
        assert memory[name]["mb_per_million_events"] <= memory[name]["mb_bound"] + 1e-9
    assert memory["recent items"]["entries_per_event"] == pytest.approx(1.0)
    assert memory["recent items"]["bytes_per_entry"] > memory["decided ids"]["bytes_per_entry"] > 0
    assert 0 < memory["waiting tasks"]["entries_per_event"] < 0.5  # tasks only for the selected few
    assert memory["total"]["mb_bound"] == pytest.approx(sum(memory[k]["mb_bound"] for k in memory if k != "total"),
                                                        abs=0.3)


def test_the_scorer_cost_in_process_scores_with_a_trained_model():
    settings = Settings(budget_per_hour=10**9, budget_per_day=10**9)
    record, key = bench.trained_in_process(settings, labels=100)
    assert record["labels_seen"] >= 75 and record["version"] >= 1
    cost = bench.scoring_cost(settings, n=1000, labels=100, warm=1000)
    assert cost["events"] == 1000 and 0 < cost["centers"] <= 2000
    assert cost["score_us_per_event"] > 0 and cost["preselect_us_per_event"] > 0


def test_the_command_keeps_its_flags():
    args = cli.parser().parse_args(["bench", "--events", "10", "--json", "x.json", "--no-bare"])
    assert (args.events, args.out, args.bare, args.rate, args.model) == (10, "x.json", False, None, None)
    assert cli.parser().parse_args(["bench", "--out", "y.json"]).out == "y.json"


@pytest.mark.kafka
def test_a_small_bench_end_to_end(kafka, tmp_path):
    settings = kafka.replace(state_dir=str(tmp_path / "state"))
    result = bench.measure(settings, events=3000, batch_size=250, labels=50, latency_seconds=2, label_rounds=2,
                           owner_events=1000, memory_events=1000, bare=False)
    json.dumps(result)  # --out writes it as it is
    trained, w, limit = result["trained"], result["worker"], result["limit_loop"]
    assert result["model"] == settings.model_kind == trained["kind"]
    assert trained["labels"] >= 50 and trained["version"] >= 1
    assert w["shadow_version"] >= trained["version"]  # the worker scored with the trained model
    assert w["events"] == limit["events"] == limit["decision_rows"] == 3000
    assert w["events_per_second"] > 0 and w["events_per_cpu_second"] > 0 and w["peak_rss_mb"] > 50
    assert w["us_per_event"] == pytest.approx(1e6 / w["events_per_cpu_second"], rel=0.01)
    assert result["worker_vs_limit"] == round(w["events_per_second"] / limit["events_per_second"], 3)
    assert result["worker_vs_limit_cpu"] == round(w["events_per_cpu_second"] / limit["events_per_cpu_second"], 3)
    assert limit["events_per_cpu_second"] == pytest.approx(3000 / limit["cpu_seconds"], rel=0.01)
    assert 0 < limit["selected"] < 3000 and set(limit["us_per_event"]) >= {"decode", "score", "insert"}
    lat = result["latency"]
    assert lat["rate"] == round(max(10.0, w["events_per_second"] / 2))
    assert lat["ms"]["n"] > 0 and 0 <= lat["ms"]["p50"] <= lat["ms"]["p95"] <= lat["ms"]["p99"]
    serving = result["label_to_serving"]
    assert serving["labels"] == 2 * settings.publish_every and serving["ms"]["n"] + serving["not_served"] == 50
    assert serving["ms"]["n"] > 0 and 0 < serving["ms"]["p50"] <= serving["ms"]["p95"]
    owner = result["owner"]
    assert owner["share_of_worker_cost"] == round(owner["cpu_us_per_input_event"] / w["us_per_event"], 3)
    assert result["memory"]["worker_peak_rss_mb"] == w["peak_rss_mb"]
    table = bench.summary(result)
    for figure in ("worker / limit loop", "event-to-task", "label to serving", "owner admission", "peak RSS"):
        assert figure in table
