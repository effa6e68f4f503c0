"""The selection policy's promises: spend, spread, exact probabilities, mix, caps,
cold start, drift, and the pieces around it (lift, stopping, backlog)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streams.selection.backlog import rescored
from streams.selection.budget import HOUR_MS, Budget, VariableThreshold
from streams.selection.drift import DriftMonitor
from streams.evaluation.lift import Lift
from streams.selection.policy import DEFAULT_MIX, Policy, normalize_mix
from streams.evaluation.stopping import StoppingSignal


def stream(n, seed=0, dims=3):
    rng = random.Random(seed)
    for _ in range(n):
        x = {f"f{i}": rng.gauss(0, 1) for i in range(dims)}
        u = rng.betavariate(1, 3)
        yield x, {"uncertainty": u, "margin": 1 - u}, rng.choice("ab")


def run(policy, n, seed=0, failures=0.0):
    rng = random.Random(seed + 1)
    decisions = []
    for t, (x, s, label) in enumerate(stream(n, seed)):
        decisions.append(policy.decide("prediction", s, now_ms=t * 1000, x=x, label=label))
        if rng.random() < failures:
            decisions.append(policy.decide("override", s, now_ms=t * 1000))
    return decisions


@pytest.mark.parametrize("fraction", [0.02, 0.05, 0.1, 0.2, 0.5])
@pytest.mark.parametrize("n", [1000, 8000])
def test_realised_spend_tracks_the_budget(fraction, n):
    policy = Policy(Budget(fraction), seed=3)
    bought = sum(d.selected for d in run(policy, n))
    assert abs(bought - fraction * n) <= max(1.0, 0.05 * fraction * n)
    assert policy.budget.total_seen == n


def test_labels_are_spread_over_time():
    decisions = run(Policy(Budget(0.05), seed=1), 10000)
    per_tenth = [sum(d.selected for d in decisions[i:i + 1000]) for i in range(0, 10000, 1000)]
    assert min(per_tenth) >= 35 and max(per_tenth) <= 65, per_tenth


def test_selection_probabilities_are_exact():
    policy = Policy(Budget(0.1), seed=5)
    decisions = run(policy, 15000)
    bins = {}
    for d in decisions:
        b = min(9, int(d.probability * 10))
        n, hit, p = bins.get(b, (0, 0, 0.0))
        bins[b] = (n + 1, hit + d.selected, p + d.probability)
    for b, (n, hit, p) in bins.items():
        if n >= 300:
            expected = p / n
            assert abs(hit / n - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 0.01, (b, n, hit, p)


def test_the_mix_follows_the_shares_and_failures_give_theirs_away():
    policy = Policy(Budget(0.1), seed=2)
    decisions = run(policy, 15000)
    reasons = Counter(d.reasons[0] for d in decisions if d.selected)
    total = sum(reasons.values())
    # no overrides: the failure share goes to uncertain and diverse in proportion
    assert reasons["uncertain"] / total == pytest.approx(0.55 / 0.8 * 0.95, abs=0.04)
    assert reasons["diverse"] / total == pytest.approx(0.25 / 0.8 * 0.95, abs=0.04)
    assert reasons["control"] / total == pytest.approx(0.05, abs=0.015)


def test_failures_are_routed_while_rare_and_capped_to_their_share_when_not():
    rare = Policy(Budget(0.1), seed=0)
    decisions = run(rare, 10000, failures=0.002)
    overrides = [d for d in decisions if d.reasons[:1] == ["override"] or (not d.selected and "override" in d.probabilities)]
    assert all(d.selected for d in overrides)
    common = Policy(Budget(0.1), seed=0)
    decisions = run(common, 10000, failures=0.2)
    picked = sum(d.selected and d.reasons[0] == "override" for d in decisions)
    assert picked / sum(d.selected for d in decisions) == pytest.approx(0.15, abs=0.04)


def test_hard_caps_hold():
    policy = Policy(Budget(0.5, per_hour=10), seed=0)
    picked = Counter()
    for t, (x, s, _) in enumerate(stream(3000)):
        now = t * 10_000  # 360 items an hour
        if policy.decide("prediction", s, now_ms=now, x=x).selected:
            picked[now // HOUR_MS] += 1
    assert max(picked.values()) == 10


def test_cold_start_samples_diverse_and_random_items():
    policy = Policy(Budget(0.1), seed=0)
    reasons = Counter()
    for t, (x, _, _) in enumerate(stream(2000)):
        d = policy.decide("prediction", {}, now_ms=t, x=x)
        if d.selected:
            reasons[d.reasons[0]] += 1
    assert set(reasons) == {"diverse", "control"}
    assert sum(reasons.values()) == pytest.approx(200, rel=0.05)


def test_legacy_construction_and_router_call_still_work():
    policy = Policy(Budget(0.2), control_share=0.25, cold_start=5, seed=1)
    assert policy.mix["control"] == 0.25 and sum(policy.mix.values()) == pytest.approx(1.0)
    d = policy.decide("prediction", {"uncertainty": 0.5}, 0, draw=0.999)
    assert d.selected is False and 0 < d.probability < 1


def test_drift_raises_exploration_and_is_recorded():
    policy = Policy(Budget(0.1), drift=DriftMonitor(explore_for=500), seed=0)
    assert policy.shares()["uncertain"] == DEFAULT_MIX["uncertain"]
    events = [policy.observe_label("a", "a" if i < 300 else "b", ts=i) for i in range(600)]
    assert any(events) and policy.drift.events
    boosted = policy.shares()
    assert boosted["control"] > DEFAULT_MIX["control"] and boosted["diverse"] > DEFAULT_MIX["diverse"]
    assert sum(boosted.values()) == pytest.approx(1.0)
    decisions = run(policy, 600)
    assert any("drift" in d.reasons for d in decisions[:500] if d.selected)
    assert policy.shares() == normalize_mix(DEFAULT_MIX)


def _labeled_stream(flip_at, seed, n=5000):
    """The policy and a kNN shadow model on Bananas, every label swapped from
    ``flip_at`` on; the drift events raised from the labels it bought."""
    from feedbackloop.datasets import load
    from streams.selection import signals
    from streams.learning.models import KNN

    rows = load("bananas").rows
    random.Random(seed).shuffle(rows)
    policy, model, rng, seen = Policy(Budget(0.1), seed=seed), KNN(), random.Random(seed), set()
    events = []
    for t, (x, y) in enumerate(rows[:n]):
        if t >= flip_at:
            y = "True" if y == "False" else "False"
        proba = model.predict_proba_one(x) if len(seen) >= 2 else {}
        predicted = signals.top_label(proba)
        s = signals.score({"True": 0.5, "False": 0.5}, proba, 2) if proba else {}
        d = policy.decide("prediction", s, t * 1000, draw=rng.random(), x=x, label=predicted)
        if not d.selected:
            continue
        if d.reasons[0] != "control":
            model.learn_one(x, y)
        seen.add(y)
        event = policy.observe_label(y, predicted, ts=t, confidence=proba.get(predicted))
        if event:
            events.append((t, event))
    return events


@pytest.mark.parametrize("seed", [1, 2])
def test_a_concept_change_raises_a_drift_event_from_bought_labels_alone(seed):
    events = _labeled_stream(flip_at=2500, seed=seed)
    assert events and all(t >= 2500 for t, _ in events)
    first = events[0][1]
    assert first["error_after"] > first["error_before"]
    assert _labeled_stream(flip_at=10**9, seed=seed) == []


def test_rare_classes_get_a_boost():
    policy = Policy(Budget(0.1), seed=0)
    for _ in range(50):
        policy.observe_label("common")
    policy.observe_label("rare")
    assert policy.rarity("rare") > 0.5 and policy.rarity("common") == 0.0


def test_variable_threshold_meets_its_rate_on_any_scale():
    for scale in (1e-3, 1.0, 1e3):
        t = VariableThreshold(rate=0.05)
        rng = random.Random(0)
        ps = [t.probability(rng.expovariate(1.0) * scale) for _ in range(20000)]
        assert sum(ps[5000:]) / 15000 == pytest.approx(0.05, rel=0.1)


def test_lift_stopping_and_backlog_fit_together():
    lift = Lift()
    lift.add(["uncertain"], 0.3, True)
    assert lift.estimate()["lift"] is None
    lift.add(["control"], 0.005, False)
    assert lift.estimate()["lift"] is not None
    signal = StoppingSignal(window=1)
    assert signal.update(1, ["a", "b"])["stop"] is False
    assert signal.update(2, ["a", "b"])["stop"] is True
    sure, unsure = lambda x: {"a": 0.99, "b": 0.01}, lambda x: {"a": 0.5, "b": 0.5}
    task = {"reasons": ["uncertain", "disagreement"], "signals": {"margin": 0.4}, "features": {"x": 1.0}}
    assert rescored(task, sure) < rescored(task, unsure)
    assert rescored({**task, "signals": {}}, unsure) == 1.0
    assert all(rescored({**task, "reasons": [r]}, sure) is None for r in ("control", "override", "appeal", "diverse"))


def test_density_keeps_uncertainty_off_outliers():
    """Outliers that look most uncertain: weighed by density, the uncertain share buys far fewer of them."""

    def outliers_bought(density):
        rng = random.Random(7)
        policy = Policy(Budget(0.1), mix={"uncertain": 0.95, "control": 0.05}, density=density, seed=2)
        bought = outliers = 0
        for t in range(6000):
            odd = rng.random() < 0.05
            x = {"a": rng.gauss(8.0 if odd else 0.0, 1.0), "b": rng.gauss(8.0 if odd else 0.0, 1.0)}
            u = rng.uniform(0.8, 1.0) if odd else rng.betavariate(2, 2)
            d = policy.decide("prediction", {"uncertainty": u}, now_ms=t * 1000, x=x)
            if d.selected and d.reasons[0] == "uncertain":
                bought += 1
                outliers += odd
        return outliers / bought

    plain, weighed = outliers_bought(0.0), outliers_bought(1.0)
    assert plain > 0.2 and weighed < plain / 3, (plain, weighed)


def test_on_text_uncertainty_takes_the_diverse_share_and_is_weighed_by_density():
    """Text: no diverse picks (odd texts are what novelty finds), and odd texts that look most uncertain
    are rarely bought; numeric features keep the diverse share and no density weight."""
    rng = random.Random(3)
    common = [f"w:c{i}" for i in range(30)]

    def item(odd):
        words = [f"w:odd{rng.randrange(5000)}" for _ in range(3)] if odd else rng.sample(common, 6)
        return dict.fromkeys(words, 1.0)

    text, numeric = Policy(Budget(0.1), seed=2), Policy(Budget(0.1), seed=2)
    reasons, odd_bought, bought = Counter(), 0, 0
    for t in range(6000):
        odd = rng.random() < 0.05
        u = rng.uniform(0.8, 1.0) if odd else rng.betavariate(2, 2)
        d = text.decide("prediction", {"uncertainty": u}, now_ms=t * 1000, x=item(odd))
        if d.selected:
            reasons[d.reasons[0]] += 1
            bought += d.reasons[0] == "uncertain"
            odd_bought += odd and d.reasons[0] == "uncertain"
        numeric.decide("prediction", {"uncertainty": u}, now_ms=t * 1000, x={"a": rng.gauss(0, 1)})
    assert "diverse" not in reasons and reasons["uncertain"] > 400, reasons
    assert odd_bought / bought < 0.1, (odd_bought, bought)  # 5% of the stream, at the top of the uncertainty
    assert numeric.selected["diverse"] > 50 and len(numeric.density) == 0


def test_warmup_starts_uniform_and_turns_to_uncertainty():
    """With a warm-up, the first uncertain picks are as uncertain as the stream; later ones are the most uncertain."""
    policy = Policy(Budget(0.1), mix={"uncertain": 0.95, "control": 0.05}, warmup=200, seed=4)
    picked = []
    for t, (x, s, _) in enumerate(stream(8000, seed=4)):
        d = policy.decide("prediction", s, now_ms=t * 1000, x=x)
        if d.selected and d.reasons[0] == "uncertain":
            picked.append(s["uncertainty"])
    early, late = sum(picked[:40]) / 40, sum(picked[-200:]) / 200
    assert early < 0.4 and late > 0.5, (early, late)  # the stream's mean uncertainty is 0.25
    assert policy.warmed == 1.0
