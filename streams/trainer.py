"""Training: join each label to its task's features and feed the learner.

Tasks and labels arrive on two topics; a label whose task has not been seen
yet waits (bounded) until it has. A label event seen before is ignored, so a
label sent twice counts once.

>>> from streams.learner import Learner
>>> trainer = Trainer(Learner("m", kind="linear", publish_every=1))
>>> trainer.add_task({"task_id": "t1", "item_id": "i1", "features": {"x": 1.0}, "text": None,
...                   "reasons": ["uncertain"], "label_set": ["a", "b"]})
[]
>>> rows = trainer.add_label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a",
...                           "annotator_id": "ann", "ts": 5, "duration_ms": 900, "note": None})
>>> rows[0]["label"], rows[0]["control"], trainer.learner.labels_seen
('a', 0, 1)
>>> trainer.add_label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a",
...                    "annotator_id": "ann", "ts": 5, "duration_ms": 900, "note": None})
[]
"""

from __future__ import annotations

from collections import OrderedDict

from streams.learner import Learner, featurize


class UnknownLabel(ValueError):
    """A label outside the task's label set."""


class Trainer:
    """Joins labels to tasks and teaches the :class:`~streams.learner.Learner`."""

    def __init__(self, learner: Learner, memory: int = 200_000):
        self.learner = learner
        self.memory = memory
        self._tasks: OrderedDict[str, dict] = OrderedDict()
        self._waiting: OrderedDict[str, list[dict]] = OrderedDict()
        self._labels_seen: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def _bounded_put(store: OrderedDict, key, value, limit: int) -> None:
        store[key] = value
        if len(store) > limit:
            store.popitem(last=False)

    def add_task(self, task: dict) -> list[dict]:
        """Remember a task; return label rows for labels that were waiting for it."""
        self._bounded_put(self._tasks, task["task_id"], {
            "x": featurize(task["features"], task.get("text")),
            "reasons": list(task["reasons"]), "label_set": list(task.get("label_set") or []),
        }, self.memory)
        return [row for label in self._waiting.pop(task["task_id"], []) for row in self._learn(label)]

    def add_label(self, label: dict) -> list[dict]:
        """Learn a label; return its row for the ``labels`` table (empty if it waits or repeats)."""
        if label["event_id"] in self._labels_seen:
            return []
        self._bounded_put(self._labels_seen, label["event_id"], None, self.memory)
        if label["task_id"] not in self._tasks:
            self._waiting.setdefault(label["task_id"], []).append(label)
            while len(self._waiting) > self.memory:
                self._waiting.popitem(last=False)
            return []
        return self._learn(label)

    def _learn(self, label: dict) -> list[dict]:
        task = self._tasks[label["task_id"]]
        if task["label_set"] and label["label"] not in task["label_set"]:
            raise UnknownLabel(f"label {label['label']!r} is not in the task's label set {task['label_set']}")
        control = "control" in task["reasons"]
        predicted = self.learner.learn(task["x"], label["label"], control=control)
        return [{**label, "learned_by_version": self.learner.version, "shadow_prediction": predicted,
                 "reasons": task["reasons"], "control": int(control)}]

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiting.values())
