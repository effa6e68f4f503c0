"""The selection policy: which scored items are worth a human label.

Three routes lead to a label, each recorded as a reason on the decision:

* ``override`` / ``appeal``: a user said the production model was wrong. These
  are the strongest signal and are always routed while the caps allow, to be
  verified by a labeler (an override is not trusted blindly).
* ``control``: a uniform random slice, the same share of every hour, that keeps
  an unbiased view of model quality and of the policy's lift.
* ``uncertain``: items are sampled with probability proportional to their
  uncertainty (sharpened by ``power``), scaled so the expected spend meets the
  budget. ``disagreement`` is added when the production and shadow models pick
  different labels.

Every decision carries the exact probability with which the item was
selected, so estimates made from labels can be re-weighted without bias.
When the realised spend drifts from the target (for example because many
items saturate at probability 1), a slow multiplicative correction brings it
back.

>>> from streams.budget import Budget
>>> policy = Policy(Budget(fraction=0.2), control_share=0.25, seed=1)
>>> d = policy.decide("override", {"uncertainty": 0.1}, now_ms=0)
>>> d.selected, d.reasons, d.probability
(True, ['override'], 1.0)
>>> picks = [policy.decide("prediction", {"uncertainty": u / 100}, now_ms=0) for u in range(100)] * 20
>>> sum(d.selected for d in picks) / len(picks) < 0.35
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from streams.budget import Budget

ERROR_KINDS = ("override", "appeal")


@dataclass
class Decision:
    """A routing decision for one input event."""

    selected: bool
    reasons: list[str] = field(default_factory=list)
    probability: float = 0.0
    priority: float = 0.0


class Policy:
    """Budgeted sampling over uncertainty, with error-driven items and a control slice.

    Parameters
    ----------
    budget
        The :class:`~streams.budget.Budget` (target share and hard caps).
    control_share
        Share of the budget spent on the random control slice.
    power
        Sharpening of the uncertainty before sampling (1: proportional).
    smoothing
        Weight of each new item in the running mean of sharpened uncertainty.
    cold_start
        Until this many control items are selected, the control slice is
        sampled five times faster (never above half the budget), so there
        is soon an unbiased test set to measure the first model versions on.
    """

    version = "budgeted-uncertainty-1"

    def __init__(self, budget: Budget, control_share: float = 0.1, power: float = 2.0,
                 smoothing: float = 0.005, cold_start: int = 20, seed: int | None = None):
        if not 0.0 <= control_share <= 1.0:
            raise ValueError(f"control_share must be in [0, 1], got {control_share}")
        self.budget = budget
        self.control_share = control_share
        self.power = power
        self.smoothing = smoothing
        self.cold_start = cold_start
        self.rng = random.Random(seed)
        self.control_selected = 0
        self._mean_score = 0.25
        self._error_rate = 0.0
        self._correction = 1.0

    @property
    def control_rate(self) -> float:
        """Probability that any prediction enters the control slice."""
        rate = self.budget.fraction * self.control_share
        if self.control_selected < self.cold_start:
            rate = min(5.0 * rate, self.budget.fraction / 2.0)
        return rate

    def _uncertain_probability(self, uncertainty: float) -> float:
        s = max(0.0, min(1.0, uncertainty)) ** self.power
        self._mean_score += self.smoothing * (s - self._mean_score)
        rate = self.budget.fraction - self.control_rate - self._error_rate
        if rate <= 0.0 or self._mean_score <= 0.0:
            return 0.0
        return min(1.0, self._correction * rate * s / self._mean_score)

    def _correct(self) -> None:
        if self.budget.total_seen >= 100:
            realised, target = self.budget.realised, self.budget.fraction
            self._correction *= 1.0 + self.smoothing * (target - realised) / target
            self._correction = min(10.0, max(0.1, self._correction))

    def decide(self, kind: str, signals: dict[str, float], now_ms: int, draw: float | None = None) -> Decision:
        """Decide for one event of ``kind`` (prediction, override or appeal).

        ``draw`` is the uniform random number to decide with; pass one derived
        from the event id to make decisions repeatable.
        """
        if kind in ERROR_KINDS:
            self._error_rate += self.smoothing * (1.0 - self._error_rate)
            bought = self.budget.try_spend(now_ms)
            self.budget.observe(bought)
            if bought:
                return Decision(True, [kind], 1.0, 1.0 + signals.get("uncertainty", 0.0))
            return Decision(False, [], 0.0, 0.0)
        self._error_rate *= 1.0 - self.smoothing
        self._correct()
        c = self.control_rate
        p_uncertain = self._uncertain_probability(signals.get("uncertainty", 0.0))
        probability = c + (1.0 - c) * p_uncertain
        if draw is None:
            draw = self.rng.random()
        reasons: list[str] = []
        if draw < c:
            reasons.append("control")
        elif draw < probability:
            reasons.append("uncertain")
            if signals.get("label_disagreement", 0.0) >= 1.0:
                reasons.append("disagreement")
        if reasons and not self.budget.has_room(now_ms):
            self.budget.observe(False)
            return Decision(False, [], 0.0, 0.0)
        self.budget.observe(bool(reasons))
        if not reasons:
            return Decision(False, [], probability, 0.0)
        self.budget.spend(now_ms)
        self.control_selected += reasons == ["control"]
        priority = 0.5 if reasons == ["control"] else signals.get("uncertainty", 0.0)
        return Decision(True, reasons, probability, priority)
