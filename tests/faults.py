"""Harness of the fault-injection suite (``tests/test_faults.py``), test-only.

It drives what production runs: a worker as a child process
(:class:`WorkerLives` starts, kills and restarts it), the local Kafka broker
(:func:`bounce_broker` stops it by a signal and starts it again), and the
embedded ClickHouse the worker writes. After a run, :func:`audit` reads back
everything the loop recorded, from the topics and from ClickHouse (once the
worker has stopped: one process owns a chDB data directory), and counts what
the invariants are about: decisions per event, tasks per selected event,
orphans, labels learned, dead letters. The counts are plain numbers, printed
by each test so CI logs show them.

Nothing here runs at import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from dashboards.connection import connect
from feedbackloop import stack, worker
from feedbackloop.settings import Settings
from schemas import codec

__all__ = ["INPUTS", "WorkerLives", "audit", "bounce_broker", "committed", "group_members", "input_lag",
           "read_topic", "scenario", "watermark"]

#: The topics production writes.
INPUTS = ("predictions", "overrides", "appeals")


def scenario(kafka: Settings, tmp_path: Path, name: str, **changes) -> Settings:
    """Settings of one scenario: its own topics, consumer group, state dir and
    ClickHouse, on the session's broker (and its model keys, or new ones);
    topics created."""
    run = f"{name}-{uuid.uuid4().hex[:6]}"
    keys = {}
    if not kafka.model_signing_key:
        from feedbackloop.keys import generate

        keys["model_signing_key"], keys["model_verify_key"] = generate()
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}faults-{run}.", app_id=f"faults-{run}",
                             state_dir=str(tmp_path / "state"),
                             clickhouse_dsn="chdb://" + str(tmp_path / "clickhouse"), **keys, **changes)
    stack.ensure_topics(settings.kafka_config(), settings)
    return settings


# -- the worker ------------------------------------------------------------------------


class WorkerLives:
    """One worker, started again after each kill; each life logs to its own file.

    ``joined`` holds the seconds each life took to join its consumer group.
    """

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.joined: list[float] = []

    def start(self, timeout: float = 150.0) -> subprocess.Popen:
        """Spawn a new life and wait until it consumes: its log says "Worker ready"
        (Faust's recovery, once this process has its partitions).

        The group alone cannot tell: after a kill it still lists the dead
        member, and a static member rejoins under the same member id.
        """
        log = self.log_dir / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        started = time.monotonic()
        self.process = worker.spawn(self.settings, log)
        while b"Worker ready" not in log.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.process.returncode} while joining:\n"
                                   + self.tail())
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"worker did not join its group within {timeout:.0f} s:\n" + self.tail())
            time.sleep(0.2)
        self.joined.append(round(time.monotonic() - started, 1))
        return self.process

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60.0) -> None:
        """Send ``sig`` and wait until the process has exited (SIGKILL after ``timeout``)."""
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM; seconds until the process exited (it is killed after ``timeout``)."""
        if not self.alive:
            return 0.0
        started = time.monotonic()
        worker.stop(self.process, timeout)
        return round(time.monotonic() - started, 1)

    def tail(self, chars: int = 3000) -> str:
        """The end of every life's log."""
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-chars:]
                         for p in self.logs if p.exists())


def group_members(settings: Settings) -> int:
    """Members of the worker group (0 while it forms, or if the broker is away)."""
    admin = AdminClient(settings.kafka_config())
    try:
        return len(admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10).members)
    except Exception:
        return 0


def input_lag(settings: Settings) -> int:
    """Input messages the worker group has not committed yet."""
    return worker.lag(settings, topics=INPUTS)


