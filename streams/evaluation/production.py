"""The production model's accuracy and per-class precision and recall, release by release.

Every label bought for a prediction says whether the production model was right
on that item. Taken plainly, the labels over-represent the items the policy
chose (uncertain, novel, failing ones), so their accuracy understates the
model's. Two estimators correct for that, per production ``model_version``:

``control``
    The random control slice alone: a uniform sample of the stream, so plain
    proportions are unbiased. Intervals are Wilson score intervals [1]_.
``weighted``
    Every label, weighted by the inverse of the probability with which its item
    was selected (``selection_probability``, exact for every decision). The
    figure is the ratio form of the Horvitz-Thompson estimator (Hajek) [2]_,
    ``sum(y / p) / sum(1 / p)`` over the items of the domain (all of them for
    accuracy, those predicted ``c`` for the precision of ``c``, those labeled
    ``c`` for its recall), and its interval a normal one from the linearised
    Horvitz-Thompson variance under Poisson sampling [3]_::

        var = sum((1 - p) / p**2 * (y - estimate)**2) / sum(1 / p)**2

    It uses all the labels, so its interval is usually the narrower one; an item
    chosen with a tiny probability weighs a lot, which the variance shows.

>>> truth = ["a", "a", "b", "b", "a"]
>>> said = ["a", "b", "b", "b", "a"]
>>> accuracy(said, truth)["value"]
0.8
>>> e = accuracy(said, truth, [1.0, 0.5, 0.5, 1.0, 1.0])
>>> round(e["value"], 3), e["n"], e["weight"]
(0.714, 5, 7.0)
>>> production = ProductionAccuracy()
>>> for i, (s, t) in enumerate(zip(said, truth)):
...     production.add(f"t{i}", "prod", "v1", s, t, 0.5, control=i < 3)
>>> rows = production.rows()
>>> sorted({(r["estimator"], r["metric"]) for r in rows})
[('control', 'accuracy'), ('control', 'precision'), ('control', 'recall'), ('weighted', 'accuracy'), ('weighted', 'precision'), ('weighted', 'recall')]
>>> [(r["class"], r["value"], r["n"]) for r in rows if r["estimator"] == "weighted" and r["metric"] == "recall"]
[('a', 0.6666666666666666, 3), ('b', 1.0, 2)]

References
----------
.. [1] Wilson, E. B. (1927). Probable inference, the law of succession, and
       statistical inference. JASA 22(158), 209-212.
.. [2] Hajek, J. (1971). Comment on "An essay on the logical foundations of survey sampling".
.. [3] Sarndal, C.-E., Swensson, B. and Wretman, J. (1992). Model Assisted Survey
       Sampling, section 5.6 (the variance of a ratio, by linearisation).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Z95", "ProductionAccuracy", "accuracy", "per_class", "weighted_proportion", "wilson"]

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (``None`` for no trials).

    >>> [round(v, 4) for v in wilson(8, 10)]
    [0.4902, 0.9433]
    >>> wilson(0, 0)
    (None, None)
    >>> [round(v, 4) for v in wilson(10, 10)]
    [0.7225, 1.0]
    """
    if n <= 0:
        return None, None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def weighted_proportion(y, p, z: float = Z95) -> dict:
    """The Hajek estimate of the share of ``y`` (0/1) in the population, from
    items sampled with inclusion probabilities ``p``; a normal interval from the
    linearised Horvitz-Thompson variance, clipped to [0, 1].

    >>> e = weighted_proportion([1, 0, 1, 1], [0.5, 0.5, 0.5, 0.5])
    >>> e["value"], round(e["ci_low"], 3), round(e["ci_high"], 3), e["weight"]
    (0.75, 0.45, 1.0, 8.0)

    Items selected for sure (``p = 1``) are the whole population, with no
    sampling error:

    >>> weighted_proportion([1, 0], [1.0, 1.0])["ci_low"]
    0.5
    """
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "weight": 0.0}
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("selection probabilities must be in (0, 1]")
    w = 1.0 / p
    total = float(w.sum())
    value = float((w * y).sum() / total)
    variance = float(((1.0 - p) * w * w * (y - value) ** 2).sum()) / (total * total)
    half = z * math.sqrt(variance)
    return {"value": value, "ci_low": max(0.0, value - half), "ci_high": min(1.0, value + half),
            "n": int(y.size), "weight": total}


