"""Re-ranking the queue when a new shadow model version arrives.

A task chosen because the models were unsure was ranked by the uncertainty
of the model versions of its day. When the learner publishes a new version,
each such task still waiting is scored again: its priority becomes the mean
of the production model's uncertainty (``1 - margin``, kept from the task's
signals) and the new shadow model's, as the scorer computes it. Items the new
model has become sure about sink; items it still doubts stay on top.

Tasks chosen for other reasons keep their priority: overrides and appeals
(a user said the model was wrong, whatever the model now thinks) and the
random control sample (its worth does not depend on any model). So do tasks
the model cannot score (no features, or a model that has seen no label).

>>> from streams.learner import ShadowModel
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

from streams.learner import ShadowModel, featurize
from streams.signals import margin

#: Reasons whose priority follows the models' uncertainty.
RANKED_REASONS = frozenset({"uncertain", "disagreement"})


def priority(task: dict, model: ShadowModel) -> float | None:
    """The task's priority under ``model``, or None to keep the one it has."""
    if not RANKED_REASONS.intersection(task["reasons"]) or "margin" not in task["signals"]:
        return None
    x = featurize(task.get("features") or {}, task.get("text"))
    if not x:
        return None
    proba = model.predict_proba(x)
    if not proba:
        return None
    return 0.5 * ((1.0 - task["signals"]["margin"]) + (1.0 - margin(proba)))


def priorities(tasks: list[tuple[str, dict]], model: ShadowModel) -> dict[str, float]:
    """``{task_id: new priority}`` for the tasks whose priority changes with ``model``."""
    out = {}
    for task_id, task in tasks:
        p = priority(task, model)
        if p is not None:
            out[task_id] = p
    return out
