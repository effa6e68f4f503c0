"""The producer API against a real broker: idempotent, keyed, validated, batched (by rows or in columns)."""

from __future__ import annotations

import json
import time
import uuid
import zlib

import pytest
from confluent_kafka import Consumer, TopicPartition

from feedbackloop import stack
from feedbackloop.producer import Producer, as_columns
from schemas import codec
from streams.loop import Loop


@pytest.fixture
def settings(kafka):
    """The session's broker, with topics of this test's own."""
    fresh = kafka.replace(topic_prefix=f"{kafka.topic_prefix}producer-{uuid.uuid4().hex[:8]}.")
    stack.ensure_topics(fresh.kafka_config(), fresh)
    return fresh


def read(settings, name: str, expect: int, timeout: float = 30.0) -> list:
    """Every message of topic ``name``, once ``expect`` of them are there."""
    topic = settings.topic(name)
    consumer = Consumer({**settings.kafka_config(), "group.id": f"producer-test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages, deadline = [], time.monotonic() + timeout
        while len(messages) < expect and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(500, timeout=0.5) if not m.error())
        messages.extend(m for m in consumer.consume(500, timeout=0.5) if not m.error())  # nothing more
        return messages
    finally:
        consumer.close()


@pytest.mark.kafka
def test_the_producer_is_idempotent_and_each_event_lands_once(settings):
    stats = []
    producer = Producer(settings, config={"statistics.interval.ms": 100, "stats_cb": stats.append})
    ids = [producer.prediction(f"item-{i}", {"spam": 0.3, "ham": 0.7}, event_id=f"p-{i}") for i in range(40)]
    ids.append(producer.override("item-3", "spam", event_id="o-3"))
    eos = lambda: json.loads(stats[-1]).get("eos", {}) if stats else {}  # librdkafka's idempotence state
    deadline = time.monotonic() + 10
    while eos().get("idemp_state") != "Assigned" and time.monotonic() < deadline:
        producer.flush()
        time.sleep(0.1)
    producer.close()
    assert eos().get("idemp_state") == "Assigned" and eos()["producer_id"] >= 0  # the broker gave it a producer id

    messages = read(settings, "predictions", 40)
    decoded = [codec.decode(m.value(), ("Prediction",))[1] for m in messages]
    assert sorted(e["event_id"] for e in decoded) == sorted(ids[:40])
    for m, event in zip(messages, decoded):  # keyed and partitioned by item, as on every input topic
        assert m.key() == event["item_id"].encode() and m.partition() == zlib.crc32(m.key()) % 4
    assert [codec.decode(m.value(), ("Override",))[1]["event_id"] for m in read(settings, "overrides", 1)] == ["o-3"]


@pytest.mark.kafka
@pytest.mark.parametrize("columnar, schema", [(True, "PredictionColumns"), (False, "PredictionBatch")])
def test_batches_carry_every_prediction_once(settings, columnar, schema):
    with Producer(settings, batch_size=16, columnar=columnar) as producer:
        for i in range(50):
            producer.prediction(f"item-{i}", {"a": 0.9, "b": 0.1}, event_id=f"b-{i}")
    messages = read(settings, "predictions", 4)  # 50 events over 4 partitions, batches of at most 16
    decoded = [codec.decode(m.value(), ("PredictionBatch", "PredictionColumns")) for m in messages]
    assert {name for name, _ in decoded} == {schema}
    ids = [[e["event_id"] for e in r["events"]] if columnar is False else r["event_id"] for _, r in decoded]
    assert sorted(e for batch in ids for e in batch) == sorted(f"b-{i}" for i in range(50))
    assert all(len(batch) <= 16 for batch in ids)


def events(n: int, text: bool = False) -> list[dict]:
    return [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": int(time.time() * 1000), "model_name": "prod",
             "model_version": "1", "predicted_label": "a" if i % 3 else "b",
             "probabilities": {"a": 0.9, "b": 0.1} if i % 3 else {"a": 0.3, "b": 0.7},
             "features": {"x": float(i), "y": i / 7}, "text": f"word {i}" if text and i % 2 else None,
             "context": {"tenant": "t"} if i % 4 == 0 else {}} for i in range(n)]


@pytest.mark.parametrize("text", [False, True])
def test_columns_score_exactly_as_the_same_events_batched_by_rows(text):
    """The columnar form is a faster encoding of the very same events: same candidates, rows and decisions."""
    batch = events(60, text)
    by_rows = codec.decode(codec.encode("PredictionBatch", {"events": batch}), ("PredictionBatch",))
    by_columns = codec.decode(codec.encode("PredictionColumns", as_columns(batch)), ("PredictionColumns",))
    loops = [Loop.build(budget_fraction=0.3, model_kind="linear", min_control=2, seed=4) for _ in range(2)]
    outs = [loop.score(name, record, now_ms=9) for loop, (name, record) in zip(loops, (by_rows, by_columns))]
    assert outs[0].candidates == outs[1].candidates and outs[0].rows == outs[1].rows
    assert [loops[0].route(c, 10).rows for c in outs[0].candidates] == \
        [loops[1].route(c, 10).rows for c in outs[1].candidates]


def test_events_with_other_classes_or_features_stay_rows():
    batch = events(3)
    batch[1]["features"] = {"x": 1.0}
    assert as_columns(batch) is None and as_columns(events(3)) is not None


@pytest.mark.kafka
def test_an_unstorable_event_is_refused_before_it_is_sent(settings):
    with Producer(settings) as producer:
        with pytest.raises(codec.InvalidEvent) as info:
            producer.prediction("item-\ud800", {"a": 1.0})
        assert info.value.error == "unencodable" and "field 'item_id'" in info.value.reason
        assert producer.sent == 0
