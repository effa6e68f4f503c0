"""Annotator agreement: how far the people labeling agree, and whom to trust.

Label data is canonically a *table* ``{item_id: {annotator_id: label}}``.
Every function also takes the raw export, an iterable of annotations
``(item_id, annotator_id, label[, ts_ms[, duration_ms]])``, converted by
:func:`table`; a later label by the same annotator for the same item replaces
the earlier one. :func:`label_drift` and :func:`labeling_speed` are about order
and time, so they read the annotations themselves (a table counts in item order).

Items labeled by fewer than two annotators do not enter the agreement
coefficients. A coefficient that is undefined (chance agreement of 1, i.e. a
single class, or no item labeled twice) is ``None``, never NaN, so reports stay
valid JSON. Ties in a majority go to the first label in sorted order.

>>> rows = [("i1", "ann", "cat"), ("i1", "bob", "cat"), ("i1", "cy", "dog"),
...         ("i2", "ann", "dog"), ("i2", "bob", "dog"), ("i3", "ann", "cat")]
>>> round(percent_agreement(rows), 3), round(fleiss_kappa(rows), 3), round(krippendorff_alpha(rows), 3)
(0.667, 0.306, 0.333)
>>> majority(["cat", "dog", "cat"])
('cat', 0.6666666666666666)
>>> t = AgreementTracker()
>>> for row in rows:
...     t.add(*row)
>>> t.report() == report(rows)
True
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Hashable, Iterable, Mapping, NamedTuple

import numpy as np

from streams.selection.budget import DAY_MS, HOUR_MS

Label = Hashable
Table = Mapping[Hashable, Mapping[Hashable, Label]]


class Annotation(NamedTuple):
    """One label given by one annotator to one item (times in milliseconds), with
    the model's suggestion for the item and the guideline version the annotator saw."""

    item_id: Hashable
    annotator_id: Hashable
    label: Label
    ts_ms: int | None = None
    duration_ms: float | None = None
    model_label: Label | None = None
    guideline_version: str | None = None


# --------------------------------------------------------------------------- input


def annotations(data: Table | Iterable[tuple]) -> list[Annotation]:
    """The data as a list of :class:`Annotation` (a table yields them in item order).

    >>> annotations({"i1": {"ann": "cat"}})
    [Annotation(item_id='i1', annotator_id='ann', label='cat', ts_ms=None, duration_ms=None, model_label=None, guideline_version=None)]
    """
    if isinstance(data, Mapping):
        return [Annotation(item, a, label) for item, labels in data.items() for a, label in labels.items()]
    return [row if isinstance(row, Annotation) else Annotation(*row) for row in data]


def table(data: Table | Iterable[tuple]) -> dict[Hashable, dict[Hashable, Label]]:
    """``{item_id: {annotator_id: label}}``; a later label of an annotator replaces an earlier one.

    >>> table([("i1", "ann", "cat"), ("i1", "bob", "dog"), ("i1", "ann", "dog")])
    {'i1': {'ann': 'dog', 'bob': 'dog'}}
    """
    if isinstance(data, Mapping):
        return {item: dict(labels) for item, labels in data.items()}
    out: dict[Hashable, dict[Hashable, Label]] = {}
    for row in data:
        out.setdefault(row[0], {})[row[1]] = row[2]
    return out


def _sorted(values: Iterable) -> list:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:  # mixed types: a stable, if arbitrary, order
        return sorted(values, key=repr)


def _pair(a: Hashable, b: Hashable) -> tuple[Hashable, Hashable]:
    return tuple(_sorted((a, b)))  # type: ignore[return-value]


def _bump(counter: dict, key: Hashable, delta: int) -> None:
    value = counter.get(key, 0) + delta
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


# --------------------------------------------------------------------------- consensus


def majority(labels: Iterable[Label]) -> tuple[Label, float]:
    """The most frequent label and its share of the votes (ties: first label in order).

    >>> majority(["dog", "cat"])
    ('cat', 0.5)
    """
    counts = Counter(labels)
    if not counts:
        raise ValueError("majority of no labels")
    best = max(counts.values())
    return _sorted(c for c, n in counts.items() if n == best)[0], best / sum(counts.values())


