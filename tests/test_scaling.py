"""Selection at the partitions, admission at the owner; and two workers at once on the local broker.

In the core: scorers of different partitions preselect, one owner admits under
the global caps, and every event has one decision, exact whoever wrote it.

Both join one consumer group: the input partitions split between them, and the
single-partition topics (candidates, tasks, labels) go to one of them, so one
owner admits the preselected under the global caps. The embedded ClickHouse lets one process own a
data directory, so each worker writes its own (in production all workers share
one ClickHouse server); the figures below are summed over the two, which is
only right if no event was processed by both.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from feedbackloop import stack, worker
from dashboards.connection import connect
from feedbackloop.producer import Producer
from schemas import codec
from schemas.candidate_columns import candidates_of, to_columns
from streams.loop import Loop

PREDICTIONS, OVERRIDES, CAP = 400, 120, 40


def members(settings) -> dict[str, set[int]]:
    """Member id -> partitions of the predictions topic, once the group is stable with two members."""
    admin = AdminClient(settings.kafka_config())
    topic = settings.topic("predictions")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10)
        except Exception:  # the group is still forming
            time.sleep(0.5)
            continue
        split = {m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
                 for m in group.members}
        if group.state == ConsumerGroupState.STABLE and len(split) == 2 and all(split.values()):
            return split
        time.sleep(0.5)
    raise AssertionError(f"the group did not settle with two members sharing {topic}")


def read(dsn: str) -> dict:
    client = connect(dsn)
    try:
        query = lambda sql: client.query(sql).result_rows  # noqa: E731
        return {
            "predictions": [r[0] for r in query("SELECT event_id FROM predictions")],
            "decisions": [r[0] for r in query("SELECT event_id FROM routing_decisions")],
            "selected": query("SELECT countIf(selected = 1) FROM routing_decisions")[0][0],
            "tasks": [r[0] for r in query("SELECT task_id FROM labeling_tasks")],
        }
    finally:
        client.close()


@pytest.mark.kafka
def test_two_workers_split_the_partitions_and_keep_one_budget(kafka, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the workers keep their local state in their working directory
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}scale-{run}.", app_id=f"scale-{run}",
                             budget_fraction=1.0, budget_per_hour=CAP, budget_per_day=10 * CAP,
                             control_fraction=0.1, min_control=5)
    stack.ensure_topics(settings.kafka_config(), settings)
    dsns = [f"chdb://{tmp_path / f'clickhouse-{i}'}" for i in (1, 2)]
    processes = [worker.spawn(settings.replace(clickhouse_dsn=dsn), tmp_path / f"worker-{i}.log")
                 for i, dsn in enumerate(dsns, 1)]
    try:
        split = members(settings)
        assert set().union(*split.values()) == {0, 1, 2, 3}
        assert sum(len(p) for p in split.values()) == 4, f"a partition is assigned twice: {split}"

        ts = int(time.time() * 1000)  # every event at one instant: one window of the hourly cap
        with Producer(settings, batch_size=20) as producer:
            for i in range(PREDICTIONS):
                producer.prediction(f"item-{i}", {"a": 0.5 + (i % 10) / 25, "b": 0.5 - (i % 10) / 25},
                                    features={"x": float(i % 10)}, event_id=f"p-{i}", ts=ts)
            for i in range(OVERRIDES):
                producer.override(f"item-{i}", "b", predicted_label="a", event_id=f"o-{i}", ts=ts)
        assert worker.wait_drained(settings, timeout=120)
        assert members(settings) == split, "the group rebalanced while the events were processed"
    finally:
        for process in processes:
            worker.stop(process)
        for i in (1, 2):
            print((tmp_path / f"worker-{i}.log").read_text()[-1500:])

    written = [read(dsn) for dsn in dsns]
    predictions = [e for w in written for e in w["predictions"]]
    decisions = [e for w in written for e in w["decisions"]]
    tasks = [t for w in written for t in w["tasks"]]

    # both workers scored, and no prediction was scored by both
    assert all(w["predictions"] for w in written)
    assert sorted(predictions) == sorted(f"p-{i}" for i in range(PREDICTIONS))
    # every event decided once, under one budget: by the scorer that saw it when not preselected,
    # by the one owner of the caps when preselected (see docs/scaling.md)
    assert sorted(decisions) == sorted([f"p-{i}" for i in range(PREDICTIONS)] + [f"o-{i}" for i in range(OVERRIDES)])
    assert len(tasks) == len(set(tasks)) == sum(w["selected"] for w in written)
    assert len(tasks) == CAP, f"{OVERRIDES} overrides are routed while the hourly cap allows: {len(tasks)} tasks"


# --------------------------------------------------------------------------- in the core


def prediction(i: int, ts: int = 1_000) -> dict:
    a = 0.5 + (i * 37 % 50) / 100 * (1 if i % 2 else -1) * 0.9
    return {"event_id": f"p-{i}", "item_id": f"item-{i}", "ts": ts, "model_name": "prod", "model_version": "1",
            "predicted_label": "a" if a >= 0.5 else "b", "probabilities": {"a": a, "b": 1.0 - a},
            "features": {"x": float(i % 10), "y": float(i % 7)}, "text": None, "context": {}}


def partitioned(n_scorers: int, events: int, cap: int, fraction: float = 0.2):
    """Scorers of ``n_scorers`` partitions and one owner over ``events`` predictions:
    (decision rows by event id, tasks, candidates sent on the internal hop)."""
    options = dict(budget_fraction=fraction, budget_per_hour=cap, model_kind="linear", min_control=5, seed=3)
    scorers = [Loop.build(**options) for _ in range(n_scorers)]
    owner = Loop.build(**options)
    rows, tasks, hop = {}, [], 0
    for i in range(events):
        scorer = scorers[i % n_scorers]
        [c] = scorer.score("Prediction", prediction(i), now_ms=2_000).candidates
        local = scorer.preselect(c, now_ms=2_000)
        wire = [x for r in to_columns(local.candidates)  # what the owner gets, as a worker sends it
                for x in candidates_of(codec.decode(codec.encode("CandidateColumns", r, check=False),
                                                    ("CandidateColumns",), check=False)[1])]
        old = codec.decode(codec.encode("CandidateBatch", {"candidates": local.candidates}, check=False),
                           ("CandidateBatch",), check=False)[1]["candidates"]  # what an older scorer sends
        assert wire == old
        hop += len(wire)
        written = list(local.rows)
        for x in wire:
            admitted = owner.admit(x, now_ms=2_001)
            written += admitted.rows
            tasks += admitted.tasks
        for table, row in written:
            if table == "routing_decisions":
                assert row["event_id"] not in rows, f"{row['event_id']} decided twice"
                rows[row["event_id"]] = row
    return rows, tasks, hop


def test_scorers_preselect_and_the_owner_admits_under_the_global_caps():
    rows, tasks, hop = partitioned(n_scorers=3, events=3000, cap=100)
    assert sorted(rows) == sorted(f"p-{i}" for i in range(3000)), "one decision per event"
    assert len(tasks) == 100 == sum(r["selected"] for r in rows.values()), "the cap holds globally"
    # only the preselected crossed: about the budget's share of the stream, not every event
    assert 100 < hop < 0.4 * 3000
    refused = [r for r in rows.values() if not r["selected"] and r["selection_probability"] == 0.0]
    assert len(refused) >= hop - 100, "every preselected event the caps refused says so"
    for task in tasks:  # the task carries the decision's exact probability
        row = rows[task["event_id"]]
        assert (row["selected"], row["task_id"]) == (1, task["task_id"])
        assert row["selection_probability"] == task["selection_probability"] > 0.0
        assert task["features"], "the owner builds the task with the item's features"


def test_without_a_cap_preselect_then_admit_is_the_one_process_route():
    """The worker's two steps decide exactly as the simulator's and the bare loop's one call."""
    split, together = Loop.build(budget_fraction=0.2, model_kind="linear", seed=1), \
        Loop.build(budget_fraction=0.2, model_kind="linear", seed=1)
    for i in range(1500):
        [a] = split.score("Prediction", prediction(i), now_ms=5).candidates
        [b] = together.score("Prediction", prediction(i), now_ms=5).candidates
        local = split.preselect(a, now_ms=5)
        two = local.rows + [r for c in local.candidates for r in split.admit(c, now_ms=5).rows]
        one = together.route(b, now_ms=5).rows
        assert two == one


