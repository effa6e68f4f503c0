"""Labels out: from the store to the ``labels`` topic, confirmed before anyone is told.

A label is stored first (unsent), then sent, then marked sent. If the service
dies in between, the label is still in the store and :meth:`Outbox.retry`
sends it again at the next start; it carries the same event id, so the
learner and the ClickHouse sink count it once.

>>> from consumers.labeling.store import Store
>>> store, sent = Store(":memory:"), []
>>> _ = store.add_tasks([{"task_id": "t1", "item_id": "i1", "priority": 1.0, "label_set": ["a", "b"]}], {})
>>> _ = store.lease("ann")
>>> record, _ = store.label("t1", "ann", "a", note="clear case")
>>> outbox = Outbox(store, sent.extend)
>>> outbox.retry(), [l["label"] for l in sent], store.unsent()
(1, ['a'], [])
"""

from __future__ import annotations

import threading
from typing import Callable

from confluent_kafka import KafkaException, Producer

from feedbackloop.settings import Settings
from schemas import codec


class DeliveryError(Exception):
    """Kafka did not confirm a label in time (it stays in the store, unsent)."""


class Outbox:
    """Sends stored labels with ``send(records)`` (which raises :class:`DeliveryError`
    unless every record is on Kafka) and marks them sent.

    One delivery at a time, and each skips the labels already marked sent: ten
    identical submits racing each other, or a submit racing :meth:`retry`, put
    a label on Kafka once.
    """

    def __init__(self, store, send: Callable[[list[dict]], None]):
        self.store = store
        self.send = send
        self._lock = threading.Lock()

    def deliver(self, records: list[dict]) -> int:
        """Send those of ``records`` not yet sent; returns how many went."""
        with self._lock:
            records = [r for r in records if not self.store.is_sent(r["event_id"])]
            if records:
                self.send(records)
                self.store.mark_sent([r["event_id"] for r in records])
            return len(records)

    def retry(self) -> int:
        """Send every label still unsent; returns how many went."""
        return self.deliver(self.store.unsent())


class KafkaLabels:
    """``send`` for the ``labels`` topic: produce, then wait for the broker's acknowledgement.

    The producer is idempotent and waits for all in-sync replicas. Calls are
    serialised, so each one waits for its own records only.
    """

    def __init__(self, settings: Settings, timeout: float = 10.0):
        self.topic = settings.topic("labels")
        self.timeout = timeout
        self.producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 0, "socket.nagle.disable": True,
                                  "message.timeout.ms": int(timeout * 1000)})
        self._lock = threading.Lock()

    def __call__(self, records: list[dict]) -> None:
        errors: list[str] = []

        def delivered(err, _message):
            if err is not None:
                errors.append(str(err))

        with self._lock:
            if self.producer is None:
                raise DeliveryError("the service is stopping")
            try:
                for r in records:
                    self.producer.produce(self.topic, codec.encode("Label", r), key=r["task_id"].encode(),
                                          on_delivery=delivered)
                    self.producer.poll(0)
            except (KafkaException, BufferError) as exc:
                raise DeliveryError(f"Kafka refused the label: {exc}") from None
            left = self.producer.flush(self.timeout)
        if left or errors:
            raise DeliveryError(f"Kafka did not confirm {left + len(errors)} label(s): "
                                f"{errors[0] if errors else 'timed out'}")

    def close(self) -> None:
        """Wait for what is in flight, then let the producer go (no more sending)."""
        if self.producer is not None:
            self.producer.flush(self.timeout)
            self.producer = None
