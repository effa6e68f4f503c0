"""The shadow's first versions sooner, and typical items first until then (docs/policy.md, 2026-12-01 morning).

Until the learner has learned ``EARLY_LABELS`` labels it publishes every ``early_every`` learned labels (the
first without waiting for ``min_control``), and each time the labels seen reach a multiple of ``publish_every``
(so a worker sent N labels, N a multiple of it, publishes a version that has seen N); before the shadow's first version is served, the diverse share
prefers items typical of the stream (``typical_first``) rather than the outliers farthest from every pick.
"""

from __future__ import annotations

import math
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from feedbackloop.settings import Settings
from streams.learning.learner import EARLY_LABELS, Learner
from streams.selection.budget import Budget
from streams.selection.policy import Policy


def versions(learner: Learner, labels: int, control_every: int = 3) -> list[tuple[int, int]]:
    """(labels seen, labels learned) at each version published while ``labels`` labels come in."""
    key, out = Ed25519PrivateKey.generate(), []
    for i in range(labels):
        learner.learn({"x": float(i % 2)}, "ab"[i % 2], control=i % control_every == 0)
        if learner.due:
            record = learner.publish(0, key)
            out.append((record["labels_seen"], learner.labels_seen - learner.held_out))
    return out


def test_early_versions_then_the_usual_cadence():
    for control_every in (2, 3, 7):  # whatever the share of control labels held out (not learned)
        early = versions(Learner("m", kind="linear", publish_every=25, min_control=20, early_every=5), 300,
                         control_every)
        seen, learned = [n for n, _ in early], [n for _, n in early]
        assert early[0] == (min(n for n in range(1, 30) if n - -(-n // control_every) == 5), 5)  # no wait for control
        assert set(range(5, EARLY_LABELS + 1, 5)) <= set(learned), control_every
        assert set(range(25, 301, 25)) <= set(seen), control_every  # what a worker's waits count on
        late = [n for n, k in early if k > EARLY_LABELS]
        assert late and all(n % 25 == 0 for n in late) and seen[-1] == 300, control_every
    usual = versions(Learner("m", kind="linear", publish_every=25, min_control=20), 300)
    assert usual[0][0] >= 25 and len(usual) < len(early)


def test_a_version_at_every_count_a_worker_waits_for():
    """A worker checks ``due`` once a batch of labels is learned: a version of the usual cadence is late
    by a batch at most, and the next one comes at the next multiple, not ``publish_every`` after the late one."""
    key, learner, seen = Ed25519PrivateKey.generate(), Learner("m", kind="linear", early_every=5), []
    for i in range(300):
        learner.learn({"x": float(i % 2)}, "ab"[i % 2], control=i % 4 == 0)
        if i % 7 == 6 and learner.due:
            seen.append(learner.publish(0, key)["labels_seen"])
    checks = range(7, 301, 7)
    late = [n for n in seen if n > 140]  # 105 learned by then: the usual cadence only
    assert late == sorted({min(c for c in checks if c >= m) for m in range(150, 300, 25)})


def test_a_resumed_learner_keeps_its_count():
    key = Ed25519PrivateKey.generate()
    learner = Learner("m", kind="linear", early_every=5, publish_every=10)
    for i in range(30):
        learner.learn({"x": float(i % 2)}, "ab"[i % 2], control=i % 3 == 0)
    record = learner.publish(0, key)
    again = Learner("m", kind="linear", early_every=5, publish_every=10)
    again.resume(record, key.public_key())
    assert (again.held_out, again.labels_seen) == (learner.held_out, learner.labels_seen) == (10, 30)
    assert not again.due
    # a restarted worker's versions come at the counts the one that did not stop publishes at
    assert versions(again, 110) == versions(learner, 110)


def stream(n: int, seed: int) -> list[dict[str, float]]:
    """A dense blob with one item in ten far out on a ring: the outliers farthest-first picks go to."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 10 == 0:
            r = rng.uniform(8.0, 12.0)
            angle = rng.uniform(0.0, 6.283)
            out.append({"a": r * math.cos(angle), "b": r * math.sin(angle)})
        else:
            out.append({"a": rng.gauss(0.0, 1.0), "b": rng.gauss(0.0, 1.0)})
    return out


def diverse_outliers(typical_first: float, shadow_from: int | None = None, seed: int = 0) -> tuple[int, int, Policy]:
    """(outliers among the diverse picks, diverse picks, the policy) over a stream of predictions whose
    signals carry a shadow's margin from ``shadow_from`` on (None: never)."""
    policy = Policy(Budget(0.1), typical_first=typical_first, seed=seed)
    outliers = picks = 0
    for i, x in enumerate(stream(3000, seed)):
        signals = {"uncertainty": 0.5}
        if shadow_from is not None and i >= shadow_from:
            signals["shadow_margin"] = 0.5
        d = policy.decide("prediction", signals, now_ms=i * 10, draw=random.Random(i).random(), x=x)
        if d.selected and d.reasons[0] == "diverse":
            picks += 1
            outliers += x["a"] ** 2 + x["b"] ** 2 > 36.0
    return outliers, picks, policy


def test_before_the_shadow_the_diverse_share_goes_to_typical_items():
    for seed in range(3):
        far, picks, _ = diverse_outliers(0.0, seed=seed)
        typical, typical_picks, _ = diverse_outliers(1.0, seed=seed)
        assert picks > 20 and typical_picks > 20
        assert typical / typical_picks < 0.6 * far / picks, (seed, typical, typical_picks, far, picks)


def test_once_the_shadow_is_served_typical_first_is_over():
    _, _, before = diverse_outliers(1.0, shadow_from=None)
    _, _, after = diverse_outliers(1.0, shadow_from=500)
    assert not before.shadow_seen and after.shadow_seen
    assert len(after.density) < len(before.density) or after.density._count < before.density._count


def test_the_worker_builds_its_loop_with_both():
    from streams.app import loop_options
    from streams.loop import Loop

    loop = Loop.build(**loop_options(Settings().replace(early_every=5, typical_first=1.0)))
    assert loop.trainer.learner.early_every == 5 and loop.router.policy.typical_first == 1.0
    plain = Loop.build(**loop_options(Settings().replace(early_every=0, typical_first=0.0)))
    assert plain.trainer.learner.early_every == 0 and plain.router.policy.typical_first == 0.0
