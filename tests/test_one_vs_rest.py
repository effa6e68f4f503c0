"""One-vs-rest shadow models and per-class entropy signals on Yeast (multi-label, shipped inside River's wheel)."""

from __future__ import annotations

import numpy as np
import pytest
from river import datasets

from streams.learning import one_vs_rest as ovr
from streams.learning import snapshot
from streams.selection.set_signals import class_entropies, max_entropy, mean_entropy, set_disagreement


@pytest.fixture(scope="module")
def yeast():
    data = [(x, frozenset(c for c, v in y.items() if v)) for x, y in datasets.Yeast()]
    classes = sorted({c for _, y in data for c in y}, key=lambda c: int(c[5:]))
    return data[:1200], data[1200:1800], classes


@pytest.fixture(scope="module")
def trained(yeast):
    train, _, classes = yeast
    model = ovr.make("linear")
    for x, y in train:
        ovr.learn(model, x, y, classes)
    return model


def hamming(predicted, truth, classes) -> float:
    return float(np.mean([len(p ^ t) for p, t in zip(predicted, truth)])) / len(classes)


def test_one_vs_rest_beats_the_per_class_prior(yeast, trained):
    train, test, classes = yeast
    prior = frozenset(c for c in classes if np.mean([c in y for _, y in train]) > 0.5)
    truth = [y for _, y in test]
    model_loss = hamming([ovr.predict(trained, x, classes) for x, _ in test], truth, classes)
    prior_loss = hamming([prior] * len(test), truth, classes)
    assert model_loss < prior_loss - 0.005
    # every class gets a probability, and the frequent classes are not all called the same way
    p = [ovr.proba(trained, x, classes) for x, _ in test[:50]]
    assert all(set(q) == set(classes) and all(0.0 <= v <= 1.0 for v in q.values()) for q in p)
    assert np.std([q["Class1"] for q in p]) > 0.01


def test_mean_and_max_entropy_point_at_the_items_the_model_gets_wrong(yeast, trained):
    _, test, classes = yeast
    probas = [ovr.proba(trained, x, classes) for x, _ in test]
    errors = np.array([len(frozenset(c for c, p in q.items() if p > 0.5) ^ y) for q, (_, y) in zip(probas, test)])
    for signal in (mean_entropy, max_entropy):
        score = np.array([signal(q) for q in probas])
        top = np.argsort(-score)[: len(test) // 4]
        assert errors[top].mean() > 1.1 * errors.mean()
    # per class: a class's entropy is high where that class is called wrong
    wrong = np.array([[(q[c] > 0.5) != (c in y) for c in classes] for q, (_, y) in zip(probas, test)])
    ent = np.array([[class_entropies(q)[c] for c in classes] for q in probas])
    assert ent[wrong].mean() > ent[~wrong].mean()


def test_snapshot_of_a_one_vs_rest_model_loads_and_predicts_the_same(yeast, trained):
    _, test, classes = yeast
    restored = snapshot.loads(snapshot.dumps({"model": trained}))["model"]
    for x, _ in test[:20]:
        assert ovr.proba(restored, x, classes) == ovr.proba(trained, x, classes)


def test_weights_and_late_classes():
    heavy, light = ovr.make("linear"), ovr.make("linear")
    for i in range(50):
        x = {"a": float(i % 2)}
        labels = {"on"} if i % 2 else set()
        ovr.learn(heavy, x, labels, ["on"], weight=2.0)
        ovr.learn(light, x, labels, ["on"], weight=0.5)
    assert ovr.proba(heavy, {"a": 1.0})["on"] > ovr.proba(light, {"a": 1.0})["on"] > 0.5
    assert ovr.proba(heavy, {"a": 1.0}, ["on", "new"])["new"] == 0.5
    assert ovr.targets({"new"}, ["on"]) == {"on": False, "new": True}


def test_set_disagreement_of_two_models(yeast, trained):
    train, test, classes = yeast
    early = ovr.make("linear")
    for x, y in train[:30]:
        ovr.learn(early, x, y, classes)
    gaps = [set_disagreement(ovr.proba(trained, x, classes), ovr.proba(early, x, classes)) for x, _ in test[:100]]
    same = [set_disagreement(ovr.proba(trained, x, classes), ovr.proba(trained, x, classes)) for x, _ in test[:100]]
    assert min(gaps) > 0.0 and max(same) == 0.0 and 0.0 < np.mean(gaps) < 1.0


def test_batch_scoring_equals_one_at_a_time(yeast, trained):
    _, test, classes = yeast
    items = [x for x, _ in test[:300]]
    items[0] = {k: v for k, v in list(items[0].items())[:10]}  # an item with most features missing
    items[1] = {**items[1], "never seen": 3.0}
    fast = ovr.proba_many(trained, items, classes + ["Class99"])
    slow = [ovr.proba(trained, x, classes + ["Class99"]) for x in items]
    assert max(abs(f[c] - s[c]) for f, s in zip(fast, slow) for c in s) < 1e-9
    assert all(f.keys() == s.keys() for f, s in zip(fast, slow))
    assert ovr.BatchLinear.of(ovr.make("tree")) is None
    tree = ovr.make("tree")
    for x, y in test[:50]:
        ovr.learn(tree, x, y, classes)
    assert ovr.proba_many(tree, items[:5], classes) == [ovr.proba(tree, x, classes) for x in items[:5]]
