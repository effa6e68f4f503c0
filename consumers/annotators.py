"""Simulated annotators: ground truth with a configurable error rate.

For demos and tests. Each :class:`SimulatedAnnotator` answers the truth,
except with probability ``error_rate`` a different label from the task's
label set. An :class:`AnnotatorPool` pulls tasks from ``labeling.tasks``,
hands them to its annotators in turn and sends their labels to ``labels``.

>>> ann = SimulatedAnnotator("ann-1", {"i1": "cat"}.get, error_rate=0.0)
>>> label = ann.label({"task_id": "t1", "item_id": "i1", "label_set": ["cat", "dog"]}, now_ms=5)
>>> label["label"], label["annotator_id"], label["task_id"]
('cat', 'ann-1', 't1')
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Callable

from confluent_kafka import Consumer, Producer

from consumers.background import Background
from feedbackloop.settings import Settings
from schemas import codec
from streams import events


class SimulatedAnnotator:
    """Answers from ground truth, wrong with probability ``error_rate``."""

    def __init__(self, annotator_id: str, truth: Callable[[str], str | None], error_rate: float = 0.0,
                 seed: int | None = None, seconds_per_label: float = 4.0, tier: str = "annotator"):
        self.annotator_id = annotator_id
        self.tier = tier
        self.truth = truth
        self.error_rate = error_rate
        self.seconds_per_label = seconds_per_label
        self.rng = random.Random(seed)

    def label(self, task: dict, now_ms: int) -> dict | None:
        """A ``Label`` record for ``task``, or None when the truth is unknown."""
        true = self.truth(task["item_id"])
        if true is None:
            return None
        answer = true
        others = [c for c in task.get("label_set") or [] if c != true]
        if others and self.rng.random() < self.error_rate:
            answer = self.rng.choice(others)
        duration = int(self.rng.expovariate(1.0 / self.seconds_per_label) * 1000)
        return events.label(event_id=str(uuid.uuid4()), task_id=task["task_id"], item_id=task["item_id"],
                            label=answer, annotator_id=self.annotator_id, ts=now_ms, duration_ms=duration,
                            note=None, tier=self.tier)


class AnnotatorPool(Background):
    """Runs annotators against the labeling queue in a background thread.

    Each task goes to ``overlap`` different annotators of its tier, never to one
    in its ``exclude_annotators`` list nor to one who labeled it before.
    """

    name = "annotators"

    def __init__(self, settings: Settings, annotators: list[SimulatedAnnotator], group: str = "simulated-annotators"):
        super().__init__()
        self.settings = settings
        self.annotators = annotators
        self.group = group
        self.tasks = 0
        self.labels = 0
        self.error: BaseException | None = None
        self._done: dict[str, set[str]] = {}
        self._turn = 0

    def assign(self, task: dict) -> list[SimulatedAnnotator]:
        """The annotators who will label ``task`` (possibly none left)."""
        done = self._done.setdefault(task["task_id"], set())
        barred = done | set(task.get("exclude_annotators") or [])
        tier = task.get("tier") or "annotator"
        free = [a for a in self.annotators if a.tier == tier and a.annotator_id not in barred]
        if not free and tier != "annotator":  # no reviewer: the most reliable annotator left decides
            free = sorted((a for a in self.annotators if a.annotator_id not in barred), key=lambda a: a.error_rate)[:1]
        start = self._turn % max(1, len(free))
        self._turn += 1
        chosen = (free[start:] + free[:start])[:max(1, task.get("overlap") or 1)]
        done.update(a.annotator_id for a in chosen)
        return chosen

    def _run(self) -> None:
        s = self.settings
        consumer = Consumer({**s.kafka_config(), "group.id": self.group, "auto.offset.reset": "earliest",
                             "enable.auto.commit": True})
        producer = Producer({**s.kafka_config(), "linger.ms": 5})
        consumer.subscribe([s.topic("labeling.tasks")])
        try:
            while not self._stop.is_set():
                for message in consumer.consume(200, timeout=0.2):
                    if message.error():
                        continue
                    _, task = codec.decode(message.value(), ("LabelingTask",))
                    self.tasks += 1
                    for annotator in self.assign(task):
                        label = annotator.label(task, int(time.time() * 1000))
                        if label is not None:
                            producer.produce(s.topic("labels"), codec.encode("Label", label),
                                             key=task["task_id"].encode())
                            self.labels += 1
                producer.poll(0)
            producer.flush(10)
        except BaseException as exc:  # surfaced by the caller
            self.error = exc
        finally:
            consumer.close()
