"""Simulated annotators: ground truth with a configurable error rate.

For demos and tests. Each :class:`SimulatedAnnotator` answers the truth,
except with probability ``error_rate`` a different label from the task's
label set. An :class:`AnnotatorPool` pulls tasks from ``labeling.tasks``,
hands each to annotators in an order fixed by the item, and sends their labels
to ``labels``.

What an annotator answers on an item is drawn from the seed, the annotator and
the item alone, never from the order tasks arrive in, as the offline
simulator's annotators (:mod:`feedbackloop.annotators_sim`) draw it: a stream
replayed through the live worker and through the loop offline meets the same
mistakes on the same items (``tests/test_live_vs_simulator.py``), and the
share of wrong labels is the error rate, item by item, however the labels
were interleaved.

>>> ann = SimulatedAnnotator("ann-1", {"i1": "cat"}.get, error_rate=0.0)
>>> label = ann.label({"task_id": "t1", "item_id": "i1", "label_set": ["cat", "dog"]}, now_ms=5)
>>> label["label"], label["annotator_id"], label["task_id"]
('cat', 'ann-1', 't1')
>>> noisy = SimulatedAnnotator("ann-2", lambda item: "cat", error_rate=0.05, seed=3)
>>> task = lambda i: {"task_id": f"t{i}", "item_id": f"i{i}", "label_set": ["cat", "dog"]}
>>> answers = [noisy.label(task(i), now_ms=0)["label"] for i in range(4000)]
>>> round(answers.count("dog") / len(answers), 2), answers[:50] == [noisy.label(task(i), 0)["label"] for i in range(50)]
(0.05, True)

On a ``multi_label`` task the truth is a set joined by ``|`` and the answer is a
set (``labels``, and ``label`` joined): wrong with probability ``error_rate``, and
then one class of the label set, drawn at random, is flipped (added if absent,
dropped if present). So ``error_rate`` is still the share of wrong answers,
whatever the number of classes (flipping every class with that probability
would make most answers wrong on a label set of 14). Like a person at the
labeling UI, an annotator ticks only the classes the task offers: a true class
the router had not seen yet when it sent the task (an appeal that overtook the
first predictions) is left out rather than sent as an unknown label.

>>> sets = SimulatedAnnotator("ann-3", lambda item: "cat|fox", error_rate=0.1, seed=1)
>>> multi = lambda i: {**task(i), "label_set": ["cat", "dog", "fox"], "multi_label": True}
>>> answers = [sets.label(multi(i), now_ms=0) for i in range(4000)]
>>> sets.label({**multi(0), "label_set": ["cat", "dog"]}, now_ms=0)["labels"]  # fox is not offered
['cat']
>>> wrong = sum(a["label"] != "cat|fox" for a in answers) / len(answers)
>>> answers[0]["labels"], answers[0]["label"], abs(wrong - 0.1) < 0.015
(['cat', 'fox'], 'cat|fox', True)
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from typing import Callable

from confluent_kafka import Consumer, Producer

from consumers.background import Background
from feedbackloop.settings import Settings
from schemas import codec
from streams import events
from streams.labels.set_agreement import SEPARATOR, label_set


class SimulatedAnnotator:
    """Answers from ground truth, wrong with probability ``error_rate``: a draw fixed by
    ``seed``, the annotator and the item, so asking again gives the same answer."""

    def __init__(self, annotator_id: str, truth: Callable[[str], str | None], error_rate: float = 0.0,
                 seed: int | None = None, seconds_per_label: float = 4.0, tier: str = "annotator"):
        self.annotator_id = annotator_id
        self.tier = tier
        self.truth = truth
        self.error_rate = error_rate
        self.seconds_per_label = seconds_per_label
        self.seed = seed

    def label(self, task: dict, now_ms: int) -> dict | None:
        """A ``Label`` record for ``task``, or None when the truth is unknown."""
        true = self.truth(task["item_id"])
        if true is None:
            return None
        rng = random.Random(f"{self.seed}:{self.annotator_id}:{task['item_id']}")
        if task.get("multi_label"):
            return self._label_set(task, label_set(true), rng, now_ms)
        answer = true
        others = sorted(c for c in task.get("label_set") or [] if c != true)
        if rng.random() < self.error_rate and others:
            answer = rng.choice(others)
        duration = int(rng.expovariate(1.0 / self.seconds_per_label) * 1000)
        return events.label(event_id=str(uuid.uuid4()), task_id=task["task_id"], item_id=task["item_id"],
                            label=answer, annotator_id=self.annotator_id, ts=now_ms, duration_ms=duration,
                            note=None, tier=self.tier)


    def _label_set(self, task: dict, true: frozenset, rng: random.Random, now_ms: int) -> dict:
        """The answer on a multi-label task: the true set, one class flipped when wrong (see the module)."""
        offered = set(task.get("label_set") or [])
        answer = set(true & offered if offered else true)
        classes = sorted(offered or true)
        if rng.random() < self.error_rate and classes:
            answer ^= {rng.choice(classes)}
        duration = int(rng.expovariate(1.0 / self.seconds_per_label) * 1000)
        chosen = sorted(answer)
        return events.label(event_id=str(uuid.uuid4()), task_id=task["task_id"], item_id=task["item_id"],
                            label=SEPARATOR.join(chosen), labels=chosen, annotator_id=self.annotator_id, ts=now_ms,
                            duration_ms=duration, note=None, tier=self.tier)


def first_turn(item_id: str, annotators: int) -> int:
    """Which of ``annotators`` (in their order) an item goes to first: a stable hash of the item.

    >>> first_turn("item-7", 3), first_turn("item-7", 3) == first_turn("item-7", 3), first_turn("x", 0)
    (1, True, 0)
    """
    if annotators <= 0:
        return 0
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=4).digest(), "big") % annotators


class AnnotatorPool(Background):
    """Runs annotators against the labeling queue in a background thread.

    Each task goes to ``overlap`` different annotators of its tier, never to one
    in its ``exclude_annotators`` list nor to one who labeled it before; who is
    asked first is fixed by the item (:func:`first_turn`), not by arrival order.
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

    def assign(self, task: dict) -> list[SimulatedAnnotator]:
        """The annotators who will label ``task`` (possibly none left)."""
        done = self._done.setdefault(task["task_id"], set())
        barred = done | set(task.get("exclude_annotators") or [])
        tier = task.get("tier") or "annotator"
        free = [a for a in self.annotators if a.tier == tier and a.annotator_id not in barred]
        if not free and tier != "annotator":  # no reviewer: the most reliable annotator left decides
            free = sorted((a for a in self.annotators if a.annotator_id not in barred), key=lambda a: a.error_rate)[:1]
        start = first_turn(task["item_id"], len(free))
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