def dawid_skene(data: Table | Iterable[tuple], iterations: int = 50, tol: float = 1e-6,
                smoothing: float = 0.01) -> tuple[dict, dict]:
    """Consensus labels and annotator accuracies by Dawid and Skene's EM (1979).

    Each annotator gets a confusion matrix over the classes seen in the data;
    the EM starts from the vote shares and alternates between class posteriors
    per item and maximum-likelihood priors and confusion matrices, these with
    ``smoothing`` pseudo-counts per cell so no probability is ever zero.

    Returns
    -------
    consensus
        ``{item: (label, posterior probability of that label)}``.
    accuracy
        ``{annotator: estimated share of their labels that are correct}``
        (the mean posterior of the labels they gave).

    >>> rows = [(i, a, "x" if i < 6 or a == "good" else "y") for i in range(8) for a in ("good", "b1", "b2")]
    >>> consensus, accuracy = dawid_skene(rows)
    >>> consensus[0][0], consensus[7][0]
    ('x', 'y')
    """
    tab = table(data)
    items = list(tab)
    annotators = _sorted({a for labels in tab.values() for a in labels})
    classes = _sorted({label for labels in tab.values() for label in labels.values()})
    if not items:
        return {}, {}
    ai = {a: k for k, a in enumerate(annotators)}
    ci = {c: k for k, c in enumerate(classes)}
    rows = [(i, ai[a], ci[label]) for i, item in enumerate(items) for a, label in tab[item].items()]
    i_idx, a_idx, l_idx = (np.array(col) for col in zip(*rows))
    n_items, n_ann, k = len(items), len(annotators), len(classes)

    post = np.zeros((n_items, k))
    np.add.at(post, (i_idx, l_idx), 1.0)
    post /= post.sum(1, keepdims=True)
    for _ in range(iterations):
        prior = (post.sum(0) + smoothing) / (n_items + k * smoothing)
        conf = np.full((n_ann, k, k), smoothing)  # [annotator, true class, given label]
        np.add.at(conf, (a_idx, slice(None), l_idx), post[i_idx])
        conf /= conf.sum(2, keepdims=True)
        log_post = np.tile(np.log(prior), (n_items, 1))
        np.add.at(log_post, i_idx, np.log(conf[a_idx, :, l_idx]))
        new = np.exp(log_post - log_post.max(1, keepdims=True))
        new /= new.sum(1, keepdims=True)
        done = np.abs(new - post).max() < tol
        post = new
        if done:
            break

    best = post.argmax(1)
    consensus = {item: (classes[best[i]], float(post[i, best[i]])) for i, item in enumerate(items)}
    given = post[i_idx, l_idx]
    accuracy = {a: float(given[a_idx == ai[a]].mean()) for a in annotators}
    return consensus, accuracy


# --------------------------------------------------------------------------- agreement coefficients


class _Pooled:
    """What percent agreement, Fleiss' kappa and Krippendorff's alpha share.

    Over items with ``m >= 2`` labels: items per ``m``, agreeing ordered pairs
    ``sum_c n_c (n_c - 1)`` per ``m``, and the pooled label counts. All
    integers, so a tracker can add and remove items without rounding drift.
    """

    def __init__(self) -> None:
        self.items: dict[int, int] = {}
        self.agreeing: dict[int, int] = {}
        self.labels: dict[Label, int] = {}

    def update(self, labels: Iterable[Label], sign: int = 1) -> None:
        counts = Counter(labels)
        m = sum(counts.values())
        if m < 2:
            return
        _bump(self.items, m, sign)
        _bump(self.agreeing, m, sign * sum(n * (n - 1) for n in counts.values()))
        for label, n in counts.items():
            _bump(self.labels, label, sign * n)

    @classmethod
    def of(cls, tab: Table) -> "_Pooled":
        pooled = cls()
        for labels in tab.values():
            pooled.update(labels.values())
        return pooled

    def percent(self) -> float | None:
        n_items = sum(self.items.values())
        if not n_items:
            return None
        return math.fsum(self.agreeing.get(m, 0) / (m * (m - 1)) for m in sorted(self.items)) / n_items

    def fleiss(self) -> float | None:
        observed, n = self.percent(), sum(self.labels.values())
        if observed is None or len(self.labels) < 2:
            return None
        chance = math.fsum((c / n) ** 2 for c in self.labels.values())
        return (observed - chance) / (1.0 - chance)

    def alpha(self) -> float | None:
        n = sum(self.labels.values())
        expected = n * n - sum(c * c for c in self.labels.values())  # sum over c != k of n_c n_k
        if not expected:
            return None
        diagonal = math.fsum(self.agreeing.get(m, 0) / (m - 1) for m in sorted(self.items))
        return 1.0 - (n - 1) * (n - diagonal) / expected


