"""Annotators who err, for ``feedbackloop simulate``: who labels a bought item, and what they answer.

An :class:`Annotation` says how labels are made: each annotator's error rate,
how many labels a bought item gets (``overlap``) and where the errors fall
(``noise``). A :class:`Panel` plays it on one stream: for a bought item it gives
the answers of annotators in an order fixed for that item; the replay
(:mod:`feedbackloop.simulate`) hands them to the loop one at a time, as labels,
until the live :class:`~streams.labels.consensus.Consensus` settles, exactly as
the live trainer re-issues a task while annotators disagree. An item the
consensus cannot settle (no annotator left to ask, or no budget left) teaches
nothing, and its labels are still paid.

Every draw is fixed by the seed, the annotator and the item (its position in
the stream), never by what was asked before: two strategies replaying the same
stream meet the same annotators making the same mistakes on the same items.

Noise:

* ``uniform``: an annotator with error rate ``E`` answers wrong with
  probability ``E`` on every item, a label drawn uniformly among the other classes.
* ``boundary``: errors fall where the classes meet. An item's closeness to the
  boundary is ``h = d_same / (d_same + d_other)``, with ``d_same`` the distance to
  the nearest other item of its own class and ``d_other`` to the nearest item
  of another class, over the stream's true labels (standardised features;
  cosine for text; no held-out item is used): 0 deep inside its class, 0.5 on
  the boundary, towards 1 inside another class. The annotator's error rate on
  the item is ``s * h``, capped at ``1 - 1/k`` for ``k`` classes, with ``s`` set
  so that the mean over the stream is ``E``. The wrong label is the class of
  that nearest item of another class: the one the item is mistaken for. (A
  model fitted on the stream's labels would place every item on its own side,
  since it has seen the item's label; the neighbour distance does not.)

>>> stream = [({"x": float(i)}, "a" if i < 50 else "b") for i in range(100)]
>>> panel = Panel(Annotation(errors=(0.2,), overlap=2), stream, seed=0)
>>> panel.order(2), [panel.answer(j, 2) for j in panel.order(2)]
([2, 1, 4, 0, 3], ['b', 'a', 'a', 'a', 'b'])
>>> list(panel.answers(2))[:3]
[('annotator-2', 'b'), ('annotator-1', 'a'), ('annotator-4', 'a')]

With an overlap of 2 the first two disagree, and the live consensus asks the
third, who settles it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streams.labels.consensus import Consensus

__all__ = ["NOISES", "Annotation", "Panel", "boundary_closeness"]

NOISES = ("uniform", "boundary")


@dataclass(frozen=True)
class Annotation:
    """How the simulator's labels are made.

    Parameters
    ----------
    errors
        One error rate for every annotator, or one per annotator.
    overlap
        Labels per bought item, from different annotators (``0``: adaptive, as
        the live consensus: a second label only when the first disagrees with a
        confident model).
    noise
        ``uniform`` or ``boundary`` (see the module).

    >>> Annotation().perfect, Annotation(errors=(0.05,)).perfect
    (True, False)
    >>> Annotation(errors=(0.05, 0.05, 0.4), overlap=3).describe()
    '3 annotators at error 0.05, 0.05, 0.4 (uniform noise), 3 labels per bought item'
    """

    errors: tuple[float, ...] = (0.0,)
    overlap: int = 1
    noise: str = "uniform"

    def __post_init__(self):
        if not self.errors or any(not 0.0 <= e < 1.0 for e in self.errors):
            raise ValueError(f"annotator error rates must be in [0, 1), got {list(self.errors)}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be 0 (adaptive) or more, got {self.overlap}")
        if self.noise not in NOISES:
            raise ValueError(f"unknown annotator noise {self.noise!r}: choose {' or '.join(NOISES)}")
        if len(self.errors) > 1 and len(self.errors) < self.overlap:
            raise ValueError(f"overlap {self.overlap} needs at least {self.overlap} annotators, "
                             f"got {len(self.errors)} error rates")

    @property
    def perfect(self) -> bool:
        """Every label the truth and one per item: the replay teaches the truth, as it always did."""
        return self.overlap == 1 and not any(self.errors)

    @property
    def rates(self) -> list[float]:
        """Each annotator's error rate. One rate given: as many annotators as the
        live consensus asks before it wants a reviewer, so adjudication never runs short."""
        if len(self.errors) > 1:
            return list(self.errors)
        return [self.errors[0]] * max(Consensus().max_annotators, self.overlap)

    @property
    def labels_per_item(self) -> int:
        """Labels a bought item costs at least (the budget counts labels, not items)."""
        return max(1, self.overlap)

    def as_dict(self) -> dict:
        return {"annotator_error": list(self.errors), "overlap": self.overlap, "noise": self.noise,
                "annotators": len(self.rates), "labels_per_item": self.labels_per_item,
                "budget_unit": "labels"}

    def describe(self) -> str:
        """One line for tables and plots."""
        per_item = "adaptive overlap (1 or more labels per item)" if self.overlap == 0 else \
            f"{self.overlap} label{'s' if self.overlap > 1 else ''} per bought item"
        if self.perfect:
            return f"perfect annotators (every label is the truth), {per_item}"
        errors = ", ".join(f"{e:g}" for e in self.errors)
        return f"{len(self.rates)} annotators at error {errors} ({self.noise} noise), {per_item}"


def boundary_closeness(rows, text: bool = False, chunk: int = 256) -> tuple[np.ndarray, list[str]]:
    """Per row: its closeness to the class boundary ``d_same / (d_same + d_other)``,
    and the class of its nearest item of another class (see the module).

    >>> rows = [({"x": 0.0}, "a"), ({"x": 1.0}, "a"), ({"x": 2.0}, "b"), ({"x": 3.0}, "b"), ({"x": 0.5}, "b")]
    >>> h, other = boundary_closeness(rows)
    >>> h.round(2).tolist(), other
    ([0.67, 0.67, 0.5, 0.33, 0.75], ['b', 'b', 'a', 'a', 'a'])
    """
    n = len(rows)
    classes = sorted({y for _, y in rows})
    y = np.array([classes.index(label) for _, label in rows])
    X, sq = _vectors([x for x, _ in rows], text)
    near = np.full((n, len(classes)), np.inf)
    members = [np.flatnonzero(y == c) for c in range(len(classes))]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        gram = X[start:stop] @ X.T
        gram = gram.toarray() if hasattr(gram, "toarray") else np.asarray(gram)
        d2 = sq[start:stop, None] - 2.0 * gram + sq[None, :]
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not itself
        for c, cols in enumerate(members):
            if len(cols):
                near[start:stop, c] = d2[:, cols].min(1)
    d = np.sqrt(np.maximum(near, 0.0))
    rows_ = np.arange(n)
    same = d[rows_, y].copy()
    d[rows_, y] = np.inf
    other, confused = d.min(1), d.argmin(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(same + other > 0, same / (same + other), 0.5)
    h = np.where(np.isinf(other), 0.0, np.where(np.isinf(same), 1.0, h))  # one class only / a class of one
    return h, [classes[c] if np.isfinite(other[i]) else classes[y[i]] for i, c in enumerate(confused)]


def _vectors(xs: list[dict], text: bool):
    """Rows as a matrix and their squared norms: standardised columns, or unit rows for text."""
    keys = {k: i for i, k in enumerate(sorted({k for x in xs for k in x}))}
    if text:
        from scipy import sparse  # River's own dependency

        cols = [keys[k] for x in xs for k in x]
        vals = [float(v) for x in xs for v in x.values()]
        ptr = np.cumsum([0] + [len(x) for x in xs])
        X = sparse.csr_matrix((vals, cols, ptr), shape=(len(xs), len(keys)))
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        X = sparse.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ X
        return X.tocsr(), (norms > 0).astype(float)
    X = np.zeros((len(xs), len(keys)))
    for i, x in enumerate(xs):
        for k, v in x.items():
            X[i, keys[k]] = v
    sd = X.std(0)
    X = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    return X, (X * X).sum(1)


def _scaled_rates(h: np.ndarray, mean: float, cap: float) -> np.ndarray:
    """``min(cap, s * h)`` with ``s`` such that its mean is ``mean`` (as near as the cap allows)."""
    if mean <= 0 or not h.any():
        return np.full(len(h), mean)
    lo, hi = 0.0, cap / max(h[h > 0].min(), 1e-12)
    for _ in range(60):
        s = (lo + hi) / 2
        lo, hi = (s, hi) if np.minimum(cap, s * h).mean() < mean else (lo, s)
    return np.minimum(cap, hi * h)


class Panel:
    """The annotators of one stream: who labels item ``t`` (its position), and what they answer.

    Parameters
    ----------
    annotation
        Error rates, overlap and noise.
    stream
        The replayed ``(features, true label)`` rows.
    seed
        Fixes every draw, with the annotator and the item.
    text
        Features are word counts (distances for ``boundary`` noise are cosine).
    """

    def __init__(self, annotation: Annotation, stream, seed: int, text: bool = False):
        self.annotation = annotation
        self.seed = seed
        self.truth = [y for _, y in stream]
        self.classes = sorted(set(self.truth))
        self.confused: list[str] | None = None
        rates = annotation.rates
        if annotation.noise == "boundary" and len(self.classes) > 1:
            h, self.confused = boundary_closeness(stream, text)
            cap = 1.0 - 1.0 / len(self.classes)
            per_rate = {e: _scaled_rates(h, e, cap) for e in set(rates)}
            self.rates = [per_rate[e] for e in rates]
        else:
            self.rates = [np.full(len(stream), e) for e in rates]

    def rate(self, annotator: int, item: int) -> float:
        """The probability that ``annotator`` labels ``item`` wrong."""
        return float(self.rates[annotator][item])

    def answer(self, annotator: int, item: int) -> str:
        """What ``annotator`` says ``item`` is: the same whoever asks, and whenever."""
        truth = self.truth[item]
        rng = random.Random(f"{self.seed}:{annotator}:{item}")
        if rng.random() >= self.rate(annotator, item):
            return truth
        if self.confused is not None:
            return self.confused[item]
        others = [c for c in self.classes if c != truth]
        return rng.choice(others) if others else truth

    def order(self, item: int) -> list[int]:
        """The annotators in the order ``item`` is given to them."""
        order = list(range(len(self.rates)))
        random.Random(f"{self.seed}:order:{item}").shuffle(order)
        return order

    def answers(self, item: int) -> Iterator[tuple[str, str]]:
        """``(annotator id, answer)`` for ``item``, in the order it is given to annotators."""
        for annotator in self.order(item):
            yield f"annotator-{annotator}", self.answer(annotator, item)
