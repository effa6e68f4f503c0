"""The producer API for production services.

Emit what the production model predicted, and what users said about it::

    from feedbackloop.producer import Producer

    with Producer(bootstrap_servers="127.0.0.1:9092") as producer:
        producer.prediction("item-42", {"spam": 0.58, "ham": 0.42},
                            features={"links": 3.0}, text="Win a prize now",
                            model_name="spam-filter", model_version="2024-06-01")
        producer.override("item-42", "ham", user_id="u-7")   # the user said: not spam
        producer.appeal("item-43", reason="my post was removed by mistake")

Every event is validated against its schema before it is sent (an invalid
event raises :class:`schemas.codec.DecodeError` naming the problem) and is
written in Avro single-object encoding. Events are keyed and partitioned by
``item_id``, the same way on every input topic, so the prediction, override and
appeal of one item meet in the same worker. With ``batch_size > 1``,
predictions are packed into batch messages, which cuts the per-message cost of
the stream by as much: ``PredictionColumns`` (one array per field, decoded in a
fraction of the time) when the batch's events name the same classes and
features and ``columnar`` is on, ``PredictionBatch`` otherwise.

The Kafka producer is idempotent (``enable.idempotence``): a send the client
retries after a lost acknowledgement is written once, in order, so retries
never duplicate an event on the topic.
"""

from __future__ import annotations

import time
import uuid
import zlib
from typing import Mapping

from confluent_kafka import Producer as KafkaProducer

from feedbackloop.settings import Settings
from schemas import codec


def _partition(item_id: str, partitions: int) -> int:
    # librdkafka's "consistent" partitioner: CRC32 of the key, modulo partitions.
    return zlib.crc32(item_id.encode()) % partitions


def as_columns(events: list[dict]) -> dict | None:
    """A ``PredictionColumns`` record of ``events`` (``Prediction`` records), or None
    when they do not all name the same classes and features.

    >>> e = {"event_id": "e1", "item_id": "i1", "ts": 5, "model_name": "m", "model_version": "1",
    ...      "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4}, "features": {"x": 1.0},
    ...      "text": None, "context": {}}
    >>> cols = as_columns([e, {**e, "event_id": "e2", "probabilities": {"b": 0.9, "a": 0.1}}])
    >>> cols["classes"], cols["probabilities"], cols["text"], cols["context"]
    (['a', 'b'], [0.6, 0.4, 0.1, 0.9], [], [])
    >>> as_columns([e, {**e, "features": {"y": 2.0}}]) is None
    True
    """
    classes, names = list(events[0]["probabilities"]), list(events[0]["features"])
    if any(e["probabilities"].keys() != events[0]["probabilities"].keys()
           or e["features"].keys() != events[0]["features"].keys() for e in events):
        return None
    texts = [e.get("text") for e in events]
    contexts = [e.get("context") or {} for e in events]
    return {"event_id": [e["event_id"] for e in events], "item_id": [e["item_id"] for e in events],
            "ts": [e["ts"] for e in events], "model_name": [e["model_name"] for e in events],
            "model_version": [e["model_version"] for e in events],
            "predicted_label": [e["predicted_label"] for e in events], "classes": classes,
            "probabilities": [e["probabilities"][c] for e in events for c in classes], "feature_names": names,
            "features": [e["features"][n] for e in events for n in names],
            "text": texts if any(t is not None for t in texts) else [],
            "context": contexts if any(contexts) else []}