def percent_agreement(data: Table | Iterable[tuple]) -> float | None:
    """Mean over items labeled at least twice of the share of annotator pairs that agree.

    >>> percent_agreement({"i1": {"a": 1, "b": 1, "c": 2}, "i2": {"a": 1, "b": 1}})
    0.6666666666666666
    """
    return _Pooled.of(table(data)).percent()


def fleiss_kappa(data: Table | Iterable[tuple]) -> float | None:
    """Fleiss' kappa (1971), generalised to items with unequal numbers of raters.

    Observed agreement is :func:`percent_agreement`; chance agreement is
    ``sum_c p_c**2`` with ``p_c`` the share of class ``c`` among all labels of
    the items labeled at least twice. With the same number of raters on every
    item this is exactly Fleiss' definition. ``None`` with a single class.

    >>> round(fleiss_kappa({"i1": {"a": 1, "b": 1}, "i2": {"a": 2, "b": 2}, "i3": {"a": 1, "b": 2}}), 3)
    0.333
    """
    return _Pooled.of(table(data)).fleiss()


def krippendorff_alpha(data: Table | Iterable[tuple]) -> float | None:
    """Krippendorff's alpha for nominal labels, missing annotations allowed.

    From the coincidence matrix of pairable values (items labeled at least
    twice): ``1 - (n - 1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k``.
    ``None`` when fewer than two classes are pairable.

    >>> round(krippendorff_alpha({"i1": {"a": 1, "b": 1}, "i2": {"a": 2, "b": 2}, "i3": {"a": 1, "b": 2}}), 3)
    0.444
    """
    return _Pooled.of(table(data)).alpha()


def _kappa(confusion: Mapping[tuple[Label, Label], int]) -> float | None:
    n = sum(confusion.values())
    rows: Counter = Counter()
    cols: Counter = Counter()
    for (x, y), c in confusion.items():
        rows[x] += c
        cols[y] += c
    agree = sum(c for (x, y), c in confusion.items() if x == y)
    chance = sum(rows[k] * cols[k] for k in rows)  # n**2 times the chance agreement
    if not n or n * n == chance:
        return None
    return (n * agree - chance) / (n * n - chance)


def cohen_kappa(y1: Iterable[Label], y2: Iterable[Label]) -> float | None:
    """Cohen's kappa of two aligned label sequences.

    ``None`` when undefined: no labels, or both raters used one and the same
    class throughout (chance agreement 1; scikit-learn returns NaN there).

    >>> cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    0.5
    >>> cohen_kappa(["a", "a"], ["a", "a"]) is None
    True
    """
    y1, y2 = list(y1), list(y2)
    if len(y1) != len(y2):
        raise ValueError(f"label sequences differ in length: {len(y1)} != {len(y2)}")
    return _kappa(Counter(zip(y1, y2)))


def _confusions(tab: Table) -> dict[tuple, Counter]:
    pairs: dict[tuple, Counter] = {}
    for labels in tab.values():
        names = list(labels)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                key = _pair(a, b)
                pairs.setdefault(key, Counter())[(labels[key[0]], labels[key[1]])] += 1
    return pairs


def _pair_rows(pairs: Mapping[tuple, Mapping]) -> list[dict]:
    out = []
    for a, b in _sorted(pairs):
        conf = pairs[(a, b)]
        n = sum(conf.values())
        if n:
            agree = sum(c for (x, y), c in conf.items() if x == y)
            out.append({"a": a, "b": b, "n": n, "agreement": agree / n, "kappa": _kappa(conf)})
    return out


def pairwise_kappa(data: Table | Iterable[tuple]) -> list[dict]:
    """Cohen's kappa of every annotator pair on the items both labeled.

    One ``{"a", "b", "n", "agreement", "kappa"}`` per pair sharing an item
    (``a`` before ``b`` in sorted order), ``kappa`` as in :func:`cohen_kappa`.

    >>> pairwise_kappa({"i1": {"x": 1, "y": 1}, "i2": {"x": 2, "y": 1}})
    [{'a': 'x', 'b': 'y', 'n': 2, 'agreement': 0.5, 'kappa': 0.0}]
    """
    return _pair_rows(_confusions(table(data)))


