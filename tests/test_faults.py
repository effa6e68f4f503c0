"""Fault injection against a live worker, in the style of Kafka's transaction bounce tests.

Each scenario runs a real worker process on the real local broker and the
embedded ClickHouse, injects one fault (the worker SIGKILLed during a
backlog, the broker bounced, ClickHouse failing for a minute, poison input,
labels sent across a restart), lets the loop drain, and then audits what was
recorded against the invariants of the loop (:func:`broken`): every input
event has exactly one routing decision, with and without ``FINAL``; every
selected event exactly one task, on the topic and in ClickHouse, and no task
whose recorded decision is "not selected"; the hourly cap holds; every label
sent is learned once; ``deadletter`` holds exactly the poison. Each test prints
its counts as one JSON line, so CI logs show them.

Run alone with ``.venv/bin/pytest -m faults -s`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import fields
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from feedbackloop import worker
from feedbackloop.producer import Producer
from feedbackloop.settings import Settings
from schemas import codec
from tests.faults import (WorkerLives, audit, bounce_broker, group_members, input_lag, read_topic, scenario,
                          watermark)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


@pytest.fixture
def ts() -> int:
    """The event time of every event of a test, so the run falls in one hour of the hourly cap."""
    return int(time.time() * 1000)


def probabilities(i: int) -> dict[str, float]:
    """A production model from sure to torn, so some items are uncertain."""
    a = 0.25 + (i * 37 % 50) / 100
    return {"a": a, "b": round(1.0 - a, 6)}


def predict(producer: Producer, i: int, ts: int) -> str:
    return producer.prediction(f"item-{i}", probabilities(i), features={"x": float(i % 10), "y": float(i % 7)},
                               event_id=f"p-{i}", ts=ts)


def broken(c: dict, poison: int = 0) -> list[str]:
    """The invariants of the loop that the counts of :func:`tests.faults.audit` break."""
    expect = {
        "one decision per event": (c["decision_rows"], c["decision_rows_final"], c["events"]),
        "no decision missing, repeated, unknown or contradicting another":
            (c["decisions_missing"], c["decisions_repeated"], c["decisions_unexpected"], c["decided_both_ways"], 0),
        "one prediction row per prediction":
            (c["predictions_missing"], c["predictions_repeated"], c["predictions_unexpected"], 0),
        "one task row per selected event": (c["task_rows"], c["task_rows_final"], c["selected"]),
        "one task on the topic per selected event": (c["tasks_on_topic"], c["task_ids_on_topic"], c["selected"]),
        "no selected event without its task, no orphan task":
            (c["selected_without_task_id"], c["task_rows_missing"], c["tasks_on_topic_missing"], c["orphan_tasks"], 0),
        "every label learned once": (c["label_rows"], c["label_rows_final"], c["labels_sent"]),
        "no label missing, repeated or unknown": (c["labels_missing"], c["labels_repeated"], c["labels_unexpected"], 0),
        "deadletter holds the poison": (c["dead_letters_on_topic"], c["dead_letter_rows"], c["dead_letter_rows_final"],
                                        poison),
        "deadletter holds nothing else": (c["poison_missing"], c["unexpected_dead_letters"], 0),
    }
    found = [f"{rule}: {figures}" for rule, figures in expect.items() if len(set(figures)) > 1]
    if c["selected"] > c["cap_hour"]:
        found.append(f"hourly cap: {c['selected']} selected > {c['cap_hour']}")
    return found


def report(counts: dict) -> None:
    print(json.dumps(counts, sort_keys=True))


# -- 1. the worker SIGKILLed during a backlog ------------------------------------------------

BACKLOG, OVERRIDES, CAP = 20_000, 500, 1000
#: Each life is killed as soon as it has committed a step on this topic: the first once it scored
#: some input, the second once it scored (and, the one worker owning the budget, admitted in
#: process) more; ``labeling.candidates`` carries nothing while one worker runs.
KILLED_AFTER = ("predictions", "predictions")


def killed_after_commits(lives: WorkerLives, settings: Settings, topics, poll: float = 0.1) -> list[dict]:
    """A life of the worker per topic of ``topics``, each SIGKILLed as soon as it has committed a step on
    that topic (looked at every ``poll`` seconds through one client, a few ms a look); what was left to do
    at each kill."""
    watch = Consumer({**settings.kafka_config(), "group.id": settings.app_id, "enable.auto.commit": False})
    kills = []
    try:
        for topic in topics:
            name = settings.topic(topic)
            partitions = [TopicPartition(name, p) for p in watch.list_topics(name, timeout=10).topics[name].partitions]

            def position() -> int:
                return sum(max(0, tp.offset) for tp in watch.committed(partitions, timeout=10))

            lives.start()
            done, deadline = position(), time.monotonic() + 120
            while position() == done:
                assert lives.alive and time.monotonic() < deadline, (
                    f"life {len(lives.logs)} of the worker committed nothing on {topic} within 120 s")
                time.sleep(poll)
            lives.kill(signal.SIGKILL)
            kills.append({"lag": worker.lag(settings), "input_lag": input_lag(settings),
                          "tasks_sent": watermark(settings, "labeling.tasks")})
    finally:
        watch.close()
    return kills


def test_worker_sigkilled_during_a_backlog_loses_nothing_and_counts_nothing_twice(kafka, tmp_path, ts):
    settings = scenario(kafka, tmp_path, "kill", budget_per_hour=CAP)
    with Producer(settings) as producer:
        predictions = [predict(producer, i, ts) for i in range(BACKLOG)]
        overrides = [producer.override(f"item-{i * 40}", "b", predicted_label="a", event_id=f"o-{i}", ts=ts)
                     for i in range(OVERRIDES)]
    lives = WorkerLives(settings, tmp_path)
    try:
        kills = killed_after_commits(lives, settings, KILLED_AFTER)
        lives.start()
        drained = worker.wait_drained(settings, lives.process, timeout=240)
        stop_s = lives.stop()
    finally:
        lives.stop()
        print(lives.tail(1500))
    counts = audit(settings, predictions, overrides)
    report({**counts, "kills": kills, "join_s": lives.joined, "drained": drained, "stop_s": stop_s})
    assert all(k["lag"] > 0 for k in kills), "a kill came after the backlog was done: nothing was tested"
    assert drained, "the backlog was not drained after the last restart"
    assert not broken(counts)


# -- 1b. the worker SIGKILLed while its tasks are in flight ----------------------------------

#: Half the events preselected and no cap reached (the daily one is 10,000 by default), so the worker sends
#: tasks all through a backlog long enough for three lives to be killed in it; the events in messages of
#: IN_FLIGHT_BATCH, so the score agent takes thousands of events at a time and its tasks queue in the
#: producer (one request in flight to the broker): at a commit some are still in flight.
IN_FLIGHT_EVENTS, IN_FLIGHT_FRACTION, IN_FLIGHT_LIVES, IN_FLIGHT_BATCH = 60_000, 0.5, 3, 50


def test_worker_sigkilled_with_tasks_in_flight_loses_none_and_sends_none_twice(kafka, tmp_path, ts):
    """The one worker owns the budget, so its score agent admits its preselected in process
    (:meth:`streams.app.Runtime.admit_here`) and takes its next messages while their tasks are in flight,
    buffering their decision rows once Kafka has the tasks; the commit waits for every send in flight
    before it writes rows and commits (:meth:`streams.app.Runtime.deliver`). Each life is killed right
    after a commit, while it scores a backlog in which every other event is a task: the rows of the tasks
    in flight at that commit are buffered only once they are acknowledged, so a commit that did not wait
    for them would have committed offsets whose decision and task rows a kill then loses (the audit's "one
    decision per event", "one task row per selected event"). After a kill the score agent scores again
    from its last commit: an event whose task was sent keeps its decision (the router rebuilt from
    ``labeling.tasks``) and gets no second task. After the last restart every selected event has one task
    on the topic and one task row, every event one decision row, and nothing went through
    ``labeling.candidates``."""
    settings = scenario(kafka, tmp_path, "inflight", budget_fraction=IN_FLIGHT_FRACTION,
                        budget_per_hour=IN_FLIGHT_EVENTS, budget_per_day=IN_FLIGHT_EVENTS)
    with Producer(settings, batch_size=IN_FLIGHT_BATCH) as producer:
        predictions = [predict(producer, i, ts) for i in range(IN_FLIGHT_EVENTS)]
    lives = WorkerLives(settings, tmp_path)
    try:
        kills = killed_after_commits(lives, settings, ["predictions"] * IN_FLIGHT_LIVES, poll=0.005)
        lives.start()
        drained = worker.wait_drained(settings, lives.process, timeout=240)
        stop_s = lives.stop()
    finally:
        lives.stop()
        print(lives.tail(1500))
    counts = audit(settings, predictions)
    report({**counts, "kills": kills, "join_s": lives.joined, "drained": drained, "stop_s": stop_s})
    assert all(k["lag"] > 0 for k in kills), "a kill came after the backlog was done: nothing was tested"
    assert drained, "the backlog was not drained after the last restart"
    assert not broken(counts)
    assert counts["selected"] > IN_FLIGHT_EVENTS // 4, "too few tasks for the worker to have them in flight"
    assert watermark(settings, "labeling.candidates") == 0, "the owner's own candidates went through Kafka"


# -- 2. the broker bounced while the worker runs ------------------------------------------


class Feeder(threading.Thread):
    """Produces predictions (and an override in twenty) at a steady pace until stopped,
    then waits until every one is acknowledged."""

    def __init__(self, settings: Settings, ts: int, per_tick: int = 40, tick: float = 0.5):
        super().__init__(daemon=True)
        self.settings, self.ts, self.per_tick, self.tick = settings, ts, per_tick, tick
        self.predictions, self.overrides = [], []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with Producer(self.settings) as producer:
                while not self.halt.wait(self.tick):
                    for _ in range(self.per_tick):
                        i = len(self.predictions)
                        self.predictions.append(predict(producer, i, self.ts))
                        if i % 20 == 0:
                            self.overrides.append(producer.override(f"item-{i}", "a", event_id=f"o-{i}", ts=self.ts))
                producer.flush(timeout=180)
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def finish(self) -> None:
        """Stop producing, wait for the acknowledgements; raise what went wrong."""
        self.halt.set()
        self.join(240)
        if self.error is not None:
            raise self.error


def test_broker_bounced_while_the_worker_runs(kafka, tmp_path, ts):
    settings = scenario(kafka, tmp_path, "broker")
    lives = WorkerLives(settings, tmp_path)
    feeder = Feeder(settings, ts)
    try:
        lives.start()
        feeder.start()
        time.sleep(5)
        bounces = [bounce_broker(kafka, signal.SIGTERM, down=20)]
        time.sleep(10)
        bounces.append(bounce_broker(kafka, signal.SIGKILL, down=20))
        time.sleep(5)
        feeder.finish()
        survived = lives.alive
        drained = worker.wait_drained(settings, lives.process, timeout=180)
        stop_s = lives.stop()
    finally:
        feeder.halt.set()
        lives.stop()
        print(lives.tail(1500))
    counts = audit(settings, feeder.predictions, feeder.overrides)
    report({**counts, "bounces": bounces, "survived": survived, "drained": drained, "stop_s": stop_s})
    assert survived, "the worker died while the broker was away"
    assert drained
    assert not broken(counts)


# -- 3. ClickHouse failing for a minute ---------------------------------------------------

OUTAGE_S, PIECES, PER_PIECE = 60, 6, 300


def test_clickhouse_failing_for_a_minute_pauses_the_worker_and_loses_nothing(kafka, tmp_path, ts):
    assert "sink_fault_path" in {f.name for f in fields(Settings)}, (
        "the sink has no fault hook: Settings.sink_fault_path (FEEDBACKLOOP_SINK_FAULT_PATH), while that "
        "file exists every ClickHouse insert raises a transient error")
    fault = tmp_path / "clickhouse-fails"
    settings = scenario(kafka, tmp_path, "clickhouse", sink_fault_path=str(fault))
    lives = WorkerLives(settings, tmp_path)
    predictions, overrides, lag = [], [], []
    try:
        lives.start()
        with Producer(settings) as producer:
            predictions += [predict(producer, i, ts) for i in range(1000)]
            overrides += [producer.override(f"item-{i}", "b", event_id=f"o-{i}", ts=ts) for i in range(0, 1000, 50)]
        assert worker.wait_drained(settings, lives.process, timeout=120), "not drained before the fault"
        fault.touch()
        began = time.monotonic()
        for piece in range(PIECES):  # production goes on while ClickHouse fails
            with Producer(settings) as producer:
                first = 1000 + piece * PER_PIECE
                predictions += [predict(producer, i, ts) for i in range(first, first + PER_PIECE)]
            time.sleep(max(0.0, began + (piece + 1) * OUTAGE_S / PIECES - time.monotonic()))
            lag.append(input_lag(settings))
        survived, members = lives.alive, group_members(settings)
        logged = "clickhouse" in lives.tail(100_000).lower()
        fault.unlink()
        outage_s = round(time.monotonic() - began, 1)
        drained = worker.wait_drained(settings, lives.process, timeout=180)
        # told to stop while ClickHouse fails, it stops in time, and what it could not write is not lost
        fault.touch()
        with Producer(settings) as producer:
            predictions += [predict(producer, i, ts) for i in range(len(predictions), len(predictions) + PER_PIECE)]
        time.sleep(5)
        stop_in_outage_s = lives.stop()
        fault.unlink()
        lives.start()
        drained_after_restart = worker.wait_drained(settings, lives.process, timeout=120)
        stop_s = lives.stop()
    finally:
        fault.unlink(missing_ok=True)
        lives.stop()
        print(lives.tail(1500))
    counts = audit(settings, predictions, overrides)
    report({**counts, "outage_s": outage_s, "input_lag_during_outage": lag, "survived": survived,
            "members_at_end_of_outage": members, "drained": drained, "stop_in_outage_s": stop_in_outage_s,
            "drained_after_restart": drained_after_restart, "stop_s": stop_s})
    assert survived, "the worker died while ClickHouse failed"
    assert lag == [PER_PIECE * (k + 1) for k in range(PIECES)], (
        "while ClickHouse fails, consumption pauses: nothing is committed and the lag grows with the input")
    assert members, "the worker left its consumer group while ClickHouse failed"
    assert logged, "the worker's log does not say that ClickHouse fails"
    assert drained, "not drained after ClickHouse came back"
    assert stop_in_outage_s <= 10, f"SIGTERM during the outage took {stop_in_outage_s} s"
    assert drained_after_restart
    assert not broken(counts)


# -- 4. poison ----------------------------------------------------------------------------


def month_batch(n: int = 101) -> tuple[bytes, list[str]]:
    """A valid PredictionBatch of ``n`` predictions whose event times fall in ``n`` different months."""
    now = datetime.now(timezone.utc)
    events = []
    for k in range(n):
        months = now.year * 12 + now.month - 1 - n // 2 + k
        ts = int(datetime(months // 12, months % 12 + 1, 15, tzinfo=timezone.utc).timestamp() * 1000)
        events.append({"event_id": f"month-{k}", "item_id": f"month-item-{k}", "ts": ts, "model_name": "production",
                       "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4},
                       "features": {"x": 1.0}, "text": None, "context": {}})
    return codec.encode("PredictionBatch", {"events": events}, check=False), [e["event_id"] for e in events]


def test_poison_is_dead_lettered_and_the_stream_goes_on(kafka, tmp_path, ts):
    settings = scenario(kafka, tmp_path, "poison")
    surrogate = json.dumps({"event_id": "surrogate", "item_id": "\ud800", "ts": ts, "model_name": "production",
                            "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4}})
    assert "\\ud800" in surrogate  # the lone surrogate travels escaped, in valid UTF-8
    surrogate = surrogate.encode()
    batch, batch_events = month_batch()
    lives = WorkerLives(settings, tmp_path)
    try:
        lives.start()
        with Producer(settings) as producer:
            before = [predict(producer, i, ts) for i in range(40)]
        assert worker.wait_drained(settings, lives.process, timeout=60), "not drained before the poison"
        raw = KafkaProducer(settings.kafka_config())
        raw.produce(settings.topic("predictions"), surrogate, key=b"surrogate")
        raw.produce(settings.topic("predictions"), batch, key=b"months")
        assert raw.flush(30) == 0
        with Producer(settings) as producer:
            after = [predict(producer, i, ts) for i in range(40, 80)]
        drained = worker.wait_drained(settings, lives.process, timeout=60)
        survived = lives.alive
        stop_s = lives.stop(timeout=30)
    finally:
        lives.stop()
        print(lives.tail(3000))
    dead = {codec.decode(m.value(), ("DeadLetter",))[1]["payload"] for m in read_topic(settings, "deadletter")}
    stored_batch = batch not in dead  # the batch may be stored instead of dead-lettered
    poison = {surrogate} | (set() if stored_batch else {batch})
    counts = audit(settings, before + after + (batch_events if stored_batch else []), poison=poison)
    report({**counts, "batch": "stored" if stored_batch else "dead-lettered", "survived": survived,
            "drained": drained, "stop_s": stop_s})
    assert survived
    assert drained, "the stream stalled on the poison"
    assert stop_s <= 20, f"SIGTERM took {stop_s} s"
    assert not broken(counts, poison=len(poison))


# -- 5. labels sent across a restart --------------------------------------------------------

TASKS = 300


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_labels_for_tasks_created_before_a_restart_are_learned(kafka, tmp_path, ts, sig):
    settings = scenario(kafka, tmp_path, f"labels-{signal.Signals(sig).name.lower()}", budget_fraction=1.0,
                        budget_per_hour=TASKS, min_control=5, publish_every=50)
    lives = WorkerLives(settings, tmp_path)
    try:
        lives.start()
        with Producer(settings) as producer:
            predictions = [predict(producer, i, ts) for i in range(3 * TASKS)]
        assert worker.wait_drained(settings, lives.process, timeout=120), "the predictions were not drained"
        tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read_topic(settings, "labeling.tasks")]
        assert len(tasks) == TASKS, f"the router created {len(tasks)} tasks, not {TASKS}"
        lives.kill(sig)
        lives.start()
        labels = KafkaProducer(settings.kafka_config())
        for t in tasks:
            answer = t["suggested_label"] if t["suggested_label"] in t["label_set"] else t["label_set"][0]
            labels.produce(settings.topic("labels"), codec.encode("Label", {
                "event_id": f"label-{t['task_id']}", "task_id": t["task_id"], "item_id": t["item_id"],
                "label": answer, "annotator_id": "annotator-1", "ts": int(time.time() * 1000), "duration_ms": 900}),
                key=t["task_id"].encode())
        assert labels.flush(30) == 0
        drained = worker.wait_drained(settings, lives.process, timeout=120)
        stop_s = lives.stop()
    finally:
        lives.stop()
        print(lives.tail(1500))
    counts = audit(settings, predictions, labels=[f"label-{t['task_id']}" for t in tasks])
    report({**counts, "join_s": lives.joined, "drained": drained, "stop_s": stop_s})
    assert drained
    assert not broken(counts)
    assert counts["model_versions"] >= 1 and counts["model_versions_on_topic"] >= 1, "no model version was learned"
