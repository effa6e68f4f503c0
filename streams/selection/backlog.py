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

from typing import Callable

from streams.selection import signals
from streams.learning.features import featurize


def rescored(task: dict, predict_proba: Callable[[dict], dict[str, float]]) -> float | None:
    """The priority of a waiting task under a new model (its ``predict_proba``
    on the task's features), or None if it keeps the one it has.

    Only tasks chosen as ``uncertain`` follow the model (and only they are
    predicted): the new priority is the mean of the production model's
    uncertainty (``1 - margin``, kept in the task's signals) and the new
    model's, as the scorer computes it. Control, failure and diverse tasks are
    worth a label whatever the model now thinks; so is a task the model cannot
    score (no features, or a model that has seen no label).

    >>> task = {"reasons": ["uncertain"], "signals": {"margin": 0.2}, "features": {"x": 1.0}}
    >>> sure = lambda x: {"a": 0.95, "b": 0.05}
    >>> round(rescored(task, sure), 2), rescored({**task, "reasons": ["control"]}, sure)
    (0.45, None)
    """
    if "uncertain" not in task["reasons"]:
        return None
    x = featurize(task.get("features") or {}, task.get("text"))
    proba = predict_proba(x) if x else {}
    if not proba:
        return None
    new = 1.0 - signals.margin(proba)
    production = (task.get("signals") or {}).get("margin")
    return new if production is None else 0.5 * ((1.0 - production) + new)