def _multi_kappa(pairs: Mapping[tuple, Mapping]) -> float | None:
    observed, chance = [], []
    for conf in pairs.values():
        n = sum(conf.values())
        if not n:
            continue
        rows: Counter = Counter()
        cols: Counter = Counter()
        for (x, y), c in conf.items():
            rows[x] += c
            cols[y] += c
        observed.append(sum(c for (x, y), c in conf.items() if x == y) / n)
        chance.append(sum(rows[k] * cols[k] for k in rows) / (n * n))
    if not observed:
        return None
    ao, ae = math.fsum(observed) / len(observed), math.fsum(chance) / len(chance)
    return None if ae >= 1.0 else (ao - ae) / (1.0 - ae)


def multi_kappa(data: Table | Iterable[tuple]) -> float | None:
    """Multi-rater Cohen's kappa (Davies and Fleiss 1982; Conger 1980).

    Observed and chance agreement are each averaged over annotator pairs
    (chance from each annotator's own label distribution, unlike Fleiss'
    pooled one), each pair on the items both labeled. ``None`` if undefined.

    >>> round(multi_kappa({"i1": {"x": 1, "y": 1}, "i2": {"x": 2, "y": 1}, "i3": {"x": 2, "y": 2}}), 3)
    0.4
    """
    return _multi_kappa(_confusions(table(data)))


# --------------------------------------------------------------------------- per annotator


def gold_accuracy(data: Table | Iterable[tuple], gold: Mapping[Hashable, Label]) -> dict[Hashable, float]:
    """Each annotator's share of correct labels on gold items (annotators with none left out).

    >>> gold_accuracy({"i1": {"x": 1, "y": 2}, "i2": {"x": 1}}, {"i1": 1, "i2": 2})
    {'x': 0.5, 'y': 0.0}
    """
    hits: dict[Hashable, list[int]] = {}
    for item, labels in table(data).items():
        if item in gold:
            for a, label in labels.items():
                h = hits.setdefault(a, [0, 0])
                h[0] += label == gold[item]
                h[1] += 1
    return {a: hits[a][0] / hits[a][1] for a in _sorted(hits)}


def _majority_credits(labels: Mapping[Hashable, Label]):
    """``(annotator, tie size, hit)`` for each annotator against the others on one item."""
    counts = Counter(labels.values())
    for a, label in labels.items():
        others = counts.copy()
        others[label] -= 1
        best = max(others.values())
        if best:
            top = [c for c, n in others.items() if n == best]
            yield a, len(top), label in top


def _agreement(compared: int, credits: Mapping[int, int]) -> float | None:
    return math.fsum(credits[t] / t for t in sorted(credits)) / compared if compared else None


def agreement_with_majority(data: Table | Iterable[tuple]) -> dict[Hashable, float | None]:
    """Each annotator's agreement with the majority label of the *other* annotators.

    Over the items the annotator shares with anyone; where the others tie
    between ``t`` labels, agreeing with one of them counts ``1/t`` (the chance
    of agreeing with a random tie-break). ``None`` for an annotator who never
    shares an item.

    >>> agreement_with_majority({"i1": {"x": 1, "y": 1, "z": 2}, "i2": {"x": 1}})
    {'x': 0.5, 'y': 0.5, 'z': 0.0}
    """
    compared: dict[Hashable, int] = Counter()
    credits: dict[Hashable, Counter] = {}
    tab = table(data)
    for labels in tab.values():
        for a, ties, hit in _majority_credits(labels):
            compared[a] += 1
            if hit:
                credits.setdefault(a, Counter())[ties] += 1
    names = _sorted({a for labels in tab.values() for a in labels})
    return {a: _agreement(compared[a], credits.get(a, {})) for a in names}


def _tvd(first: Mapping[Label, int], second: Mapping[Label, int]) -> float | None:
    n1, n2 = sum(first.values()), sum(second.values())
    if not n1 or not n2:
        return None
    return 0.5 * math.fsum(abs(first.get(c, 0) / n1 - second.get(c, 0) / n2) for c in _sorted(set(first) | set(second)))


def label_drift(data: Table | Iterable[tuple]) -> dict[Hashable, float | None]:
    """Total variation distance between the label distributions of each annotator's
    first ``n // 2`` labels and the rest, in the order given (``None`` below 2 labels).

    0 means the annotator labels the same mix throughout, 1 that the two halves
    share no class. Every annotation counts, corrections included.

    >>> label_drift([(1, "x", "a"), (2, "x", "a"), (3, "x", "a"), (4, "x", "b"), (5, "y", "a")])
    {'x': 0.5, 'y': None}
    """
    seqs: dict[Hashable, list[Label]] = {}
    for row in annotations(data):
        seqs.setdefault(row.annotator_id, []).append(row.label)
    out = {}
    for a in _sorted(seqs):
        half = len(seqs[a]) // 2
        out[a] = _tvd(Counter(seqs[a][:half]), Counter(seqs[a][half:]))
    return out


