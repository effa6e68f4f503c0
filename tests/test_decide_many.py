"""A message decided at once (Policy.decide_many, Router.preselect_many) decides exactly as
its events decided one by one: the same decisions, logged probabilities, reasons and
priorities, and the same policy state after, bit for bit, on random streams (numeric and text
features, cold start, warm-up, drift, caps hit, failures, a novelty ring that goes round within
a message, hashed feature slots, features that change mid-stream).

No float tolerance: a message's novelty distances are one matrix product where one event's
are a product of the whole ring with two columns, and OpenBLAS sums every entry of either in
the same order (streams/selection/diversity.py, Novelty.products). Should another BLAS build
sum them otherwise, the floats that hang on a distance would differ in their last bits
(a diverse probability of 0.0487 came out 1.4e-6 of itself apart with a matrix-vector product
per event), and these tests say so."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from streams.selection.budget import Budget
from streams.selection.diversity import Novelty, Sketch
from streams.selection.policy import Policy
from streams.selection.router import Router

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def events(n, seed, dims=3, text=False, vary=False, cold=0, failures=0.0, step=1000):
    """``(kind, signals, now_ms, draw, x, label)`` of a random stream."""
    rng = random.Random(seed)
    for t in range(n):
        if rng.random() < failures:
            yield "override" if rng.random() < 0.5 else "appeal", {"uncertainty": rng.random()}, t * step, \
                rng.random(), None, None
            continue
        names = [f"f{i}" for i in range(dims)] + (["extra"] if vary and t > n // 2 else [])
        x = {name: rng.gauss(0.0, 1.0 + i) for i, name in enumerate(names)}
        if text:
            for word in rng.sample(WORDS, 3):
                x["w:" + word] = float(rng.randint(1, 3))
        u = rng.betavariate(1, 3)
        signals = {} if t < cold else {"uncertainty": u, "margin": 1.0 - u,
                                       "label_disagreement": float(rng.random() < 0.2)}
        yield "prediction", signals, t * step, rng.random(), x, rng.choice("aab")


def messages(stream, seed):
    """The stream cut into messages of 1 to 400 events."""
    rng, stream = random.Random(seed + 7), list(stream)
    i = 0
    while i < len(stream):
        size = rng.randint(1, 400)
        yield stream[i:i + size]
        i += size


def close(a, b):
    return a == b or (a != a and b != b)  # bit for bit (NaN equal to NaN)


def same_decision(a, b):
    return (a.selected == b.selected and a.reasons == b.reasons and close(a.probability, b.probability)
            and close(a.priority, b.priority) and a.probabilities.keys() == b.probabilities.keys()
            and all(close(a.probabilities[k], b.probabilities[k]) for k in a.probabilities))


def state(policy):
    """Everything a later decision hangs on."""
    sketch, novelty = policy.novelty.sketch, policy.novelty
    return {**policy.state(), "thresholds": {k: t.threshold for k, t in policy.thresholds.items()},
            "control_selected": policy.control_selected, "failure": (policy._failure_rate, policy._failure_weight),
            "spent": dict(policy.budget._spent), "estimate": policy.budget._estimate,
            "stats": {k: list(v) for k, v in sketch._stats.items()}, "slots": dict(sketch._slot),
            "has_text": sketch.has_text, "count": novelty._count, "centers": novelty._centers.tobytes(),
            "density": (policy.density._count, policy.density._scale,
                        None if policy.density._items is None else policy.density._items.tobytes()),
            "drift_left": policy.drift._left}


def same_state(a, b):
    a, b = state(a), state(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key


def make(options, seed):
    options = dict(options)
    novelty = options.pop("novelty", None)
    budget = options.pop("budget", {})
    return Policy(Budget(**{"fraction": 0.1, **budget}), seed=seed, novelty=novelty() if novelty else None,
                  **options)


CASES = {
    "numeric": ({}, {}),
    "two features": ({}, {"dims": 2}),
    "ten features": ({}, {"dims": 10}),
    "cold start": ({"cold_start": 40}, {"cold": 600}),
    "warm-up": ({"warmup": 60}, {}),
    "caps hit": ({"budget": {"fraction": 0.2, "per_hour": 30}}, {"step": 5000}),
    "failures": ({}, {"failures": 0.05}),
    "ring goes round": ({"novelty": lambda: Novelty(memory=40)}, {"dims": 4}),
    "hashed slots": ({"novelty": lambda: Novelty(Sketch(dims=3))}, {"dims": 7}),
    "features vary": ({}, {"vary": True}),
    "numeric density": ({"density": 1.0}, {}),
    "text": ({}, {"text": True}),
    "text, diverse": ({"text_diverse": True}, {"text": True}),
    "typical first": ({"typical_first": 1.0}, {}),  # no shadow signal in these streams: on all along
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_message_decided_at_once_decides_as_one_event_at_a_time(case, seed):
    options, stream = CASES[case]
    one, many = make(options, seed), make(options, seed)
    labels = random.Random(seed + 3)
    decided = capped = 0
    for k, message in enumerate(messages(events(3000, seed, **stream), seed)):
        a = [one.decide(*e[:3], draw=e[3], x=e[4], label=e[5]) for e in message]
        kinds, signals, now, draws, xs, names = map(list, zip(*message))
        b = many.decide_many(kinds, signals, now, draws, xs, names)
        assert len(a) == len(b)
        # the columns a message's path reads (a Decision is made for an item not selected only when asked for)
        assert b.selected == [d.selected for d in a] and len(b.probability) == len(a)
        assert all(close(p, d.probability) for p, d in zip(b.probability, a))
        for i, (x, y) in enumerate(zip(a, b)):
            assert same_decision(x, y), (k, i, x, y)
        decided += sum(d.selected for d in a)
        capped += sum(not d.selected and d.probability == 0.0 for d in a)
        same_state(one, many)
        label = labels.choice("abb")
        for policy in (one, many):  # labels between messages: rarity, and now and then a drift alarm
            policy.observe_label(label)
            if k % 5 == 2:
                policy.drift.explore()
    assert decided > 100  # the streams select: the comparison covers selections and centers added
    assert case != "caps hit" or capped > 100  # and the caps refuse


def test_the_drift_boost_and_a_reason_of_it_show_in_both():
    one, many = make({}, 4), make({}, 4)
    one.drift.explore()
    many.drift.explore()
    stream = list(events(500, 4))
    a = [one.decide(*e[:3], draw=e[3], x=e[4], label=e[5]) for e in stream]
    b = many.decide_many(*map(list, zip(*stream)))
    assert any("drift" in d.reasons for d in a)
    assert all(same_decision(x, y) for x, y in zip(a, b))
    same_state(one, many)


def test_without_draws_the_policy_draws_in_the_same_order():
    one, many = make({}, 5), make({}, 5)
    stream = list(events(800, 5))
    a = [one.decide(e[0], e[1], e[2], x=e[4], label=e[5]) for e in stream]
    kinds, signals, now, _, xs, labels = map(list, zip(*stream))
    b = many.decide_many(kinds, signals, now, None, xs, labels)
    assert all(same_decision(x, y) for x, y in zip(a, b))
    same_state(one, many)


def test_the_sketch_of_a_message_is_its_events_sketches_bit_for_bit():
    a, b = Sketch(dims=4), Sketch(dims=4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        xs = [{f"f{j}": float(v) for j, v in enumerate(rng.normal(0.0, 3.0, 6))} for _ in range(rng.integers(2, 200))]
        xs[0]["f0"] = xs[1]["f0"] = 1.5  # equal values: a deviation of exactly zero
        assert np.array_equal(a.update_many(xs), np.array([b.update(x) for x in xs]))
        assert a._stats == b._stats and a._slot == b._slot
    # a feature first seen now (its count starts again beside the others'), and a message of one item
    for size in (50, 1, 3):
        xs = [{**{f"f{j}": float(v) for j, v in enumerate(rng.normal(0.0, 2.0, 7))}} for _ in range(size)]
        assert np.array_equal(a.update_many(xs), np.array([b.update(x) for x in xs]))
        assert a._stats == b._stats and all(type(v) is float for s in a._stats.values() for v in s[1:3])


def candidates(n, seed):
    rng = random.Random(seed)
    for i in range(n):
        p = rng.random()
        yield {"event_id": f"e{seed}-{i}", "item_id": f"i{i}", "ts": 1000 * i, "kind": "prediction",
               "model_name": "m", "model_version": "1", "predicted_label": "a" if p > 0.5 else "b",
               "probabilities": {"a": p, "b": 1.0 - p}, "features": {f"f{j}": rng.gauss(0, 1) for j in range(5)},
               "text": None, "context": {}, "shadow_label": None, "shadow_version": 0,
               "signals": {"uncertainty": 1.0 - abs(2 * p - 1)}, "user_label": None, "note": None,
               "scored_ts": 1000 * i}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_router_preselects_a_message_as_one_event_at_a_time(seed):
    one, many = Router(make({}, seed), seed=seed), Router(make({}, seed), seed=seed)
    stream = list(candidates(2000, seed))
    stream[700:700] = stream[650:660]  # events delivered again: in a later message, and twice in one
    stream[900:900] = stream[890:895]
    for message in messages(stream, seed):
        a = [one.preselect(c, 5) for c in message]
        b = many.preselect_many(message, 5)
        for (row_a, cand_a), (row_b, cand_b) in zip(a, b):
            assert (row_a is None) == (row_b is None) and (cand_a is None) == (cand_b is None)
            for x, y in ((row_a, row_b), (cand_a, cand_b)):
                if x is not None:
                    assert x.keys() == y.keys() and all(close(x[k], y[k]) for k in x), (x, y)
    assert one.labels == many.labels and set(one._preselected) == set(many._preselected)
    same_state(one.policy, many.policy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_columns_message_scores_as_its_events_one_map_each(seed):
    """Scorer.columns with a kNN shadow model (arrays all the way) gives the candidates the map per
    event path gives: the same signals, shadow labels (ties broken by label order), every field."""
    import numpy as np

    from streams.learning.learner import ShadowModel
    from streams.learning.models import make
    from streams.selection.scorer import Scorer

    rng = random.Random(seed)
    model = make("knn")
    for _ in range(60):  # a few items twice: exact matches, and votes that tie
        v = round(rng.uniform(-1, 1), 1)
        model.learn_one({"a": v, "b": -v}, rng.choice(["yes", "no", "maybe"] if seed else ["yes", "no"]))
    classes = ["yes", "no", "other"][:2 + seed % 2]  # a class only production knows, in no sorted order
    n = 300
    record = {"event_id": [f"e{i}" for i in range(n)], "item_id": [f"i{i % 250}" for i in range(n)],
              "ts": list(range(n)), "model_name": ["m"] * n, "model_version": ["1"] * n,
              "predicted_label": [rng.choice(classes) for _ in range(n)], "classes": classes,
              "probabilities": [], "feature_names": ["a", "b", "c"], "features": [], "text": [],
              "context": [{"k": str(i)} for i in range(n)] if seed == 1 else []}
    for _ in range(n):
        p = [rng.random() for _ in classes]
        record["probabilities"] += [v / sum(p) for v in p]
        v = round(rng.uniform(-1, 1), 1)
        record["features"] += [v, -v, rng.gauss(0, 1)]
    shadow = ShadowModel("s", 3, model, ["maybe", "no", "yes"] if seed else ["no", "yes"])
    fast, slow = Scorer(shadow), Scorer(shadow)
    knn = slow._knn()
    fast._batch = slow._batch
    votes = knn._votes  # rounded to halves, so that classes tie for the largest vote (in both paths)
    knn._votes = lambda X: np.round(votes(X) * 2) / 2
    got = fast.columns(record, 9)
    want = slow._scored(slow._events(record), 9, knn.predict_proba_columns(record["features"], ["a", "b", "c"], n))
    votes = knn.votes_columns(record["features"], ["a", "b", "c"], n)
    assert ((votes == votes.max(1, keepdims=True)).sum(1) > 1).any()  # ties to break
    assert [c["shadow_label"] for c in got] == [c["shadow_label"] for c in want]
    assert list(got) == want and [got[i] for i in range(n)] == want  # made once: the same dicts again
    assert list(fast._recent) == list(slow._recent)
    assert all(fast.seen(item) == slow.seen(item) for item in slow._recent)


def test_a_message_draws_what_each_event_drew_before():
    """The draws fix decisions across restarts and versions: each is the 8-byte BLAKE2b digest of
    ``seed:event_id`` over 2**64, whether drawn one at a time or a message at a time."""
    import hashlib

    from streams.selection.router import stable_draw, stable_draws

    ids = ["e1", "ev-1-0", "", "événement-7", "x" * 300]
    for seed in (0, 1, 12345):
        expected = [int.from_bytes(hashlib.blake2b(f"{seed}:{e}".encode(), digest_size=8).digest(), "big") / 2**64
                    for e in ids]
        assert stable_draws(ids, seed) == expected == [stable_draw(e, seed) for e in ids]
    assert stable_draws([], 0) == [] and len(set(stable_draws(ids, 0))) == len(ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_message_of_feature_rows_decides_as_its_dicts(seed):
    """A message's features as rows of one array (a scored message's FeatureRows) decide as the same
    features one dict each, bit for bit, and no dict is made for them on the way (but for a message of
    one item, sketched as one event is)."""
    from streams.selection.scorer import FeatureRows

    one, many = make({}, seed), make({}, seed)
    made = 0
    for message in messages(events(3000, seed, dims=4), seed):
        kinds, signals, now, draws, xs, labels = map(list, zip(*message))
        names = list(xs[0])
        rows = FeatureRows(names, [x[name] for x in xs for name in names])
        a = one.decide_many(kinds, signals, now, draws, xs, labels)
        b = many.decide_many(kinds, signals, now, draws, rows, labels)
        assert all(same_decision(x, y) for x, y in zip(a, b)) and len(a) == len(b)
        same_state(one, many)
        made += sum(d is not None for d in rows._made) if len(xs) > 1 else 0
    assert made == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_a_scored_message_preselects_as_its_candidates_one_dict_each(seed):
    """The router's preselection of a kNN-scored message (its columns, features as one array) gives the
    rows and candidates of the same candidates handed over as dicts, and leaves the same state."""
    from feedbackloop import bench
    from feedbackloop.producer import as_columns
    from streams.learning.learner import ShadowModel
    from streams.learning.models import make as make_model
    from streams.selection.scorer import Scored, Scorer

    model = make_model("knn")
    for e in bench._events(200, seed=seed + 50):
        model.learn_one(e["features"], bench.truth(e["features"]))
    scorer = Scorer(ShadowModel("s", 1, model, ["no", "yes"]))
    by_columns, by_dicts = Router(make({}, seed), seed=seed), Router(make({}, seed), seed=seed)
    for i in range(6):
        record = as_columns(list(bench._events(400, seed=seed * 10 + i, prefix=f"m{seed}-{i}-")))
        scored = scorer.columns(record, 5)
        assert isinstance(scored, Scored)
        dicts = [dict(c) for c in scorer.columns(record, 5)]
        rows_a, chosen_a = by_columns.preselect_columns(scored, 5)
        rows_b, chosen_b = by_dicts.preselect_columns(dicts, 5)
        assert rows_a.keys() == rows_b.keys() and all(
            len(rows_a[k]) == len(rows_b[k]) and all(close(x, y) for x, y in zip(rows_a[k], rows_b[k]))
            for k in rows_a if k != "signals") and rows_a["signals"] == rows_b["signals"]
        assert chosen_a == chosen_b and len(chosen_a) > 10
        assert sum(f is not None for f in scored.features._made) == len(chosen_a)  # dicts for the preselected only
    same_state(by_columns.policy, by_dicts.policy)
