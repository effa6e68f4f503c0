"""Agreement on multi-label tasks, where each annotator gives an item a *set* of classes.

Krippendorff's alpha takes a distance between two answers; for sets it is
MASI (Passonneau 2006): one minus the Jaccard overlap scaled by how the sets
relate (1 equal, 2/3 one inside the other, 1/3 overlapping, 0 disjoint).
Per class, every answer becomes a yes/no ("is ``c`` in the set?") and the
single-label coefficients of :mod:`streams.labels.agreement` apply: Fleiss'
kappa, Cohen's kappa averaged over annotator pairs (Davies and Fleiss), and
percent agreement.

Data comes as in :mod:`streams.labels.agreement`: a table
``{item_id: {annotator_id: labels}}`` or rows ``(item_id, annotator_id, labels, ...)``,
where ``labels`` is any iterable of classes or a string joined by ``|``
(:func:`label_set`). Items labeled once do not enter the coefficients, and an
undefined coefficient is ``None``.

References
----------
Passonneau, R. (2006). Measuring agreement on set-valued items (MASI) for
semantic and pragmatic annotation. LREC.
Krippendorff, K. (2004). Content Analysis: An Introduction to Its Methodology, 2nd ed.

>>> rows = [("i1", "ann", "cat|dog"), ("i1", "bob", "cat"), ("i2", "ann", "dog"), ("i2", "bob", "dog"),
...         ("i3", "ann", "cat"), ("i3", "bob", "cat|fox")]
>>> round(krippendorff_alpha(rows), 4)
0.3878
>>> round(per_class_kappa(rows)["dog"]["fleiss_kappa"], 4)
0.3333
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Iterable, Mapping

import numpy as np

from streams.labels.agreement import _sorted, annotations, table

__all__ = ["SEPARATOR", "label_set", "set_table", "masi_distance", "jaccard_distance", "krippendorff_alpha",
           "binarize", "classes", "per_class_kappa", "report"]

#: What joins the classes of one answer in a text column (``"cat|dog"``).
SEPARATOR = "|"

LabelSet = frozenset


def label_set(labels: str | Iterable[Hashable], separator: str = SEPARATOR) -> frozenset:
    """One answer as a frozenset: a string is split on ``separator`` (blanks and spaces dropped).

    >>> sorted(label_set(" dog | cat|"))
    ['cat', 'dog']
    >>> label_set(["a", "a"]) == label_set("a")
    True
    """
    if isinstance(labels, str):
        return frozenset(p.strip() for p in labels.split(separator) if p.strip())
    return frozenset(labels)


def set_table(data) -> dict[Hashable, dict[Hashable, frozenset]]:
    """``{item_id: {annotator_id: frozenset}}``; a later answer of an annotator replaces an earlier one.

    >>> sorted(set_table([("i1", "ann", "b|a"), ("i1", "ann", "c")])["i1"]["ann"])
    ['c']
    """
    parsed: dict[Hashable, frozenset] = {}  # an export repeats the same few answers

    def parse(labels) -> frozenset:
        if isinstance(labels, frozenset):
            return labels
        key = labels if isinstance(labels, str) else None
        if key is None:
            return label_set(labels)
        if key not in parsed:
            parsed[key] = label_set(key)
        return parsed[key]

    return {item: {a: parse(labels) for a, labels in answers.items()} for item, answers in table(data).items()}


def masi_distance(a: frozenset, b: frozenset) -> float:
    """MASI distance: ``1 - |a & b| / |a | b| * m``, ``m`` 1 for equal sets, 2/3 for a
    subset, 1/3 for an overlap, 0 for disjoint sets. Two empty answers agree.

    >>> round(masi_distance({1, 2}, {1, 2, 3, 4}), 4), masi_distance({1}, {2}), masi_distance(set(), set())
    (0.6667, 1.0, 0.0)
    """
    inter, union = len(a & b), len(a | b)
    if not union:
        return 0.0
    if len(a) == len(b) == inter:
        m = 1.0
    elif inter == min(len(a), len(b)):
        m = 2 / 3
    elif inter:
        m = 1 / 3
    else:
        m = 0.0
    return 1.0 - inter / union * m


def jaccard_distance(a: frozenset, b: frozenset) -> float:
    """``1 - |a & b| / |a | b|`` (two empty answers agree).

    >>> jaccard_distance({1, 2}, {2, 3})
    0.6666666666666667
    """
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def _masi_of_counts(inter: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`masi_distance` from the sizes of the intersections and of the two sets."""
    union = a + b - inter
    m = np.where((a == b) & (a == inter), 1.0, np.where(inter == np.minimum(a, b), 2 / 3,
                                                        np.where(inter > 0, 1 / 3, 0.0)))
    return np.where(union > 0, 1.0 - np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0) * m, 0.0)