def _speed(durations: list[float], n_ts: int, first_ts: int | None, last_ts: int | None) -> dict[str, float | None]:
    p50 = p90 = per_hour = None
    if durations:
        p50, p90 = (float(v) for v in np.percentile(durations, [50, 90]))
    if n_ts >= 2 and last_ts > first_ts:
        per_hour = (n_ts - 1) * HOUR_MS / (last_ts - first_ts)
    return {"time_to_label_p50_ms": p50, "time_to_label_p90_ms": p90, "labels_per_hour": per_hour}


def labeling_speed(data: Iterable[tuple]) -> dict[Hashable, dict[str, float | None]]:
    """Time to label (p50, p90 of ``duration_ms``; linear interpolation) and labels per
    hour (``n - 1`` labels over the span from an annotator's first to last ``ts_ms``).

    Fields without the times they need are ``None``.

    >>> labeling_speed([(1, "x", "a", 0, 1000), (2, "x", "a", 1_800_000, 3000)])
    {'x': {'time_to_label_p50_ms': 2000.0, 'time_to_label_p90_ms': 2800.0, 'labels_per_hour': 2.0}}
    """
    times: dict[Hashable, list] = {}
    for row in annotations(data):
        durations, stamps = times.setdefault(row.annotator_id, ([], []))
        if row.duration_ms is not None:
            durations.append(row.duration_ms)
        if row.ts_ms is not None:
            stamps.append(row.ts_ms)
    out = {}
    for a in _sorted(times):
        durations, stamps = times[a]
        out[a] = _speed(durations, len(stamps), min(stamps, default=None), max(stamps, default=None))
    return out


def model_agreement(data: Iterable[tuple]) -> dict[Hashable, dict[str, float | None]]:
    """Model against annotator, per annotator: the share of their labels equal to the
    model's suggestion (``model_agreement``) and Cohen's kappa between the two
    (``model_kappa``), over the annotations that carry a ``model_label`` (the
    latest label of an annotator for an item counts).

    >>> rows = [("i1", "x", "a", None, None, "a"), ("i2", "x", "b", None, None, "a"),
    ...         ("i3", "x", "b", None, None, "b"), ("i1", "y", "a")]
    >>> model_agreement(rows)
    {'x': {'model_agreement': 0.6666666666666666, 'model_kappa': 0.4, 'n_model': 3}}
    """
    latest: dict[Hashable, dict[Hashable, tuple]] = {}
    for row in annotations(data):
        if row.model_label is not None:
            latest.setdefault(row.annotator_id, {})[row.item_id] = (row.label, row.model_label)
    return {a: _model_row(latest[a].values()) for a in _sorted(latest)}


def _model_row(pairs: Iterable[tuple]) -> dict[str, float | None]:
    pairs = list(pairs)
    if not pairs:
        return {"model_agreement": None, "model_kappa": None, "n_model": 0}
    return {"model_agreement": sum(x == m for x, m in pairs) / len(pairs),
            "model_kappa": cohen_kappa([x for x, _ in pairs], [m for _, m in pairs]), "n_model": len(pairs)}


# --------------------------------------------------------------------------- the report


def _distribution(counts: Mapping[Label, int]) -> dict[Label, float]:
    n = sum(counts.values())
    return {c: counts[c] / n for c in _sorted(counts)}


def _by_class(stats: Mapping[Label, list[int]]) -> dict[Label, dict]:
    return {c: {"items": stats[c][0], "disagreement_rate": stats[c][1] / stats[c][0]}
            for c in _sorted(stats) if stats[c][0]}


def disagreement_by_class(data: Table | Iterable[tuple]) -> dict[Label, dict]:
    """Per majority class, the items labeled at least twice and the share with any disagreement.

    >>> disagreement_by_class({"i1": {"x": 1, "y": 1, "z": 2}, "i2": {"x": 1, "y": 1}, "i3": {"x": 2}})
    {1: {'items': 2, 'disagreement_rate': 0.5}}
    """
    stats: dict[Label, list[int]] = {}
    for labels in table(data).values():
        if len(labels) >= 2:
            s = stats.setdefault(majority(labels.values())[0], [0, 0])
            s[0] += 1
            s[1] += len(set(labels.values())) > 1
    return _by_class(stats)


