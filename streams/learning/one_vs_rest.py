"""One-vs-rest shadow models for multi-label tasks: one yes/no model per class.

Binary relevance (Tsoumakas and Katakis 2007): each class gets its own binary
classifier, "is this class in the item's set?", trained on every labeled item
(a set without the class is a negative for it). The model is River's own
:class:`river.multioutput.PerOutputClassifier` behind a shared scaler, so a
snapshot of it names River classes only (:mod:`streams.learning.snapshot`
loads it like any published model). Name the classes up front (the task's
label set): a class first seen late has missed the earlier items as negatives.
One at a time the ``linear`` kind scores a few thousand items a second;
:func:`proba_many` scores a batch with one matrix product, to the same numbers.

>>> model = make("linear")
>>> for i in range(300):
...     x = {"a": float(i % 2), "b": float(i % 3 == 0)}
...     chosen = {c for c, yes in (("odd", i % 2), ("three", i % 3 == 0)) if yes}
...     learn(model, x, chosen, classes=["odd", "three"])
>>> p = proba(model, {"a": 1.0, "b": 0.0})
>>> p["odd"] > 0.7 > 0.3 > p["three"]
True
>>> sorted(predict(model, {"a": 1.0, "b": 1.0})), proba(model, {"a": 1.0}, ["unseen"])
(['odd', 'three'], {'unseen': 0.5})
"""

from __future__ import annotations

from typing import Hashable, Iterable

import numpy as np
from river import linear_model, multioutput, preprocessing, tree

__all__ = ["KINDS", "make", "is_one_vs_rest", "targets", "learn", "proba", "predict", "joined", "micro_f1",
           "BatchLinear", "proba_many"]

#: The base binary classifier of each class, by kind (as :func:`streams.learning.models.make`). No
#: ``knn``: River's KNN per class keeps one neighbour search per class, about a hundred times slower.
KINDS = ("linear", "tree")


def make(kind: str = "linear"):
    """A fresh one-vs-rest model: standard scaling, then one binary ``kind`` model per class.

    >>> type(make("tree")[-1]).__name__
    'PerOutputClassifier'
    >>> make("knn")
    Traceback (most recent call last):
    ...
    ValueError: unknown one-vs-rest kind 'knn': choose linear or tree
    """
    if kind not in KINDS:
        raise ValueError(f"unknown one-vs-rest kind {kind!r}: choose {', '.join(KINDS[:-1])} or {KINDS[-1]}")
    if kind == "linear":
        base = linear_model.LogisticRegression()
    else:
        base = tree.HoeffdingTreeClassifier(grace_period=20)
    return preprocessing.StandardScaler() | multioutput.PerOutputClassifier(base)


def is_one_vs_rest(model) -> bool:
    """True for a model :func:`make` built (its last step is River's ``PerOutputClassifier``).

    >>> is_one_vs_rest(make()), is_one_vs_rest(None)
    (True, False)
    """
    steps = getattr(model, "steps", None)
    return bool(steps) and type(list(steps.values())[-1]).__name__ == "PerOutputClassifier"


def targets(labels: Iterable[Hashable], classes: Iterable[Hashable]) -> dict[Hashable, bool]:
    """The yes/no target of every class (``classes`` and those in ``labels``).

    >>> targets({"b"}, ["a", "b"])
    {'a': False, 'b': True}
    """
    labels = set(labels)
    out = {c: c in labels for c in classes}
    out.update({c: True for c in labels if c not in out})
    return out


def learn(model, x: dict, labels: Iterable[Hashable], classes: Iterable[Hashable] = (), weight: float = 1.0) -> None:
    """Learn one labeled item: ``labels`` is its set of classes, ``classes`` every class of the task.

    ``weight`` (e.g. the consensus confidence) scales the update of every class's model.
    """
    model.learn_one(x, targets(labels, classes), w=weight)


def _yes(p: dict) -> float:
    """P(in the set) from a binary model's ``{True: p, False: 1 - p}`` (0.5 before it learned)."""
    if True in p:
        return float(p[True])
    if False in p:
        return 1.0 - float(p[False])
    return 0.5


def proba(model, x: dict, classes: Iterable[Hashable] | None = None) -> dict[Hashable, float]:
    """``{class: P(class in the set)}`` for ``classes`` (default: those the model has seen).

    A class the model has not seen yet scores 0.5, "unknown".
    """
    per_class = model.predict_proba_one(x)
    if classes is None:
        classes = per_class
    return {c: _yes(per_class.get(c, {})) for c in classes}


def predict(model, x: dict, classes: Iterable[Hashable] | None = None, threshold: float = 0.5) -> frozenset:
    """The predicted set: the classes with ``P > threshold``."""
    return frozenset(c for c, p in proba(model, x, classes).items() if p > threshold)


def joined(labels: Iterable[Hashable]) -> str:
    """A set of classes as one label: sorted and joined by ``|`` (the empty set is ``""``).

    >>> joined({"dog", "cat"}), joined(set())
    ('cat|dog', '')
    """
    return "|".join(sorted(map(str, labels)))


