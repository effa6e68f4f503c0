"""Tasks in: ``labeling.tasks`` into the store, ``models`` into a re-ranked queue.

A background thread reads both topics, every partition (one service owns
one queue; there is no consumer group rebalance to wait for after a
restart). Tasks are written to the store in one transaction with the offset
they were read at, and reading resumes after the stored offsets; the group's
offsets on Kafka are committed only after the store's commit (they show the
lag, and are where a new, empty store starts). So a crash at any moment loses
no task, and a task read twice is stored once.

A new version of the shadow model (``Settings.model_name``) on ``models``
re-ranks the queue (see :mod:`consumers.labeling.rerank`). A version that
is not signed by the learner's key, or whose snapshot names what a model may
not (:mod:`streams.learning.snapshot`), is logged as refused and never loaded; the
newest version that passes is used, and without one the queue keeps its order. A message on
``labeling.tasks`` that is not a task goes to ``deadletter`` with the reason.
The same thread sends again any label whose sending was cut short.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, OFFSET_STORED, Consumer, Producer, TopicPartition

from consumers.background import Background
from consumers.labeling import rerank
from consumers.labeling.outbox import DeliveryError, Outbox
from consumers.labeling.store import Store
from feedbackloop import keys
from feedbackloop.settings import Settings
from schemas import codec
from streams import model_feed

log = logging.getLogger("feedbackloop.labeling")


class Feed(Background):
    """Keeps the store fed from Kafka until :meth:`stop`."""

    name = "labeling-feed"

    def __init__(self, settings: Settings, store: Store, outbox: Outbox | None = None, retry_every: float = 5.0):
        super().__init__()
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.retry_every = retry_every
        self.tasks_topic = settings.topic("labeling.tasks")
        self.models_topic = settings.topic("models")
        self.key = keys.verify_key(settings)  # no key, no service: MissingKey says how to set it

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        s = self.settings
        conf = {**s.kafka_config(), "group.id": f"{s.app_id}-labeling-service", "enable.auto.commit": False,
                "auto.offset.reset": "earliest"}
        tasks, models = Consumer(conf), Consumer(conf)
        self._dead = Producer(s.kafka_config())
        tasks_assigned = models_assigned = False
        last_retry = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if not tasks_assigned:
                        tasks_assigned = self._assign(tasks, self.tasks_topic, OFFSET_STORED)
                    if not models_assigned:
                        models_assigned = self._assign(models, self.models_topic, OFFSET_BEGINNING)
                    if not (tasks_assigned and models_assigned):
                        self._stop.wait(1.0)
                    if tasks_assigned:
                        self._take_tasks(tasks, tasks.consume(500, timeout=0.5))
                    if models_assigned:
                        self._take_models(models.consume(100, timeout=0))
                    if self.outbox is not None and time.monotonic() - last_retry > self.retry_every:
                        last_retry = time.monotonic()
                        sent = self.outbox.retry()
                        if sent:
                            log.info("sent %d label(s) left unsent", sent)
                except DeliveryError as exc:
                    log.warning("labels still unsent: %s", exc)
                except Exception:  # keep serving; the store is consistent after any failed transaction
                    log.exception("labeling feed failed; trying again")
                    self._stop.wait(1.0)
        finally:
            tasks.close()
            models.close()
            self._dead.flush(5)
            del self._dead

    def _assign(self, consumer: Consumer, topic: str, otherwise: int) -> bool:
        """Read every partition of ``topic`` from the offset after the stored one
        (``otherwise`` where none is stored); False while the topic does not exist."""
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        stored = self.store.offsets()
        consumer.assign([TopicPartition(topic, p, stored[(topic, p)] + 1 if (topic, p) in stored else otherwise)
                         for p in meta.partitions])
        return True

    def _take_tasks(self, consumer: Consumer, messages: list) -> None:
        batch, offsets = [], {}
        for m in messages:
            if m.error():
                log.warning("reading %s: %s", self.tasks_topic, m.error())
                continue
            offsets[(m.topic(), m.partition())] = m.offset()
            try:
                batch.append(codec.decode(m.value(), ("LabelingTask",))[1])
            except codec.DecodeError as exc:
                self._dead_letter(m, exc)
        if offsets:
            added = self.store.add_tasks(batch, offsets)
            if added:
                log.info("queued %d task(s)", added)
            consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()],
                            asynchronous=True)

    def _dead_letter(self, m, exc: codec.DecodeError) -> None:
        log.warning("dead letter %s/%s/%s: %s", m.topic(), m.partition(), m.offset(), exc.reason)
        record = {"event_id": str(uuid.uuid4()), "ts": int(time.time() * 1000), "topic": m.topic(),
                  "partition": m.partition(), "offset": m.offset(), "key": m.key(), "payload": m.value() or b"",
                  "reason": exc.reason, "error": exc.error}
        self._dead.produce(self.settings.topic("deadletter"), codec.encode("DeadLetter", record))
        self._dead.poll(0)

    def _take_models(self, messages: list) -> None:
        """Re-rank the queue by the newest verified version among ``messages``
        newer than the one it is ranked by (:func:`streams.model_feed.newest`)."""
        offsets = {(m.topic(), m.partition()): m.offset() for m in messages if not m.error()}
        if not offsets:
            return
        found = model_feed.newest(model_feed.decoded(messages), self.settings.model_name, self.key,
                                  above=self.store.model_version())
        if found is None:
            self.store.add_tasks([], offsets)
            return
        _, model = found
        started = time.monotonic()
        new = rerank.priorities(self.store.rankable(), model)
        self.store.rerank(new, model.version, offsets)
        log.info("re-ranked %d task(s) by %s version %d in %.2f s", len(new), model.name, model.version,
                 time.monotonic() - started)
