"""Re-scoring: tasks still waiting for a label are re-prioritised by each new model.

A task chosen as *uncertain* was worth a label for the model that chose it; a
newer version may have learned the answer since. When a version arrives,
:meth:`Backlog.rescore` recomputes the uncertainty of every waiting uncertain
task with it: the priority follows, and a task whose uncertainty fell below
``min_uncertainty`` *expires* (it drops back out of the queue). Tasks of the
control slice are never dropped for what the model thinks of them (that would
bias the unbiased sample), nor are failures (a user said the model was wrong)
or diverse items; every task expires after ``ttl_ms``.

>>> backlog = Backlog(min_uncertainty=0.2)
>>> backlog.add({"task_id": "t1", "features": {"x": 1.0}, "reasons": ["uncertain"], "priority": 0.9, "created_ts": 0})
>>> backlog.add({"task_id": "t2", "features": {"x": 2.0}, "reasons": ["control"], "priority": 0.5, "created_ts": 0})
>>> confident = lambda x: {"a": 0.97, "b": 0.03}
>>> [(u["task_id"], u["action"]) for u in backlog.rescore(confident, now_ms=10)]
[('t1', 'expire'), ('t2', 'keep')]
>>> [t["task_id"] for t in backlog.next(5)]
['t2']
"""

from __future__ import annotations

from typing import Callable

from streams import signals
from streams.learner import featurize

PROTECTED = ("control", "override", "appeal", "diverse")


class Backlog:
    """Waiting tasks, re-prioritised (or expired) when the model changes.

    Parameters
    ----------
    min_uncertainty
        An uncertain task whose uncertainty under the new model is below this expires.
    ttl_ms
        Any task older than this expires.
    """

    def __init__(self, min_uncertainty: float = 0.1, ttl_ms: int = 7 * 24 * 3_600_000):
        self.min_uncertainty = min_uncertainty
        self.ttl_ms = ttl_ms
        self.tasks: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task: dict) -> None:
        """A task entered the queue."""
        self.tasks[task["task_id"]] = {**task, "x": featurize(task.get("features") or {}, task.get("text"))}

    def done(self, task_id: str) -> None:
        """The task was labeled (or withdrawn)."""
        self.tasks.pop(task_id, None)

    def rescore(self, predict_proba: Callable[[dict], dict], now_ms: int, n_classes: int | None = None) -> list[dict]:
        """Re-prioritise the waiting tasks with a new model's ``predict_proba``;
        return one update per task (``keep`` with the new priority, or ``expire``),
        and drop the expired ones."""
        updates = []
        for task_id, task in list(self.tasks.items()):
            action, priority = "keep", task["priority"]
            if now_ms - task.get("created_ts", now_ms) > self.ttl_ms:
                action = "expire"
            elif not any(r in PROTECTED for r in task["reasons"]):
                proba = predict_proba(task["x"])
                if proba:
                    priority = signals.score(proba, None, n_classes)["uncertainty"]
                    if priority < self.min_uncertainty:
                        action = "expire"
            if action == "expire":
                del self.tasks[task_id]
            else:
                task["priority"] = priority
            updates.append({"task_id": task_id, "action": action, "priority": priority})
        return updates

    def next(self, n: int = 1) -> list[dict]:
        """The ``n`` waiting tasks of highest priority."""
        ranked = sorted(self.tasks.values(), key=lambda t: (-t["priority"], t.get("created_ts", 0)))
        return [{k: v for k, v in t.items() if k != "x"} for t in ranked[:n]]
