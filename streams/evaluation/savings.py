"""Savings: how many labels the policy saved against random sampling, measured on the live stream.

The random control slice is a uniform sample of the stream. :func:`half` splits
it in two by a hash of the item id. Labels of the first half (``"train"``)
teach a *counterfactual* learner, of the live learner's kind: what random
sampling would have taught. The second half (``"eval"``) is held out from both
models and is the common test set. The live learner still holds out every
control label, so what it learns does not change.

Both models are snapshotted along the way (at 5, 10, 15, ... labels, then
about every 20% more), and each snapshot predicts every evaluation item once,
also the items that arrive after it: two learning curves measured on the very
same items. On a few dozen evaluation items each point is noisy (one item is
2 points of accuracy), so each curve is first fitted by isotonic regression (a
learning curve rises in expectation; the fit pools the dips and spikes around
it): the highest raw point, or the first raw point over a line, would be
chosen by the noise. :meth:`Savings.estimate` compares the fitted curves at
the *target*, the highest accuracy both reached: the labels the policy needed
to reach it, the labels random sampling needed (``random_labels_needed``), both
read between snapshots by linear interpolation, and their ``ratio`` (below 1:
the policy saved labels). When the policy went further than random sampling
has been seen to go, the target is random's best and the estimate says so
(``target_accuracy`` below ``policy_accuracy``). The 95% interval is a
percentile bootstrap over the evaluation items, refitting both curves on each
resample; it does not count the luck of which items the counterfactual was
taught, so it is narrower than the run-to-run spread. With fewer than
``min_eval`` evaluation labels, or a curve still empty, the figures are
``None``: nothing is made up.

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
>>> for n, x in enumerate([0.9, 0.7, 0.6, 0.55, 0.52, 0.5], 1):  # the policy buys labels near the boundary
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

__all__ = ["Savings", "half"]


def half(item_id: str) -> str:
    """``"train"`` or ``"eval"``: the half of the control slice an item belongs to, fixed by its id.

    >>> half("item-1"), half("item-3"), half("item-1")
    ('eval', 'train', 'eval')
    """
    return "train" if hashlib.blake2b(item_id.encode(), digest_size=1).digest()[0] % 2 == 0 else "eval"


@dataclass
class _Point:
    """One snapshot on a learning curve: labels learned, the model then, and its hit on each evaluation item."""

    labels: int
    model: object
    hits: deque = field(default_factory=deque)
    scheduled: bool = True  # False: taken for an estimate off the schedule, replaced by the next such point


class Savings:
    """Two learning curves on the control slice's evaluation half, and the labels saved between them.

    Parameters
    ----------
    model, kind
        The counterfactual, untrained: a copy of the live learner's fresh model, or else one of ``kind``
        (see :func:`streams.learning.models.make`).
    min_eval
        Evaluation labels needed before any figure is given.
    eval_window
        How many of the most recent evaluation labels are kept.
    first_point, growth
        Curve snapshots at ``first_point``, ``2 * first_point``, ... labels, then every ``growth`` times more.
    bootstrap, seed
        Resamples of the evaluation items for the interval, and their seed.
    """

    def __init__(self, model=None, kind: str = "knn", min_eval: int = 40, eval_window: int = 500,
                 first_point: int = 5, growth: float = 1.2, bootstrap: int = 400, seed: int = 0):
        # the learner's learning code (sample weights) around the given model; "linear" only builds a placeholder
        self.counterfactual = Learner("counterfactual", kind="linear", publish_every=1 << 30, control_window=1)
        self.counterfactual.model = models.make(kind) if model is None else model
        self.counterfactual.kind = kind
        self.min_eval = min_eval
        self.first_point = first_point
        self.growth = growth
        self.bootstrap = bootstrap
        self.seed = seed
        self.evaluation: deque[tuple[dict, str]] = deque(maxlen=eval_window)
        self.policy: list[_Point] = []
        self.random: list[_Point] = []
        self.policy_labels = 0
        self.control_seen = 0

    # -- feeding ------------------------------------------------------------------------
    def add_control(self, item_id: str, x: dict, label: str, weight: float = 1.0) -> str:
        """A settled label of the control slice: taught to the counterfactual, or kept for evaluation.
        Returns the half it went to."""
        self.control_seen += 1
        if half(item_id) == "train":
            self.counterfactual.learn(x, label, weight=weight)
            if self._due(self.random, self.counterfactual.labels_seen):
                self.counterfactual.rescale()  # measured as the live learner's versions are
            self._snapshot(self.random, self.counterfactual.model, self.counterfactual.labels_seen)
            return "train"
        if len(self.evaluation) == self.evaluation.maxlen:
            for point in self.policy + self.random:
                if point.hits:
                    point.hits.popleft()
        self.evaluation.append((x, label))
        for point in self.policy + self.random:
            point.hits.append(point.model.predict_one(x) == label)
        return "eval"

    def policy_learned(self, model, labels: int | None = None) -> None:
        """The live learner learned one more policy label (``labels`` in all, if known); ``model`` is its model."""
        self.policy_labels = self.policy_labels + 1 if labels is None else labels
        self._snapshot(self.policy, model, self.policy_labels)

    def _due(self, curve: list[_Point], labels: int) -> bool:
        last = next((p.labels for p in reversed(curve) if p.scheduled), 0)
        return labels >= max(self.first_point, last + self.first_point, math.ceil(last * self.growth))

    def _snapshot(self, curve: list[_Point], model, labels: int, force: bool = False) -> None:
        """A point on the curve when the schedule says so (a few dozen even after a million labels), or
        ``force``: then it stands in for the newest state until the next point, so curves stay short."""
        if labels <= 0 or (curve and curve[-1].labels == labels):
            return
        scheduled = self._due(curve, labels)
        if not (scheduled or force):
            return
        if curve and not curve[-1].scheduled:
            curve.pop()
        model = copy.deepcopy(model)
        curve.append(_Point(labels, model, deque(model.predict_one(x) == y for x, y in self.evaluation), scheduled))

    # -- estimating ---------------------------------------------------------------------
    def estimate(self, policy_model=None, z: float = 0.95) -> dict:
        """The savings now (``policy_model``: the live model, snapshotted first if it learned since the last
        point). Keys: ``policy_labels`` and ``random_labels_needed`` (labels each curve needed to first reach
        ``target_accuracy``), ``ratio`` of the two and its interval ``ci_low``-``ci_high`` (level ``z``),
        ``policy_labels_seen``/``policy_accuracy`` and ``random_labels_seen``/``random_accuracy`` (the
        newest point of each curve), ``n_eval``."""
        if policy_model is not None:
            self._snapshot(self.policy, policy_model, self.policy_labels, force=True)
        self.counterfactual.rescale()
        self._snapshot(self.random, self.counterfactual.model, self.counterfactual.labels_seen, force=True)
        n = len(self.evaluation)
        out = dict.fromkeys(("policy_labels", "random_labels_needed", "target_accuracy", "policy_accuracy",
                             "random_accuracy", "ratio", "ci_low", "ci_high"))
        out.update(policy_labels_seen=self.policy_labels, random_labels_seen=self.counterfactual.labels_seen,
                   n_eval=n)
        if n < self.min_eval or not self.policy or not self.random:
            return out
        hits_p = np.array([list(p.hits) for p in self.policy], dtype=float)
        hits_r = np.array([list(p.hits) for p in self.random], dtype=float)
        labels_p = np.array([p.labels for p in self.policy])
        labels_r = np.array([p.labels for p in self.random])
        acc_p, acc_r = hits_p.mean(axis=1), hits_r.mean(axis=1)
        needed_p, needed_r, target = _labels_to_target(acc_p[:, None], acc_r[:, None], labels_p, labels_r)
        p, r = max(1, round(float(needed_p[0]))), max(1, round(float(needed_r[0])))
        out.update(policy_labels=p, random_labels_needed=r, target_accuracy=float(target[0]),
                   policy_accuracy=float(acc_p[-1]), random_accuracy=float(acc_r[-1]), ratio=p / r)
        idx = np.random.default_rng(self.seed).integers(0, n, size=(self.bootstrap, n))
        boot_p, boot_r = hits_p[:, idx].mean(axis=2), hits_r[:, idx].mean(axis=2)
        bp, br, _ = _labels_to_target(boot_p, boot_r, labels_p, labels_r)
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
    """Per column (one sample of the evaluation items): the target, the highest accuracy both fitted
    curves reached, and the labels at which each fitted curve reached it.

    >>> p, r, t = _labels_to_target(np.array([[0.6], [0.9]]), np.array([[0.5], [0.7], [0.8]]),
    ...                             np.array([10, 20]), np.array([10, 20, 40]))
    >>> round(float(p[0]), 2), int(r[0]), float(t[0])
    (16.67, 40, 0.8)
    """
    fit_p, fit_r = isotonic(acc_p), isotonic(acc_r)
    target = np.minimum(fit_p[-1], fit_r[-1])
    return _reach(fit_p, labels_p, target), _reach(fit_r, labels_r, target), target
