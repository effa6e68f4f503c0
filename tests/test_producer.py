"""The producer API against a real broker: idempotent, keyed, validated, batched."""

from __future__ import annotations

import json
import time
import uuid
import zlib

import pytest
from confluent_kafka import Consumer, TopicPartition

from feedbackloop import stack
from feedbackloop.producer import Producer
from schemas import codec

pytestmark = pytest.mark.kafka


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


def test_batches_carry_every_prediction_once(settings):
    with Producer(settings, batch_size=16) as producer:
        for i in range(50):
            producer.prediction(f"item-{i}", {"a": 0.9, "b": 0.1}, event_id=f"b-{i}")
    messages = read(settings, "predictions", 4)  # 50 events over 4 partitions, batches of at most 16
    events = [e for m in messages for e in codec.decode(m.value(), ("PredictionBatch",))[1]["events"]]
    assert sorted(e["event_id"] for e in events) == sorted(f"b-{i}" for i in range(50))
    assert all(len(codec.decode(m.value(), ("PredictionBatch",))[1]["events"]) <= 16 for m in messages)


def test_an_unstorable_event_is_refused_before_it_is_sent(settings):
    with Producer(settings) as producer:
        with pytest.raises(codec.InvalidEvent) as info:
            producer.prediction("item-\ud800", {"a": 1.0})
        assert info.value.error == "unencodable" and "field 'item_id'" in info.value.reason
        assert producer.sent == 0
