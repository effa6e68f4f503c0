"""Drift: a detector on the shadow model's errors on labeled items.

Each label tells whether the shadow model predicted the item right. A
Page-Hinkley test (E. S. Page, "Continuous Inspection Schemes", Biometrika
1954; D. V. Hinkley 1971) watches that stream for an *increase* of its mean:
the cumulative deviation above the running mean, less a tolerated drift
``delta``, is compared with its lowest value so far, and an excess over
``threshold`` is a change. When it signals one, :class:`DriftMonitor` records a
drift event and, for the next ``explore_for`` items, ``boost`` is above 1: the
policy spends a larger share on exploration (the random control slice and
diverse items), as a model that was just proven wrong should not trust its own
uncertainty.

Labels bought by the policy are not a uniform sample: they are the items the
model was unsure of, wrong about half the time before a drift and after it.
Given the model's ``confidence`` in its prediction, the detector watches the
*surprise* instead, ``error - (1 - confidence)``: what the model got wrong beyond
what it expected to. The selection picks items by how unsure the model is, so
it shifts the expected error, not the surprise; a concept change makes the
model wrong where it was sure, and every label, not only the control slice's,
shows it.

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

Surprise: the model is sure (0.9) and right 90% of the time, then, after a
drift, sure and wrong.

>>> monitor = DriftMonitor()
>>> events = [monitor.update(error=(i % 10 == 0) if i < 300 else (i % 10 != 0), confidence=0.9)
...           for i in range(600)]
>>> 300 < next(e for e in events if e)["labels"] < 400
True
"""

from __future__ import annotations

from river import drift


class DriftMonitor:
    """Page-Hinkley on the shadow model's surprise; records drift events and an
    exploration boost.

    Parameters
    ----------
    delta, threshold
        The increase of the mean surprise tolerated per label, and the
        cumulative excess that signals a change: a larger ``threshold`` means
        fewer, later, surer alarms. The defaults found the label swap in each
        of four live demo runs on Bananas (25 to 120 labels after it) and in 6
        of 6 offline Bananas streams (15 to 30 labels after it), and raised one
        alarm on 18 stationary streams of policy-bought labels (Bananas,
        Phishing, ImageSegments, Shuttle).
    explore_for
        For how many items after an alarm exploration is raised.
    boost
        Factor on the exploration shares while raised.
    recent, history
        Labels in the short- and long-term error estimates reported with each
        event (as ``error_after`` and ``error_before``).
    """

    def __init__(self, delta: float = 0.05, threshold: float = 8.0, explore_for: int = 1000, boost: float = 2.0,
                 recent: int = 30, history: int = 300):
        self.detector = drift.PageHinkley(min_instances=30, delta=delta, threshold=threshold, mode="up")
        self.explore_for = explore_for
        self.factor = boost
        self.recent = recent
        self.history = history
        self.events: list[dict] = []
        self.labels = 0
        self._left = 0
        self._recent_error = self._error = None

    def update(self, error: bool, ts: int = 0, confidence: float | None = None) -> dict | None:
        """Add one labeled item's shadow error (and the model's confidence in
        its prediction, if known); return a drift event on an alarm."""
        self.labels += 1
        before = self._error
        self._error = self._mean(self._error, error, max(1.0 / self.history, 1.0 / self.labels))
        self._recent_error = self._mean(self._recent_error, error, max(1.0 / self.recent, 1.0 / self.labels))
        self.detector.update(float(error) if confidence is None else float(error) - (1.0 - confidence))
        if not self.detector.drift_detected:
            return None
        self.explore()
        event = {"ts": ts, "labels": self.labels, "error_before": before, "error_after": self._recent_error,
                 "explore_for": self.explore_for}
        self.events.append(event)
        return event

    @staticmethod
    def _mean(mean: float | None, value: float, alpha: float) -> float:
        return value if mean is None else mean + alpha * (value - mean)

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
