"""Class probabilities of a whole message of items at once, with numpy where the model allows.

A scorer scores every prediction with the newest published version of the
shadow model. One item at a time, River's kNN pipeline (``StandardScaler |
KNNClassifier``, the ``knn`` kind) costs a quarter of a millisecond per item
once it holds a few hundred labels. :class:`BatchKNN` reads a version's stored
neighbours and its scaler's moments into arrays once, and scores a batch of
items with one float32 matrix product (the k nearest found by ``argpartition``,
then their distances measured again in float64), with River's semantics: each
item is scaled with the current means and variances (a feature with no variance
scales to 0, a feature the item lacks counts as 0), the k nearest stored items vote with
weight ``1 / distance``, and an exact match is certain. The search is
exhaustive, as the live learner's kNN is (:func:`streams.learning.learner.exhaustive`
keeps River from building its approximate search graph), so both find the same
neighbours. Any other model is asked one item at a time
(:func:`predict_proba_many`).

>>> import random
>>> from streams.learning.models import make
>>> model, rng = make("knn"), random.Random(0)
>>> for i in range(300):
...     x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
...     model.learn_one(x, "hi" if x["a"] + rng.gauss(0, 0.5) > 0 else "lo")
>>> items = [{"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)} for _ in range(200)] + [{"b": 1.0}, {}]
>>> fast = predict_proba_many(model, items)
>>> slow = [model.predict_proba_one(x) for x in items]
>>> max(abs(f[c] - s[c]) for f, s in zip(fast, slow) for c in s) < 1e-9, all(f.keys() == s.keys() for f, s in zip(fast, slow))
(True, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["BatchKNN", "predict_proba_many"]

#: A stored item this close (in scaled units) to a query is an exact match.
EXACT = 1e-9


class BatchKNN:
    """A published kNN pipeline's neighbours and scaling as arrays, to score many items at once."""

    def __init__(self, scaler, knn):
        points = [vertex.item for vertex in knn._nn]
        self.keys = {key: i for i, key in enumerate(scaler.means)}
        for x, _ in points:  # stored items hold only keys the scaler learned; a safeguard all the same
            for key in x:
                self.keys.setdefault(key, len(self.keys))
        width = len(self.keys)
        self.mean = np.zeros(width)
        self.inv = np.zeros(width)
        for key, i in self.keys.items():
            var = scaler.vars.get(key, 0.0) if key in scaler.vars else 0.0
            self.mean[i] = scaler.means.get(key, 0.0) if key in scaler.means else 0.0
            self.inv[i] = 1.0 / var ** 0.5 if var else 0.0
        self.classes = list(knn.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self.S = np.zeros((len(points), width))
        for row, (x, _) in enumerate(points):
            for key, value in x.items():
                self.S[row, self.keys[key]] = value
        self.y = np.array([index[y] for _, y in points], dtype=int)
        self.S32 = self.S.astype(np.float32)  # the search runs in float32; the k found are measured in float64
        self.s2_32 = (self.S32 * self.S32).sum(1)
        self.k = knn.n_neighbors

    @classmethod
    def of(cls, model) -> "BatchKNN | None":
        """The arrays of ``model`` if it is River's ``StandardScaler | KNNClassifier`` as the
        learner makes it (weighted votes, no softmax, no scaling window), else None."""
        steps = list(getattr(model, "steps", {}).values())
        if len(steps) != 2 or type(steps[0]).__name__ != "StandardScaler" or \
                type(steps[1]).__name__ != "KNNClassifier":
            return None
        scaler, knn = steps
        if scaler.window_size is not None or not scaler.with_std or not knn.weighted or knn.softmax or \
                not hasattr(knn, "_nn"):
            return None
        return cls(scaler, knn)

    def predict_proba(self, items: list[dict]) -> list[dict[str, float]]:
        """Class probabilities of each of ``items`` (feature dicts), as River's ``predict_proba_one`` gives them."""
        order, nan = list(self.keys), float("nan")  # a feature an item lacks is NaN here, 0 once scaled
        X = np.array([[x.get(key, nan) for key in order] for x in items], dtype=float).reshape(len(items), len(order))
        return self._proba(X)

    def predict_proba_columns(self, values, names: list[str], m: int) -> list[dict[str, float]]:
        """:meth:`predict_proba` of ``m`` items given as a row-major array of ``names`` features (one row
        an item, as a ``PredictionColumns`` message holds them), without a dict per item.

        >>> from streams.learning.models import make
        >>> model = make("knn")
        >>> for v, y in [(0.0, "a"), (1.0, "b"), (0.2, "a"), (0.9, "b")]:
        ...     model.learn_one({"x": v, "y": 1 - v}, y)
        >>> batch = BatchKNN.of(model)
        >>> rows = [[0.1, 0.9, 5.0], [0.8, 0.2, 5.0]]  # "z" is no feature of the model's: left out
        >>> by_columns = batch.predict_proba_columns([v for r in rows for v in r], ["x", "y", "z"], 2)
        >>> by_columns == batch.predict_proba([dict(zip("xyz", r)) for r in rows])
        True
        """
        return self._proba(self._columns(values, names, m))

    def votes_columns(self, values, names: list[str], m: int) -> np.ndarray:
        """:meth:`predict_proba_columns` as one array: a row an item, a column a class of
        :attr:`classes` (the same numbers, no dicts).

        >>> from streams.learning.models import make
        >>> model = make("knn")
        >>> for v, y in [(0.0, "a"), (1.0, "b"), (0.2, "a")]:
        ...     model.learn_one({"x": v}, y)
        >>> batch = BatchKNN.of(model)
        >>> votes = batch.votes_columns([0.1, 0.9], ["x"], 2)
        >>> [dict(zip(batch.classes, row)) for row in votes.tolist()] == batch.predict_proba_columns([0.1, 0.9], ["x"], 2)
        True
        """
        X = self._columns(values, names, m)
        if not len(self.y):
            return np.full((m, len(self.classes)), 1.0 / len(self.classes)) if self.classes else np.zeros((m, 0))
        return self._votes(X)

    def _columns(self, values, names: list[str], m: int) -> np.ndarray:
        given = np.asarray(values, dtype=float).reshape(m, len(names))
        X = np.full((m, len(self.keys)), np.nan)  # a feature an item lacks is NaN here, 0 once scaled
        for j, name in enumerate(names):
            if name in self.keys:
                X[:, self.keys[name]] = given[:, j]
        return X

    def _proba(self, X: np.ndarray) -> list[dict[str, float]]:
        """The probabilities of the items of ``X`` (one row an item, the columns of :attr:`keys`)."""
        classes = self.classes
        if not len(self.y):
            return [{c: 1.0 / len(classes) for c in classes} if classes else {} for _ in range(len(X))]
        return [dict(zip(classes, row)) for row in self._votes(X).tolist()]

    def _votes(self, X: np.ndarray) -> np.ndarray:
        """:meth:`_proba` as an array (a column a class), with at least one stored item."""
        n, classes = len(self.y), self.classes
        Q = np.nan_to_num((X - self.mean) * self.inv, nan=0.0)
        m, k = len(X), min(self.k, n)
        if k < n:  # the candidates by one float32 matrix product, then their distances exactly
            Q32 = Q.astype(np.float32)
            d2 = Q32 @ self.S32.T
            d2 *= -2.0
            d2 += self.s2_32
            idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(n), (m, n))
        diff = self.S[idx] - Q[:, None, :]
        d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        votes = np.bincount((np.arange(m)[:, None] * len(classes) + self.y[idx]).ravel(),
                            weights=(1.0 / np.maximum(d, EXACT)).ravel(), minlength=m * len(classes))
        votes = votes.reshape(m, len(classes))
        nearest = d.argmin(1)
        exact = d[np.arange(m), nearest] < EXACT
        if exact.any():
            rows = np.flatnonzero(exact)
            votes[rows] = 0.0
            votes[rows, self.y[idx[rows, nearest[rows]]]] = 1.0
        votes /= votes.sum(1, keepdims=True)
        return votes


def predict_proba_many(model, items: list[dict], batch: BatchKNN | None = None) -> list[dict[str, float]]:
    """Class probabilities of each of ``items``: with ``batch`` (or :meth:`BatchKNN.of`
    ``model``) at once, else one ``predict_proba_one`` at a time."""
    batch = batch or BatchKNN.of(model)
    if batch is not None:
        return batch.predict_proba(items)
    return [model.predict_proba_one(x) for x in items]
