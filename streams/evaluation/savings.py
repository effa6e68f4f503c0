"""Savings: how many labels the policy saved against random sampling, measured on the live stream.

The random control slice is a uniform sample of the stream, and the live
learner never learns it. :func:`fold` splits it into ``folds`` parts (5 by
default) by a hash of the item id, and each part has its own *counterfactual*
learner, of the live learner's kind, taught every control label *outside*
that part: what random sampling would have taught (cross-fitting). Every
control item is a test item: the policy's model is tested on all of them, and
random sampling on an item by the counterfactual that never learned its part.
With five parts each counterfactual learns four fifths of the control slice,
so the two curves are compared over that many labels (with two halves, the
first version of this estimate, only over half of them: on the demo's stream
~50 labels, where the policy's model is barely ahead; see docs/policy.md).

Both models are snapshotted along the way (at 5, 10, 15, ... labels, then
about every 20% more), and each snapshot is tested on every control item it
is meant for, also those that arrive after it: learning curves measured on
the very same items. Each part's items compare the policy's curve with the
curve of the counterfactual that never learned them, one model against one
(a curve pooled over the five counterfactuals is smoother than the policy's
one model, and a smoother curve reaches a level later: a uniformly sampling
policy got a median of 0.71 over 20 seeds of the demo's stream that way), and
the estimate is the mean of the parts' comparisons. On a few dozen items each
point is noisy (one item is 2 points of accuracy), so each curve is first
fitted by isotonic regression (a learning curve rises in expectation; the fit
pools the dips and spikes around it). :meth:`Savings.estimate` then compares
the two over the labels both have seen: up to ``m``, the fewer labels of the
two (random sampling's, as a rule: a counterfactual learns only part of the
control slice), the *target* is the lower of the two fitted accuracies at
``m``, and the estimate gives the labels each curve needed to first reach it
(``policy_labels``, ``random_labels_needed``, read between snapshots by linear
interpolation) and their ``ratio`` (below 1: the policy saved labels). Both
curves are judged by the same rule, so a policy that samples as random
sampling does gets 1 in expectation: taking instead the best accuracy random
sampling reached as the target favoured random sampling, whose own noisy best
it reaches by construction (on the demo's stream a uniformly sampling policy
gave a median ratio of 2.0 that way over six seeds; 1.04 this way over 20,
seeds 3-22, see docs/policy.md). What the policy learned
past ``m`` is not counted (``target_accuracy`` below ``policy_accuracy`` says
so). An item settled again (a review that changed its label) stays one item on
the curves. The 95% interval is a percentile bootstrap over the test items
(within each part), refitting both curves on each resample; it does not count
the luck of which items were taught, so it is narrower than the run-to-run
spread. With fewer than ``min_eval`` control labels, or a curve still empty,
the figures are ``None``: nothing is made up.

>>> class Threshold:  # a toy model: learns the smallest x labelled "b"
...     def __init__(self):
...         self.cut = None
...     def learn_one(self, x, y, w=1.0):
...         if y == "b" and (self.cut is None or x["x"] < self.cut):
...             self.cut = x["x"]
...     def predict_one(self, x):
...         return "b" if self.cut is not None and x["x"] >= self.cut else "a"
...     def predict_proba_one(self, x):
...         return {self.predict_one(x): 1.0}
>>> s = Savings(Threshold(), min_eval=10, first_point=2)
>>> items = [f"item-{i}" for i in range(400)]
>>> for i, item in enumerate(items[:200]):  # random labels: x uniform in [0, 1), "b" from 0.5
...     x = (i * 37 % 200) / 200
...     _ = s.add_control(item, {"x": x}, "b" if x >= 0.5 else "a")
>>> policy = Threshold()
>>> for n, x in enumerate([0.6, 0.55, 0.52, 0.51, 0.505, 0.5], 1):  # the policy buys labels near the boundary
...     policy.learn_one({"x": x}, "b")
...     s.policy_learned(policy, n)
>>> e = s.estimate()
>>> e["n_eval"] >= 10, e["policy_labels"] < e["random_labels_needed"], e["ratio"] < 1
(True, True, True)
>>> Savings(Threshold()).estimate()["ratio"] is None  # no data: no number
True
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from streams.learning import models
from streams.learning.learner import Learner
from streams.recent import Recent

__all__ = ["Savings", "fold"]

#: Parts of the control slice: each counterfactual learns all but one (see the module docstring).
FOLDS = 5


def fold(item_id: str, folds: int = FOLDS) -> int:
    """The part of the control slice an item belongs to (``0`` to ``folds - 1``), fixed by its id.

    >>> fold("item-1"), fold("item-2"), fold("item-1"), fold("item-1", folds=2)
    (3, 0, 3, 0)
    """
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") % folds


@dataclass
class _Point:
    """One snapshot on a learning curve: labels learned, the model then, and its hit on each evaluation item
    it is meant for (the policy's: every one; a counterfactual's: those of its own part)."""

    labels: int
    model: object
    hits: deque = field(default_factory=deque)
    scheduled: bool = True  # False: taken for an estimate off the schedule, replaced by the next such point


class Savings:
    """Learning curves of the policy and of random sampling on the control slice, and the labels saved between them.

    Parameters
    ----------
    model, kind
        The counterfactual, untrained: a copy of the live learner's fresh model, or else one of ``kind``
        (see :func:`streams.learning.models.make`). Each part of the control slice has its own copy.
    folds
        Parts of the control slice (at least 2): each counterfactual learns the control labels of all
        parts but its own, and is tested on its own.
    min_eval
        Control labels needed before any figure is given.
    eval_window
        How many of the most recent control labels are kept for evaluation.
    first_point, growth
        Curve snapshots at ``first_point``, ``2 * first_point``, ... labels, then every ``growth`` times more.
    bootstrap, seed
        Resamples of the evaluation items for the interval, and their seed.
    memory
        Items remembered to tell a label settled again (a review, soon after the first) from a new item
        (about 150 bytes each).
    """

    def __init__(self, model=None, kind: str = "knn", folds: int = FOLDS, min_eval: int = 40,
                 eval_window: int = 1000, first_point: int = 5, growth: float = 1.2, bootstrap: int = 400,
                 seed: int = 0, memory: int = 100_000):
        if folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds}")
        self.folds = folds
        self.counterfactuals: dict[int, Learner] = {}
        for k in range(folds):
            # the learner's learning code (sample weights) around the given model; "linear" only builds a placeholder
            learner = Learner(f"counterfactual-{k}", kind="linear", publish_every=1 << 30, control_window=1)
            learner.model = models.make(kind) if model is None else copy.deepcopy(model)
            learner.kind = kind
            self.counterfactuals[k] = learner
        self.min_eval = min_eval
        self.first_point = first_point
        self.growth = growth
        self.bootstrap = bootstrap
        self.seed = seed
        self.evaluation: deque[tuple[dict, str, int]] = deque(maxlen=eval_window)  # (x, label, part)
        self.policy: list[_Point] = []
        self.random: dict[int, list[_Point]] = {k: [] for k in range(folds)}  # curve of the counterfactual of part k
        self.policy_labels = 0
        self.control_seen = 0
        self.repeats = 0  # settlements of an item already on a curve (a review that changed its label)
        self._items = Recent(memory)

    # -- feeding ------------------------------------------------------------------------
    def repeat(self, item_id: str) -> bool:
        """True if ``item_id`` is already on a curve (counted in :attr:`repeats`): an item settled again, by a
        review that changed its label, is one item bought, and its first label stays on the curves."""
        if self._items.add(item_id):
            return False
        self.repeats += 1
        return True

    def add_control(self, item_id: str, x: dict, label: str, weight: float = 1.0) -> int | None:
        """A settled label of the control slice: the policy's curve and its part's counterfactual are tested
        on it, then every other counterfactual learns it. Returns its part (None: the item was settled before)."""
        if self.repeat(item_id):
            return None
        self.control_seen += 1
        part = fold(item_id, self.folds)
        if len(self.evaluation) == self.evaluation.maxlen:
            oldest = self.evaluation[0][2]
            for point in [*self.policy, *self.random[oldest]]:
                if point.hits:
                    point.hits.popleft()
        self.evaluation.append((x, label, part))
        for point in [*self.policy, *self.random[part]]:
            point.hits.append(point.model.predict_one(x) == label)
        for k, learner in self.counterfactuals.items():
            if k == part:
                continue
            learner.learn(x, label, weight=weight)
            if self._due(self.random[k], learner.labels_seen):
                learner.rescale()  # measured as the live learner's versions are
            self._snapshot(self.random[k], learner.model, learner.labels_seen, part=k)
        return part

    def policy_learned(self, model, labels: int | None = None, item_id: str | None = None, tidy=None) -> None:
        """The live learner learned one more policy label (``labels`` in all, if known), of ``item_id``;
        ``model`` is its model, and ``tidy`` (say :meth:`~streams.learning.learner.Learner.rescale`) what
        readies a copy of it as a published version is readied, applied to the point's copy alone. An item
        settled before adds no label."""
        if item_id is not None and self.repeat(item_id):
            return
        self.policy_labels = self.policy_labels + 1 if labels is None else labels
        self._snapshot(self.policy, model, self.policy_labels, tidy=tidy)

    def _due(self, curve: list[_Point], labels: int) -> bool:
        last = next((p.labels for p in reversed(curve) if p.scheduled), 0)
        return labels >= max(self.first_point, last + self.first_point, math.ceil(last * self.growth))

    def _snapshot(self, curve: list[_Point], model, labels: int, force: bool = False, tidy=None,
                  part: int | None = None) -> None:
        """A point on the curve when the schedule says so (a few dozen even after a million labels), or
        ``force``: then it stands in for the newest state until the next point, so curves stay short.
        ``tidy`` readies the point's copy of ``model``; ``part``: the point is tested on that part's items
        only (None: on all)."""
        if labels <= 0 or (curve and curve[-1].labels == labels):
            return
        scheduled = self._due(curve, labels)
        if not (scheduled or force):
            return
        if curve and not curve[-1].scheduled:
            curve.pop()
        model = copy.deepcopy(model)
        if tidy is not None:
            model = tidy(model)
        hits = deque(model.predict_one(x) == y for x, y, k in self.evaluation if part is None or k == part)
        curve.append(_Point(labels, model, hits, scheduled))

    # -- estimating ---------------------------------------------------------------------
    def estimate(self, policy_model=None, z: float = 0.95) -> dict:
        """The savings now (``policy_model``: the live model, snapshotted first if it learned since the last
        point). Keys: ``policy_labels`` and ``random_labels_needed`` (labels each curve needed to first reach
        ``target_accuracy``), ``ratio`` of the two and its interval ``ci_low``-``ci_high`` (level ``z``),
        ``policy_labels_seen``/``policy_accuracy`` and ``random_labels_seen``/``random_accuracy`` (the
        newest point of each curve; random's labels are those every counterfactual has seen), ``n_eval``.

        Both curves are measured on every control item, random sampling's by the counterfactual that never
        learned it, and judged by the same rule (see :func:`_labels_to_target`)."""
        if policy_model is not None:
            self._snapshot(self.policy, policy_model, self.policy_labels, force=True)
        for k, learner in self.counterfactuals.items():
            learner.rescale()
            self._snapshot(self.random[k], learner.model, learner.labels_seen, force=True, part=k)
        n = len(self.evaluation)
        out = dict.fromkeys(("policy_labels", "random_labels_needed", "target_accuracy", "policy_accuracy",
                             "random_accuracy", "ratio", "ci_low", "ci_high"))
        curves = [self.random[k] for k in range(self.folds)]
        out.update(policy_labels_seen=self.policy_labels, n_eval=n,
                   random_labels_seen=min((c[-1].labels for c in curves if c), default=0))
        parts = np.array([k for _, _, k in self.evaluation])
        cols = [np.flatnonzero(parts == k) for k in range(self.folds)]
        if (n < self.min_eval or not self.policy or not all(curves)
                or min(map(len, cols)) < max(1, self.min_eval // (2 * self.folds))):
            return out
        hits_p = np.array([list(p.hits) for p in self.policy], dtype=float)
        labels_p = np.array([p.labels for p in self.policy], dtype=float)
        sides = [(hits_p[:, c], np.array([list(p.hits) for p in curve], dtype=float),
                  np.array([p.labels for p in curve], dtype=float)) for c, curve in zip(cols, curves)]

        def compare(samples):  # per part, rows of item indices (one row per sample): the parts' means
            pol = ran = tgt = 0.0
            for (hp, hr, labels_r), idx in zip(sides, samples):
                p, r, t = _labels_to_target(hp[:, idx].mean(axis=2), hr[:, idx].mean(axis=2), labels_p, labels_r)
                pol, ran, tgt = pol + p / self.folds, ran + r / self.folds, tgt + t / self.folds
            return pol, ran, tgt

        pol, ran, tgt = compare([np.arange(len(c))[None, :] for c in cols])
        p, r = max(1, round(float(pol[0]))), max(1, round(float(ran[0])))
        hits_r = np.zeros(n)
        for (_, hr, _), c in zip(sides, cols):
            hits_r[c] = hr[-1]
        out.update(policy_labels=p, random_labels_needed=r, target_accuracy=float(tgt[0]),
                   policy_accuracy=float(hits_p[-1].mean()), random_accuracy=float(hits_r.mean()), ratio=p / r)
        rng = np.random.default_rng(self.seed)
        bp, br, _ = compare([rng.integers(0, len(c), size=(self.bootstrap, len(c))) for c in cols])
        low, high = np.quantile(bp / br, [(1 - z) / 2, (1 + z) / 2])
        low, high = min(low, out["ratio"]), max(high, out["ratio"])  # the rounding of the point estimate
        out.update(ci_low=float(low), ci_high=float(high))
        return out


def isotonic(acc: np.ndarray) -> np.ndarray:
    """The non-decreasing fit of least squares to each column of ``acc`` (rows: points of a curve),
    by the min-max formula ``fit[i] = max over k <= i of min over j >= i of mean(acc[k..j])``.

    >>> isotonic(np.array([[0.5], [0.7], [0.6], [0.9]]))[:, 0].round(3).tolist()
    [0.5, 0.65, 0.65, 0.9]
    """
    m = acc.shape[0]
    csum = np.concatenate([np.zeros((1,) + acc.shape[1:]), np.cumsum(acc, axis=0)])
    k, j = np.triu_indices(m)
    means = np.full((m, m) + acc.shape[1:], np.inf)  # means[k, j] = mean(acc[k..j]) for k <= j
    means[k, j] = (csum[j + 1] - csum[k]) / (j - k + 1)[:, None]
    suffix_min = np.minimum.accumulate(means[:, ::-1], axis=1)[:, ::-1]  # [k, i]: min over j >= i
    suffix_min[np.tril_indices(m, -1)] = -np.inf  # only k <= i
    return suffix_min.max(axis=0)


def _reach(fit: np.ndarray, labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per column: the labels at which the non-decreasing ``fit`` reaches ``target``, linearly
    interpolated between the points around it.

    >>> round(float(_reach(np.array([[0.6], [0.8]]), np.array([10, 20]), np.array([0.7]))[0]), 6)
    15.0
    """
    first = np.argmax(fit >= target - 1e-12, axis=0)
    before = np.maximum(first - 1, 0)
    cols = np.arange(fit.shape[1])
    a0, a1 = fit[before, cols], fit[first, cols]
    n0, n1 = labels[before].astype(float), labels[first].astype(float)
    share = np.where(a1 > a0, (target - a0) / np.where(a1 > a0, a1 - a0, 1.0), 1.0)
    return np.where(first == 0, n1, n0 + np.clip(share, 0.0, 1.0) * (n1 - n0))


def _labels_to_target(acc_p: np.ndarray, acc_r: np.ndarray, labels_p: np.ndarray, labels_r: np.ndarray):
    """Per column (one sample of the evaluation items): the target, and the labels at which each fitted
    curve first reached it. Both curves are judged on the labels both have seen: each is cut after its
    first point at or past ``m``, the fewer labels of the two, and the target is the lower of the two
    fitted accuracies at ``m``. The rule is the same for both curves, so a policy that samples as random
    sampling does gets a ratio of 1 in expectation; a policy that reached the target sooner, below 1.

    >>> p, r, t = _labels_to_target(np.array([[0.6], [0.9]]), np.array([[0.5], [0.7], [0.8]]),
    ...                             np.array([10, 20]), np.array([10, 20, 40]))
    >>> round(float(p[0]), 2), int(r[0]), round(float(t[0]), 2)
    (13.33, 20, 0.7)
    """
    m = min(labels_p[-1], labels_r[-1])
    cut_p, cut_r = int(np.searchsorted(labels_p, m)) + 1, int(np.searchsorted(labels_r, m)) + 1
    labels_p, labels_r = labels_p[:cut_p], labels_r[:cut_r]
    fit_p, fit_r = isotonic(acc_p[:cut_p]), isotonic(acc_r[:cut_r])
    target = np.minimum(_at(fit_p, labels_p, m), _at(fit_r, labels_r, m))
    return _reach(fit_p, labels_p, target), _reach(fit_r, labels_r, target), target


def _at(fit: np.ndarray, labels: np.ndarray, n: float) -> np.ndarray:
    """Per column: the fitted curve at ``n`` labels, linearly interpolated.

    >>> _at(np.array([[0.6], [0.8]]), np.array([10, 20]), 15).round(6).tolist()
    [0.7]
    """
    i = int(np.clip(np.searchsorted(labels, n), 1, len(labels) - 1)) if len(labels) > 1 else 0
    if len(labels) == 1 or labels[i] == labels[i - 1]:
        return fit[i]
    share = float(np.clip((n - labels[i - 1]) / (labels[i] - labels[i - 1]), 0.0, 1.0))
    return fit[i - 1] + share * (fit[i] - fit[i - 1])
