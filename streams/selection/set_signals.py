"""Per-item signals for multi-label tasks, from per-class probabilities ``{class: P(in the set)}``.

Each class is a yes/no question with its own binary entropy (in bits, so 0 is
certain and 1 a coin toss); an item's uncertainty is their mean (how unsure
the model is about the item's set overall) or their max (is there one class
it cannot call). The disagreement of two models is the mean gap of their
per-class probabilities. All in ``[0, 1]``, higher meaning *more worth a label*,
like :mod:`streams.selection.signals`.

>>> p = {"cat": 0.5, "dog": 0.9, "fox": 0.02}
>>> round(mean_entropy(p), 3), round(max_entropy(p), 3)
(0.537, 1.0)
>>> round(set_disagreement(p, {"cat": 0.5, "dog": 0.3}), 3)
0.36
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping

__all__ = ["class_entropies", "mean_entropy", "max_entropy", "set_uncertainty", "set_disagreement", "score"]

SetProba = Mapping[Hashable, float]


def _h(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def class_entropies(proba: SetProba) -> dict[Hashable, float]:
    """Binary entropy of each class's yes/no, in bits.

    >>> class_entropies({"a": 0.5, "b": 1.0})
    {'a': 1.0, 'b': 0.0}
    """
    return {c: _h(p) for c, p in proba.items()}


def mean_entropy(proba: SetProba) -> float:
    """Mean per-class binary entropy (0 with no class).

    >>> mean_entropy({"a": 0.5, "b": 0.0})
    0.5
    """
    return math.fsum(_h(p) for p in proba.values()) / len(proba) if proba else 0.0


def max_entropy(proba: SetProba) -> float:
    """The largest per-class binary entropy: the class the model is least sure of.

    >>> max_entropy({"a": 0.5, "b": 0.0})
    1.0
    """
    return max((_h(p) for p in proba.values()), default=0.0)


def set_uncertainty(proba: SetProba, how: str = "mean") -> float:
    """:func:`mean_entropy` or :func:`max_entropy`, by name (a policy option).

    >>> set_uncertainty({"a": 0.5, "b": 0.0}, "max")
    1.0
    """
    if how == "mean":
        return mean_entropy(proba)
    if how == "max":
        return max_entropy(proba)
    raise ValueError(f"unknown multi-label uncertainty {how!r}: choose mean or max")


def set_disagreement(p: SetProba, q: SetProba) -> float:
    """Mean absolute gap between two models' per-class probabilities (a class one
    model lacks counts as 0.5 there, "unknown").

    >>> set_disagreement({"a": 1.0, "b": 0.0}, {"a": 0.0})
    0.75
    """
    classes = set(p) | set(q)
    if not classes:
        return 0.0
    return math.fsum(abs(p.get(c, 0.5) - q.get(c, 0.5)) for c in classes) / len(classes)


def score(production: SetProba, shadow: SetProba | None = None, how: str = "mean") -> dict[str, float]:
    """All signals of one multi-label item, as :func:`streams.selection.signals.score` gives them
    for one label: ``entropy`` (mean per-class entropy) and ``max_entropy`` of the production
    model, the same of the shadow model and their :func:`set_disagreement` once it has one, and
    ``uncertainty``, what the policy samples on: the production model's :func:`set_uncertainty`
    (``how``), averaged with the shadow model's and raised to at least their disagreement.
    ``label_disagreement`` is 1 when the two predicted sets (classes over 0.5) differ.

    >>> s = score({"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.1})
    >>> round(s["entropy"], 3), round(s["shadow_entropy"], 3), s["label_disagreement"], round(s["uncertainty"], 3)
    (0.469, 0.734, 1.0, 0.602)
    >>> score({}, None)
    {'entropy': 0.0, 'max_entropy': 0.0, 'uncertainty': 0.0}
    """
    out = {"entropy": mean_entropy(production), "max_entropy": max_entropy(production)}
    uncertainty = set_uncertainty(production, how)
    if shadow:
        out["shadow_entropy"] = mean_entropy(shadow)
        out["shadow_max_entropy"] = max_entropy(shadow)
        if production:
            out["disagreement"] = set_disagreement(production, shadow)
            chosen = lambda p: {c for c, v in p.items() if v > 0.5}  # noqa: E731
            out["label_disagreement"] = float(chosen(production) != chosen(shadow))
            uncertainty = max(0.5 * (uncertainty + set_uncertainty(shadow, how)), out["disagreement"])
        else:  # no production model (an offline replay): the shadow model alone
            uncertainty = set_uncertainty(shadow, how)
    out["uncertainty"] = uncertainty
    return out
