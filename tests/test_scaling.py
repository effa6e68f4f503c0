"""Two workers at once on the local broker.

Both join one consumer group: the input partitions split between them, and the
single-partition topics (candidates, tasks, labels) go to one of them, so one
router owns the global budget. The embedded ClickHouse lets one process own a
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

pytestmark = pytest.mark.kafka

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
    # one router decided every event once, under one budget
    assert sum(bool(w["decisions"]) for w in written) == 1
    assert sorted(decisions) == sorted([f"p-{i}" for i in range(PREDICTIONS)] + [f"o-{i}" for i in range(OVERRIDES)])
    assert len(tasks) == len(set(tasks)) == sum(w["selected"] for w in written)
    assert len(tasks) == CAP, f"{OVERRIDES} overrides are routed while the hourly cap allows: {len(tasks)} tasks"