def committed(settings: Settings, name: str) -> int:
    """Messages of topic ``name`` the worker group has committed (sum over partitions)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": settings.app_id, "enable.auto.commit": False})
    try:
        topic = settings.topic(name)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        consumer.close()


# -- the broker ------------------------------------------------------------------------


def bounce_broker(kafka: Settings, sig: int, down: float = 20.0, timeout: float = 120.0) -> dict:
    """Stop the session's local broker with ``sig``, keep it down for ``down``
    seconds from the signal, start it again; seconds it took to exit and to
    come back. ZooKeeper keeps running."""
    local = stack.local_stack(kafka)
    pid = local.status()["pids"]["kafka"]
    if pid is None:
        raise RuntimeError(f"no broker of the local stack runs in {kafka.state_dir}: the bounce needs "
                           "the local stack (KAFKA_BOOTSTRAP_SERVERS unset)")
    signalled = time.monotonic()
    try:
        os.kill(pid, sig)
        while local.status()["pids"]["kafka"] is not None:
            if time.monotonic() - signalled > 60:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        exited = time.monotonic() - signalled
        time.sleep(max(0.0, down - exited))
    finally:
        restarted = time.monotonic()
        local.up(timeout=timeout)
    return {"signal": signal.Signals(sig).name, "exit_s": round(exited, 1),
            "down_s": round(restarted - signalled, 1), "restart_s": round(time.monotonic() - restarted, 1)}


# -- reading back ----------------------------------------------------------------------


def watermark(settings: Settings, name: str) -> int:
    """Messages ever written to topic ``name`` (sum of the partitions' high watermarks)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "faults-watermarks"})
    try:
        topic = settings.topic(name)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def read_topic(settings: Settings, name: str, timeout: float = 60.0) -> list:
    """Every message of topic ``name``, from each partition's start to its current end."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"faults-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    topic = settings.topic(name)
    try:
        ends, starts = {}, []
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high - 1
                starts.append(TopicPartition(topic, p, low))
        messages, deadline = [], time.monotonic() + timeout
        if starts:
            consumer.assign(starts)
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(ends)} not read to their end in {timeout:.0f} s")
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                messages.append(message)
                if message.offset() >= ends.get(message.partition(), float("inf")):
                    del ends[message.partition()]
        return messages
    finally:
        consumer.close()


def _warehouse(dsn: str) -> dict:
    """What ClickHouse holds, with and without ``FINAL`` (the worker must have stopped)."""
    client = connect(dsn)
    try:
        rows = lambda sql: client.query(sql).result_rows  # noqa: E731
        return {
            "predictions": [r[0] for r in rows("SELECT event_id FROM predictions")],
            "predictions_final": [r[0] for r in rows("SELECT event_id FROM predictions FINAL")],
            "decisions": [tuple(r) for r in rows("SELECT event_id, selected, task_id FROM routing_decisions")],
            "decisions_final": [tuple(r) for r in
                                rows("SELECT event_id, selected, task_id FROM routing_decisions FINAL")],
            "tasks": [r[0] for r in rows("SELECT task_id FROM labeling_tasks")],
            "tasks_final": [r[0] for r in rows("SELECT task_id FROM labeling_tasks FINAL")],
            "labels": [tuple(r) for r in rows("SELECT event_id, task_id FROM labels")],
            "labels_final": [tuple(r) for r in rows("SELECT event_id, task_id FROM labels FINAL")],
            "model_versions": rows("SELECT count() FROM model_versions FINAL")[0][0],
            "dead_letters": [tuple(r) for r in rows("SELECT topic, `partition`, `offset` FROM dead_letters")],
            "dead_letters_final": [tuple(r) for r in
                                   rows("SELECT topic, `partition`, `offset` FROM dead_letters FINAL")],
        }
    finally:
        client.close()


def _repeats(values) -> int:
    """How many values are extra copies of another."""
    return len(values) - len(set(values))


def audit(settings: Settings, predictions, others=(), labels=(), poison=()) -> dict:
    """Count, from the topics and ClickHouse, what the invariants are about.

    ``predictions`` and ``others`` (overrides, appeals) are the ids of the input
    events that should have been processed, ``labels`` the event ids of the labels sent, ``poison`` the payloads that
    should be on ``deadletter`` (and nothing else). Every figure named
    ``..._missing``, ``..._repeated``, ``orphan_...`` or ``unexpected_...`` is
    0 when all is well.
    """
    predictions, labels, poison = set(predictions), set(labels), set(poison)
    events = predictions | set(others)
    stored = _warehouse(settings.clickhouse_dsn)
    final = {event: (selected, task) for event, selected, task in stored["decisions_final"]}
    ways = Counter(event for event, _ in {(e, s) for e, s, _ in stored["decisions"]})
    selected = {event: task for event, (chosen, task) in final.items() if chosen}
    sent = [(codec.decode(m.value(), ("LabelingTask",))[1], m.value())
            for m in read_topic(settings, "labeling.tasks")]
    firsts = [(t, raw) for t, raw in sent if t.get("round", 0) == 0]  # later rounds re-issue a task to adjudicate
    on_topic = {t["task_id"]: t["event_id"] for t, _ in firsts}
    copies = len({(t["task_id"], raw) for t, raw in firsts})  # a task sent again as it was: a retried send
    dead = [codec.decode(m.value(), ("DeadLetter",))[1] for m in read_topic(settings, "deadletter")]
    learned = [event for event, _ in stored["labels"]]
    return {
        "events": len(events),
        # every input event: one prediction row (predictions only) and one decision, with and without FINAL
        "prediction_rows": len(stored["predictions"]),
        "prediction_rows_final": len(stored["predictions_final"]),
        "predictions_missing": len(predictions - set(stored["predictions_final"])),
        "predictions_repeated": _repeats(stored["predictions"]),
        "predictions_unexpected": len(set(stored["predictions_final"]) - predictions),
        "decision_rows": len(stored["decisions"]),
        "decision_rows_final": len(stored["decisions_final"]),
        "decisions_missing": len(events - final.keys()),
        "decisions_repeated": _repeats([e for e, _, _ in stored["decisions"]]),
        "decisions_unexpected": len(final.keys() - events),
        "decided_both_ways": sum(n > 1 for n in ways.values()),
        # every selected event: one task id, one task row, one task on the topic
        "selected": len(selected),
        "cap_hour": settings.budget_per_hour,
        "selected_without_task_id": sum(task is None for task in selected.values()),
        "task_rows": len(stored["tasks"]),
        "task_rows_final": len(stored["tasks_final"]),
        "task_rows_missing": len(set(selected.values()) - set(stored["tasks_final"]) - {None}),
        "tasks_on_topic": len(firsts),
        "task_ids_on_topic": len(on_topic),
        "tasks_on_topic_repeated": _repeats([t["task_id"] for t, _ in firsts]),
        "tasks_on_topic_resent_as_they_were": len(firsts) - copies,
        "tasks_on_topic_missing": len(set(selected.values()) - on_topic.keys() - {None}),
        "orphan_tasks": sum(selected.get(event) != task for task, event in on_topic.items()),
        # every label sent: learned once
        "labels_sent": len(labels),
        "label_rows": len(stored["labels"]),
        "label_rows_final": len(stored["labels_final"]),
        "labels_missing": len(labels - set(learned)),
        "labels_repeated": _repeats(learned),
        "labels_unexpected": len(set(learned) - labels),
        "model_versions": stored["model_versions"],
        "model_versions_on_topic": len(read_topic(settings, "models")),
        # deadletter: exactly the poison
        "dead_letters_on_topic": len(dead),
        "dead_letter_rows": len(stored["dead_letters"]),
        "dead_letter_rows_final": len(stored["dead_letters_final"]),
        "poison_missing": len(poison - {d["payload"] for d in dead}),
        "unexpected_dead_letters": sum(d["payload"] not in poison for d in dead),
    }
