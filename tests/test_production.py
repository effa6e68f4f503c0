"""The production model's accuracy, precision and recall per release: the estimators and their intervals.

Wilson intervals are checked against statsmodels; the inverse-probability
weighted estimate is checked for what it is for: drawn again and again from a
known population with unequal selection probabilities (as the policy draws),
it is unbiased where the plain labels are not, and its 95% interval covers the
truth about 95% of the time.
"""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from streams.evaluation.milestones import Milestones
from streams.evaluation.production import ProductionAccuracy, accuracy, per_class, weighted_proportion, wilson


@pytest.mark.parametrize("successes,n", [(0, 5), (3, 10), (47, 50), (50, 50), (1, 1000), (512, 1000)])
def test_wilson_matches_statsmodels(successes, n):
    low, high = wilson(successes, n)
    ref_low, ref_high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert (low, high) == (pytest.approx(ref_low, abs=1e-9), pytest.approx(ref_high, abs=1e-9))


def population(seed: int, n: int = 20_000):
    """A stream where the production model is right less often on the items the policy favours."""
    rng = np.random.default_rng(seed)
    doubt = rng.random(n)  # the model's doubt about each item
    right = rng.random(n) > 0.5 * doubt  # right on 75% overall, much less on doubtful items
    p = np.clip(0.02 + 0.4 * doubt ** 2, 0.02, 1.0)  # the policy's selection probability: doubtful items first
    return right, p, rng


def test_the_weighted_estimate_is_unbiased_and_its_interval_covers_at_the_stated_rate():
    right, p, rng = population(0)
    truth = right.mean()
    estimates, plain, covered = [], [], 0
    draws = 400
    for _ in range(draws):
        chosen = rng.random(right.size) < p  # Poisson sampling, as the router's draws are
        e = weighted_proportion(right[chosen], p[chosen])
        estimates.append(e["value"])
        plain.append(right[chosen].mean())
        covered += e["ci_low"] <= truth <= e["ci_high"]
    spread = np.std(estimates)
    assert abs(np.mean(estimates) - truth) < 3 * spread / np.sqrt(draws)  # unbiased within its Monte Carlo error
    assert np.mean(plain) < truth - 10 * spread / np.sqrt(draws)  # the labels alone understate the model
    assert 0.92 <= covered / draws <= 0.98  # the stated 95%, within what 400 draws can tell


def test_the_weighted_estimate_of_precision_and_recall_recovers_the_population():
    rng = np.random.default_rng(1)
    n = 30_000
    truth = rng.choice(["a", "b", "c"], size=n, p=[0.7, 0.25, 0.05])
    right = rng.random(n) < np.where(truth == "c", 0.4, 0.9)
    predicted = np.where(right, truth, np.where(truth == "a", "b", "a"))
    p = np.where(predicted == "a", 0.03, 0.5)  # the policy buys what is predicted rare
    chosen = rng.random(n) < p
    estimated = {(r["metric"], r["class"]): r for r in per_class(predicted[chosen], truth[chosen], p[chosen])}

    def close(estimate, truth):  # within 3.5 standard errors: one of eleven 95% intervals may well miss
        return abs(estimate["value"] - truth) <= 3.5 / 1.96 * (estimate["ci_high"] - estimate["ci_low"]) / 2 + 1e-9

    for c in "abc":
        recall = (predicted[truth == c] == c).mean()
        assert close(estimated["recall", c], recall), (c, recall, estimated["recall", c])
        if (predicted == c).any():
            precision = (truth[predicted == c] == c).mean()
            assert close(estimated["precision", c], precision), (c, precision, estimated["precision", c])
    whole = accuracy(predicted[chosen], truth[chosen], p[chosen])
    assert close(whole, right.mean())
    assert abs(right[chosen].mean() - right.mean()) > 0.05  # the labels alone would be far off
    assert whole["weight"] == pytest.approx((1 / p[chosen]).sum())


def test_a_label_settled_again_replaces_the_first_and_releases_are_apart():
    production = ProductionAccuracy()
    production.add("t1", "prod", "v1", "a", "b", 0.5, control=True)
    production.add("t1", "prod", "v1", "a", "a", 0.5, control=True)  # a correction
    production.add("t2", "prod", "v2", "a", "b", 1.0, control=False)
    production.add("t3", "prod", "v2", None, "b", 1.0, control=False)  # no prediction: not a judgement
    production.add("t4", "prod", "v2", "a", "b", 0.0, control=False)  # no usable probability
    rows = {(r["model_version"], r["estimator"], r["metric"], r["class"]): r for r in production.rows()}
    assert rows["v1", "control", "accuracy", ""]["value"] == 1.0 and rows["v1", "control", "accuracy", ""]["n"] == 1
    assert rows["v2", "weighted", "accuracy", ""]["value"] == 0.0 and rows["v2", "weighted", "accuracy", ""]["n"] == 1
    assert rows["v2", "control", "accuracy", ""]["value"] is None  # no control label for v2 yet
    assert ("v2", "control", "recall", "b") not in rows and len(production) == 2


def test_milestones_each_rule_can_be_turned_off():
    quiet = Milestones(every_labels=0, accuracy_gain=0.0, on_drift=False, on_stop=False)
    for _ in range(1000):
        quiet.label()
    quiet.drift()
    assert quiet.check(1, 1, 0.5, stop=True) is None and quiet.check(2, 2, 0.99, stop=True) is None
    loud = Milestones(every_labels=10, accuracy_gain=0.05)
    assert loud.check(1, 1, None, stop=False) is None  # no control accuracy yet: no baseline, no gain
    assert loud.check(2, 2, 0.5, stop=False) is None  # the first accuracy is the baseline
    assert loud.check(3, 3, 0.56, stop=False)["accuracy_gain"] == pytest.approx(0.06)


def test_a_restarted_loop_counts_the_labels_settled_before_it_again():
    from streams.events import task as make_task
    from streams.loop import Loop

    def tasks_and_labels(n=40):
        for i in range(n):
            t = make_task(task_id=f"t{i}", event_id=f"e{i}", item_id=f"i{i}", created_ts=i, source_ts=i,
                          kind="prediction", reasons=["control"] if i % 4 == 0 else ["uncertain"], signals={},
                          selection_probability=0.2 if i % 4 == 0 else 0.6, priority=0.5, confidence=0.6,
                          label_set=["a", "b"], model_name="prod", model_version=f"v{i % 2}", shadow_version=0,
                          policy_version="p", features={"x": float(i % 3)}, predicted_label="a")
            label = {"event_id": f"l{i}", "task_id": f"t{i}", "item_id": f"i{i}", "label": "ab"[i % 3 == 0],
                     "annotator_id": "ann", "ts": i}
            yield t, label

    live = Loop.build(model_kind="linear", milestones={"every_labels": 10})
    for t, label in tasks_and_labels():
        live.take("LabelingTask", t, now_ms=1)
        live.take("Label", label, now_ms=2)
    restarted = Loop.build(model_kind="linear", milestones={"every_labels": 10})
    for t, label in tasks_and_labels():  # as streams.replay.rebuild_trainer gives them back
        restarted.trainer.add_task(t)
        restarted.trainer.add_label(label, learn=False)
    assert len(restarted.production) == 0
    assert restarted.recount_releases() == 40
    assert restarted.production.rows() == live.production.rows() and len(live.production) == 40
    assert restarted.milestones.new_labels == 0 and live.milestones.new_labels == 40  # counted from the restart
