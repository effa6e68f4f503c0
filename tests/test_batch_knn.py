"""The scorer's batch kNN (:mod:`streams.learning.batch`) against River's own ``predict_proba_one``,
item by item, on a few thousand events of the benchmark's stream: the float32 search must find the
neighbours River finds, and the votes must be River's."""

from __future__ import annotations

import pytest

from feedbackloop import bench
from streams.learning.batch import BatchKNN
from streams.learning.models import make


def trained(n: int, seed: int):
    model = make("knn")
    for e in bench._events(n, seed=seed, prefix="train"):
        model.learn_one(e["features"], bench.truth(e["features"]))
    return model


@pytest.mark.parametrize("labels, seed", [(300, 1), (450, 2)])  # below 500 River searches exhaustively
def test_batch_scores_equal_river_item_by_item(labels, seed):
    model = trained(labels, seed)
    items = [e["features"] for e in bench._events(3000, seed=seed + 10)]
    items[5] = dict(next(bench._events(1, seed=seed, prefix="train"))["features"])  # an item it learned
    items[6] = {k: v for k, v in items[6].items() if k != "f3"}  # a missing feature counts as 0 once scaled
    batch = BatchKNN.of(model)
    fast = [p for i in range(0, len(items), 500) for p in batch.predict_proba(items[i:i + 500])]
    slow = [model.predict_proba_one(x) for x in items]
    assert all(f.keys() == s.keys() for f, s in zip(fast, slow))
    assert [max(f, key=f.get) for f in fast] == [max(s, key=s.get) for s in slow]
    worst = max(abs(f[c] - s[c]) for f, s in zip(fast, slow) for c in s)
    assert worst < 1e-9, f"probabilities differ by up to {worst}"
    assert 0.2 < sum(max(p.values()) < 1.0 for p in fast) / len(fast)  # not a degenerate stream: votes split


def test_a_batch_of_one_and_an_empty_model():
    model = trained(3, 0)
    batch = BatchKNN.of(model)
    x = next(bench._events(1, seed=4))["features"]
    [p] = batch.predict_proba([x])
    assert p == pytest.approx(model.predict_proba_one(x), abs=1e-12)
