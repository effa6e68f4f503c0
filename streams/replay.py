"""Rebuilding the owners' state from the topics after a restart.

A worker can be killed at any moment. Its consumer group resumes after the
committed offsets, so everything the router and the learner held in memory
must come back from what Kafka keeps:

* the **router** re-reads the tasks it sent (``labeling.tasks``, a look-back
  covering the longest cap window): the caps count them again, and a
  re-delivered candidate gets the decision its task recorded
  (:meth:`streams.selection.router.Router.restore`);
* a **scorer** re-reads the candidates it preselected within
  :data:`PRESELECTED_LOOKBACK_MS` (``labeling.candidates``): a re-delivered
  event whose candidate is already on its way to the owner is not decided
  again (:func:`rebuild_preselection`), so no event is decided both ways;
* the **learner** resumes from the newest signed model version, which records
  the offset of the last label it reflects; the trainer re-reads the tasks (so
  a label for a task created before the restart still finds it) and the
  labels: those the model reflects settle consensus and agreement without
  being learned again, those after it are learned.

Candidates already decided and recorded in ClickHouse are recognised by the
sink, which remembers the keys it wrote last (``ClickHouseSink.remember_recent``).
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from schemas import codec
from schemas.candidate_columns import candidates_of
from streams.selection.budget import DAY_MS, WEEK_MS

log = logging.getLogger("feedbackloop")

#: How far back the router looks for tasks it sent: the weekly cap's window, and a day more.
LOOKBACK_MS = WEEK_MS + DAY_MS
#: How far back a scorer looks for the candidates it preselected: far more than a commit
#: interval, the time between a candidate sent and the offsets of its event committed.
PRESELECTED_LOOKBACK_MS = 10 * 60_000


class Reader:
    """Reads partition 0 of the loop's topics back, with one consumer.

    The consumer carries the worker group's id only to read its committed
    offsets: it is assigned partitions, never subscribes (so it never joins the
    group) and never commits. Use it as a context manager.
    """

    def __init__(self, settings):
        from confluent_kafka import Consumer

        self.settings = settings
        self.consumer = Consumer({**settings.kafka_config(), "group.id": settings.app_id,
                                  "enable.auto.commit": False, "enable.partition.eof": False})

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.consumer.close()

    def _partition(self, topic: str, offset: int = -1001):
        from confluent_kafka import TopicPartition

        return TopicPartition(self.settings.topic(topic), 0, offset)

    def watermarks(self, topic: str) -> tuple[int, int]:
        """The low and high offsets of ``topic``."""
        return self.consumer.get_watermark_offsets(self._partition(topic), timeout=30)

    def committed(self, topic: str) -> int | None:
        """The worker group's committed offset on ``topic`` (None: nothing committed)."""
        [tp] = self.consumer.committed([self._partition(topic)], timeout=30)
        return tp.offset if tp.offset >= 0 else None

    def offset_at(self, topic: str, ts_ms: int) -> int:
        """The first offset of ``topic`` written at or after ``ts_ms``."""
        [tp] = self.consumer.offsets_for_times([self._partition(topic, ts_ms)], timeout=30)
        return tp.offset if tp.offset >= 0 else self.watermarks(topic)[1]

    def read(self, topic: str, accept: tuple[str, ...], start: int, end: int) -> Iterator[tuple[int, dict]]:
        """``(offset, record)`` for each decodable message of ``topic`` in
        ``[start, end)``; what does not decode was dead-lettered when it came in."""
        if end <= start:
            return
        name = self.settings.topic(topic)
        self.consumer.assign([self._partition(topic, start)])
        following, idle = start, time.monotonic()
        while following < end:
            messages = self.consumer.consume(500, timeout=1.0)
            if not messages:
                if time.monotonic() - idle > 60:
                    raise TimeoutError(f"reading {topic} back stalled at offset {following} of {end}")
                continue
            idle = time.monotonic()
            for message in messages:
                if message.error() or message.topic() != name:
                    continue
                offset = message.offset()
                if offset >= end:
                    return
                following = offset + 1
                try:
                    _, record = codec.decode(message.value(), accept, check=False)
                except codec.DecodeError:
                    continue
                yield offset, record


def rebuild_router(router, settings, now_ms: int) -> int:
    """Give ``router`` the tasks it sent within :data:`LOOKBACK_MS`; the number read."""
    with Reader(settings) as reader:
        start = reader.offset_at("labeling.tasks", now_ms - LOOKBACK_MS)
        _, end = reader.watermarks("labeling.tasks")
        tasks = [task for _, task in reader.read("labeling.tasks", ("LabelingTask",), start, end)]
    router.restore(tasks)
    log.info("router rebuilt from %d tasks sent before the restart", len(tasks))
    return len(tasks)


def rebuild_preselection(router, settings, now_ms: int) -> int:
    """Give ``router`` the events preselected within :data:`PRESELECTED_LOOKBACK_MS`; the number read."""
    with Reader(settings) as reader:
        start = reader.offset_at("labeling.candidates", now_ms - PRESELECTED_LOOKBACK_MS)
        _, end = reader.watermarks("labeling.candidates")
        ids = [c["event_id"] for _, batch in reader.read("labeling.candidates", ("CandidateColumns", "CandidateBatch"),
                                                          start, end)
               for c in candidates_of(batch) if c["reasons"]]
    router.restore_preselected(ids)
    log.info("scorer rebuilt from %d candidates preselected before the restart", len(ids))
    return len(ids)


def rebuild_trainer(trainer, settings, memory: int = 200_000) -> int:
    """Give ``trainer`` the tasks and the labels it had before a restart.

    Labels up to the resumed model's ``label_offset`` settle consensus without
    being learned; later ones, up to where the worker group committed, are
    learned again (their rows were written before the restart). Returns the
    offset on ``labels`` from which the stream's own labels count."""
    reflected = trainer.learner.label_offset
    learned = known = 0
    with Reader(settings) as reader:
        low, high = reader.watermarks("labeling.tasks")
        for _, task in reader.read("labeling.tasks", ("LabelingTask",), max(low, high - memory), high):
            trainer.add_task(task)
        low, _ = reader.watermarks("labels")
        done = reader.committed("labels")
        end = max(low if done is None else done, reflected + 1)
        for offset, label in reader.read("labels", ("Label",), max(low, end - memory), end):
            try:
                trainer.add_label(label, learn=offset > reflected)
            except ValueError:  # a label outside its task's label set was dead-lettered when it came in
                continue
            learned += offset > reflected
            known += offset <= reflected
    trainer.learner.label_offset = max(reflected, end - 1)
    log.info("trainer rebuilt: %d labels the model reflects, %d learned again, up to offset %d",
             known, learned, end)
    return end
