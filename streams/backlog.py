"""Re-scoring: tasks still waiting for a label are re-prioritised by each new model.

A task chosen as *uncertain* was worth a label for the model that chose it; a
newer version may have learned the answer since. When a version arrives, the
labeling queue (:mod:`consumers.labeling.rerank`) scores every waiting
uncertain task again with :func:`rescored`: the priority follows, so items the
model is now sure of drop back behind those it still doubts. Tasks of the
control slice keep their place whatever the model thinks (moving them would
bias the unbiased sample), and so do failures (a user said the model was
wrong) and diverse items.
"""

from __future__ import annotations

from streams import signals


def rescored(task: dict, proba: dict[str, float]) -> float | None:
    """The priority of a waiting task under a new model's class probabilities
    ``proba``, or None if it keeps the one it has.

    Only tasks chosen as ``uncertain`` follow the model: the new priority is
    the mean of the production model's uncertainty (``1 - margin``, kept in
    the task's signals) and the new model's, as the scorer computes it.
    Control, failure and diverse tasks are worth a label whatever the model
    now thinks.

    >>> task = {"reasons": ["uncertain"], "signals": {"margin": 0.2}}
    >>> round(rescored(task, {"a": 0.95, "b": 0.05}), 2), rescored({**task, "reasons": ["control"]}, {"a": 1.0})
    (0.45, None)
    """
    if "uncertain" not in task["reasons"] or not proba:
        return None
    new = 1.0 - signals.margin(proba)
    production = (task.get("signals") or {}).get("margin")
    return new if production is None else 0.5 * ((1.0 - production) + new)
