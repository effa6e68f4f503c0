"""One-vs-rest shadow models for multi-label tasks: one yes/no model per class.

Binary relevance (Tsoumakas and Katakis 2007): each class gets its own binary
classifier, "is this class in the item's set?", trained on every labeled item
(a set without the class is a negative for it). The model is River's own
:class:`river.multioutput.PerOutputClassifier` behind a shared scaler, so a
snapshot of it names River classes only (:mod:`streams.learning.snapshot`
loads it like any published model). Name the classes up front (the task's
label set): a class first seen late has missed the earlier items as negatives.

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

from river import linear_model, multioutput, preprocessing, tree

__all__ = ["KINDS", "make", "targets", "learn", "proba", "predict"]

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