def test_a_re_delivered_event_is_not_decided_again_even_after_a_restart():
    loop = Loop.build(budget_fraction=1.0, model_kind="linear", min_control=0)
    [c] = loop.score("Prediction", prediction(7), now_ms=5).candidates
    first = loop.preselect(c, now_ms=5)
    assert first.candidates and not first.rows
    assert not loop.preselect(c, now_ms=6).candidates  # re-delivered: already on its way to the owner
    restarted = Loop.build(budget_fraction=1.0, model_kind="linear", min_control=0)
    restarted.router.restore_preselected([c["event_id"]])  # what streams.replay reads back from the hop
    assert restarted.preselect(c, now_ms=7).candidates == [] == restarted.preselect(c, now_ms=7).rows
    [task] = loop.admit(first.candidates[0], now_ms=8).tasks
    assert loop.admit(first.candidates[0], now_ms=9).tasks == []  # admitted once
    restarted.router.restore([task])  # its task was sent: a scorer forwards it, the owner keeps its decision
    again = Loop.build(budget_fraction=1.0, model_kind="linear", min_control=0)
    again.router.restore([task])
    [forwarded] = again.preselect(c, now_ms=10).candidates
    admitted = again.admit(forwarded, now_ms=10)
    [(table, row)] = [(t, r) for t, r in admitted.rows if t == "routing_decisions"]
    assert (row["selected"], row["task_id"], admitted.tasks) == (1, task["task_id"], [])