def _control(y) -> dict:
    y = np.asarray(y, dtype=float)
    if y.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "weight": 0.0}
    low, high = wilson(float(y.sum()), y.size)
    return {"value": float(y.mean()), "ci_low": low, "ci_high": high, "n": int(y.size), "weight": float(y.size)}


def accuracy(predicted, truth, probabilities=None) -> dict:
    """Accuracy of ``predicted`` against ``truth``: plain with a Wilson interval,
    or weighted by ``1 / probabilities`` (see :func:`weighted_proportion`)."""
    right = np.asarray(predicted, dtype=object) == np.asarray(truth, dtype=object)
    return _control(right) if probabilities is None else weighted_proportion(right, probabilities)


def per_class(predicted, truth, probabilities=None) -> list[dict]:
    """Precision and recall of each class seen in ``predicted`` or ``truth``, by class name.

    >>> [(r["metric"], r["class"], r["value"]) for r in per_class(["a", "a", "b"], ["a", "b", "b"])]
    [('precision', 'a', 0.5), ('recall', 'a', 1.0), ('precision', 'b', 1.0), ('recall', 'b', 0.5)]
    """
    predicted, truth = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    p = None if probabilities is None else np.asarray(probabilities, dtype=float)
    right = predicted == truth
    out = []
    for c in sorted(set(predicted.tolist()) | set(truth.tolist())):
        for metric, domain in (("precision", predicted == c), ("recall", truth == c)):
            e = _control(right[domain]) if p is None else weighted_proportion(right[domain], p[domain])
            out.append({"metric": metric, "class": c, **e})
    return out


class ProductionAccuracy:
    """The settled labels of prediction tasks, by production model and version;
    :meth:`rows` estimates each release's accuracy, precision and recall both ways.

    A task settled again (a correction, an adjudication) replaces its earlier label.
    """

    def __init__(self):
        self._items: dict[str, tuple] = {}  # task id -> (model, version, predicted, label, probability, control)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, task_id: str, model_name: str, model_version: str, predicted: str | None, label: str,
            selection_probability: float, control: bool) -> None:
        """A settled label for a task on a production prediction (ignored without a
        prediction or a usable probability)."""
        if predicted is None or not 0.0 < selection_probability <= 1.0:
            return
        self._items[task_id] = (model_name, model_version, predicted, label, selection_probability, bool(control))

    def rows(self) -> list[dict]:
        """One row per (model, version, estimator, metric, class): ``value``,
        ``ci_low``, ``ci_high``, ``n`` and ``weight`` (the items they stand for)."""
        releases: dict[tuple[str, str], list[tuple]] = {}
        for item in self._items.values():
            releases.setdefault(item[:2], []).append(item[2:])
        out = []
        for (model, version), items in sorted(releases.items()):
            predicted, truth, p, control = (list(column) for column in zip(*items))
            in_control = [i for i, c in enumerate(control) if c]
            for estimator, idx, probabilities in (
                    ("control", in_control, None),
                    ("weighted", range(len(items)), p)):
                said, true = [predicted[i] for i in idx], [truth[i] for i in idx]
                weights = None if probabilities is None else [probabilities[i] for i in idx]
                head = {"model_name": model, "model_version": version, "estimator": estimator}
                out.append({**head, "metric": "accuracy", "class": "", **accuracy(said, true, weights)})
                out.extend({**head, **r} for r in per_class(said, true, weights) if r["n"])
        return out
