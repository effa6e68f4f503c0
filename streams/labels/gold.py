"""Gold checks: known-answer items mixed into the labeling queue.

A gold set is a dict of items by item id, each ``{"item_id", "label",
"features", "text"}`` (read from a file by :func:`feedbackloop.datasets.load_gold`;
the core reads no file). :class:`GoldMixer` follows a share ``rate`` of real tasks with a
gold task that looks like any other: it copies the real task's reasons,
signals and shape, with the gold item's content and a suggested label drawn
at random from the label set (so the suggestion gives nothing away). The
trainer knows the answers and scores each annotator on them.

>>> gold = {"g1": {"item_id": "g1", "label": "b", "features": {"x": 2.0}, "text": None}}
>>> mixer = GoldMixer(gold, rate=1.0, seed=0)
>>> task = {"task_id": "t1", "event_id": "e1", "item_id": "i1", "features": {"x": 1.0}, "text": None,
...         "label_set": ["a", "b"], "reasons": ["uncertain"], "suggested_label": "a", "confidence": 0.6}
>>> g = mixer.follow(task)
>>> g["item_id"], g["reasons"], g["features"], g["task_id"] != task["task_id"]
('g1', ['uncertain'], {'x': 2.0}, True)
"""

from __future__ import annotations

import random
import uuid

from streams import events

_NAMESPACE = uuid.UUID("2b1f8f0e-8d3c-4a55-b7a1-0f6c5e3d9a10")


class GoldMixer:
    """Follows a share ``rate`` of tasks with a disguised gold task."""

    def __init__(self, gold: dict[str, dict], rate: float, seed: int = 0):
        self.items = list(gold.values())
        self.rate = rate
        self.rng = random.Random(seed)
        self.sent = 0

    def follow(self, task: events.Task) -> events.Task | None:
        """A gold task to send after ``task``, or None."""
        if not self.items or self.rng.random() >= self.rate:
            return None
        item = self.items[self.rng.randrange(len(self.items))]
        self.sent += 1
        return self.disguise(task, item, str(uuid.uuid5(_NAMESPACE, f"{task['task_id']}:{self.sent}")))

    def disguise(self, task: events.Task, item: dict, task_id: str) -> events.Task:
        """Gold ``item`` dressed as ``task``: its reasons, signals and shape, the
        item's content, and a suggestion drawn at random from the label set.

        >>> mixer = GoldMixer({}, rate=0.0, seed=1)
        >>> item = {"item_id": "g2", "label": "c", "features": {}, "text": "hello"}
        >>> g = mixer.disguise({"task_id": "t", "event_id": "e", "label_set": ["a", "b"]}, item, "t9")
        >>> g["task_id"], g["label_set"], g["suggested_label"] in g["label_set"]
        ('t9', ['a', 'b', 'c'], True)
        """
        labels = sorted(set(task.get("label_set") or []) | {item["label"]})
        return events.replace_task(
            task, task_id=task_id, event_id=f"gold-{task['event_id']}", item_id=item["item_id"],
            features=item["features"], text=item["text"], label_set=labels,
            suggested_label=self.rng.choice(labels), predicted_label=None, user_label=None, note=None)
