"""Fault injection for suspect labels: the worker SIGKILLed while reviews of suspect labels are out.

A real worker on the real local broker and the embedded ClickHouse buys labels from a careless
annotator (one label in four wrong), finds suspects after its versions and sends them back for
review; the test answers each review as a second annotator, with the truth (and a task asked again, the review disagreeing
with the label, as a third). The worker is killed
with SIGKILL as soon as a version sends new reviews (the moment their ``found`` rows may not be
written yet), started again, and the reviews go on until none is left. Then the invariants of
suspect labels are audited from the topics and ClickHouse (:func:`broken`): no label is sent for
review twice, every review task has exactly one ``found`` row and every answered review exactly one
``confirmed`` or ``cleared`` row (with and without ``FINAL``), a correction only follows a confirmed
review, and every label sent is learned once (:func:`tests.faults.audit`). Counts go to the log
as one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections import Counter

import pytest
from confluent_kafka import Producer as KafkaProducer

from dashboards.connection import connect
from feedbackloop import worker
from feedbackloop.producer import Producer
from schemas import codec
from tests.faults import WorkerLives, audit, read_topic, scenario, watermark
from tests.test_faults import broken as loop_broken
from tests.test_faults import predict

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

TASKS = 300


def truth(task: dict) -> str:
    """The right answer: the item's ``x`` feature below 5 is ``a`` (see :func:`tests.test_faults.predict`)."""
    return "a" if task["features"]["x"] < 5 else "b"


def careless(task: dict) -> str:
    """The first annotator's answer: wrong on one task in four (fixed by the task id)."""
    wrong = hashlib.blake2b(task["task_id"].encode(), digest_size=2).digest()[0] % 4 == 0
    return ("b" if truth(task) == "a" else "a") if wrong else truth(task)


class Labeler:
    """Sends labels as the labeling service would, and remembers them."""

    def __init__(self, settings):
        self.settings, self.producer, self.sent = settings, KafkaProducer(settings.kafka_config()), []

    def send(self, task: dict, annotator: str, label: str) -> None:
        event_id = f"label-{annotator}-{task['task_id']}"
        self.producer.produce(self.settings.topic("labels"), codec.encode("Label", {
            "event_id": event_id, "task_id": task["task_id"], "item_id": task["item_id"], "label": label,
            "annotator_id": annotator, "ts": int(time.time() * 1000), "duration_ms": 900}),
            key=task["task_id"].encode())
        self.sent.append(event_id)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def review_tasks(settings) -> list[dict]:
    tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read_topic(settings, "labeling.tasks")]
    return [t for t in tasks if t["reasons"] == ["suspect_label"]]


def suspect_rows(dsn: str) -> dict:
    """``suspect_labels`` as ``(task_id, status)`` pairs, with and without ``FINAL`` (the worker must have stopped)."""
    client = connect(dsn)
    try:
        q = lambda sql: [tuple(r) for r in client.query(sql).result_rows]  # noqa: E731
        return {"rows": q("SELECT task_id, status FROM suspect_labels"),
                "final": q("SELECT task_id, status FROM suspect_labels FINAL")}
    finally:
        client.close()


def broken(reviews: list[dict], answered: set[str], stored: dict) -> list[str]:
    """The invariants of suspect labels that the topics and ClickHouse break."""
    found, rows = [], stored["rows"]
    per_task = Counter(t["task_id"] for t in reviews)
    by_status = {s: sorted(t for t, status in rows if status == s) for s in ("found", "confirmed", "cleared",
                                                                             "corrected")}
    reviewed = by_status["confirmed"] + by_status["cleared"]
    if max(per_task.values(), default=0) > 1:
        found.append(f"labels sent for review twice: {[t for t, n in per_task.items() if n > 1]}")
    if len(rows) != len(stored["final"]) or len(set(rows)) != len(rows):
        found.append(f"repeated suspect_labels rows: {len(rows)} rows, {len(set(rows))} distinct, "
                     f"{len(stored['final'])} with FINAL")
    if by_status["found"] != sorted(per_task):
        found.append(f"found rows {len(by_status['found'])} != review tasks {len(per_task)}: missing "
                     f"{sorted(set(per_task) - set(by_status['found']))}, extra "
                     f"{sorted(set(by_status['found']) - set(per_task))}")
    if sorted(reviewed) != sorted(answered):
        found.append(f"confirmed or cleared rows {len(reviewed)} != reviews answered {len(answered)}: missing "
                     f"{sorted(answered - set(reviewed))}, extra {sorted(set(reviewed) - answered)}")
    if not set(by_status["corrected"]) <= set(by_status["confirmed"]):
        found.append(f"corrected without a confirmed review: {sorted(set(by_status['corrected']) - set(by_status['confirmed']))}")
    return found