def micro_f1(pairs: Iterable[tuple[Iterable[Hashable], Iterable[Hashable]]]) -> float | None:
    """Micro-averaged F1 of ``(true set, predicted set)`` pairs: every (item, class) decision
    pooled, ``2 TP / (2 TP + FP + FN)``; None with no pair, 1.0 when both are always empty.
    The multi-label figure the simulator and a multi-label learner's control accuracy report.

    >>> micro_f1([({"a", "b"}, {"a"}), ({"c"}, {"c", "d"})])
    0.6666666666666666
    >>> micro_f1([]), micro_f1([(set(), set())])
    (None, 1.0)
    """
    tp = fp = fn = n = 0
    for truth, predicted in pairs:
        truth, predicted = set(truth), set(predicted)
        tp, fp, fn, n = tp + len(truth & predicted), fp + len(predicted - truth), fn + len(truth - predicted), n + 1
    if not n:
        return None
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


class BatchLinear:
    """A ``linear`` one-vs-rest model's scaling and weights as arrays, to score many items at once.

    Built once per model version: :meth:`of` (``None`` for another kind).
    Each item is scaled as River's ``StandardScaler`` does (a feature with no
    variance, or one never learned, scales to 0) and each class's logistic
    regression gives ``sigmoid(w . x + b)``, 0 or 1 past a logit of 30.
    """

    def __init__(self, scaler, per_class: dict):
        self.classes = list(per_class)
        keys = dict.fromkeys(scaler.means)
        for clf in per_class.values():
            keys.update(dict.fromkeys(clf._weights))
        self.keys = {key: i for i, key in enumerate(keys)}
        self.mean = np.array([scaler.means.get(k, 0.0) for k in self.keys], dtype=float)
        sd = np.sqrt(np.array([scaler.vars.get(k, 0.0) for k in self.keys], dtype=float))
        self.inv = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 0)
        self.W = np.zeros((len(self.keys), len(self.classes)))
        for j, clf in enumerate(per_class.values()):
            for key, w in clf._weights.items():
                self.W[self.keys[key], j] = w
        self.b = np.array([clf.intercept for clf in per_class.values()], dtype=float)

    @classmethod
    def of(cls, model) -> "BatchLinear | None":
        """The arrays of a model :func:`make` ``("linear")`` built, else ``None``."""
        steps = list(getattr(model, "steps", {}).values())
        if len(steps) != 2 or type(steps[0]).__name__ != "StandardScaler" or \
                type(steps[1]).__name__ != "PerOutputClassifier":
            return None
        scaler, per_output = steps
        per_class = dict(per_output.items())
        if scaler.window_size is not None or not scaler.with_std or \
                any(type(m).__name__ != "LogisticRegression" for m in [per_output.classifier, *per_class.values()]):
            return None
        return cls(scaler, per_class)

    def proba(self, items: list[dict], classes: Iterable[Hashable] | None = None) -> list[dict[Hashable, float]]:
        """``{class: P(in the set)}`` of each item, as :func:`proba` gives it."""
        X = np.zeros((len(items), len(self.keys)))
        present = np.zeros_like(X, dtype=bool)  # only the features an item has are scaled (0 -> -mean/sd)
        shapes: dict[tuple, list[int]] = {}  # items with the same keys in the same order fill at once
        for row, x in enumerate(items):
            shapes.setdefault(tuple(x), []).append(row)
        for names, rows in shapes.items():
            known = [(j, self.keys[k]) for j, k in enumerate(names) if k in self.keys]
            if not known:
                continue
            take, cols = (list(t) for t in zip(*known))
            values = np.array([list(items[r].values()) for r in rows], dtype=float)[:, take]
            X[np.ix_(rows, cols)] = values
            present[np.ix_(rows, cols)] = True
        z = np.where(present, (X - self.mean) * self.inv, 0.0) @ self.W + self.b
        p = np.where(z < -30, 0.0, np.where(z > 30, 1.0, 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))))
        known = {c: j for j, c in enumerate(self.classes)}
        wanted = self.classes if classes is None else list(classes)
        cols = [known.get(c) for c in wanted]
        return [{c: (float(row[j]) if j is not None else 0.5) for c, j in zip(wanted, cols)} for row in p.tolist()]


def proba_many(model, items: list[dict], classes: Iterable[Hashable] | None = None,
               batch: BatchLinear | None = None) -> list[dict[Hashable, float]]:
    """:func:`proba` of each of ``items``: with ``batch`` (or :meth:`BatchLinear.of` ``model``)
    at once, else one item at a time.

    >>> model = make("linear")
    >>> for i in range(100):
    ...     learn(model, {"a": float(i % 2), "b": i / 100}, {"odd"} if i % 2 else {"even"})
    >>> items = [{"a": 1.0, "b": 0.3}, {"b": 0.5}, {"a": 0.0, "c": 2.0}]
    >>> fast, slow = proba_many(model, items), [proba(model, x) for x in items]
    >>> max(abs(f[c] - s[c]) for f, s in zip(fast, slow) for c in s) < 1e-12
    True
    """
    batch = batch or BatchLinear.of(model)
    if batch is not None:
        return batch.proba(items, classes)
    return [proba(model, x, classes) for x in items]