def _annotator_row(n_labels, distribution, compared, credits, gold_n, gold_hits, drift, speed) -> dict:
    return {"n_labels": n_labels, "agreement_with_majority": _agreement(compared, credits),
            "items_shared": compared, "gold_accuracy": gold_hits / gold_n if gold_n else None, "n_gold": gold_n,
            "distribution": distribution, "drift": drift, **speed}


def report(data: Table | Iterable[tuple], gold: Mapping[Hashable, Label] | None = None) -> dict[str, Any]:
    """Every metric of this module in one JSON-ready dict.

    Keys: ``n_annotations`` (rows, corrections included), ``n_labels`` (after
    corrections), ``n_items``, ``n_items_multi`` (labeled at least twice),
    ``n_annotators``, ``classes``, ``percent_agreement``, ``fleiss_kappa``,
    ``krippendorff_alpha``, ``multi_kappa``, ``cohen_kappa`` (see
    :func:`pairwise_kappa`), ``disagreement_by_class`` and ``per_annotator``:
    ``{annotator: {n_labels, agreement_with_majority, items_shared,
    gold_accuracy, n_gold, distribution, drift, time_to_label_p50_ms,
    time_to_label_p90_ms, labels_per_hour, model_agreement, model_kappa,
    n_model}}`` (see :func:`model_agreement`).

    >>> r = report([("i1", "x", 1), ("i1", "y", 2)], gold={"i1": 1})
    >>> r["percent_agreement"], r["per_annotator"]["x"]["gold_accuracy"], r["cohen_kappa"][0]["kappa"]
    (0.0, 1.0, 0.0)
    """
    rows = annotations(data)
    tab = table(rows)
    gold = gold or {}
    pooled = _Pooled.of(tab)
    pairs = _confusions(tab)
    counts: dict[Hashable, Counter] = {}
    compared: dict[Hashable, int] = Counter()
    credits: dict[Hashable, Counter] = {}
    golds: dict[Hashable, list[int]] = {}
    for item, labels in tab.items():
        for a, label in labels.items():
            counts.setdefault(a, Counter())[label] += 1
            if item in gold:
                g = golds.setdefault(a, [0, 0])
                g[0] += 1
                g[1] += label == gold[item]
        for a, ties, hit in _majority_credits(labels):
            compared[a] += 1
            if hit:
                credits.setdefault(a, Counter())[ties] += 1
    drift, speed, model = label_drift(rows), labeling_speed(rows), model_agreement(rows)
    per_annotator = {a: {**_annotator_row(sum(counts[a].values()), _distribution(counts[a]), compared[a],
                                          credits.get(a, {}), *golds.get(a, (0, 0)), drift[a], speed[a]),
                         **model.get(a, _model_row([]))}
                     for a in _sorted(counts)}
    return {
        "n_annotations": len(rows), "n_labels": sum(len(v) for v in tab.values()), "n_items": len(tab),
        "n_items_multi": sum(pooled.items.values()), "n_annotators": len(per_annotator),
        "classes": _sorted({label for labels in tab.values() for label in labels.values()}),
        "percent_agreement": pooled.percent(), "fleiss_kappa": pooled.fleiss(), "krippendorff_alpha": pooled.alpha(),
        "multi_kappa": _multi_kappa(pairs), "cohen_kappa": _pair_rows(pairs),
        "disagreement_by_class": disagreement_by_class(tab), "per_annotator": per_annotator,
    }


# --------------------------------------------------------------------------- streaming


class _Annotator:
    def __init__(self) -> None:
        self.counts: dict[Label, int] = {}
        self.compared = 0
        self.credits: dict[int, int] = {}
        self.gold_n = self.gold_hits = 0
        self.sequence: list[Label] = []
        self.first: Counter = Counter()  # the first len(sequence) // 2 labels
        self.second: Counter = Counter()
        self.durations: list[float] = []
        self.n_ts = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None


