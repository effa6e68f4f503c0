"""Novelty: how far an item is from everything already chosen for a label.

Items are reduced to a compact *sketch*: numeric features standardised with
running means and variances, one slot each (extra features are hashed into the
slots), and words (features named ``w:...``, see
:func:`streams.learning.features.featurize`) hashed into their own slots and scaled to
unit length, so text compares by cosine distance. The sketch is cheap enough
to compute for every item of the stream.

:class:`Novelty` keeps the sketches of the items chosen so far (labeled or
waiting for a label) as *centers*, and scores an item by its distance to the
nearest one. Adding every chosen item at once as a center is the streaming
form of the k-center greedy selection of Sener and Savarese ("Active Learning
for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018): a batch
chosen this way is spread out, not clumped.

>>> novelty = Novelty(Sketch(dims=4))
>>> for i in range(50):
...     _ = novelty.sketch.update({"x": float(i % 10), "y": 1.0})
>>> novelty.score({"x": 0.0, "y": 1.0})
inf
>>> novelty.add({"x": 0.0, "y": 1.0})
>>> novelty.score({"x": 0.0, "y": 1.0}) < novelty.score({"x": 9.0, "y": 1.0})
True
"""

from __future__ import annotations

import math
import zlib

import numpy as np

TEXT_PREFIX = "w:"


class Sketch:
    """A fixed-length vector for a feature dict, for cheap distances.

    Parameters
    ----------
    dims
        Slots for numeric features.
    text_dims
        Slots for hashed words (the ``w:`` features).
    """

    def __init__(self, dims: int = 32, text_dims: int = 64):
        self.dims = dims
        self.text_dims = text_dims
        self._slot: dict[str, tuple[int, float]] = {}
        self._stats: dict[str, list] = {}  # count, mean, sum of squared deviations, slot, sign
        self.has_text = False

    @property
    def width(self) -> int:
        """Columns in use: the numeric slots, and the text slots once text was seen."""
        return self.dims + self.text_dims if self.has_text else min(self.dims, max(1, len(self._slot)))

    def _place(self, key: str, size: int, offset: int) -> tuple[int, float]:
        slot = self._slot.get(key)
        if slot is None:
            if offset == 0 and len(self._slot) < size:
                slot = (len(self._slot), 1.0)
            else:
                h = zlib.crc32(key.encode())
                slot = (offset + h % size, 1.0 if h & 0x80000000 else -1.0)
            if offset == 0:
                self._slot[key] = slot
        return slot

    def update(self, x: dict[str, float]) -> np.ndarray:
        """Learn the running statistics from ``x``, then sketch it."""
        return self.transform(x, learn=True)

    def transform(self, x: dict[str, float], learn: bool = False) -> np.ndarray:
        """The sketch of ``x`` under the current statistics (updated by ``x``
        first if ``learn``: Welford's running mean and variance per feature)."""
        numeric, words = [0.0] * self.dims, None  # plain floats: a numpy item write costs several times more
        for key, value in x.items():
            if key.startswith(TEXT_PREFIX):
                i, sign = self._place(key, self.text_dims, self.dims)
                if words is None:
                    words = [0.0] * self.text_dims
                words[i - self.dims] += sign * value
                continue
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = [0, 0.0, 0.0, *self._place(key, self.dims, 0)]
            if learn:
                stats[0] += 1
                delta = value - stats[1]
                stats[1] += delta / stats[0]
                stats[2] += delta * (value - stats[1])
            n, mean, m2, i, sign = stats
            if n > 1 and m2 > 0.0:
                numeric[i] += sign * (value - mean) / math.sqrt(m2 / (n - 1))
        v = np.zeros(self.dims + self.text_dims)
        v[:self.dims] = numeric
        if words is not None:
            self.has_text = True
            text = np.array(words)
            norm = np.linalg.norm(text)
            v[self.dims:] = text / norm if norm > 0.0 else text
        return v


class Novelty:
    """Distance from an item to the nearest chosen item (a center).

    Parameters
    ----------
    sketch
        The :class:`Sketch` items are reduced to.
    memory
        How many of the most recent centers are kept.
    """

    def __init__(self, sketch: Sketch | None = None, memory: int = 2000):
        self.sketch = sketch or Sketch()
        self.memory = memory
        # a center c is the row (|c|^2, -2 c) in float32, column-major, so |c - v|^2 - |v|^2 of every
        # center is one matrix-vector product with (1, v) over the first 1 + width columns of the first
        # len rows (each column one contiguous run): at 2,000 centers a third of the float64 row-major cost
        self._centers = np.zeros((memory, 1 + self.sketch.dims + self.sketch.text_dims), dtype=np.float32,
                                 order="F")
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, self.memory)

    def distance(self, v: np.ndarray) -> float:
        """Distance from sketch ``v`` to the nearest center (``inf`` with none)."""
        n = len(self)
        if n == 0:
            return math.inf
        w = self.sketch.width  # the columns past it are zero in every sketch
        q = np.empty(1 + w, dtype=np.float32)
        q[0], q[1:] = 1.0, v[:w]
        # |c - v|^2 = |c|^2 - 2 c.v + |v|^2: one matrix-vector product, no n x w temporary
        return math.sqrt(max(0.0, float((self._centers[:n, :1 + w] @ q).min()) + float(v[:w] @ v[:w])))

    def score(self, x: dict[str, float]) -> float:
        """Distance from ``x`` to the nearest center."""
        return self.distance(self.sketch.transform(x))

    def add(self, x: dict[str, float] | np.ndarray) -> None:
        """Make ``x`` (a feature dict or a sketch) a center."""
        v = x if isinstance(x, np.ndarray) else self.sketch.transform(x)
        i = self._count % self.memory
        c = v.astype(np.float32)
        self._centers[i, 1:] = -2.0 * c
        self._centers[i, 0] = float(c @ c)
        self._count += 1
