"""Drift: a detector on the shadow model's errors on labeled items.

Each label tells whether the shadow model, at decision time, predicted the item
right. ADWIN (Bifet and Gavaldà, "Learning from Time-Changing Data with
Adaptive Windowing", SDM 2007) watches that error stream; when it signals a
change, :class:`DriftMonitor` records a drift event and, for the next
``explore_for`` items, ``boost`` is above 1: the policy spends a larger share
on exploration (the random control slice and diverse items), as a model that
was just proven wrong should not trust its own uncertainty.

>>> monitor = DriftMonitor(explore_for=100)
>>> events = [monitor.update(error=(i >= 300), ts=i) for i in range(600)]
>>> event = next(e for e in events if e)
>>> 300 < event["labels"] < 400, event["error_before"] < 0.1 < event["error_after"]
(True, True)
>>> monitor.boost
2.0
>>> for _ in range(100):
...     monitor.tick()
>>> monitor.boost
1.0
"""

from __future__ import annotations

from river import drift


class DriftMonitor:
    """ADWIN on the shadow error; records drift events and an exploration boost.

    Parameters
    ----------
    delta
        ADWIN's confidence: smaller means fewer, surer alarms.
    explore_for
        For how many items after an alarm exploration is raised.
    boost
        Factor on the exploration shares while raised.
    recent
        Labels in the short-term error estimate reported with each event.
    """

    def __init__(self, delta: float = 0.002, explore_for: int = 1000, boost: float = 2.0, recent: int = 30):
        self.detector = drift.ADWIN(delta=delta)
        self.explore_for = explore_for
        self.factor = boost
        self.recent = recent
        self.events: list[dict] = []
        self.labels = 0
        self._left = 0
        self._recent_error = None

    def update(self, error: bool, ts: int = 0) -> dict | None:
        """Add one labeled item's shadow error; return a drift event on an alarm."""
        self.labels += 1
        before = self.detector.estimation
        alpha = max(1.0 / self.recent, 1.0 / self.labels)
        self._recent_error = error if self._recent_error is None else self._recent_error + alpha * (
            error - self._recent_error)
        self.detector.update(float(error))
        if not self.detector.drift_detected:
            return None
        self.explore()
        event = {"ts": ts, "labels": self.labels, "error_before": before, "error_after": self._recent_error,
                 "window": self.detector.width, "explore_for": self.explore_for}
        self.events.append(event)
        return event

    def explore(self) -> None:
        """Raise exploration now, as after an alarm (for an alarm raised elsewhere,
        e.g. by the learner's own monitor)."""
        self._left = self.explore_for

    def tick(self) -> None:
        """Count one item of the stream against the exploration period."""
        if self._left:
            self._left -= 1

    @property
    def boost(self) -> float:
        """Factor on the exploration shares: above 1 for a while after an alarm."""
        return self.factor if self._left else 1.0
