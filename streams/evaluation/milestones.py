"""When the production model is worth retraining: milestones of the labeled set.

Checked every time the shadow model publishes a version, a milestone is reached
when any of these holds since the last retraining event:

- ``labels``: at least ``every_labels`` new consensus labels;
- ``accuracy_gain``: the shadow model's control accuracy rose by at least
  ``accuracy_gain`` (what the new labels taught is worth a retraining);
- ``drift``: a drift detector fired;
- ``stop``: the stopping signal turned to ``stop`` (the labels have taught what
  they can: train the final model).

The event names the dataset version to train on: the version just published,
whose labeled set ``feedbackloop export --version N`` writes (the same bytes
every time). A rule set to 0 (or False) is off.

>>> m = Milestones(every_labels=3, accuracy_gain=0.05)
>>> m.label(); m.label()
>>> m.check(version=1, ts=10, control_accuracy=0.60, stop=False) is None
True
>>> m.label()
>>> event = m.check(version=2, ts=20, control_accuracy=0.62, stop=False)
>>> event["dataset_version"], event["reasons"], event["new_labels"]
(2, ['labels'], 3)
>>> m.check(version=3, ts=30, control_accuracy=0.68, stop=False)["reasons"]
['accuracy_gain']
>>> m.drift()
>>> m.check(version=4, ts=40, control_accuracy=0.66, stop=True)["reasons"]
['drift', 'stop']
>>> m.check(version=5, ts=50, control_accuracy=0.66, stop=True) is None  # still stop: no new turn
True

After a restart the counts come back from what is durable (:meth:`Milestones.restore`): the
events sent, and the consensus labels settled in all; a restart neither fires a milestone
again nor forgets the way to the next.

>>> again = Milestones(every_labels=3, accuracy_gain=0.05)
>>> again.restore([{"new_labels": 3, "control_accuracy": 0.62}, {"new_labels": 0, "control_accuracy": 0.68},
...                {"new_labels": 0, "control_accuracy": 0.66}], settled=5, stopped=True)
>>> again.new_labels, again.baseline
(2, 0.66)
>>> again.check(version=6, ts=60, control_accuracy=0.66, stop=False) is None  # the stopping signal warms up
True
>>> again.label(); again.check(version=7, ts=70, control_accuracy=0.67, stop=True)["reasons"]
['labels']
"""

from __future__ import annotations

__all__ = ["Milestones"]


class Milestones:
    """Counts what happened since the last retraining event and says when one is due.

    Parameters
    ----------
    every_labels
        New consensus labels that make a milestone (0: off).
    accuracy_gain
        Gain of control accuracy over the last event's that makes one (0: off).
    on_drift, on_stop
        Whether a drift alarm, or the stopping signal turning to ``stop``, makes one.
    """

    def __init__(self, every_labels: int = 500, accuracy_gain: float = 0.02, on_drift: bool = True,
                 on_stop: bool = True):
        self.every_labels = max(0, int(every_labels))
        self.accuracy_gain = max(0.0, float(accuracy_gain))
        self.on_drift, self.on_stop = bool(on_drift), bool(on_stop)
        self.new_labels = 0
        self.drifted = False
        self.baseline: float | None = None  # control accuracy at the last event (or the first version)
        self.stopped = False
        self.last: dict | None = None
        self.warming = False  # restored as stopped: a "continue" is the stopping signal's warm-up, not a turn

    def label(self) -> None:
        """A task's consensus label settled."""
        self.new_labels += 1

    def drift(self) -> None:
        """A drift detector fired."""
        self.drifted = True

    def check(self, version: int, ts: int, control_accuracy: float | None, stop: bool) -> dict | None:
        """At a published ``version``: the retraining event due, if any (and a new count starts)."""
        reasons = []
        if self.every_labels and self.new_labels >= self.every_labels:
            reasons.append("labels")
        gain = None
        if control_accuracy is not None and self.baseline is not None:
            gain = control_accuracy - self.baseline
            if self.accuracy_gain and gain >= self.accuracy_gain - 1e-12:
                reasons.append("accuracy_gain")
        if self.on_drift and self.drifted:
            reasons.append("drift")
        if self.on_stop and stop and not self.stopped:
            reasons.append("stop")
        if stop or not self.warming:
            self.stopped, self.warming = bool(stop), False
        if self.baseline is None:
            self.baseline = control_accuracy
        if not reasons:
            return None
        event = {"dataset_version": version, "ts": ts, "reasons": reasons, "new_labels": self.new_labels,
                 "control_accuracy": control_accuracy, "accuracy_gain": gain}
        self.new_labels, self.drifted, self.last = 0, False, event
        if control_accuracy is not None:
            self.baseline = control_accuracy
        return event

    def restore(self, events: list[dict], settled: int, drifted: bool = False, stopped: bool = False,
                first_accuracy: float | None = None) -> None:
        """The counts after a restart, from what is durable.

        ``events`` are the retraining events sent, oldest first (each once), ``settled`` the
        consensus labels settled in all (the labels replayed): what the events did not count is
        the way to the next. The baseline is the last event's control accuracy (before any, the
        first version's: ``first_accuracy``). ``drifted``: a drift alarm came after the last event.
        ``stopped``: the newest version's stopping signal said ``stop``; since the signal starts
        afresh after a restart, the ``continue`` it says while it warms up is not taken for a turn.
        """
        self.new_labels = max(0, int(settled) - sum(int(e["new_labels"]) for e in events))
        self.last = events[-1] if events else None
        accuracies = [e["control_accuracy"] for e in events if e.get("control_accuracy") is not None]
        self.baseline = accuracies[-1] if accuracies else first_accuracy
        self.drifted = bool(drifted)
        self.stopped = self.warming = bool(stopped)