def _jaccard_of_counts(inter: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`jaccard_distance` from the sizes of the intersections and of the two sets."""
    union = a + b - inter
    return np.where(union > 0, 1.0 - np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0), 0.0)


#: Distances computed for whole arrays of set pairs at once (any other is called pair by pair).
_VECTORISED = {masi_distance: _masi_of_counts, jaccard_distance: _jaccard_of_counts}


class _Answers:
    """A set table as arrays: the distinct answers as rows of a class-membership
    matrix, and every pair of annotators on an item labeled at least twice
    (``u``/``v`` their answers, ``a``/``b`` the annotators in sorted order,
    ``item``, and ``m`` the item's number of answers)."""

    def __init__(self, tab: Mapping[Hashable, Mapping[Hashable, frozenset]]):
        self.tab = tab
        self.classes = _sorted({c for answers in tab.values() for s in answers.values() for c in s})
        self.annotators = _sorted({a for answers in tab.values() for a in answers})
        values: dict[frozenset, int] = {}
        ann = {a: k for k, a in enumerate(self.annotators)}
        cols = {c: k for k, c in enumerate(self.classes)}
        pairs = []
        self.multi = []  # per item labeled at least twice: the value index of each answer
        for i, answers in enumerate(tab.values()):
            idx = [(ann[a], values.setdefault(s, len(values))) for a, s in answers.items()]
            if len(idx) < 2:
                continue
            idx.sort()
            self.multi.append([v for _, v in idx])
            pairs += [(i, len(idx), a, u, b, v) for k, (a, u) in enumerate(idx) for b, v in idx[k + 1:]]
        self.values = list(values)
        self.B = np.zeros((len(values), len(self.classes)), dtype=bool)
        for k, s in enumerate(self.values):
            self.B[k, [cols[c] for c in s]] = True
        self.size = self.B.sum(1)
        self.item, self.m, self.a, self.u, self.b, self.v = (np.array(col, dtype=int).reshape(-1)
                                                           for col in (zip(*pairs) if pairs else [()] * 6))
        counts = np.bincount([v for item in self.multi for v in item], minlength=len(values))
        self.pooled = counts  # answers of each distinct value, over items labeled at least twice

    def distances(self, u: np.ndarray, v: np.ndarray, distance: Callable) -> np.ndarray:
        """``distance`` between the answers ``u[k]`` and ``v[k]`` (value indices)."""
        vectorised = _VECTORISED.get(distance)
        if vectorised is not None:
            return vectorised((self.B[u] & self.B[v]).sum(1), self.size[u], self.size[v])
        cache: dict[tuple[int, int], float] = {}
        out = np.empty(len(u))
        for k, key in enumerate(zip(u.tolist(), v.tolist())):
            if key not in cache:
                cache[key] = float(distance(self.values[key[0]], self.values[key[1]]))
            out[k] = cache[key]
        return out

    def expected(self, distance: Callable) -> float:
        """``sum_{u,v} n_u n_v d(u, v)`` over ordered pairs of the pooled answers."""
        present = np.flatnonzero(self.pooled)
        n = self.pooled[present].astype(float)
        total = 0.0
        step = max(1, 2_000_000 // max(len(present), 1))
        for start in range(0, len(present), step):
            rows = np.repeat(np.arange(start, min(start + step, len(present))), len(present))
            cols = np.tile(np.arange(len(present)), len(rows) // max(len(present), 1))
            d = self.distances(present[rows], present[cols], distance)
            total += float((n[rows] * n[cols] * d).sum())
        return total

    def per_class(self, classes_: Iterable[Hashable] | None = None) -> dict[Hashable, dict[str, Any]]:
        """:func:`per_class_kappa`."""
        column = {c: k for k, c in enumerate(self.classes)}
        item = np.repeat(np.arange(len(self.multi)), [len(v) for v in self.multi])
        value = np.array([v for answers in self.multi for v in answers], dtype=int)
        m = np.array([len(v) for v in self.multi], dtype=float)
        keys, pair = np.unique(self.a * max(len(self.annotators), 1) + self.b, return_inverse=True)
        n_pair = np.bincount(pair, minlength=len(keys)).astype(float)
        out = {}
        for cls in (self.classes if classes_ is None else classes_):
            yes = self.B[:, column[cls]] if cls in column else np.zeros(len(self.values), dtype=bool)
            y = np.bincount(item, weights=yes[value], minlength=len(self.multi))
            n, n_yes = float(m.sum()), float(y.sum())
            percent = float((y * (y - 1) + (m - y) * (m - y - 1)).dot(1.0 / (m * (m - 1)))) / len(m) if len(m) else None
            fleiss = None
            if percent is not None and 0.0 < n_yes < n:
                chance = (n_yes / n) ** 2 + (1.0 - n_yes / n) ** 2
                fleiss = (percent - chance) / (1.0 - chance)
            cohen = None
            if len(keys):
                yu, yv = yes[self.u].astype(float), yes[self.v].astype(float)
                agree = np.bincount(pair, weights=(yu == yv).astype(float), minlength=len(keys)) / n_pair
                su = np.bincount(pair, weights=yu, minlength=len(keys))
                sv = np.bincount(pair, weights=yv, minlength=len(keys))
                chance_k = (su * sv + (n_pair - su) * (n_pair - sv)) / (n_pair * n_pair)
                ao, ae = float(agree.mean()), float(chance_k.mean())
                cohen = None if ae >= 1.0 else (ao - ae) / (1.0 - ae)
            out[cls] = {"prevalence": n_yes / n if n else None, "percent_agreement": percent,
                        "fleiss_kappa": fleiss, "cohen_kappa": cohen}
        return out

    def alpha(self, distance: Callable) -> float | None:
        n = int(self.pooled.sum())
        expected = self.expected(distance) if n else 0.0
        if not expected:
            return None
        observed = float((2.0 * self.distances(self.u, self.v, distance) / (self.m - 1)).sum())
        return 1.0 - (n - 1) * observed / expected


def krippendorff_alpha(data, distance: Callable[[frozenset, frozenset], float] = masi_distance) -> float | None:
    """Krippendorff's alpha of set-valued answers under ``distance`` (MASI by default).

    ``1 - D_o / D_e`` with the observed disagreement
    ``D_o = 1/n sum_items sum_{u,v} n_iu n_iv d(u, v) / (m_i - 1)`` over items with
    ``m_i >= 2`` answers (``n`` of them in all) and the expected one
    ``D_e = sum_{u,v} n_u n_v d(u, v) / (n (n - 1))`` from the pooled answers.
    ``None`` when ``D_e`` is 0 (every pairable answer the same).

    >>> krippendorff_alpha({"i1": {"a": "x", "b": "x"}, "i2": {"a": "y", "b": "y"}})
    1.0
    >>> round(krippendorff_alpha({"i1": {"a": "x|y", "b": "x"}, "i2": {"a": "y", "b": "y"}}), 4)
    0.5
    """
    return _Answers(set_table(data)).alpha(distance)


def binarize(data, cls: Hashable) -> dict[Hashable, dict[Hashable, bool]]:
    """The yes/no table of one class: was ``cls`` in each annotator's answer?

    >>> binarize([("i1", "ann", "cat|dog"), ("i1", "bob", "dog")], "cat")
    {'i1': {'ann': True, 'bob': False}}
    """
    return {item: {a: cls in labels for a, labels in answers.items()}
            for item, answers in set_table(data).items()}


def classes(data) -> list:
    """Every class chosen at least once, sorted.

    >>> classes([("i1", "ann", "b|a"), ("i2", "ann", "c")])
    ['a', 'b', 'c']
    """
    return _sorted({c for answers in set_table(data).values() for labels in answers.values() for c in labels})


def per_class_kappa(data, classes_: Iterable[Hashable] | None = None) -> dict[Hashable, dict[str, Any]]:
    """Per class, agreement on "is it in the set?" over items labeled at least twice.

    ``{class: {"prevalence", "percent_agreement", "fleiss_kappa", "cohen_kappa"}}``:
    the share of those items' answers that chose the class, the share of annotator pairs
    agreeing on it, Fleiss' kappa, and Cohen's kappa averaged over annotator
    pairs (Davies and Fleiss 1982). ``classes_`` defaults to every class chosen.

    >>> k = per_class_kappa({"i1": {"a": "x|y", "b": "x"}, "i2": {"a": "y", "b": "y"}})
    >>> k["x"]["percent_agreement"], k["y"]["fleiss_kappa"], k["x"]["cohen_kappa"]
    (1.0, -0.3333333333333333, 1.0)
    """
    return _Answers(set_table(data)).per_class(classes_)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def report(data, gold: Mapping[Hashable, Any] | None = None) -> dict[str, Any]:
    """The multi-label agreement figures in one JSON-ready dict.

    Keys: ``n_annotations``, ``n_labels`` (answers after corrections),
    ``n_items``, ``n_items_multi`` (labeled at least twice), ``n_annotators``,
    ``classes``, ``krippendorff_alpha`` (MASI), ``krippendorff_alpha_jaccard``,
    ``exact_agreement`` (share of annotator pairs giving the same set),
    ``mean_set_size``, ``per_class`` (see :func:`per_class_kappa`) and
    ``per_annotator``: ``{annotator: {n_labels, mean_set_size, items_shared,
    masi_agreement, n_gold, gold_exact, gold_masi}}``: ``masi_agreement`` is the
    mean ``1 - MASI`` against every other answer on the items they share;
    with ``gold`` answers ``{item_id: labels}``, ``gold_exact`` is the share of
    their gold items answered with exactly the gold set and ``gold_masi`` the
    mean ``1 - MASI`` to it (``None`` without gold items).

    >>> r = report([("i1", "x", "a|b"), ("i1", "y", "a")], gold={"i1": "a"})
    >>> r["classes"], r["exact_agreement"], round(r["per_annotator"]["x"]["masi_agreement"], 4)
    (['a', 'b'], 0.0, 0.3333)
    >>> r["per_annotator"]["x"]["gold_exact"], r["per_annotator"]["y"]["gold_masi"]
    (0.0, 1.0)
    """
    rows = annotations(data)
    tab = set_table(rows)
    arrays = _Answers(tab)
    gold = {item: label_set(labels) for item, labels in (gold or {}).items()}
    sizes: dict[Hashable, list[int]] = {}
    for answers in tab.values():
        for a, labels in answers.items():
            sizes.setdefault(a, []).append(len(labels))
    k = len(arrays.annotators)
    # per pair of annotators on an item: same set?, and 1 - MASI shared out over the item's other answers
    per_item = np.bincount(arrays.item, minlength=len(tab))
    same = np.bincount(arrays.item, weights=(arrays.u == arrays.v).astype(float), minlength=len(tab))
    exact = same[per_item > 0] / per_item[per_item > 0]
    share = (1.0 - arrays.distances(arrays.u, arrays.v, masi_distance)) / (arrays.m - 1)
    agreement = np.bincount(arrays.a, weights=share, minlength=k) + np.bincount(arrays.b, weights=share, minlength=k)
    index = {a: j for j, a in enumerate(arrays.annotators)}
    shared = np.bincount([index[a] for answers in tab.values() if len(answers) >= 2 for a in answers],
                         minlength=k)
    golds: dict[Hashable, list[tuple[frozenset, frozenset]]] = {}
    for item, answer in gold.items():
        for a, labels in tab.get(item, {}).items():
            golds.setdefault(a, []).append((labels, answer))
    per_annotator = {}
    for j, a in enumerate(arrays.annotators):
        mine = golds.get(a, [])
        per_annotator[a] = {"n_labels": len(sizes[a]), "mean_set_size": _mean(sizes[a]),
                            "items_shared": int(shared[j]),
                            "masi_agreement": float(agreement[j] / shared[j]) if shared[j] else None,
                            "n_gold": len(mine), "gold_exact": _mean([float(x == g) for x, g in mine]),
                            "gold_masi": _mean([1.0 - masi_distance(x, g) for x, g in mine])}
    return {
        "n_annotations": len(rows), "n_labels": sum(len(v) for v in tab.values()), "n_items": len(tab),
        "n_items_multi": len(arrays.multi), "n_annotators": len(per_annotator),
        "classes": arrays.classes, "krippendorff_alpha": arrays.alpha(masi_distance),
        "krippendorff_alpha_jaccard": arrays.alpha(jaccard_distance),
        "exact_agreement": float(exact.mean()) if len(exact) else None,
        "mean_set_size": _mean([s for v in sizes.values() for s in v]),
        "per_class": arrays.per_class(), "per_annotator": per_annotator,
    }
