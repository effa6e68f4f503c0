"""Stopping: when more labels stop paying.

Two signs, checked on every new model version:

* *stabilizing predictions* (Bloodgood and Vijay-Shanker, "A Method for
  Stopping Active Learning Based on Stabilizing Predictions and the Need for
  User-Adjustable Stopping", CoNLL 2009; small-text's ``KappaAverage``):
  Cohen's kappa between the predictions of successive versions on a fixed set
  of unlabeled items (the *stop set*), averaged over the last ``window``
  versions, reaches ``kappa``;
* *plateau*: the control-slice accuracy of the last ``window`` versions is no
  more than ``min_gain`` above the best accuracy before them, and no more than
  ``max_drop`` below it (a model that got worse, after a drift or bad labels,
  needs labels: that is no plateau).

:meth:`StoppingSignal.update` returns a row for the dashboards, with ``stop``
as the recommendation: when it is true, the budget could be lowered (or moved
to a model or a task that still learns) without losing quality.

>>> signal = StoppingSignal(window=2)
>>> rows = [signal.update(v, ["a", "b", "a", "b"] if v > 1 else ["a", "a", "a", "b"], accuracy)
...         for v, accuracy in enumerate([0.70, 0.80, 0.802, 0.801], start=1)]
>>> [r["stop"] for r in rows], rows[-1]["reason"]
([False, False, False, True], 'stable predictions, accuracy plateau')

Accuracy that falls is no plateau:

>>> signal = StoppingSignal(window=2)
>>> [signal.update(v, [v], accuracy)["stop"] for v, accuracy in enumerate([0.80, 0.82, 0.60, 0.55])]
[False, False, False, False]
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from streams.labels.agreement import cohen_kappa


class StoppingSignal:
    """Kappa between successive model versions, and the control accuracy's plateau.

    Parameters
    ----------
    kappa
        Average agreement of successive versions that counts as stable.
    window
        Number of recent versions the two signs look at.
    min_gain, max_drop
        Accuracy gain over ``window`` versions below which accuracy has
        plateaued, and the fall beyond which it has not (it got worse).
    """

    def __init__(self, kappa: float = 0.99, window: int = 3, min_gain: float = 0.005, max_drop: float = 0.05):
        self.kappa = kappa
        self.window = window
        self.min_gain = min_gain
        self.max_drop = max_drop
        self.kappas: deque[float] = deque(maxlen=window)
        self.accuracies: list[float] = []
        self._previous: list | None = None

    def update(self, version: int, predictions: Sequence, control_accuracy: float | None = None,
               labels: int | None = None) -> dict:
        """Take the new version's predictions on the stop set (and its accuracy)."""
        predictions = list(predictions)
        k = None
        if self._previous is not None and len(self._previous) == len(predictions) and predictions:
            k = cohen_kappa(self._previous, predictions)
            if k is None:  # both constant: they agree if they are the same
                k = float(self._previous == predictions)
            self.kappas.append(k)
        self._previous = predictions
        if control_accuracy is not None:
            self.accuracies.append(control_accuracy)
        average = sum(self.kappas) / len(self.kappas) if self.kappas else None
        stable = len(self.kappas) == self.window and average >= self.kappa
        gain = None
        if len(self.accuracies) > self.window:
            gain = max(self.accuracies[-self.window:]) - max(self.accuracies[:-self.window])
        plateau = gain is not None and -self.max_drop <= gain <= self.min_gain
        reasons = [r for r, on in (("stable predictions", stable), ("accuracy plateau", plateau)) if on]
        return {"version": version, "labels": labels, "kappa": k, "kappa_average": average,
                "control_accuracy": control_accuracy, "accuracy_gain": gain,
                "stop": bool(reasons), "reason": ", ".join(reasons)}
