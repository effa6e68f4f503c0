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
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Mapping

from streams.labels.agreement import _Pooled, _confusions, _multi_kappa, _sorted, annotations, table

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
    return {item: {a: label_set(labels) for a, labels in answers.items()} for item, answers in table(data).items()}


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


def _values(tab: Mapping[Hashable, Mapping[Hashable, frozenset]]) -> tuple[list[Counter], Counter]:
    """Per item labeled at least twice, the count of each answer; and those counts pooled."""
    items, pooled = [], Counter()
    for answers in tab.values():
        if len(answers) >= 2:
            counts = Counter(answers.values())
            items.append(counts)
            pooled.update(counts)
    return items, pooled


def _pair_sum(counts: Mapping[frozenset, int], distance: Callable, cache: dict) -> float:
    """``sum_{u, v} n_u n_v d(u, v)`` over ordered pairs of the distinct answers."""
    values = list(counts)
    total = []
    for i, u in enumerate(values):
        for v in values[i + 1:]:
            key = (u, v)
            if key not in cache:
                cache[key] = cache[(v, u)] = float(distance(u, v))
            total.append(2.0 * counts[u] * counts[v] * cache[key])
    return math.fsum(total)


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
    items, pooled = _values(set_table(data))
    n = sum(pooled.values())
    cache: dict = {}
    expected = _pair_sum(pooled, distance, cache)
    if not expected:
        return None
    observed = math.fsum(_pair_sum(c, distance, cache) / (sum(c.values()) - 1) for c in items)
    return 1.0 - (n - 1) * observed / expected


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
    the share of answers that chose the class, the share of annotator pairs
    agreeing on it, Fleiss' kappa, and Cohen's kappa averaged over annotator
    pairs (Davies and Fleiss 1982). ``classes_`` defaults to every class chosen.

    >>> k = per_class_kappa({"i1": {"a": "x|y", "b": "x"}, "i2": {"a": "y", "b": "y"}})
    >>> k["x"]["percent_agreement"], k["y"]["fleiss_kappa"], k["x"]["cohen_kappa"]
    (1.0, -0.3333333333333333, 1.0)
    """
    tab = set_table(data)
    out = {}
    for cls in (classes(tab) if classes_ is None else classes_):
        yes_no = {item: {a: cls in labels for a, labels in answers.items()} for item, answers in tab.items()}
        pooled = _Pooled.of(yes_no)
        n = sum(pooled.labels.values())
        out[cls] = {"prevalence": pooled.labels.get(True, 0) / n if n else None,
                    "percent_agreement": pooled.percent(), "fleiss_kappa": pooled.fleiss(),
                    "cohen_kappa": _multi_kappa(_confusions(yes_no))}
    return out


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _gold_row(tab, gold: Mapping[Hashable, frozenset], annotator: Hashable) -> dict[str, Any]:
    mine = [(tab[item][annotator], answer) for item, answer in gold.items()
            if annotator in tab.get(item, {})]
    return {"n_gold": len(mine), "gold_exact": _mean([float(a == g) for a, g in mine]),
            "gold_masi": _mean([1.0 - masi_distance(a, g) for a, g in mine])}


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
    gold = {item: label_set(labels) for item, labels in (gold or {}).items()}
    exact, agreement, sizes = [], {}, {}
    for answers in tab.values():
        names = list(answers)
        for a in names:
            sizes.setdefault(a, []).append(len(answers[a]))
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        if pairs:
            exact.append(sum(answers[a] == answers[b] for a, b in pairs) / len(pairs))
        for a in names:
            others = [1.0 - masi_distance(answers[a], answers[b]) for b in names if b != a]
            if others:
                agreement.setdefault(a, []).append(_mean(others))
    per_annotator = {a: {"n_labels": len(sizes[a]), "mean_set_size": _mean(sizes[a]),
                         "items_shared": len(agreement.get(a, [])), "masi_agreement": _mean(agreement.get(a, [])),
                         **_gold_row(tab, gold, a)}
                     for a in _sorted(sizes)}
    return {
        "n_annotations": len(rows), "n_labels": sum(len(v) for v in tab.values()), "n_items": len(tab),
        "n_items_multi": sum(len(v) >= 2 for v in tab.values()), "n_annotators": len(per_annotator),
        "classes": classes(tab), "krippendorff_alpha": krippendorff_alpha(tab),
        "krippendorff_alpha_jaccard": krippendorff_alpha(tab, jaccard_distance),
        "exact_agreement": _mean(exact),
        "mean_set_size": _mean([s for v in sizes.values() for s in v]),
        "per_class": per_class_kappa(tab), "per_annotator": per_annotator,
    }