class Producer:
    """Validate and send predictions, overrides and appeals.

    Parameters
    ----------
    settings
        Connection settings; by default read from the environment.
    bootstrap_servers, topic_prefix
        Shortcuts that override ``settings``.
    batch_size
        Predictions per Kafka message (1: one event per message).
    columnar
        Send a batch as ``PredictionColumns`` when its events share their classes
        and feature names (the default), else as ``PredictionBatch``.
    config
        Extra librdkafka settings (idempotence is on unless they turn it off).
    """

    def __init__(self, settings: Settings | None = None, *, bootstrap_servers: str | None = None,
                 topic_prefix: str | None = None, batch_size: int = 1, columnar: bool = True,
                 config: Mapping | None = None):
        s = settings or Settings.from_env()
        if bootstrap_servers is not None:
            s = s.replace(kafka_bootstrap_servers=bootstrap_servers)
        if topic_prefix is not None:
            s = s.replace(topic_prefix=topic_prefix)
        self.settings = s
        self.batch_size = batch_size
        self.columnar = columnar
        self._kafka = KafkaProducer({**s.kafka_config(), "partitioner": "consistent", "linger.ms": 5,
                                     "compression.type": "lz4", "enable.idempotence": True, **(config or {})})
        self._partitions: dict[str, int] = {}
        self._buffers: dict[int, list[dict]] = {}
        self.sent = 0

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            meta = self._kafka.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {topic!r} does not exist; run `feedbackloop stack up` or create it")
            self._partitions[topic] = len(meta.partitions)
        return self._partitions[topic]

    def _send(self, topic_name: str, schema: str, record: dict, item_id: str) -> None:
        topic = self.settings.topic(topic_name)
        value = codec.encode(schema, record, multi_label=bool(self.settings.multi_label))
        self._kafka.produce(topic, value, key=item_id.encode(),
                            partition=_partition(item_id, self._partition_count(topic)))
        self._kafka.poll(0)
        self.sent += 1

    def prediction(self, item_id: str, probabilities: Mapping[str, float], predicted_label: str | None = None, *,
                   features: Mapping[str, float] | None = None, text: str | None = None,
                   model_name: str = "production", model_version: str = "1",
                   context: Mapping[str, str] | None = None, event_id: str | None = None,
                   ts: int | None = None) -> str:
        """Send one prediction; ``predicted_label`` defaults to the most probable class.
        Returns the event id."""
        probabilities = {str(k): float(v) for k, v in probabilities.items()}
        if predicted_label is None and probabilities:
            predicted_label = max(sorted(probabilities), key=probabilities.__getitem__)
        record = {"event_id": event_id or str(uuid.uuid4()), "item_id": str(item_id),
                  "ts": ts if ts is not None else int(time.time() * 1000),
                  "model_name": model_name, "model_version": str(model_version),
                  "predicted_label": predicted_label or "", "probabilities": probabilities,
                  "features": {str(k): float(v) for k, v in (features or {}).items()},
                  "text": text, "context": dict(context or {})}
        if self.batch_size <= 1:
            self._send("predictions", "Prediction", record, record["item_id"])
            return record["event_id"]
        codec.encode("Prediction", record, multi_label=bool(self.settings.multi_label))  # validates
        topic = self.settings.topic("predictions")
        partition = _partition(record["item_id"], self._partition_count(topic))
        buffer = self._buffers.setdefault(partition, [])
        buffer.append(record)
        if len(buffer) >= self.batch_size:
            self._flush_buffer(partition)
        return record["event_id"]

    def _flush_buffer(self, partition: int) -> None:
        events = self._buffers.pop(partition, [])
        if events:
            topic = self.settings.topic("predictions")
            # each event was validated when it was buffered
            columns = as_columns(events) if self.columnar else None
            value = (codec.encode("PredictionColumns", columns, check=False) if columns is not None else
                     codec.encode("PredictionBatch", {"events": events}, check=False))
            self._kafka.produce(topic, value, key=events[0]["item_id"].encode(), partition=partition)
            self._kafka.poll(0)
            self.sent += len(events)

    def override(self, item_id: str, override_label: str, *, predicted_label: str | None = None,
                 user_id: str | None = None, context: Mapping[str, str] | None = None,
                 event_id: str | None = None, ts: int | None = None) -> str:
        """Send a user's override of the production model's answer. Returns the event id."""
        record = {"event_id": event_id or str(uuid.uuid4()), "item_id": str(item_id),
                  "ts": ts if ts is not None else int(time.time() * 1000), "predicted_label": predicted_label,
                  "override_label": str(override_label), "user_id": user_id, "context": dict(context or {})}
        self._send("overrides", "Override", record, record["item_id"])
        return record["event_id"]

    def appeal(self, item_id: str, *, reason: str | None = None, predicted_label: str | None = None,
               user_id: str | None = None, context: Mapping[str, str] | None = None,
               event_id: str | None = None, ts: int | None = None) -> str:
        """Send a user's appeal against the production model's decision. Returns the event id."""
        record = {"event_id": event_id or str(uuid.uuid4()), "item_id": str(item_id),
                  "ts": ts if ts is not None else int(time.time() * 1000), "predicted_label": predicted_label,
                  "reason": reason, "user_id": user_id, "context": dict(context or {})}
        self._send("appeals", "Appeal", record, record["item_id"])
        return record["event_id"]

    def flush(self, timeout: float = 30.0) -> None:
        """Send any buffered batch and wait until every event is acknowledged."""
        for partition in list(self._buffers):
            self._flush_buffer(partition)
        remaining = self._kafka.flush(timeout)
        if remaining:
            raise RuntimeError(f"{remaining} events were not acknowledged within {timeout} s")

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
