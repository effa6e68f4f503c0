"""The labeling budget: hard caps per hour, day and week, and the realised spend.

:class:`Budget` is composed with a selection policy (as budget managers are in
stream-based active learning, e.g. Žliobaitė et al., "Active Learning With
Drifting Streaming Data", IEEE TNNLS 2014): the policy proposes, the budget
says whether a label may still be bought now and how much of the stream has
been bought lately.

Caps count labels in calendar windows of event time (UTC hours, days and
weeks since the epoch), so they hold however fast or slow events arrive.
The realised spend is the share of recent items bought, over a sliding
window of ``window`` items.

>>> b = Budget(fraction=0.5, per_hour=2, per_day=100)
>>> hour = 3_600_000
>>> [b.try_spend(now_ms=10) for _ in range(3)]
[True, True, False]
>>> b.try_spend(now_ms=hour + 10)
True
>>> b.spent_in_day(hour + 10)
3
"""

from __future__ import annotations

from collections import deque

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS


class Budget:
    """Hard caps plus an estimate of the share of the stream being labeled.

    Parameters
    ----------
    fraction
        Target share of items to label (``0.1``: one item in ten).
    per_hour, per_day, per_week
        Hard caps on labels bought per calendar window; ``None`` for no cap.
    window
        Number of recent items over which the realised spend is estimated.
    """

    def __init__(self, fraction: float = 0.1, per_hour: int | None = None,
                 per_day: int | None = None, per_week: int | None = None, window: int = 1000):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"budget fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.caps = {HOUR_MS: per_hour, DAY_MS: per_day, WEEK_MS: per_week}
        self._spent: dict[int, tuple[int, int]] = {size: (-1, 0) for size in self.caps}
        self._recent: deque[bool] = deque(maxlen=window)
        self._recent_bought = 0
        self.total_bought = 0
        self.total_seen = 0

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
        """True while every cap still allows one more label at ``now_ms``."""
        return all(cap is None or self._count(size, now_ms) < cap for size, cap in self.caps.items())

    def observe(self, bought: bool) -> None:
        """Count one item of the stream, bought or not, in the realised spend."""
        if len(self._recent) == self._recent.maxlen:
            self._recent_bought -= self._recent[0]
        self._recent.append(bought)
        self._recent_bought += bought
        self.total_seen += 1

    def spend(self, now_ms: int) -> None:
        """Record one label bought at ``now_ms`` against the caps."""
        for size in self.caps:
            bucket = now_ms // size
            old_bucket, n = self._spent[size]
            self._spent[size] = (bucket, n + 1 if bucket == old_bucket else 1)
        self.total_bought += 1

    def try_spend(self, now_ms: int) -> bool:
        """Spend one label if the caps allow it; return whether it was spent."""
        if not self.has_room(now_ms):
            return False
        self.spend(now_ms)
        return True

    @property
    def realised(self) -> float:
        """Share of the last ``window`` items that were bought."""
        return self._recent_bought / len(self._recent) if self._recent else 0.0

    def state(self) -> dict:
        """Counters for dashboards and snapshots."""
        return {"fraction": self.fraction, "realised": self.realised, "bought": self.total_bought,
                "seen": self.total_seen, "caps": {str(k): v for k, v in self.caps.items()}}
