"""The shadow model families, and :func:`make`, the one factory that builds them by kind.

The live learner publishes River models (their snapshots name River classes
only, see :mod:`streams.learning.snapshot`): ``knn``, ``linear``, ``tree``.
Replaying whole streams offline (the simulator) may use faster equivalents:
:class:`KNN` is the ``knn`` model (standard scaling learned from the labels,
then distance-weighted k nearest neighbours over the last ``window`` labels)
with the distances computed by numpy, about twenty times faster per item, and
it predicts a whole matrix at once for evaluation; :class:`NB` is naive Bayes
for text.

>>> knn = KNN(n_neighbors=3)
>>> for i in range(20):
...     knn.learn_one({"x": float(i), "noise": 1.0}, "low" if i < 10 else "high")
>>> knn.predict_one({"x": 3.0, "noise": 1.0})
'low'
>>> p = knn.predict_proba_one({"x": 9.5, "noise": 1.0})
>>> sorted(p), round(sum(p.values()), 6)
(['high', 'low'], 1.0)
"""

from __future__ import annotations

import math

import numpy as np
from river import linear_model, multiclass, naive_bayes, neighbors, preprocessing, tree


class KNN:
    """Distance-weighted k nearest neighbours on standardised features.

    Parameters
    ----------
    n_neighbors
        Neighbours that vote.
    window
        How many of the most recent labels are kept.
    """

    def __init__(self, n_neighbors: int = 5, window: int = 1000):
        self.n_neighbors = n_neighbors
        self.window = window
        self.keys: dict[str, int] = {}
        self.classes: list[str] = []
        self._class_index: dict[str, int] = {}
        self._X = np.zeros((window, 8))
        self._y = np.zeros(window, dtype=int)
        self._n = 0
        self.n_seen = 0
        self._sum = np.zeros(8)
        self._sumsq = np.zeros(8)
        self._cache = None

    def clone(self) -> "KNN":
        return KNN(self.n_neighbors, self.window)

    def _grow(self, size: int) -> None:
        cols = max(size, 2 * self._X.shape[1])
        for name in ("_X", "_sum", "_sumsq"):
            old = getattr(self, name)
            new = np.zeros(old.shape[:-1] + (cols,))
            new[..., :old.shape[-1]] = old
            setattr(self, name, new)

    def vector(self, x: dict, learn: bool = False) -> np.ndarray:
        """``x`` as a dense row in the model's feature order."""
        if learn:
            for key in x:
                if key not in self.keys:
                    self.keys[key] = len(self.keys)
            if len(self.keys) > self._X.shape[1]:
                self._grow(len(self.keys))
        v = np.zeros(self._X.shape[1])
        for key, value in x.items():
            i = self.keys.get(key)
            if i is not None:
                v[i] = value
        return v

    def learn_one(self, x: dict, y, **kwargs) -> None:
        v = self.vector(x, learn=True)
        label = str(y) if not isinstance(y, str) else y
        if label not in self._class_index:
            self._class_index[label] = len(self.classes)
            self.classes.append(label)
        self._sum += v
        self._sumsq += v * v
        self.n_seen += 1
        self._X[self._n % self.window] = v
        self._y[self._n % self.window] = self._class_index[label]
        self._n += 1
        self._cache = None

    def _scaled(self):
        """Scaling and the scaled stored rows, recomputed after each label."""
        if self._cache is None:
            n = max(1, self.n_seen)
            mean = self._sum / n
            sd = np.sqrt(np.maximum(self._sumsq / n - mean * mean, 0.0))
            inv = np.where(sd > 0.0, 1.0 / np.where(sd > 0.0, sd, 1.0), 0.0)
            S = (self._X[:min(self._n, self.window)] - mean) * inv
            self._cache = (mean, inv, S, (S * S).sum(1), self._y[:len(S)].copy())
        return self._cache

    def predict_proba_many(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (columns in ``classes`` order) for the rows of ``X``."""
        n = min(self._n, self.window)
        if n == 0:
            return np.zeros((len(X), 0))
        mean, inv, S, s2, y = self._scaled()
        Q = (X[:, :S.shape[1]] - mean) * inv
        d2 = (Q * Q).sum(1)[:, None] - 2.0 * Q @ S.T + s2[None, :]
        k = min(self.n_neighbors, n)
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(X), 1))
        d = np.sqrt(np.maximum(np.take_along_axis(d2, idx, 1), 0.0))
        w = 1.0 / (d + 1e-9)
        votes = np.zeros((len(X), len(self.classes)))
        np.add.at(votes, (np.repeat(np.arange(len(X)), idx.shape[1]), y[idx].ravel()), w.ravel())
        return votes / votes.sum(1, keepdims=True)

    def predict_proba_one(self, x: dict) -> dict[str, float]:
        if not self.n_seen:
            return {}
        mean, inv, S, _, y = self._scaled()
        diff = S - (self.vector(x)[:S.shape[1]] - mean) * inv
        d2 = np.einsum("ij,ij->i", diff, diff)
        k = min(self.n_neighbors, len(S))
        idx = np.argpartition(d2, k - 1)[:k] if k < len(S) else slice(None)
        votes = np.bincount(y[idx], weights=1.0 / (np.sqrt(d2[idx]) + 1e-9), minlength=len(self.classes))
        votes /= votes.sum()
        return dict(zip(self.classes, votes.tolist()))

    def predict_one(self, x: dict):
        p = self.predict_proba_one(x)
        return max(sorted(p), key=p.__getitem__) if p else None


class NB(naive_bayes.MultinomialNB):
    """Multinomial naive Bayes whose probabilities are tempered by the length
    of the text, for uncertainty sampling.

    Naive Bayes adds one log-likelihood term per word as if the words were
    independent, so a long message gets probabilities of 1.0 and 0.0 in
    floating point, and ranking items by uncertainty stops working. Here the
    joint log-likelihood is divided by the number of words before the softmax:
    the probabilities say how strong the evidence is *per word*. The predicted
    class is unchanged (the temperature is the same for every class).
    On the SMS Spam Collection at a 5% budget this cut the labels the default
    policy needed to reach its target from 0.81 to 0.58 times random's.

    >>> nb = NB()
    >>> for text, y in [("win cash now", "spam"), ("see you at lunch", "ham")] * 5:
    ...     nb.learn_one({w: 1.0 for w in text.split()}, y)
    >>> p = nb.predict_proba_one({"win": 1.0, "cash": 1.0, "now": 1.0, "lunch": 1.0})
    >>> max(p, key=p.get), 0.5 < p["spam"] < 0.99
    ('spam', True)
    """

    def predict_proba_one(self, x: dict) -> dict[str, float]:
        jll = self.joint_log_likelihood(x)
        if not jll:
            return {}
        words = max(1.0, sum(v for v in x.values() if v > 0.0))
        top = max(jll.values())
        weights = {c: math.exp((v - top) / words) for c, v in jll.items()}
        total = sum(weights.values())
        return {c: w / total for c, w in weights.items()}


def lbfgs(f, x: np.ndarray, iterations: int = 60, memory: int = 8, tol: float = 1e-5) -> np.ndarray:
    """Minimise ``f`` (returning value and gradient) from ``x`` by limited-memory
    BFGS (Nocedal, 1980) with a backtracking line search; scipy's bounded variant
    spends milliseconds per step on its bookkeeping, this one a few vector products.

    >>> x = lbfgs(lambda v: (float(((v - 3.0) ** 2).sum()), 2.0 * (v - 3.0)), np.zeros(4))
    >>> np.allclose(x, 3.0)
    True
    """
    value, grad = f(x)
    history: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(iterations):
        if np.abs(grad).max() < tol:
            break
        q = grad.copy()
        alphas = []
        for s, y, rho in reversed(history):
            a = rho * (s @ q)
            q -= a * y
            alphas.append(a)
        if history:
            s, y, _ = history[-1]
            q *= (s @ y) / (y @ y)
        else:
            q /= max(1.0, np.abs(grad).max())
        for (s, y, rho), a in zip(history, reversed(alphas)):
            q += s * (a - rho * (y @ q))
        step, slope = 1.0, -(grad @ q)
        if slope >= 0:  # not a descent direction: restart from the gradient
            history.clear()
            q, slope = grad / max(1.0, np.abs(grad).max()), -(grad @ grad) / max(1.0, np.abs(grad).max())
        while True:
            new = x - step * q
            new_value, new_grad = f(new)
            if new_value <= value + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = new - x, new_grad - grad
        if s @ y > 1e-10:
            history.append((s, y, 1.0 / (s @ y)))
            del history[:-memory]
        x, value, grad = new, new_value, new_grad
    return x


class TextLogistic:
    """Logistic regression over TF-IDF word features, refitted as labels come: for text.

    Naive Bayes learns from a handful of labels but is sure of itself on
    every long text; a linear model fitted to all the labels so far gives
    probabilities that mean what they say, which is what uncertainty sampling
    ranks by. The labels are kept; the model is refitted (multinomial logistic
    regression, L2 penalty ``1 / (2C)``, L-BFGS warm-started from the last fit)
    each time they have grown by ``refit`` (at least one label), so a stream of
    ``n`` labels costs about ``1 / refit`` fits of at most ``n`` rows. Features
    are sublinear term frequencies (``1 + log tf``) times the inverse document
    frequency over the labelled texts, scaled to unit length. Sample weights
    (``w``, a consensus confidence) weigh each label's loss.

    >>> model = TextLogistic()
    >>> for text, y in [("win cash now", "spam"), ("see you at lunch", "ham")] * 5:
    ...     model.learn_one({"w:" + w: 1.0 for w in text.split()}, y)
    >>> p = model.predict_proba_one({"w:win": 1.0, "w:lunch": 1.0, "w:cash": 1.0})
    >>> model.predict_one({"w:win": 1.0}), 0.5 < p["spam"] < 0.95
    ('spam', True)
    """

    def __init__(self, C: float = 10.0, refit: float = 0.05):
        self.C = C
        self.refit = refit
        self._cols: list[int] = []
        self._vals: list[float] = []
        self._indptr: list[int] = [0]
        self._y: list[int] = []
        self._w: list[float] = []
        self.classes: list[str] = []
        self._class_index: dict[str, int] = {}
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0)
        self.W = np.zeros((0, 0))
        self.b = np.zeros(0)
        self._next_fit = 0

    def clone(self) -> "TextLogistic":
        return TextLogistic(self.C, self.refit)

    @property
    def n_seen(self) -> int:
        return len(self._y)

    def learn_one(self, x: dict, y, w: float = 1.0, **kwargs) -> None:
        label = str(y) if not isinstance(y, str) else y
        if label not in self._class_index:
            self._class_index[label] = len(self.classes)
            self.classes.append(label)
        for key, value in x.items():  # the row, kept in the vocabulary's columns (they never move)
            if value > 0.0:
                self._cols.append(self.vocab.setdefault(key, len(self.vocab)))
                self._vals.append(1.0 + math.log(value))
        self._indptr.append(len(self._cols))
        self._y.append(self._class_index[label])
        self._w.append(float(w))
        if len(self._y) >= self._next_fit:
            self._fit()
            self._next_fit = len(self._y) + max(1, int(len(self._y) * self.refit))

    def _tf(self, x: dict) -> tuple[list[int], np.ndarray]:
        cols, vals = [], []
        for key, value in x.items():
            j = self.vocab.get(key)
            if j is not None and j < len(self.idf) and value > 0.0:  # a word learned since the last fit waits for the next
                cols.append(j)
                vals.append(1.0 + math.log(value))
        return cols, np.asarray(vals)

    def _fit(self) -> None:
        from scipy import sparse  # River's own dependency

        n, d, k = len(self._y), len(self.vocab), len(self.classes)
        X = sparse.csr_matrix((self._vals, self._cols, self._indptr), shape=(n, d))
        df = np.bincount(X.indices, minlength=d)
        self.idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        X = X @ sparse.diags(self.idf)
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        X = (sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ X).tocsr()
        Xt = X.T.tocsr()
        Y = np.zeros((n, k))
        Y[np.arange(n), self._y] = 1.0
        sw = np.asarray(self._w)
        start = np.zeros((d + 1, k))
        start[:self.W.shape[0], :self.W.shape[1]] = self.W
        start[d, :len(self.b)] = self.b

        def loss(theta):
            theta = theta.reshape(d + 1, k)
            Z = X @ theta[:d] + theta[d]
            Z -= Z.max(1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(1, keepdims=True)
            nll = -(sw * np.log(np.maximum((P * Y).sum(1), 1e-300))).sum()
            G = (P - Y) * sw[:, None]
            grad = np.vstack([Xt @ G + theta[:d] / self.C, G.sum(0)])
            return nll + 0.5 * (theta[:d] ** 2).sum() / self.C, grad.ravel()

        theta = lbfgs(loss, start.ravel(), iterations=40).reshape(d + 1, k)
        self.W, self.b = theta[:d], theta[d]

    def predict_proba_one(self, x: dict) -> dict[str, float]:
        if not self.classes:
            return {}
        if len(self.classes) == 1 or not len(self.b):
            return {c: 1.0 / len(self.classes) for c in self.classes}
        cols, vals = self._tf(x)
        z = self.b.copy()
        if cols:
            v = vals * self.idf[cols]
            z = z + (v / np.linalg.norm(v)) @ self.W[cols]
        p = np.exp(z - z.max())
        p /= p.sum()
        return dict(zip(self.classes, p.tolist()))

    def predict_one(self, x: dict):
        p = self.predict_proba_one(x)
        return max(sorted(p), key=p.__getitem__) if p else None

    @staticmethod
    def encode(xs: list[dict]):
        """Many items at once, for :meth:`predict_proba_many`: the sublinear term
        frequencies as a sparse matrix over the items' own words, computed once
        whatever the model learns later."""
        from scipy import sparse

        keys: dict[str, int] = {}
        cols, vals, indptr = [], [], [0]
        for x in xs:
            for key, value in x.items():
                if value > 0.0:
                    cols.append(keys.setdefault(key, len(keys)))
                    vals.append(1.0 + math.log(value))
            indptr.append(len(cols))
        return sparse.csr_matrix((vals, cols, indptr), shape=(len(xs), len(keys))), list(keys)

    def predict_proba_many(self, encoded) -> np.ndarray:
        """Class probabilities (columns in ``classes`` order) of items :meth:`encode` d."""
        from scipy import sparse

        X, keys = encoded
        if len(self.classes) < 2 or not len(self.b):
            return np.full((X.shape[0], len(self.classes)), 1.0 / max(1, len(self.classes)))
        index = np.array([self.vocab.get(k, -1) for k in keys] or [-1])
        known = np.flatnonzero((index >= 0) & (index < len(self.idf)))
        X = X[:, known] @ sparse.diags(self.idf[index[known]])
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        Z = (sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ X) @ self.W[index[known]] + self.b
        P = np.exp(Z - Z.max(1, keepdims=True))
        return P / P.sum(1, keepdims=True)


#: Kinds the live learner publishes (River models), and those only an offline replay builds.
LIVE_KINDS = ("knn", "linear", "tree")
OFFLINE_KINDS = ("knn", "river-knn", "linear", "tree", "nb", "tfidf")


def make(kind: str = "knn", offline: bool = False):
    """A fresh classifier of ``kind``.

    ``knn`` (default; strong with few labels), ``linear`` (fastest) and
    ``tree`` are River models, as the learner publishes them. With ``offline``
    (replaying a whole stream, never published) ``knn`` is :class:`KNN`, the
    same model computed by numpy, ``river-knn`` is River's, and ``nb`` is
    :class:`NB`, multinomial naive Bayes for text.

    >>> type(make("knn")).__name__, type(make("knn", offline=True)).__name__, type(make("nb", offline=True)).__name__
    ('Pipeline', 'KNN', 'NB')
    >>> make("nb")
    Traceback (most recent call last):
    ...
    ValueError: unknown model kind 'nb': choose knn, linear or tree
    """
    kinds = OFFLINE_KINDS if offline else LIVE_KINDS
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}: choose {', '.join(kinds[:-1])} or {kinds[-1]}")
    if offline and kind == "knn":
        return KNN()
    if kind == "nb":
        return NB()
    if kind == "tfidf":
        return TextLogistic()
    if kind in ("knn", "river-knn"):
        return preprocessing.StandardScaler() | neighbors.KNNClassifier(n_neighbors=5)
    if kind == "linear":
        return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=20, seed=0)
