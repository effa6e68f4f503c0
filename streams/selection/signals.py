"""Per-item signals: how unsure the models are, and how much they disagree.

Uncertainty sampling (Lewis and Gale, SIGIR 1994; the measures as surveyed by
Settles, "Active Learning Literature Survey", 2009) and query by committee
(Seung, Opper and Sompolinsky, COLT 1992): vote entropy (Dagan and Engelson,
ICML 1995) and the mean Kullback-Leibler divergence of the members from their
mean probabilities, the committee's "consensus" in McCallum and Nigam (ICML
1998); here :func:`mean_proba`, since a consensus *label* is what
:mod:`streams.labels.consensus` settles from annotators.

Every function takes class probabilities as a ``{label: probability}`` dict and
returns a float in ``[0, 1]`` where higher means *more worth a label*, except
:func:`margin`, which keeps its usual meaning (gap between the two most likely
classes; small means unsure). Uncertainty measures are normalised by their value
on the uniform distribution, so binary and multi-class items compare.

>>> p = {"cat": 0.5, "dog": 0.3, "fox": 0.2}
>>> round(least_confidence(p), 3), round(margin(p), 3), round(entropy(p), 3)
(0.75, 0.2, 0.937)
>>> round(disagreement(p, {"cat": 0.1, "dog": 0.9}), 3)
0.6
>>> members = [{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.8}, {"a": 0.6, "b": 0.4}]
>>> round(vote_entropy(members), 3), round(consensus_kl(members), 3)
(0.918, 0.267)
"""

from __future__ import annotations

import math
from typing import Mapping

Proba = Mapping[str, float]


def _top2(proba: Proba) -> tuple[float, float]:
    first = second = 0.0
    for p in proba.values():
        if p > first:
            first, second = p, first
        elif p > second:
            second = p
    return first, second


def least_confidence(proba: Proba, n_classes: int | None = None) -> float:
    """``1 - max p``, scaled so the uniform distribution scores 1."""
    k = max(n_classes or len(proba), 2)
    first, _ = _top2(proba)
    return min(1.0, max(0.0, (1.0 - first) / (1.0 - 1.0 / k)))


def margin(proba: Proba) -> float:
    """Gap between the two most likely classes (0: a coin toss, 1: certain)."""
    first, second = _top2(proba)
    return first - second


def entropy(proba: Proba, n_classes: int | None = None) -> float:
    """Shannon entropy divided by ``log k`` (0: certain, 1: uniform)."""
    k = max(n_classes or len(proba), 2)
    h = -sum(p * math.log(p) for p in proba.values() if p > 0.0)
    return min(1.0, max(0.0, h / math.log(k)))


def disagreement(p: Proba, q: Proba) -> float:
    """Total variation distance between two models' class probabilities."""
    labels = set(p) | set(q)
    return 0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in labels)


def vote_entropy(members: list[Proba], n_classes: int | None = None) -> float:
    """Entropy of the members' votes for their top labels, over its largest possible value."""
    votes: dict[str, float] = {}
    for proba in members:
        label = top_label(proba)
        if label is not None:
            votes[label] = votes.get(label, 0.0) + 1.0
    n = sum(votes.values())
    if n == 0:
        return 0.0
    k = min(n_classes or len(mean_proba(members)), len(members))
    return entropy({c: v / n for c, v in votes.items()}, max(k, 2))


def mean_proba(members: list[Proba]) -> dict[str, float]:
    """The members' mean class probabilities (what a committee predicts).

    >>> mean_proba([{"a": 1.0}, {"a": 0.5, "b": 0.5}])
    {'a': 0.75, 'b': 0.25}
    """
    out: dict[str, float] = {}
    for proba in members:
        for c, p in proba.items():
            out[c] = out.get(c, 0.0) + p / len(members)
    return out


def consensus_kl(members: list[Proba], n_classes: int | None = None) -> float:
    """Mean KL divergence of the members from their mean probabilities, over ``log k``."""
    mean = mean_proba(members)
    k = max(n_classes or len(mean), 2)
    kl = sum(p * math.log(p / mean[c]) for proba in members for c, p in proba.items() if p > 0.0)
    return min(1.0, kl / len(members) / math.log(k)) if members else 0.0


def top_label(proba: Proba) -> str | None:
    """The most likely label (ties broken by label order), or None if empty.

    >>> top_label({"a": 0.4, "b": 0.6})
    'b'
    """
    if not proba:
        return None
    return max(sorted(proba), key=proba.__getitem__)


