"""The labeling budget: hard caps, pacing of the spend, and variable thresholds.

Two budget managers, composed with a query strategy as in stream-based active
learning (Žliobaitė, Bifet, Pfahringer and Holmes, "Active Learning With
Drifting Streaming Data", IEEE TNNLS 25(1), 2014):

* :class:`Budget` owns the global spend. Hard caps count labels per calendar
  hour, day and week of event time. The spend is *paced*: the number of labels
  bought is kept close to ``fraction`` times the items seen, so labels are spread
  over the stream instead of spent on its first items. :meth:`Budget.pacing` gives
  the factor by which selection probabilities are scaled to catch up (behind
  schedule) or hold back (ahead of it), and refuses labels more than ``burst``
  ahead of schedule. The realised spend is also estimated over a
  window of ``window`` items, as in the paper (``u = λu + bought``).
* :class:`VariableThreshold` turns a score (higher: more worth a label) into a
  selection probability for one reason, with the paper's randomised variable
  threshold: an item is selected when its score exceeds ``θ·η`` with
  ``η ~ N(1, δ)``, which happens with probability ``Φ((s/θ - 1)/δ)``, exactly
  known. ``θ`` adapts so the expected rate of selection meets the reason's rate.

>>> b = Budget(fraction=0.5, per_hour=2, per_day=100)
>>> hour = 3_600_000
>>> [b.try_spend(now_ms=10) for _ in range(3)]
[True, True, False]
>>> b.try_spend(now_ms=hour + 10)
True
>>> b.spent_in_day(hour + 10)
3
>>> t = VariableThreshold(rate=0.1)
>>> ps = [t.probability(s / 100) for s in range(100) for _ in range(50)]
>>> round(sum(ps) / len(ps), 2), t.probability(0.99) > t.probability(0.2)
(0.1, True)
"""

from __future__ import annotations

import math

#: The cap windows in milliseconds (the core's one definition of an hour, a day and a week).
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS


_SQRT2 = math.sqrt(2.0)


