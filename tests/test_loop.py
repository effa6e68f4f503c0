"""The whole loop against a real broker and the real ClickHouse engine.

A worker runs as a child process, configured only through the environment.
Predictions go in (Avro, Avro batches and plain JSON, written by the producer
API and by a bare Kafka client), a malformed message sits among them, tasks
come out and are decoded with nothing but the published ``.avsc`` files,
labels go back, model versions go up, and ClickHouse holds exact counts, also
after a batch is delivered twice.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Consumer, Producer as KafkaProducer

from dashboards.sink import optimize
from feedbackloop import stack, worker
from dashboards.connection import connect
from feedbackloop.producer import Producer
from schemas import codec

pytestmark = pytest.mark.kafka

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
CLASSES = ["a", "b", "c"]


def truth(i: int) -> str:
    return CLASSES[i % 3]


def features(i: int) -> dict[str, float]:
    # linearly separable by class, so a learned model gets better
    return {"x": float(i % 3) + 0.01 * (i % 7), "y": float((i * 7) % 5)}


def probabilities(i: int) -> dict[str, float]:
    # a weak production model: unsure about a third of the items
    if i % 3 == 0:
        return {"a": 0.4, "b": 0.35, "c": 0.25}
    top = truth(i)
    return {c: (0.8 if c == top else 0.1) for c in CLASSES}


def read_all(settings, topic: str, expect: int, timeout: float = 60.0) -> list:
    """Messages of ``topic`` from the start, once at least ``expect`` arrived."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic(topic)])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(500, timeout=0.5) if not m.error())
            if len(messages) >= expect:
                messages.extend(m for m in consumer.consume(500, timeout=1.0) if not m.error())
                return messages
    finally:
        consumer.close()
    raise AssertionError(f"only {len(messages)} of {expect} messages on {topic} after {timeout} s")


def decode_with_avsc(data: bytes, avsc: str) -> dict:
    """Decode single-object encoding using only the published schema file."""
    named = {}
    for dependency in ("prediction.avsc", "candidate.avsc"):
        fastavro.parse_schema(json.loads((SCHEMA_DIR / dependency).read_text()), named_schemas=named)
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / avsc).read_text()), named_schemas=named)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == bytes.fromhex(
        fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)


