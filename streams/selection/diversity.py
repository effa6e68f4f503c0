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

    def update_many(self, xs: list[dict[str, float]]) -> np.ndarray | None:
        """:meth:`update` of each of ``xs`` in order, as the rows of one array: the same
        running statistics and the same sketches, bit for bit (Welford's means run item by item
        in plain floats, the sums of squared deviations are one running sum, added in the same
        order; the standardising is elementwise, rounded as one item's).
        None, with nothing learned, unless every item has the same numeric features in the
        same order (text, or a stream whose features vary, is sketched item by item).

        >>> a, b = Sketch(dims=4), Sketch(dims=4)
        >>> xs = [{"x": float(i % 7), "y": i / 3, "z": 1.0} for i in range(20)]
        >>> bool((a.update_many(xs) == np.array([b.update(x) for x in xs])).all()), a._stats == b._stats
        (True, True)
        >>> a.update_many([{"x": 1.0}, {"y": 2.0}]) is None, a.update_many([{"w:word": 1.0}]) is None
        (True, True)

        ``xs`` may be rows of one array with ``names`` and ``matrix()`` (a message's
        :class:`~streams.selection.scorer.FeatureRows`): read as the array, no dict made.
        """
        if not xs:
            return None
        m, matrix = len(xs), getattr(xs, "matrix", None)
        if matrix is not None and len(set(xs.names)) == len(xs.names):  # rows of one array: no dict read
            names = list(xs.names)
            if any(key.startswith(TEXT_PREFIX) for key in names):
                return None
            values = matrix()
        else:
            names = list(xs[0])
            if any(key.startswith(TEXT_PREFIX) for key in names) or any(list(x) != names for x in xs):
                return None
            values = np.array([list(x.values()) for x in xs], dtype=float).reshape(m, len(names))
        out = np.zeros((m, self.dims + self.text_dims))
        counts = None  # each item's count as a float, for the features seen as often (all, usually)
        for j, key in enumerate(names):
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = [0, 0.0, 0.0, *self._place(key, self.dims, 0)]
            n0, mean, m2, i, sign = stats
            column = values[:, j]
            if counts is None or counts[0] != n0 + 1:
                counts = np.arange(n0 + 1.0, n0 + m + 1.0).tolist()  # exact: integers below 2**53
            # Welford, as update: the means in turn, in plain floats (mean += (value - mean) / count); then
            # each item's delta * (value - new mean) elementwise, and their running sum by add.accumulate,
            # which adds in turn as the loop did: the same m2 at every item, bit for bit
            means = np.fromiter([mean := mean + (value - mean) / count
                                 for value, count in zip(column.tolist(), counts)], float, m)
            before = np.concatenate(([stats[1]], means[:-1]))
            spread = np.add.accumulate(np.concatenate(([m2], (column - before) * (column - means))))[1:]
            stats[0], stats[1], stats[2] = n0 + m, mean, float(spread[-1])
            n = np.arange(n0 + 1, n0 + m + 1)
            ok = (n > 1) & (spread > 0.0)
            if ok.any():
                scale = np.sqrt(spread[ok] / (n[ok] - 1))
                out[ok, i] += sign * (column[ok] - means[ok]) / scale
        return out


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
        # center is one matrix product with (1, v) over the first 1 + width columns (each column one
        # contiguous run): at 2,000 centers a third of the float64 row-major cost
        self._centers = np.zeros((memory, 1 + self.sketch.dims + self.sketch.text_dims), dtype=np.float32,
                                 order="F")
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, self.memory)

    def products(self, q: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """``|c|^2 - 2 c.v`` of the centers in ``rows`` (all the ring's rows, filled or not, by default)
        and each column ``(1, v)`` of ``q`` (float32, ``1 + width`` rows, at least two columns).

        Every product of centers and sketches goes through here, one shape of matrix product: the
        whole ring (or an aligned block of 64 of its rows, :class:`Nearest`) times two or more
        columns. OpenBLAS sums each entry of such a product in the same order whichever the block
        or the number of columns (checked on 500 random shapes), while a matrix-vector product may
        not (its 4-column sums differ in the last bits), so one event's distance and a whole
        message's (:class:`Nearest`) come out bit for bit the same."""
        return self._centers[rows, :q.shape[0]] @ q

    def distance(self, v: np.ndarray) -> float:
        """Distance from sketch ``v`` to the nearest center (``inf`` with none)."""
        n = len(self)
        if n == 0:
            return math.inf
        w = self.sketch.width  # the columns past it are zero in every sketch
        q = np.zeros((1 + w, 2), dtype=np.float32)  # (1, v) and a column of zeros: see products
        q[0, 0], q[1:, 0] = 1.0, v[:w]
        # |c - v|^2 = |c|^2 - 2 c.v + |v|^2: one matrix product, no n x w temporary
        return math.sqrt(max(0.0, float(self.products(q)[:n, 0].min()) + float(v[:w] @ v[:w])))

    def nearest(self, sketches: np.ndarray) -> "Nearest":
        """The distances of a message's ``sketches`` (rows, in order) to the nearest center, as
        :meth:`distance` gives them one at a time while the chosen ones become centers: see :class:`Nearest`."""
        return Nearest(self, sketches)

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


class Nearest:
    """:meth:`Novelty.distance` of each row of ``sketches`` in turn, while the rows chosen become centers.

    One matrix product gives every row's products with the centers present at the start; a
    center added since (:meth:`Novelty.add`, between two rows) is one small product (its aligned
    block of 64 ring rows) with the rows still to come, and a row whose nearest center was
    overwritten in the ring takes the nearest of the start's centers still there from the same
    product. The entries are those :meth:`Novelty.distance` computes, summed in the same order
    (see :meth:`Novelty.products`), so the distances are the same bit for bit.

    >>> novelty = Novelty(Sketch(dims=3))
    >>> rng = np.random.default_rng(0)
    >>> for i in range(30):
    ...     novelty.add(novelty.sketch.update(dict(zip("abc", rng.normal(size=3)))))
    >>> rows = np.array([novelty.sketch.update(dict(zip("abc", rng.normal(size=3)))) for i in range(4)])
    >>> nearest = novelty.nearest(rows)
    >>> nearest.distance(0, rows[0]) == novelty.distance(rows[0])
    True
    >>> novelty.add(rows[0])  # chosen: a center for the rows after it
    >>> nearest.distance(1, rows[1]) == novelty.distance(rows[1])
    True
    """

    BLOCK = 64  # rows of the ring a new center is multiplied with: a multiple of any BLAS kernel's tile

    def __init__(self, novelty: Novelty, sketches: np.ndarray):
        self.novelty = novelty
        self.sketches = sketches
        self.width = w = novelty.sketch.width
        self.m = m = len(sketches)
        # row i is (1, v_i) as distance builds it (a row of zeros after a lone one: two columns at least)
        q = np.zeros((max(m, 2), 1 + w), dtype=np.float32, order="F")
        q[:m, 0], q[:m, 1:] = 1.0, sketches[:, :w]
        self._q = q.T  # (1 + w) x rows, row-major, as distance's
        self._n = n = len(novelty)
        self._start = self._seen = novelty._count
        if n:  # ring rows x message rows: |c|^2 - 2 c.v of every center and row
            self._products = novelty.products(self._q)
            self._best = self._products[:n].min(0)
        else:
            self._products, self._best = None, np.full(q.shape[0], np.inf, dtype=np.float32)
        self._nearest = self._best.tolist()  # as floats, read once a row (until a center is added)
        # |v|^2 of every row: vecdot runs the dot distance runs (v @ v), row by row, bit for bit
        rows = sketches[:, :w]
        self._norms = (np.vecdot(rows, rows).tolist() if hasattr(np, "vecdot")  # numpy 2
                       else [float(v @ v) for v in rows])
        self._added = np.full(m, np.inf, dtype=np.float32)  # the nearest of the centers added since the start
        self._stale = np.zeros(m, dtype=bool)  # rows whose nearest center at the start has left the ring
        self._moved = False  # whether a center was added since the start (then _added and _stale count)
        self._gone: list[int] = []  # ring rows of the start's centers overwritten since

    def _add(self, k: int, i: int) -> None:
        """The center added ``k``-th, for rows ``i`` on: the products distance would take for it."""
        novelty, block = self.novelty, self.BLOCK
        row = k % novelty.memory
        if k >= novelty.memory and row < self._n:  # a center of the start leaves the ring
            self._stale[i:] |= self._products[row, i:self.m] == self._best[i:self.m]
            self._gone.append(row)
        first = row - row % block
        last = min(first + block, novelty.memory)
        if last - first < 2:  # a lone last row: with the block before it, as the whole ring has it
            first = max(0, first - block)
        start = min(i, self._q.shape[1] - 2)  # two columns at least
        values = novelty.products(self._q[:, start:], slice(first, last))[row - first, i - start:self.m - start]
        np.minimum(self._added[i:], values, out=self._added[i:])
        self._moved = True

    def distance(self, i: int, v: np.ndarray | None = None) -> float:
        """:meth:`Novelty.distance` of row ``i`` (its sketch ``v``, the row of ``sketches`` if not given),
        the centers as they are now."""
        novelty = self.novelty
        count = novelty._count
        if count - self._start >= novelty.memory:  # the ring went round within the message: in full
            return novelty.distance(self.sketches[i] if v is None else v)
        for k in range(self._seen, count):
            self._add(k, i)
        self._seen = count
        nearest = self._nearest[i]
        if self._moved:
            if self._stale[i]:  # its nearest center left: the nearest of the start's centers still there
                column = self._products[:self._n, i].copy()
                column[self._gone] = np.inf
                nearest = float(column.min())
            added = float(self._added[i])
            nearest = added if added < nearest else nearest  # min(nearest, added), as the builtin gives it
        if not count:
            return math.inf
        d2 = nearest + self._norms[i]
        return math.sqrt(d2 if d2 > 0.0 else 0.0)  # max(0.0, d2)