class Budget:
    """Hard caps plus the pacing of the share of the stream being labeled.

    Parameters
    ----------
    fraction
        Target share of items to label (``0.1``: one item in ten).
    per_hour, per_day, per_week
        Hard caps on labels bought per calendar window; ``None`` for no cap.
    window
        Number of recent items over which the realised spend is estimated.
    burst
        How many labels the spend may run ahead of schedule.
    stiffness
        How many labels behind (or ahead of) schedule double (or halve) the pace.
    """

    def __init__(self, fraction: float = 0.1, per_hour: int | None = None, per_day: int | None = None,
                 per_week: int | None = None, window: int = 1000, burst: float = 3.0, stiffness: float = 1.0):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"budget fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self._limits = ((HOUR_MS, per_hour), (DAY_MS, per_day), (WEEK_MS, per_week))
        self._capped = tuple((size, cap) for size, cap in self._limits if cap is not None)  # what has_room checks
        self.window = window
        self.burst = burst
        self.stiffness = stiffness
        self._spent: dict[int, tuple[int, int]] = {size: (-1, 0) for size, _ in self._limits}
        self._decay = 1.0 - 1.0 / window
        self._estimate = fraction * window
        self.total_bought = 0
        self.total_seen = 0

    @property
    def caps(self) -> dict[int, int | None]:
        """The cap of each window in milliseconds (None: no cap), fixed when the budget is made."""
        return dict(self._limits)

    def _count(self, size: int, now_ms: int) -> int:
        bucket, n = self._spent[size]
        return n if bucket == now_ms // size else 0

    def spent_in_hour(self, now_ms: int) -> int:
        return self._count(HOUR_MS, now_ms)

    def spent_in_day(self, now_ms: int) -> int:
        return self._count(DAY_MS, now_ms)

    def spent_in_week(self, now_ms: int) -> int:
        return self._count(WEEK_MS, now_ms)

    def has_room(self, now_ms: int) -> bool:
        """True while every cap still allows one more label at ``now_ms``.

        >>> Budget(per_hour=0).has_room(5), Budget(per_day=1).has_room(5), Budget().has_room(5)
        (False, True, True)
        """
        for size, cap in self._capped:  # the policy asks for every item, the owner for every preselected one
            bucket, n = self._spent[size]
            if (n if bucket == now_ms // size else 0) >= cap:
                return False
        return True

    @property
    def ahead(self) -> float:
        """Labels bought beyond the schedule (negative: behind it)."""
        return self.total_bought - self.fraction * self.total_seen

    def pacing(self, now_ms: int) -> tuple[float, bool]:
        """``(pace, allowed)``: the factor on selection probabilities that brings the spend back
        on schedule, and whether a label may be bought at ``now_ms`` (the caps have room and the
        spend is not too far ahead of schedule). One call for both: the policy asks for every item.

        >>> b = Budget(fraction=0.5, burst=1.0)
        >>> b.pacing(0)
        (1.0, True)
        >>> b.spend(0); b.spend(0); b.pacing(0)
        (0.25, False)
        """
        ahead = self.ahead
        z = -ahead / self.stiffness
        z = z if z < 4.0 else 4.0  # min(4.0, z), max(-4.0, z): see VariableThreshold.probability
        z = z if z > -4.0 else -4.0
        return 2.0 ** z, ahead + 1.0 <= self.burst + self.fraction and self.has_room(now_ms)

    def observe(self, bought: bool) -> None:
        """Count one item of the stream, bought or not, in the realised spend."""
        self._estimate = self._decay * self._estimate + bought
        self.total_seen += 1

    def spend(self, now_ms: int) -> None:
        """Record one label bought at ``now_ms`` against the caps."""
        for size, _ in self._limits:
            bucket = now_ms // size
            old_bucket, n = self._spent[size]
            self._spent[size] = (bucket, n + 1 if bucket == old_bucket else 1)
        self.total_bought += 1

    def recount(self, bought_ms: list[int]) -> None:
        """Rebuild the cap counters from the times of labels already bought
        (after a restart), leaving the pacing as it is.

        >>> b = Budget(per_hour=10)
        >>> b.recount([5, 3_600_001, 3_600_002])
        >>> b.spent_in_hour(3_600_003), b.spent_in_day(3_600_003), b.total_bought
        (2, 3, 0)
        """
        for size, _ in self._limits:
            newest = max(bought_ms, default=-1) // size
            self._spent[size] = (newest, sum(1 for t in bought_ms if t // size == newest))

    def try_spend(self, now_ms: int) -> bool:
        """Spend one label if the caps allow it; return whether it was spent."""
        if not self.has_room(now_ms):
            return False
        self.spend(now_ms)
        return True

    @property
    def realised(self) -> float:
        """Estimated share of the last ``window`` items that were bought."""
        return self._estimate / self.window

    def state(self) -> dict:
        """Counters for dashboards and snapshots."""
        return {"fraction": self.fraction, "realised": self.realised, "bought": self.total_bought,
                "seen": self.total_seen, "ahead": self.ahead, "caps": {str(k): v for k, v in self.caps.items()}}


class VariableThreshold:
    """Randomised variable threshold on a score, adapted to a target selection rate.

    The score's scale does not matter: the threshold is multiplicative. After
    each item ``log θ`` moves by ``step · (p - rate) / max(rate, 0.02)``, so the mean
    selection probability settles at ``rate`` whatever the score distribution.

    Parameters
    ----------
    rate
        Target share of items this reason selects.
    spread
        ``δ``, the standard deviation of the threshold's randomisation: small
        values select almost only scores above ``θ``, large ones smooth it out.
    step
        Adaptation speed of the threshold.
    """

    def __init__(self, rate: float, spread: float = 0.3, step: float = 0.01, threshold: float = 0.5):
        self.rate = rate
        self.spread = spread
        self.step = step
        self.threshold = threshold

    def probability(self, score: float, rate: float | None = None) -> float:
        """The selection probability of ``score`` under the current threshold, ``Φ((s/θ - 1)/δ)``;
        then ``θ`` adapts to it, towards ``rate`` (the threshold's own by default; none at 0)."""
        # min(a, b) and max(a, b) of two floats written ``b if b < a else a`` and ``b if b > a else a``:
        # what the builtins return (NaN and signed zeros alike), at a fifth of their cost, for every item
        p = 0.5 * math.erfc(-(((0.0 if 0.0 > score else score) / self.threshold - 1.0) / self.spread) / _SQRT2)
        target = self.rate if rate is None else rate
        if target > 0.0:
            change = self.step * (p - target) / (0.02 if 0.02 > target else target)
            threshold = self.threshold * math.exp(change)
            threshold = threshold if threshold > 1e-9 else 1e-9
            self.threshold = threshold if threshold < 1e6 else 1e6
        return p