class AgreementTracker:
    """The numbers of :func:`report`, kept up to date one annotation at a time.

    Each :meth:`add` costs ``O(k^2)`` for an item with ``k`` labels; the
    cumulative :meth:`report` costs ``O(annotator pairs + classes)`` plus the
    duration percentiles, and equals :func:`report` over the same annotations
    in the same order. Every annotation is kept for windowed reports.

    Parameters
    ----------
    gold
        ``{item_id: label}`` of known answers; more with :meth:`set_gold`.

    >>> t = AgreementTracker(gold={"i1": "cat"})
    >>> t.add("i1", "ann", "cat", ts_ms=0)
    >>> t.add("i1", "bob", "dog", ts_ms=HOUR_MS)
    >>> t.report()["per_annotator"]["bob"]["gold_accuracy"]
    0.0
    >>> t.report(window_ms=HOUR_MS)["n_labels"]
    1
    """

    def __init__(self, gold: Mapping[Hashable, Label] | None = None):
        self.gold: dict[Hashable, Label] = dict(gold or {})
        self.log: list[Annotation] = []
        self._table: dict[Hashable, dict[Hashable, Label]] = {}
        self._pooled = _Pooled()
        self._pairs: dict[tuple, dict] = {}
        self._classes: dict[Label, int] = {}
        self._by_class: dict[Label, list[int]] = {}
        self._ann: dict[Hashable, _Annotator] = {}
        self._model: dict[Hashable, dict[Hashable, tuple]] = {}  # annotator -> item -> (label, model's)

    def _item(self, item: Hashable, labels: Mapping[Hashable, Label], sign: int) -> None:
        """Add (``sign=1``) or take back (``-1``) everything one item contributes."""
        self._pooled.update(labels.values(), sign)
        if len(labels) >= 2:
            s = self._by_class.setdefault(majority(labels.values())[0], [0, 0])
            s[0] += sign
            s[1] += sign * (len(set(labels.values())) > 1)
        for a, ties, hit in _majority_credits(labels):
            self._ann[a].compared += sign
            if hit:
                _bump(self._ann[a].credits, ties, sign)
        if item in self.gold:
            for a, label in labels.items():
                self._ann[a].gold_n += sign
                self._ann[a].gold_hits += sign * (label == self.gold[item])

    def _link(self, labels: Mapping[Hashable, Label], a: Hashable, sign: int) -> None:
        """Add or take back the pair confusions of annotator ``a`` on one item."""
        for b, other in labels.items():
            if b != a:
                key = _pair(a, b)
                cell = (labels[a], other) if key[0] == a else (other, labels[a])
                _bump(self._pairs.setdefault(key, {}), cell, sign)
        _bump(self._classes, labels[a], sign)
        _bump(self._ann[a].counts, labels[a], sign)

    def add(self, item_id: Hashable, annotator_id: Hashable, label: Label,
            ts_ms: int | None = None, duration_ms: float | None = None, model_label: Label | None = None,
            guideline_version: str | None = None) -> None:
        """Record one label (a repeat by the same annotator for the item replaces the
        earlier one), with the model's suggestion and the guideline version if known."""
        self.log.append(Annotation(item_id, annotator_id, label, ts_ms, duration_ms, model_label, guideline_version))
        if model_label is not None:
            self._model.setdefault(annotator_id, {})[item_id] = (label, model_label)
        ann = self._ann.setdefault(annotator_id, _Annotator())
        labels = self._table.setdefault(item_id, {})
        self._item(item_id, labels, -1)
        if annotator_id in labels:
            self._link(labels, annotator_id, -1)
        labels[annotator_id] = label
        self._link(labels, annotator_id, 1)
        self._item(item_id, labels, 1)

        ann.sequence.append(label)
        ann.second[label] += 1
        while len(ann.sequence) // 2 > sum(ann.first.values()):
            moved = ann.sequence[sum(ann.first.values())]
            ann.first[moved] += 1
            _bump(ann.second, moved, -1)
        if duration_ms is not None:
            ann.durations.append(duration_ms)
        if ts_ms is not None:
            ann.n_ts += 1
            ann.first_ts = ts_ms if ann.first_ts is None else min(ann.first_ts, ts_ms)
            ann.last_ts = ts_ms if ann.last_ts is None else max(ann.last_ts, ts_ms)

    def set_gold(self, item_id: Hashable, label: Label) -> None:
        """Declare (or correct) the gold answer of an item, labeled yet or not."""
        labels = self._table.get(item_id, {})
        self._item(item_id, labels, -1)
        self.gold[item_id] = label
        self._item(item_id, labels, 1)

    def versions(self) -> list[str]:
        """The guideline versions the annotations were given under (known ones only)."""
        return _sorted({row.guideline_version for row in self.log if row.guideline_version})

    def report(self, window_ms: int | None = None, now_ms: int | None = None,
               guideline_version: str | None = None) -> dict[str, Any]:
        """The cumulative :func:`report`, or with ``window_ms`` the report over the
        annotations with ``now_ms - window_ms < ts_ms <= now_ms`` (``now_ms``
        defaults to the latest ``ts_ms`` seen; annotations without one are left out),
        and with ``guideline_version`` over the annotations given under it.
        """
        if window_ms is not None or guideline_version is not None:
            rows = self.log
            if guideline_version is not None:
                rows = [row for row in rows if row.guideline_version == guideline_version]
            if window_ms is not None:
                stamps = [row.ts_ms for row in self.log if row.ts_ms is not None]
                now = now_ms if now_ms is not None else max(stamps, default=0)
                rows = [row for row in rows if row.ts_ms is not None and now - window_ms < row.ts_ms <= now]
            return report(rows, self.gold)
        per_annotator = {}
        for a in _sorted(self._ann):
            ann = self._ann[a]
            per_annotator[a] = _annotator_row(
                sum(ann.counts.values()), _distribution(ann.counts), ann.compared, ann.credits, ann.gold_n,
                ann.gold_hits, _tvd(ann.first, ann.second), _speed(ann.durations, ann.n_ts, ann.first_ts, ann.last_ts))
            per_annotator[a].update(_model_row(self._model.get(a, {}).values()))
        return {
            "n_annotations": len(self.log), "n_labels": sum(self._classes.values()), "n_items": len(self._table),
            "n_items_multi": sum(self._pooled.items.values()), "n_annotators": len(per_annotator),
            "classes": _sorted(self._classes),
            "percent_agreement": self._pooled.percent(), "fleiss_kappa": self._pooled.fleiss(),
            "krippendorff_alpha": self._pooled.alpha(), "multi_kappa": _multi_kappa(self._pairs),
            "cohen_kappa": _pair_rows(self._pairs), "disagreement_by_class": _by_class(self._by_class),
            "per_annotator": per_annotator,
        }