def test_worker_sigkilled_while_reviews_are_out_reviews_each_label_once_and_counts_exactly(kafka, tmp_path):
    ts = int(time.time() * 1000)
    settings = scenario(kafka, tmp_path, "suspects", budget_fraction=1.0, budget_per_hour=TASKS, min_control=5,
                        publish_every=25, suspect_share=0.3, retrain_every_labels=50)
    lives, labeler, answered, adjudicated = WorkerLives(settings, tmp_path), Labeler(settings), set(), set()

    def answer_reviews() -> int:
        """Answer every review not answered yet, as a second annotator who gives the truth; and
        every task asked again because the review disagreed with the label, as a third."""
        tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read_topic(settings, "labeling.tasks")]
        todo = [t for t in tasks if t["reasons"] == ["suspect_label"] and t["task_id"] not in answered]
        for t in todo:
            labeler.send(t, "annotator-2", truth(t))
            answered.add(t["task_id"])
        again = [t for t in tasks if t.get("round") and t["reasons"] != ["suspect_label"]
                 and (t["task_id"], t["round"]) not in adjudicated]
        for t in again:
            who = next(f"annotator-{k}" for k in range(3, 10) if f"annotator-{k}" not in t["exclude_annotators"])
            labeler.send(t, who, truth(t))
            adjudicated.add((t["task_id"], t["round"]))
        labeler.flush()
        return len(todo) + len(again)

    try:
        lives.start()
        with Producer(settings) as producer:
            predictions = [predict(producer, i, ts) for i in range(3 * TASKS)]
        assert worker.wait_drained(settings, lives.process, timeout=180), "the predictions were not drained"
        tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read_topic(settings, "labeling.tasks")]
        assert len(tasks) == TASKS, f"the router created {len(tasks)} tasks, not {TASKS}"
        half = TASKS // 2
        for t in tasks[:half]:
            labeler.send(t, "annotator-1", careless(t))
        labeler.flush()
        assert worker.wait_drained(settings, lives.process, timeout=180), "the first labels were not drained"
        before = answer_reviews()
        assert before, "no label was sent for review before the kill: nothing was tested"
        assert worker.wait_drained(settings, lives.process, timeout=180)
        # the rest of the labels; killed as soon as a version sends new reviews
        out, deadline = watermark(settings, "labeling.tasks"), time.monotonic() + 180
        for t in tasks[half:]:
            labeler.send(t, "annotator-1", careless(t))
        labeler.flush()
        while watermark(settings, "labeling.tasks") == out:
            assert lives.alive and time.monotonic() < deadline, "no new review within 180 s of the labels"
            time.sleep(0.05)
        lives.kill(signal.SIGKILL)
        at_kill = {"lag": worker.lag(settings), "reviews": len(review_tasks(settings)),
                   "found_rows": sum(s == "found" for _, s in suspect_rows(settings.clickhouse_dsn)["final"])}
        lives.start()
        rounds = 0
        while rounds < 20:  # answered reviews are labels too: later versions may find more suspects
            assert worker.wait_drained(settings, lives.process, timeout=180), "not drained after the restart"
            time.sleep(3)  # a version published on the last labels sends its reviews
            if not answer_reviews() and worker.lag(settings) == 0:
                break
            rounds += 1
        stop_s = lives.stop()
    finally:
        lives.stop()
        print(lives.tail(1500))
    reviews = review_tasks(settings)
    stored = suspect_rows(settings.clickhouse_dsn)
    loop_counts = audit(settings, predictions, labels=labeler.sent)
    statuses = Counter(s for _, s in stored["final"])
    print(json.dumps({"at_kill": at_kill, "reviews": len(reviews), "answered": len(answered),
                      "adjudicated": len(adjudicated),
                      "answered_before_kill": before, "suspect_rows": dict(statuses), "rounds": rounds,
                      "join_s": lives.joined, "stop_s": stop_s, "labels_sent": len(labeler.sent)}, sort_keys=True))
    assert at_kill["lag"] > 0 or at_kill["found_rows"] < at_kill["reviews"], (
        "the kill came after everything was done and written: nothing was tested")
    assert not broken(reviews, answered, stored)
    assert statuses["corrected"] > 0, "no review corrected a label: the corrections were not tested"
    assert not loop_broken(loop_counts)
