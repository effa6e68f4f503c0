"""The selection policy: which scored items are worth a human label.

The budget is split into a *mix* of reasons, each a share of the labels
(by default 55% uncertain, 25% diverse, 15% failures, 5% random control):

* ``uncertain``: items the models are unsure of or disagree on (the ``uncertainty``
  signal, see :func:`streams.selection.signals.score`), raised for items predicted as
  classes that are rare among the labels so far (``rare`` is added to the reasons).
* ``diverse``: items far from everything chosen so far (:mod:`streams.selection.diversity`).
* ``override`` / ``appeal`` (the ``failure`` share): a user said the production
  model was wrong. The strongest signal: routed whenever the failure share allows,
  to be verified by a labeler, not trusted blindly.
* ``control``: a uniform random slice, the unbiased yardstick for the model's
  quality and for the policy's lift.

The decision is made item by item on the stream, so every item has an exact
selection probability ``p = c + (1 - c)(1 - (1 - p_u)(1 - p_d))``: ``c`` is the
control rate and ``p_u``, ``p_d`` come from a randomised variable threshold per
reason (:class:`~streams.selection.budget.VariableThreshold`, after Žliobaitė et al. 2014).
A "batch" is then any stretch of the stream (a router micro-batch, an hour):
its mix of reasons meets the shares in expectation. The thresholds target each
reason's rate; when failures are too few to fill their share, the rest goes to
uncertain and diverse in proportion; the :class:`~streams.selection.budget.Budget` paces
the total so the realised spend stays on the budget.

Cold start: until the signals carry an uncertainty (no model yet), the
uncertain share goes to diverse and random items. After a drift alarm
(:mod:`streams.selection.drift`, fed by :meth:`Policy.observe_label`) the control and
diverse shares are raised for a while.

>>> from streams.selection.budget import Budget
>>> policy = Policy(Budget(fraction=0.2), seed=1)
>>> d = policy.decide("override", {"uncertainty": 0.1}, now_ms=0)
>>> d.selected, d.reasons, d.probability
(True, ['override'], 1.0)
>>> picks = [policy.decide("prediction", {"uncertainty": u / 100}, now_ms=0) for u in range(100)] * 20
>>> round(sum(d.selected for d in picks) / len(picks), 1)
0.2
>>> d = policy.decide("prediction", {"uncertainty": 0.9}, now_ms=0, draw=0.0)
>>> d.reasons, d.probability > d.probabilities["control"]
(['control'], True)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from streams.selection.budget import Budget, VariableThreshold
from streams.selection.density import Density
from streams.selection.diversity import Novelty
from streams.selection.drift import DriftMonitor
from streams.selection.lazy import LazyItems

ERROR_KINDS = ("override", "appeal")
REASONS = ("uncertain", "diverse", "failure", "control")
DEFAULT_MIX = {"uncertain": 0.55, "diverse": 0.25, "failure": 0.15, "control": 0.05}
ALIASES = {"random": "control", "failures": "failure", "uncertainty": "uncertain", "diversity": "diverse"}


def normalize_mix(mix: dict[str, float]) -> dict[str, float]:
    """Shares by reason, summing to 1 (``random`` is an alias of ``control``).

    >>> normalize_mix({"uncertain": 3, "random": 1})
    {'uncertain': 0.75, 'diverse': 0.0, 'failure': 0.0, 'control': 0.25}
    """
    out = dict.fromkeys(REASONS, 0.0)
    for key, share in mix.items():
        key = ALIASES.get(key, key)
        if key not in out:
            raise ValueError(f"unknown reason {key!r} in the mix: use {', '.join(REASONS)}")
        if share < 0:
            raise ValueError(f"share of {key!r} is negative")
        out[key] += float(share)
    total = sum(out.values())
    if total <= 0:
        raise ValueError("the mix has no positive share")
    return {k: v / total for k, v in out.items()}


@dataclass(slots=True)
class Decision:
    """A routing decision for one input event.

    ``probability`` is the exact probability with which the item was selected;
    ``probabilities`` has the part of each reason (``control`` is the same for
    every item, so it is the inclusion probability of the control slice).
    """

    selected: bool
    reasons: list[str] = field(default_factory=list)
    probability: float = 0.0
    priority: float = 0.0
    probabilities: dict[str, float] = field(default_factory=dict)


class Decisions(LazyItems):
    """The decisions of a message (:meth:`Policy.decide_many`), in order, kept as columns: an item
    not selected is its probability and its parts (``control``, ``uncertain``, ``diverse``), and its
    :class:`Decision` is made only when asked for (by index or iterating), the same one; a message's
    path reads :attr:`selected` and :attr:`probability` (:meth:`Router.preselect_columns
    <streams.selection.router.Router.preselect_columns>`). Every item not selected has no reasons
    and priority 0.

    >>> out = Decisions()
    >>> out.add(Decision(True, ["control"], 0.2, 0.5, {"control": 0.2, "uncertain": 0.0, "diverse": 0.0}))
    >>> out._made.append(None); out.probability.append(0.1); out.parts.append((0.05, 0.04, 0.01))
    >>> out.selected, out.probability, out[-1]
    ([True, False], [0.2, 0.1], Decision(selected=False, reasons=[], probability=0.1, priority=0.0, \
probabilities={'control': 0.05, 'uncertain': 0.04, 'diverse': 0.01}))
    """

    __slots__ = ("_made", "probability", "parts")

    def __init__(self):
        self._made: list[Decision | None] = []  # None: not selected, made from its columns when asked for
        self.probability: list[float] = []  # every item's
        self.parts: list[tuple[float, float, float] | None] = []  # (control, uncertain, diverse) of the None

    def add(self, d: Decision) -> None:
        """Append a decision made already."""
        self._made.append(d)
        self.probability.append(d.probability)
        self.parts.append(None)

    def _make(self, i: int) -> Decision:
        c, p_u, p_d = self.parts[i]
        return Decision(False, [], self.probability[i], 0.0, {"control": c, "uncertain": p_u, "diverse": p_d})

    @property
    def selected(self) -> list[bool]:
        """Whether each item was selected."""
        return [d is not None and d.selected for d in self._made]


class Policy:
    """Budgeted, mixed selection over uncertainty, novelty, failures and a control slice.

    Parameters
    ----------
    budget
        The :class:`~streams.selection.budget.Budget` (target share, caps, pacing).
    mix
        Share of the budget per reason, see :data:`DEFAULT_MIX`.
    control_share
        Shortcut for the control slice's share (the others keep their proportions).
    uncertainty
        The signal the ``uncertain`` reason samples on (``uncertainty``,
        ``entropy``, ``least_confidence``, ``margin`` (turned into ``1 - margin``),
        ``committee``, ...).
    spread, step
        Randomisation and adaptation speed of the variable thresholds.
    rare_boost
        Weight of the rare-class boost on the uncertain score (0: none).
    cold_start
        Until this many control items are selected, the control slice is
        sampled five times faster (never above half the budget), so there is
        soon an unbiased test set.
    warmup
        Over the first ``warmup`` labels of the uncertain and diverse reasons,
        the uncertain share turns from a uniform draw into uncertainty sampling
        (0: no warm-up).
    density
        Exponent of the density weight on the uncertain score
        (:class:`~streams.selection.density.Density`: uncertainty times how
        typical the item is of the recent stream; 0: none). None (default):
        1 on text, none on numeric features (there it cost labels: see
        docs/policy.md).
    typical_first
        Before the shadow model's first version (no ``shadow_margin`` among the signals yet), the
        diverse share's distance is weighted by how typical the item is of the recent stream
        (:class:`~streams.selection.density.Density` to this power; 0: not), so the first labels
        spread over where the items are rather than going to the farthest outliers. Only for a
        loop with a production model and a shadow (the worker): an offline replay scores with its
        live model and never has a shadow signal (docs/policy.md, "The shadow's first versions sooner").
    text_diverse
        Whether the diverse share also samples text (False: on text it goes
        to uncertain; the novelty sketch hashes words into 64 slots, so the
        items farthest from the chosen ones are odd texts).
    novelty, drift
        The :class:`~streams.selection.diversity.Novelty` and
        :class:`~streams.selection.drift.DriftMonitor` (fresh ones by default).
    """

    version = "mix-3"  # 3: on text, no diverse share and density-weighted uncertainty

    def __init__(self, budget: Budget, mix: dict[str, float] | None = None, control_share: float | None = None,
                 uncertainty: str = "uncertainty", spread: float = 0.08, step: float = 0.01,
                 rare_boost: float = 0.5, cold_start: int = 20, warmup: int = 0, density: float | None = None,
                 typical_first: float = 0.0, text_diverse: bool = False, novelty: Novelty | None = None,
                 drift: DriftMonitor | None = None, seed: int | None = None):
        mix = normalize_mix(mix or DEFAULT_MIX)
        if control_share is not None:
            if not 0.0 <= control_share <= 1.0:
                raise ValueError(f"control_share must be in [0, 1], got {control_share}")
            rest = 1.0 - mix["control"]
            mix = {k: (control_share if k == "control" else
                       (v / rest * (1.0 - control_share) if rest > 0 else 0.0)) for k, v in mix.items()}
        self.budget = budget
        self.mix = mix
        self.uncertainty = uncertainty
        self.rare_boost = rare_boost
        self.cold_start = cold_start
        self.warmup = warmup
        self.text_diverse = text_diverse
        self.density_weight = density
        self.density = Density()
        self.typical_first = typical_first
        self.shadow_seen = False  # a signal of the shadow model's seen: typical_first is over
        self.novelty = novelty if novelty is not None else Novelty()  # an empty one is falsy (len 0)
        self.drift = drift or DriftMonitor()
        self.rng = random.Random(seed)
        self.thresholds = {"uncertain": VariableThreshold(0.0, spread, step),
                           "diverse": VariableThreshold(0.0, spread, step)}
        self.label_counts: Counter[str] = Counter()
        self.selected = Counter()
        self.control_selected = 0
        self._failure_rate = 0.0
        self._failure_weight = 0.0
        self._failure_decay = 1.0 - 1.0 / budget.window

    # -- shares -------------------------------------------------------------

    def shares(self, cold: bool = False) -> dict[str, float]:
        """The mix in force now: after cold start and drift adjustments."""
        s = dict(self.mix)
        if cold and s["uncertain"]:
            explore = s["diverse"] + s["control"]
            for k in ("diverse", "control"):
                s[k] += s["uncertain"] * (s[k] / explore if explore else 0.5)
            s["uncertain"] = 0.0
        boost = self.drift.boost
        if boost != 1.0 and s["uncertain"] > 0.0:
            extra = min(s["uncertain"], (boost - 1.0) * (s["diverse"] + s["control"]))
            explore = s["diverse"] + s["control"]
            for k in ("diverse", "control"):
                s[k] += extra * (s[k] / explore if explore else 0.5)
            s["uncertain"] -= extra
        return s

    @property
    def warmed(self) -> float:
        """How far the warm-up has gone: the policy's own labels so far over ``warmup`` (0 to 1)."""
        if not self.warmup:
            return 1.0
        return min(1.0, (self.selected["uncertain"] + self.selected["diverse"]) / self.warmup)

    @property
    def control_rate(self) -> float:
        """Probability that any prediction enters the control slice."""
        return self._control_rate(self.shares()["control"])

    def _control_rate(self, share: float) -> float:
        rate = self.budget.fraction * share
        if self.control_selected < self.cold_start and rate < 1.0:
            rate = max(rate, min(5.0 * rate, self.budget.fraction / 2.0))
        return rate

    def rarity(self, label: str | None) -> float:
        """How under-represented ``label`` is among the labels so far (0 to 1)."""
        if label is None or not self.label_counts:
            return 0.0
        total = sum(self.label_counts.values())
        k = max(2, len(self.label_counts))
        share = (self.label_counts.get(label, 0) + 1.0) / (total + k)
        return max(0.0, 1.0 - k * share)

    # -- decisions ------------------------------------------------------------

    def decide(self, kind: str, signals: dict[str, float], now_ms: int, draw: float | None = None,
               x: dict[str, float] | None = None, label: str | None = None) -> Decision:
        """Decide for one event of ``kind`` (prediction, override or appeal).

        ``draw`` is the uniform random number to decide with; pass one derived
        from the event id to make decisions repeatable. ``x`` (the features)
        lets the policy weigh novelty; ``label`` (the predicted label) lets it
        favour rare classes.
        """
        if draw is None:
            draw = self.rng.random()
        if kind in ERROR_KINDS:
            return self._failure(kind, signals, now_ms, draw)
        out = Decisions()
        self._predictions(out, [signals], [now_ms], [draw], [x], [label])
        return out[0]

    def decide_many(self, kinds: list[str], signals: list[dict[str, float]], now_ms: list[int],
                    draws: list[float] | None = None, xs: list[dict[str, float] | None] | None = None,
                    labels: list[str | None] | None = None) -> Decisions:
        """:meth:`decide` of each event in order (a message at a time): the same decisions and
        the same state after, bit for bit, with the per-event work that does not hang on earlier
        decisions done for the whole message at once: the novelty sketches (:meth:`Sketch.update_many
        <streams.selection.diversity.Sketch.update_many>`) and the distances to the nearest centers
        (:meth:`Novelty.nearest <streams.selection.diversity.Novelty.nearest>`, one matrix product).
        The thresholds, the pacing, the budget and the centers added on selection go event by event,
        through the one body :meth:`decide` uses too (:meth:`_predictions`, a run of predictions
        between two failures at a time). The decisions come as :class:`Decisions` (a decision not
        selected is made only when asked for). ``xs`` may be a message's features as rows of one array
        (:class:`~streams.selection.scorer.FeatureRows`): then no dict is made for them.

        >>> from streams.selection.budget import Budget
        >>> one, many = Policy(Budget(fraction=0.2), seed=1), Policy(Budget(fraction=0.2), seed=1)
        >>> xs = [{"x": float(i % 7), "y": float(i % 3)} for i in range(300)]
        >>> signals = [{"uncertainty": (i * 37 % 100) / 100} for i in range(300)]
        >>> draws = [(i * 61 % 97) / 97 for i in range(300)]
        >>> a = [one.decide("prediction", s, 0, draw=d, x=x) for s, d, x in zip(signals, draws, xs)]
        >>> b = many.decide_many(["prediction"] * 300, signals, [0] * 300, draws, xs)
        >>> [d.selected for d in a] == [d.selected for d in b], one.state() == many.state()
        (True, True)
        """
        n = len(kinds)
        rng = self.rng  # drawn in the events' order, as decide draws them: nothing else draws meanwhile
        draws = [rng.random() for _ in range(n)] if draws is None else \
            [rng.random() if d is None else d for d in draws]
        xs = xs if xs is not None else [None] * n
        labels = labels if labels is not None else [None] * n
        failures = [i for i, kind in enumerate(kinds) if kind in ERROR_KINDS]
        if hasattr(xs, "matrix") and not failures:  # every item's features, as one array: no dict made for them
            at, message = range(n), xs
        else:
            at = [i for i, (kind, x) in enumerate(zip(kinds, xs)) if kind not in ERROR_KINDS and x is not None]
            message = [xs[i] for i in at]
        sketches = self.novelty.sketch.update_many(message) if len(at) > 1 else None
        nearest = self.novelty.nearest(sketches) if sketches is not None else None
        rows = None
        if sketches is not None:
            rows = [None] * n
            for j, i in enumerate(at):
                rows[i] = j
        out = Decisions()
        if not failures:
            self._predictions(out, signals, now_ms, draws, xs, labels, sketches, nearest, rows)
            return out
        start = 0
        for i in failures + [n]:
            if start < i:
                self._predictions(out, signals[start:i], now_ms[start:i], draws[start:i], xs[start:i],
                                  labels[start:i], sketches, nearest, rows and rows[start:i])
            if i < n:
                out.add(self._failure(kinds[i], signals[i], now_ms[i], draws[i]))
            start = i + 1
        return out

    def _failure(self, kind: str, signals: dict[str, float], now_ms: int, draw: float) -> Decision:
        self._failure_rate += 1.0 - self._failure_decay
        target = self.budget.fraction * self.shares()["failure"]
        # failures per prediction, a moving average corrected for its start at zero
        rate = self._failure_rate / self._failure_weight if self._failure_weight else 0.0
        p = min(1.0, target / rate) if rate > 0.0 else 1.0
        if not self.budget.has_room(now_ms):  # failures answer to the caps only, not to pacing
            p = 0.0
        if draw >= p:
            return Decision(False, [], p, 0.0, {kind: p})
        self.budget.spend(now_ms)
        self.selected[kind] += 1
        return Decision(True, [kind], p, 1.0 + signals.get("uncertainty", 0.0), {kind: p})

    def _predictions(self, out, signals, now_ms, draws, xs, labels, sketches=None, nearest=None, rows=None):
        """The decisions of a run of predictions, in order, appended to ``out`` (:class:`Decisions`: an
        item not selected as its columns): the one decision body. ``sketches`` (of ``xs``, learned
        already) and ``nearest`` (their :class:`~streams.selection.diversity.Nearest`) from
        :meth:`decide_many`, ``rows`` each item's row there (None: sketched here, in turn; a row is
        read from ``sketches`` only where its values are needed).

        What does not change within a run is looked up once: the shares (they hang only on the mix,
        a cold item and the drift boost), each label's rarity (labels come in between messages) and
        the control rate of a share (until a control item is selected)."""
        novelty, budget, drift, density = self.novelty, self.budget, self.drift, self.density
        sketcher, text_diverse, warmup, density_weight = novelty.sketch, self.text_diverse, self.warmup, \
            self.density_weight
        by_u, by_d = self.thresholds["uncertain"].probability, self.thresholds["diverse"].probability
        margin, name = self.uncertainty == "margin", self.uncertainty
        decay, b = self._failure_decay, budget.fraction
        failure_rate, failure_weight = self._failure_rate, self._failure_weight
        shares, rarity, controls = {}, {}, {}  # control rates by share: until a control item is selected
        typical_first = 0.0 if self.shadow_seen else self.typical_first
        made, probabilities, columns = out._made.append, out.probability.append, out.parts.append
        for i, signal in enumerate(signals):
            failure_rate *= decay
            failure_weight = decay * failure_weight + 1.0 - decay
            drift.tick()
            if margin:
                score = signal.get("shadow_margin", signal.get("margin"))
                score = None if score is None else 1.0 - score
            else:
                score = signal.get(name)
            if typical_first and "shadow_margin" in signal:  # the shadow's first version is served
                self.shadow_seen, typical_first = True, 0.0
            key = (score is None, drift.boost)
            share = shares.get(key)
            if share is None:
                s = self.shares(cold=score is None)
                share = shares[key] = (s["uncertain"], s["diverse"], s["failure"], s["control"])
            share_u, share_d, share_f, share_c = share
            row = None if rows is None else rows[i]
            if row is None:
                x = xs[i]
                sketch = sketcher.update(x) if x is not None else None
                sketched = sketch is not None  # (x is not None)
            else:  # sketched already (its features not read again): sketches[row], when its values are needed
                sketch, sketched = None, True
            has_text = sketcher.has_text
            # no features: novelty is unknown; text: its farthest items are odd texts (see ``text_diverse``)
            if share_d and (not sketched or (has_text and not text_diverse)):
                if score is not None:
                    share_u += share_d
                else:
                    share_c += share_d
                share_d = 0.0
            now = now_ms[i]
            pace, allowed = budget.pacing(now)
            c = controls.get(share_c)
            if c is None:
                c = controls[share_c] = self._control_rate(share_c)
            # min and max of two floats as conditionals, exactly the builtins' (see VariableThreshold.probability)
            failures, cap = failure_rate / failure_weight, b * share_f
            failures = cap if cap < failures else failures
            elastic = b - c - failures
            elastic = elastic if elastic > 0.0 else 0.0
            weight = share_u + share_d
            if not weight:
                c = c * pace
                c = c if c < 1.0 else 1.0

            p_u = p_d = 0.0
            rare = 0.0
            dense = density_weight if density_weight is not None else float(has_text)
            if dense and sketched and score is not None:
                if sketch is None:
                    sketch = sketches[row]
                score *= density.update(sketch) ** dense
            if share_u > 0.0 and score is not None:
                label = labels[i]
                rare = rarity.get(label)
                if rare is None:
                    rare = rarity[label] = self.rare_boost * self.rarity(label)
                target = elastic * share_u / weight
                p_u = by_u(score + rare, target)
                if warmup:
                    warm = self.warmed
                    if warm < 1.0:  # warming up: part of the share is a uniform draw, whatever the score
                        p_u = warm * p_u + (1.0 - warm) * target
                p_u = pace * p_u
                p_u = p_u if p_u < 1.0 else 1.0
            if share_d > 0.0 and sketched:
                target = elastic * share_d / weight
                distance = novelty.distance(sketch) if row is None else nearest.distance(row)
                if typical_first:  # no shadow yet: typical items first, not the outliers
                    if sketch is None:
                        sketch = sketches[row]
                    typical = density.update(sketch) ** typical_first
                    distance = distance if distance == math.inf else distance * typical
                if distance == math.inf:
                    p_d = 1.0
                else:
                    p_d = pace * by_d(distance, target)
                    p_d = p_d if p_d < 1.0 else 1.0
            p_elastic = 1.0 - (1.0 - p_u) * (1.0 - p_d)
            probability = c + (1.0 - c) * p_elastic
            if not allowed:
                budget.observe(False)
                made(None)  # not selected: its Decision made from the columns when asked for
                probabilities(0.0)
                columns((0.0, 0.0, 0.0))
                continue
            draw = draws[i]
            if not (draw < c or draw < probability):  # not selected (the usual case)
                budget.observe(False)
                made(None)
                probabilities(probability)
                columns((c, p_u, p_d))
                continue

            if draw < c:
                reasons = ["control"]
            else:
                u = (draw - c) / (1.0 - c)
                reasons = ["uncertain" if u < p_u else "diverse"]
                if reasons[0] == "uncertain":
                    if rare > 0.0 and score is not None and rare >= score:
                        reasons.append("rare")
                    if signal.get("label_disagreement", 0.0) >= 1.0:
                        reasons.append("disagreement")
                if drift.boost != 1.0:
                    reasons.append("drift")
            budget.observe(True)
            budget.spend(now)
            reason = reasons[0]
            self.selected[reason] += 1
            if reason == "control":
                self.control_selected += 1
                controls.clear()
            if sketched:
                novelty.add(sketch if sketch is not None else sketches[row])
            if reason == "control":
                priority = 0.5
            elif reason == "uncertain":
                priority = min(1.0, (score or 0.0) + rare)
            else:
                priority = 0.5 * p_d + 0.25
            out.add(Decision(True, reasons, probability, priority, {"control": c, "uncertain": p_u, "diverse": p_d}))
        self._failure_rate, self._failure_weight = failure_rate, failure_weight

    # -- feedback -----------------------------------------------------------

    def observe_label(self, label: str, predicted: str | None = None, ts: int = 0,
                      confidence: float | None = None) -> dict | None:
        """Take in one label (with what the shadow model predicted for the item
        and how sure it was, see :mod:`streams.selection.drift`); return a drift event if
        the model's surprise changed."""
        self.label_counts[label] += 1
        if predicted is None:
            return None
        return self.drift.update(predicted != label, ts, confidence)

    def state(self) -> dict:
        """Counters for dashboards and snapshots."""
        return {"version": self.version, "mix": self.mix, "shares": self.shares(),
                "thresholds": {k: t.threshold for k, t in self.thresholds.items()},
                "selected": dict(self.selected), "budget": self.budget.state(),
                "drift_events": len(self.drift.events), "exploring": self.drift.boost != 1.0}