# --------------------------------------------------------------------------- rows for the warehouse

#: Seconds of the agreement windows: cumulative (0), the calendar hour and the calendar day.
WINDOWS = (0, HOUR_MS // 1000, DAY_MS // 1000)


def _rows(r: Mapping[str, Any], start: int, seconds: int, version: str) -> list[dict]:
    common = {"window_start": start, "window_seconds": seconds, "guideline_version": version}
    rows = [{**common, "annotator_a": "*", "annotator_b": "*", "metric": metric, "value": r[metric],
             "n": r["n_items_multi"]} for metric in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha")]
    rows += [{**common, "annotator_a": p["a"], "annotator_b": p["b"], "metric": "cohen_kappa", "value": p["kappa"],
              "n": p.get("n", 0)} for p in r["cohen_kappa"]]
    return rows


def agreement_rows(tracker: AgreementTracker, now_ms: int, windows: Iterable[int] = WINDOWS,
                   cumulative: Mapping[str, Any] | None = None) -> list[dict]:
    """``annotator_agreement`` rows at ``now_ms``: Fleiss' kappa, Krippendorff's alpha
    and percent agreement over everyone (annotators ``*``), and Cohen's kappa per pair.

    Window 0 is cumulative (``window_start`` is ``now_ms``; ``cumulative`` is its
    report if already made); a window of ``s`` seconds is the calendar period
    that holds ``now_ms`` (``window_start`` its start, so the rows of one hour
    replace each other until the next hour begins). Cumulative rows are also
    split by guideline version (``guideline_version`` empty: every version).

    >>> t = AgreementTracker()
    >>> for item, who, label, ts, version in [("i1", "x", "a", 10, "v1"), ("i1", "y", "a", 20, "v1"),
    ...                                       ("i2", "x", "a", HOUR_MS + 5, "v2"), ("i2", "y", "b", HOUR_MS + 9, "v2")]:
    ...     t.add(item, who, label, ts_ms=ts, guideline_version=version)
    >>> rows = agreement_rows(t, now_ms=HOUR_MS + 10)
    >>> [(r["window_seconds"], r["window_start"], r["guideline_version"], r["value"]) for r in rows
    ...  if r["metric"] == "percent_agreement"]
    [(0, 3600010, '', 0.5), (0, 3600010, 'v1', 1.0), (0, 3600010, 'v2', 0.0), (3600, 3600000, '', 0.0), (86400, 0, '', 0.5)]
    """
    out = []
    for seconds in windows:
        if seconds == 0:
            out += _rows(cumulative or tracker.report(), now_ms, 0, "")
            for version in tracker.versions():
                out += _rows(tracker.report(guideline_version=version), now_ms, 0, version)
        else:
            start = now_ms - now_ms % (seconds * 1000)
            out += _rows(tracker.report(window_ms=now_ms - start + 1, now_ms=now_ms), start, seconds, "")
    return out