@pytest.fixture
def loop(kafka, tmp_path):
    """Settings with fresh topics and ClickHouse, and a running worker."""
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}loop-{run}.", app_id=f"loop-{run}",
                             clickhouse_dsn="chdb://" + str(tmp_path / "clickhouse"), budget_fraction=0.3,
                             control_fraction=0.2, publish_every=5, min_control=2, model_kind="knn")
    stack.ensure_topics(settings.kafka_config(), settings)
    process = worker.spawn(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(settings, process)
        yield settings, process
    finally:
        worker.stop(process)
        print((tmp_path / "worker.log").read_text()[-3000:])


def test_predictions_in_tasks_out_labels_in_model_up(loop):
    settings, process = loop
    n_avro, n_json = 240, 60
    garbage = b"\x00\xffthis is not an event"

    with Producer(settings, batch_size=40) as producer:
        for i in range(n_avro // 2):
            producer.prediction(f"item-{i}", probabilities(i), features=features(i), event_id=f"p-{i}",
                                model_name="prod", model_version="7")
    with Producer(settings) as producer:
        for i in range(n_avro // 2, n_avro):
            producer.prediction(f"item-{i}", probabilities(i), features=features(i), event_id=f"p-{i}",
                                model_name="prod", model_version="7")
        producer.override("item-1", "b", predicted_label="b", user_id="u1", event_id="o-1")
        producer.appeal("item-2", reason="wrong", event_id="a-2")

    raw = KafkaProducer(settings.kafka_config())
    topic = settings.topic("predictions")
    for i in range(n_avro, n_avro + n_json):
        event = {"event_id": f"p-{i}", "item_id": f"item-{i}", "ts": int(time.time() * 1000),
                 "model_name": "prod", "model_version": "7", "predicted_label": max(probabilities(i), key=probabilities(i).get),
                 "probabilities": probabilities(i), "features": features(i)}
        raw.produce(topic, json.dumps(event).encode(), key=event["item_id"].encode())
        if i == n_avro + 10:
            raw.produce(topic, garbage, key=b"bad")
    raw.flush(10)

    n_events = n_avro + n_json + 2
    assert worker.wait_drained(settings, process, timeout=90)
    task_messages = read_all(settings, "labeling.tasks", expect=10)
    tasks = [decode_with_avsc(m.value(), "labeling_task.avsc") for m in task_messages]
    assert {"override", "appeal"} <= {r for t in tasks for r in t["reasons"]}
    assert all(t["reasons"] and 0 < t["selection_probability"] <= 1 for t in tasks)
    assert all(set(t["label_set"]) == set(CLASSES) for t in tasks)

    labels = KafkaProducer(settings.kafka_config())
    for t in tasks:
        i = int(t["item_id"].split("-")[1])
        label = {"event_id": f"l-{t['task_id']}", "task_id": t["task_id"], "item_id": t["item_id"],
                 "label": truth(i), "annotator_id": "tester", "ts": int(time.time() * 1000), "duration_ms": 1200}
        labels.produce(settings.topic("labels"), codec.encode("Label", label), key=t["task_id"].encode())
    labels.flush(10)
    assert worker.wait_drained(settings, process, timeout=60)

    versions = [codec.decode(m.value(), ("ModelVersion",))[1] for m in read_all(settings, "models", expect=2)]
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert versions[-1]["labels_seen"] > versions[0]["labels_seen"]

    dead = [codec.decode(m.value(), ("DeadLetter",))[1] for m in read_all(settings, "deadletter", expect=1)]
    assert [d["payload"] for d in dead] == [garbage]
    assert dead[0]["error"] == "undecodable" and dead[0]["reason"]

    # the same batch delivered again (a producer retry) is not counted twice
    with Producer(settings, batch_size=40) as producer:
        for i in range(40):
            producer.prediction(f"item-{i}", probabilities(i), features=features(i), event_id=f"p-{i}",
                                model_name="prod", model_version="7")
    labels.produce(settings.topic("labels"), codec.encode("Label", {
        "event_id": f"l-{tasks[0]['task_id']}", "task_id": tasks[0]["task_id"], "item_id": tasks[0]["item_id"],
        "label": "a", "annotator_id": "tester", "ts": 0, "duration_ms": 1}))
    labels.flush(10)
    assert worker.wait_drained(settings, process, timeout=60)
    worker.stop(process)

    client = connect(settings.clickhouse_dsn)
    try:
        optimize(client)
        count = lambda table: client.query(f"SELECT count() FROM {table}").result_rows[0][0]
        assert count("predictions") == n_avro + n_json
        assert count("routing_decisions") == n_events
        assert count("labeling_tasks") == len({t["task_id"] for t in tasks}) == len(tasks)
        assert count("labels") == len(tasks)
        assert count("model_versions") == len(versions)
        assert count("dead_letters") == 1
        # every version is measured: its lift over the control slice, and whether labels still pay
        assert count("policy_lift") == len(versions)
        stopping = client.query("SELECT metric, groupArray(version), groupUniqArray(recommendation) "
                                "FROM stopping_signals GROUP BY metric ORDER BY metric").result_rows
        assert [m for m, _, _ in stopping] == ["control_accuracy_gain", "kappa_average"]
        assert all(sorted(v) == [r["version"] for r in versions] and set(rec) <= {"stop", "continue"}
                   for _, v, rec in stopping)
        selected = client.query(
            "SELECT count(), countIf(length(reasons) > 0 AND selection_probability > 0) "
            "FROM routing_decisions WHERE selected").result_rows[0]
        assert selected[0] == len(tasks) and selected[1] == selected[0]
    finally:
        client.close()


def test_worker_resumes_its_model_after_restart(loop, tmp_path):
    settings, process = loop
    producer = KafkaProducer(settings.kafka_config())
    task_ids = []
    for i in range(30):
        task = {"task_id": f"t-{i}", "event_id": f"e-{i}", "item_id": f"item-{i}", "created_ts": 0, "source_ts": 0,
                "kind": "prediction", "reasons": ["control" if i < 4 else "uncertain"], "signals": {},
                "selection_probability": 0.5, "priority": 0.5, "suggested_label": None, "confidence": 0.5,
                "label_set": CLASSES, "features": features(i), "model_name": "prod", "model_version": "7",
                "shadow_version": 0, "policy_version": "p"}
        producer.produce(settings.topic("labeling.tasks"), codec.encode("LabelingTask", task))
        producer.produce(settings.topic("labels"), codec.encode("Label", {
            "event_id": f"l-{i}", "task_id": f"t-{i}", "item_id": f"item-{i}", "label": truth(i),
            "annotator_id": "tester", "ts": 0}))
        task_ids.append(task["task_id"])
    producer.flush(10)
    assert worker.wait_drained(settings, process, timeout=60)
    before = [codec.decode(m.value(), ("ModelVersion",))[1]["version"] for m in read_all(settings, "models", 1)]
    worker.stop(process)

    again = worker.spawn(settings, tmp_path / "worker-again.log")
    try:
        worker.wait_ready(settings, again)
        for i in range(30, 40):
            producer.produce(settings.topic("labeling.tasks"), codec.encode("LabelingTask", {
                "task_id": f"t-{i}", "event_id": f"e-{i}", "item_id": f"item-{i}", "created_ts": 0, "source_ts": 0,
                "kind": "prediction", "reasons": ["uncertain"], "signals": {}, "selection_probability": 0.5,
                "priority": 0.5, "confidence": 0.5, "label_set": CLASSES, "features": features(i),
                "model_name": "prod", "model_version": "7", "shadow_version": 0, "policy_version": "p"}))
            producer.produce(settings.topic("labels"), codec.encode("Label", {
                "event_id": f"l-{i}", "task_id": f"t-{i}", "item_id": f"item-{i}", "label": truth(i),
                "annotator_id": "tester", "ts": 0}))
        producer.flush(10)
        assert worker.wait_drained(settings, again, timeout=60)
        after = [codec.decode(m.value(), ("ModelVersion",))[1] for m in
                 read_all(settings, "models", len(before) + 1)]
    finally:
        worker.stop(again)
    assert [v["version"] for v in after] == list(range(1, len(after) + 1)), "versions continue, none repeated"
    assert after[-1]["labels_seen"] == 40
    # the learner was rebuilt when its partitions were assigned, before the worker said it was ready
    log = (tmp_path / "worker-again.log").read_text()
    assert -1 < log.find("trainer rebuilt") < log.find("state ready for")
