"""Re-ranking the queue when a new shadow model version arrives.

Each task chosen because the models were unsure, still waiting, is scored
again with the new version by :func:`streams.selection.backlog.rescored` (the rule the
core uses for any backlog): items the new model has become sure about sink;
items it still doubts stay on top. Overrides, appeals, control and diverse
tasks keep their priority, and so do tasks the model cannot score (no
features, or a model that has seen no label).

>>> from streams.learning.learner import ShadowModel
>>> class Sure:  # a stand-in for a River model: sure about x > 0
...     def predict_proba_one(self, x):
...         return {"a": 0.95, "b": 0.05} if x["x"] > 0 else {"a": 0.5, "b": 0.5}
>>> model = ShadowModel("shadow", 2, Sure(), ["a", "b"])
>>> tasks = [("t1", {"reasons": ["uncertain"], "signals": {"margin": 0.2}, "features": {"x": 1.0}}),
...          ("t2", {"reasons": ["uncertain"], "signals": {"margin": 0.2}, "features": {"x": -1.0}}),
...          ("t3", {"reasons": ["control"], "signals": {"margin": 0.2}, "features": {"x": -1.0}})]
>>> {t: round(p, 2) for t, p in priorities(tasks, model).items()}
{'t1': 0.45, 't2': 0.9}
"""

from __future__ import annotations

from streams.selection.backlog import rescored
from streams.learning.learner import ShadowModel


def priorities(tasks: list[tuple[str, dict]], model: ShadowModel) -> dict[str, float]:
    """``{task_id: new priority}`` for the tasks whose priority changes with ``model``."""
    out = {}
    for task_id, task in tasks:
        p = rescored(task, model.predict_proba)
        if p is not None:
            out[task_id] = p
    return out
