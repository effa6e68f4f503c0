"""Density: how typical an item is of the stream, so uncertainty does not chase outliers.

Uncertainty sampling alone buys the items a model is least sure of, and on a
noisy stream many of those are oddities (a two-word snippet, a garbled
record) that teach little about the items the model will meet. Information
density (Settles and Craven, "An Analysis of Active Learning Strategies for
Sequence Labeling Tasks", EMNLP 2008) weighs an item's uncertainty by its
mean similarity to the rest of the data. On a stream the rest of the data is
a reservoir of recent items: :class:`Density` keeps the last ``size``
sketches (:class:`~streams.selection.diversity.Sketch`) and scores an item by
its mean Gaussian similarity to them, ``exp(-|a - b|^2 / s)``, with ``s`` the
mean squared distance between items seen so far (so the score is in ``(0, 1]``
whatever the features' scale).

>>> import numpy as np
>>> density = Density(size=50)
>>> rng = np.random.default_rng(0)
>>> for _ in range(50):
...     _ = density.add(rng.normal(0.0, 1.0, 2))
>>> density.score(np.zeros(2)) > density.score(np.array([4.0, 4.0]))
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["Density"]


class Density:
    """Mean similarity of a sketch to a reservoir of the most recent ones.

    Parameters
    ----------
    size
        Recent sketches kept.
    """

    def __init__(self, size: int = 200):
        self.size = size
        self._items: np.ndarray | None = None
        self._count = 0
        self._scale = 0.0  # running mean of squared distances between items

    def __len__(self) -> int:
        return min(self._count, self.size)

    def _sq_distances(self, v: np.ndarray) -> np.ndarray:
        items = self._items[:len(self)]
        width = min(len(v), items.shape[1])
        return np.maximum(0.0, (items[:, :width] ** 2).sum(1) - 2.0 * items[:, :width] @ v[:width]
                          + float(v[:width] @ v[:width]))

    def score(self, v: np.ndarray) -> float:
        """Mean similarity of ``v`` to the reservoir, in ``(0, 1]`` (1 with nothing seen yet)."""
        if not len(self) or self._scale <= 0.0:
            return 1.0
        return float(np.exp(-self._sq_distances(v) / self._scale).mean())

    def update(self, v: np.ndarray) -> float:
        """:meth:`score` ``v``, then :meth:`add` it (one pass over the reservoir)."""
        return self.add(v)

    def add(self, v: np.ndarray) -> float:
        """Take ``v`` into the reservoir (the oldest item leaves it when full); return its score before."""
        v = np.asarray(v, dtype=float)
        score = 1.0
        if self._items is None or self._items.shape[1] < len(v):
            grown = np.zeros((self.size, len(v)))
            if self._items is not None:
                grown[:, :self._items.shape[1]] = self._items
            self._items = grown
        if len(self):
            d2 = self._sq_distances(v)
            if self._scale > 0.0:
                score = float(np.exp(-d2 / self._scale).mean())
            self._scale += (float(d2.mean()) - self._scale) / min(self._count, 1000)
        self._items[self._count % self.size, :len(v)] = v
        self._count += 1
        return score
