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
  again (:func:`rebuild_preselection`), so no event is decided both ways.
  The owner's own scorer hands its candidates to the router in process
  (``streams.app.Runtime.admit_here``): none is ever on its way, so none is
  on the topic; what it decided comes back as the tasks it sent (the
  router's, above: the event keeps its decision and gets no second task) and
  as the decision rows the sink remembers, and an event with neither left
  nothing behind and is decided afresh;
* the **learner** resumes from the newest signed model version, which records
  the offset of the last label it reflects; the trainer re-reads the tasks (so
  a label for a task created before the restart still finds it) and the
  labels: those the model reflects settle consensus and agreement without
  being learned again, those after it are learned;
* the **suspect labels** and the **retraining milestones** come back with the
  trainer (:func:`rebuild_learner`, :class:`LearnerReplay`): every settled label
  is scored again by the cross-fit, a review task sent before the restart
  (``labeling.tasks``, reason ``suspect_label``) reopens its label under review,
  so no label is reviewed twice, and a reviewer's label replayed confirms, clears
  or corrects it as it did; the ``found`` rows a kill lost are written again. The
  milestones count the labels settled since the last event on ``retraining``,
  with the drift alarms and the stopping signal ClickHouse recorded
  (:func:`recorded`).

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
    """Give ``router`` the events preselected within :data:`PRESELECTED_LOOKBACK_MS` whose candidates went
    through ``labeling.candidates`` (those admitted in process never did; see the module's notes); the
    number read."""
    with Reader(settings) as reader:
        start = reader.offset_at("labeling.candidates", now_ms - PRESELECTED_LOOKBACK_MS)
        _, end = reader.watermarks("labeling.candidates")
        ids = [c["event_id"] for _, batch in reader.read("labeling.candidates", ("CandidateColumns", "CandidateBatch"),
                                                          start, end)
               for c in candidates_of(batch) if c["reasons"]]
    router.restore_preselected(ids)
    log.info("scorer rebuilt from %d candidates preselected before the restart", len(ids))
    return len(ids)


def rebuild_trainer(trainer, settings, memory: int = 200_000, replay: "LearnerReplay | None" = None) -> int:
    """Give ``trainer`` the tasks and the labels it had before a restart.

    Labels up to the resumed model's ``label_offset`` settle consensus without
    being learned; later ones, up to where the worker group committed, are
    learned again (their rows were written before the restart). Returns the
    offset on ``labels`` from which the stream's own labels count. With ``replay``
    the tasks and labels go through it (it feeds the trainer, the suspect labels
    and the milestones)."""
    reflected = trainer.learner.label_offset
    learned = known = 0
    with Reader(settings) as reader:
        low, high = reader.watermarks("labeling.tasks")
        for _, task in reader.read("labeling.tasks", ("LabelingTask",), max(low, high - memory), high):
            trainer.add_task(task) if replay is None else replay.task(task)
        low, _ = reader.watermarks("labels")
        done = reader.committed("labels")
        end = max(low if done is None else done, reflected + 1)
        for offset, label in reader.read("labels", ("Label",), max(low, end - memory), end):
            try:
                if replay is None:
                    trainer.add_label(label, learn=offset > reflected)
                else:
                    replay.label(label, learn=offset > reflected)
            except ValueError:  # a label outside its task's label set was dead-lettered when it came in
                continue
            learned += offset > reflected
            known += offset <= reflected
    trainer.learner.label_offset = max(reflected, end - 1)
    log.info("trainer rebuilt: %d labels the model reflects, %d learned again, up to offset %d",
             known, learned, end)
    return end


class LearnerReplay:
    """Tasks and labels read back after a restart, into a :class:`~streams.loop.Loop`'s learner
    side: the trainer, the suspect labels and the retraining milestones. Plain records in, no I/O.

    Feed it the tasks (:meth:`task`), then the labels in offset order (:meth:`label`), then call
    :meth:`finish`. ``recorded`` is what ClickHouse holds (see :func:`recorded`), ``retraining``
    the events sent on ``retraining``, oldest first.

    >>> from streams.loop import Loop
    >>> loop = Loop.build(model_kind="linear", suspect_share=0.5, milestones={"every_labels": 3})
    >>> replay = LearnerReplay(loop, recorded={"found": {}})
    >>> task = {"task_id": "t1", "event_id": "e1", "item_id": "i1", "kind": "override", "features": {"x": 1.0},
    ...         "text": None, "reasons": ["uncertain"], "label_set": ["a", "b"], "round": 0, "exclude_annotators": []}
    >>> replay.task(task)
    >>> replay.task({**task, "reasons": ["suspect_label"], "round": 1, "exclude_annotators": ["ann"]})
    >>> replay.label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a", "annotator_id": "ann",
    ...               "ts": 5, "duration_ms": 9}, learn=True)
    >>> rows = replay.finish(now_ms=10)
    >>> loop.suspects.reviewing("t1"), [r["status"] for _, r in rows], loop.milestones.new_labels
    (True, ['found'], 1)
    """

    def __init__(self, loop, recorded: dict | None = None, retraining: list[dict] | None = None):
        self.loop = loop
        self.recorded = recorded or {}
        self.retraining = retraining or []
        self.reviews: dict[str, dict] = {}  # task id -> its review task (reason suspect_label)
        self.settled = 0  # consensus labels settled, as the milestones count them
        self.rows: list[tuple[str, dict]] = []  # found rows lost in the restart, to write again

    def task(self, task: dict) -> None:
        self.loop.trainer.add_task(task)
        if task["reasons"] == ["suspect_label"]:
            self.reviews[task["task_id"]] = task

    def label(self, label: dict, learn: bool) -> None:
        """A label read back; ``learn`` if the resumed model does not reflect it. Raises
        ``ValueError`` for a label outside its task's set (dead-lettered when it came in)."""
        trainer, suspects = self.loop.trainer, self.loop.suspects
        review = self.reviews.get(label["task_id"])
        if suspects is not None and review is not None and label["annotator_id"] not in review["exclude_annotators"]:
            self._reopen(review)  # the review was out before its reviewer answered
        result = trainer.add_label(label, learn=learn)
        if suspects is not None:  # their rows were written before the restart, but found rows written again
            self.rows.extend(r for r in suspects.take(trainer, "Label", label, result, label["ts"], correct=learn)
                             if r[1]["status"] == "found")
        self.settled += len(result.consensus)

    def _reopen(self, review: dict) -> bool:
        """``review``'s label under review again; its found row is lost if ClickHouse's rows are known and lack it."""
        recorded = self.recorded.get("found")
        found = (recorded or {}).get(review["task_id"])
        return self.loop.suspects.reopen(review, self.loop.trainer.consensus, found,
                                         lost=recorded is not None and found is None)

    def finish(self, now_ms: int) -> list[tuple[str, dict]]:
        """Reopen the reviews still out, put the production releases and the milestones back;
        the ``found`` rows to write again (those the restart lost; dated ``now_ms``)."""
        loop, rows = self.loop, []
        if loop.suspects is not None:
            for review in self.reviews.values():
                self._reopen(review)
            rows = self.rows + [("suspect_labels", r)
                                for r in loop.suspects.restored(now_ms, loop.trainer.learner.version)]
            log.info("suspect labels rebuilt: %d scored, %d reviews out (%d more once their label comes again), "
                     "%d found rows written again", len(loop.suspects.labels),
                     sum(loop.suspects.reviewing(t) for t in self.reviews), len(loop.suspects.pending), len(rows))
        loop.recount_releases()  # the production model's releases, judged by the labels so far
        if loop.milestones is not None:
            name = loop.trainer.learner.name
            events = list({e["event_id"]: e for e in self.retraining if e["model_name"] == name}.values())
            last = events[-1]["dataset_version"] if events else None
            loop.milestones.restore(
                events, self.settled,
                drifted=any(last is None or v >= last for v in self.recorded.get("drift_versions", ())),
                stopped=bool(self.recorded.get("stop")), first_accuracy=self.recorded.get("first_accuracy"))
            log.info("milestones rebuilt: %d events, %d labels towards the next", len(events),
                     loop.milestones.new_labels)
        return rows


def recorded(client, model_name: str) -> dict:
    """What ClickHouse holds that a restarted learner needs (see :class:`LearnerReplay`): the
    ``found`` rows of suspect labels by task id, the versions drift was detected at, whether the
    newest version's stopping signal said ``stop``, and the first version's control accuracy.
    Call it where nothing writes meanwhile (a worker's writer thread). Should ClickHouse fail,
    an empty dict: the learner is rebuilt from the topics alone, and writes no row again."""
    try:
        return _recorded(client, model_name)
    except Exception:  # a restart must not stop on it
        log.exception("reading what ClickHouse recorded for the suspect labels and milestones failed")
        return {}


def _recorded(client, model_name: str) -> dict:
    rows = lambda sql, **p: client.query(sql, parameters=p).named_results()  # noqa: E731
    found = {r["task_id"]: r for r in rows("SELECT * EXCEPT (inserted_at) FROM suspect_labels FINAL "
                                          "WHERE status = 'found'")}
    drift = [r["version"] for r in rows("SELECT version FROM drift_events FINAL WHERE model_name = {m:String}",
                                        m=model_name)]
    stop = [r["recommendation"] == "stop" for r in rows(
        "SELECT recommendation FROM stopping_signals FINAL ORDER BY version DESC, ts DESC LIMIT 1")]
    first = [r["control_accuracy"] for r in rows(
        "SELECT control_accuracy FROM model_versions FINAL WHERE model_name = {m:String} "
        "AND control_accuracy IS NOT NULL ORDER BY version LIMIT 1", m=model_name)]
    return {"found": found, "drift_versions": drift, "stop": bool(stop and stop[0]),
            "first_accuracy": first[0] if first else None}


def rebuild_learner(loop, settings, recorded: dict | None = None, memory: int = 200_000) -> list[tuple[str, dict]]:
    """Rebuild the loop's learner side after a restart (see :class:`LearnerReplay`), from the topics
    and what ClickHouse ``recorded``; the rows to write again."""
    with Reader(settings) as reader:
        low, high = reader.watermarks("retraining")
        events = [e for _, e in reader.read("retraining", ("Retraining",), low, high)]
    replay = LearnerReplay(loop, recorded, events)
    rebuild_trainer(loop.trainer, settings, memory, replay=replay)
    return replay.finish(int(time.time() * 1000))