def test_a_candidate_from_a_scorer_that_did_not_preselect_is_decided_at_the_owner():
    """A candidate with no preselection (in flight across the upgrade) is decided once, as before."""
    owner, reference = (Loop.build(budget_fraction=0.5, model_kind="linear", seed=2) for _ in range(2))
    for i in range(300):
        [c] = owner.score("Prediction", prediction(i), now_ms=5).candidates
        [same] = reference.score("Prediction", prediction(i), now_ms=5).candidates
        assert c["reasons"] == [] and c["selection_probability"] == 0.0
        assert owner.admit(c, now_ms=6).rows == reference.route(same, now_ms=6).rows
        assert owner.admit(c, now_ms=7).rows == []


def test_a_batch_is_scored_as_its_events_one_by_one():
    """The batch scorer (numpy kNN, vectorised signals) gives each event the one-item scorer's signals."""
    import random

    from streams.learning.learner import ShadowModel
    from streams.learning.models import make
    from streams.selection.scorer import Scorer

    rng, model = random.Random(5), make("knn")
    for _ in range(200):
        x = {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)}
        model.learn_one(x, rng.choice("abc") if x["x"] > 0 else "a")
    events = [{**prediction(i), "probabilities": dict(zip("abc", (lambda w: [v / sum(w) for v in w])(
        [rng.random() for _ in range(3)]))), "predicted_label": "a",
        "features": {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)} if i % 9 else {"x": 0.0}} for i in range(300)]
    for shadow in (ShadowModel("s", 0), ShadowModel("s", 3, model, ["a", "b", "c"])):
        one, many = Scorer(shadow), Scorer(shadow)
        for a, b in zip([one.prediction(e, 1) for e in events], many.predictions(events, 1)):
            assert a["shadow_label"] == b["shadow_label"] and a["signals"].keys() == b["signals"].keys()
            assert max(abs(a["signals"][k] - b["signals"][k]) for k in a["signals"]) < 1e-9


def test_every_scorer_measures_novelty_against_every_item_chosen():
    """A scorer follows the owner's tasks: items another partition preselected become its novelty centers."""
    options = dict(budget_fraction=0.3, model_kind="linear", min_control=2, seed=6)
    a, b, owner = (Loop.build(**options) for _ in range(3))
    tasks = []
    for i in range(400):
        [c] = a.score("Prediction", prediction(i), now_ms=5).candidates
        for chosen in a.preselect(c, now_ms=5).candidates:
            tasks += owner.admit(chosen, now_ms=6).tasks
    assert tasks and len(b.router.policy.novelty) == 0
    assert all(b.follow_task(t) for t in tasks)  # none of them was B's
    assert len(b.router.policy.novelty) == len(tasks)
    assert not any(a.follow_task(t) for t in tasks), "A's own items are centers already"
    assert len(a.router.policy.novelty) == len(tasks)