def score(production: Proba, shadow: Proba | None = None, n_classes: int | None = None,
          committee: list[Proba] | None = None) -> dict[str, float]:
    """All signals of one item, as a flat dict (what a routing decision records).

    ``uncertainty`` is the summary the policy samples on: ``1 - margin`` of the
    production model, averaged with the shadow model's once it has one, and
    raised to at least the models' disagreement. With the class probabilities
    of a shadow ``committee``'s members, ``committee`` is their disagreement
    (the larger of vote entropy and consensus KL), and raises it too.

    >>> s = score({"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.8})
    >>> s["label_disagreement"], round(s["uncertainty"], 2)
    (1.0, 0.7)
    """
    out = {
        "least_confidence": least_confidence(production, n_classes),
        "margin": margin(production),
        "entropy": entropy(production, n_classes),
    }
    uncertainty = 1.0 - out["margin"]
    if shadow:
        out["shadow_least_confidence"] = least_confidence(shadow, n_classes)
        out["shadow_margin"] = margin(shadow)
        out["shadow_entropy"] = entropy(shadow, n_classes)
        out["disagreement"] = disagreement(production, shadow)
        out["label_disagreement"] = float(top_label(production) != top_label(shadow))
        uncertainty = max(0.5 * (uncertainty + 1.0 - out["shadow_margin"]), out["disagreement"])
    if committee:
        out["vote_entropy"] = vote_entropy(committee, n_classes)
        out["consensus_kl"] = consensus_kl(committee, n_classes)
        out["committee"] = max(out["vote_entropy"], out["consensus_kl"])
        uncertainty = max(uncertainty, out["committee"])
    out["uncertainty"] = uncertainty
    return out


# --------------------------------------------------------------------------- many items at once
# The scorer's batch entry point: the signals of :func:`score` for a whole message of
# items in a few numpy passes (to 1e-12 of the one-item functions, which sum in another order).


def score_many(production: list[Proba], shadow: list[Proba] | None, n_classes: list[int]) -> list[dict[str, float]]:
    """:func:`score` of each item (no committee): its production and shadow probabilities, its class count.

    >>> prods = [{"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 1.0}]
    >>> shadows = [{"a": 0.2, "b": 0.8}, {}, {"b": 1.0}]
    >>> many = score_many(prods, shadows, [2, 3, 2])
    >>> one = [score(p, s, k) for p, s, k in zip(prods, shadows, [2, 3, 2])]
    >>> all(m.keys() == o.keys() and max(abs(m[k] - o[k]) for k in o) < 1e-12 for m, o in zip(many, one))
    True
    """
    import numpy as np

    n = len(production)
    if not n:
        return []
    shadow = shadow or [{}] * n
    labels = sorted(set().union(*production, *shadow))
    index = {c: i for i, c in enumerate(labels)}
    width = max(len(labels), 2)  # a missing class is a probability of 0, as _top2 starts from 0
    P, Q = np.zeros((n, width)), np.zeros((n, width))
    for row, (p, q) in enumerate(zip(production, shadow)):
        for c, v in p.items():
            P[row, index[c]] = v
        for c, v in q.items():
            Q[row, index[c]] = v
    return score_matrix(P, Q, n_classes, np.array([bool(q) for q in shadow]))


def score_matrix(P, Q, n_classes, has) -> list[dict[str, float]]:
    """:func:`score_many` of items given as arrays: ``P`` and ``Q`` the production and shadow
    probabilities (a row an item, a column a label, the labels in sorted order and at least
    two columns, 0 for a label an item lacks), ``n_classes`` each item's class count and
    ``has`` whether it has shadow probabilities (numpy arrays).

    >>> import numpy as np
    >>> P, Q = np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.0, 0.0]])
    >>> score_matrix(P, Q, np.array([2, 2]), np.array([True, False])) == score_many(
    ...     [{"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.5}], [{"a": 0.2, "b": 0.8}, {}], [2, 2])
    True
    """
    import numpy as np

    k = np.maximum(np.asarray(n_classes, dtype=float), 2.0)

    def measures(M):
        top = -np.partition(-M, 1, axis=1)[:, :2]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(M > 0.0, M * np.log(np.where(M > 0.0, M, 1.0)), 0.0).sum(1)
        return (np.clip((1.0 - top[:, 0]) / (1.0 - 1.0 / k), 0.0, 1.0), top[:, 0] - top[:, 1],
                np.clip(h / np.log(k), 0.0, 1.0))

    lc, m, e = measures(P)
    uncertainty = 1.0 - m
    if not has.any():
        return [{"least_confidence": a, "margin": b, "entropy": c, "uncertainty": u}
                for a, b, c, u in zip(lc.tolist(), m.tolist(), e.tolist(), uncertainty.tolist())]
    slc, sm, se = measures(Q)
    dis = 0.5 * np.abs(P - Q).sum(1)
    label_dis = (P.argmax(1) != Q.argmax(1)).astype(float)
    uncertainty = np.where(has, np.maximum(0.5 * (uncertainty + 1.0 - sm), dis), uncertainty)
    # a row's keys in the order score gives them; a row without shadow probabilities has none of the shadow's
    columns = [lc, m, e, slc, sm, se, dis, label_dis, uncertainty]
    if has.all():
        return [dict(zip(_NAMES, values)) for values in zip(*(c.tolist() for c in columns))]
    return [dict(zip(_NAMES, values)) if with_shadow else dict(zip(_NAMES[:3] + _NAMES[-1:], values[:3] + values[-1:]))
            for values, with_shadow in zip(zip(*(c.tolist() for c in columns)), has.tolist())]


#: The signals :func:`score_matrix` gives an item with shadow probabilities, in :func:`score`'s order.
_NAMES = ("least_confidence", "margin", "entropy", "shadow_least_confidence", "shadow_margin", "shadow_entropy",
          "disagreement", "label_disagreement", "uncertainty")
