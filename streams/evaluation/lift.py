"""Lift: how much more the policy's labels teach than random ones, with a confidence interval.

A label *corrects* the model when the shadow model's prediction, at decision
time, was wrong: that is the label the model learns most from. The random
control slice is a uniform sample of the stream, so its correction rate is an
unbiased estimate of the model's error rate; the policy's labels (every other
reason) should correct the model more often. The lift is the ratio of the two
rates, with a Katz log-ratio confidence interval (Katz et al., "Obtaining
Confidence Intervals for the Risk Ratio in Cohort Studies", Biometrics 1978).

Every decision records its selection probability, so all labels together
also give a Hájek (inverse-probability weighted) estimate of the model's error
rate on the whole stream, ``error_rate_ipw``: a second, usually tighter,
unbiased measurement beside the control slice's.

>>> lift = Lift()
>>> for i in range(200):
...     lift.add(["uncertain"], 0.2, error=i % 2 == 0)
...     lift.add(["control"], 0.01, error=i % 5 == 0)
>>> e = lift.estimate()
>>> round(e["lift"], 2), e["low"] > 1.0, e["policy_labels"], e["control_labels"]
(2.5, True, 200, 200)
"""

from __future__ import annotations

import math
from collections import deque


class Lift:
    """Correction rates of policy and control labels, and their ratio.

    Parameters
    ----------
    window
        Only the most recent ``window`` labels count (``None``: all of them).
    """

    def __init__(self, window: int | None = None):
        self.labels: deque[tuple[bool, float, bool]] = deque(maxlen=window)

    def add(self, reasons: list[str], probability: float, error: bool) -> None:
        """One label: the reasons it was chosen for, its selection probability,
        and whether it corrected the model."""
        self.labels.append(("control" in reasons, probability, bool(error)))

    def estimate(self, z: float = 1.96) -> dict:
        """The lift and its interval (``None`` until both kinds of label exist)."""
        n_p = e_p = n_c = e_c = 0
        weight = weighted_errors = 0.0
        for control, probability, error in self.labels:
            if control:
                n_c, e_c = n_c + 1, e_c + error
            else:
                n_p, e_p = n_p + 1, e_p + error
            if probability > 0.0:
                weight += 1.0 / probability
                weighted_errors += error / probability
        out = {"lift": None, "low": None, "high": None, "policy_labels": n_p, "control_labels": n_c,
               "policy_error_rate": e_p / n_p if n_p else None, "control_error_rate": e_c / n_c if n_c else None,
               "error_rate_ipw": weighted_errors / weight if weight else None}
        if not (n_p and n_c):
            return out
        a, c = e_p + 0.5, e_c + 0.5  # continuity correction, so no error count is zero
        ratio = (a / (n_p + 0.5)) / (c / (n_c + 0.5))
        se = math.sqrt(max(0.0, 1 / a - 1 / (n_p + 0.5) + 1 / c - 1 / (n_c + 0.5)))
        out.update(lift=e_p / n_p / (e_c / n_c) if e_c else None, low=ratio * math.exp(-z * se),
                   high=ratio * math.exp(z * se))
        if out["lift"] is None:
            out["lift"] = ratio
        return out
