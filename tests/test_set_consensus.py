"""Consensus per class on multi-label answers, and multi-label datasets read by the loader."""

from __future__ import annotations

import numpy as np
import pytest

from feedbackloop.datasets import Dataset, label_sets, load
from streams.labels.consensus import GoldChecks
from streams.labels.set_consensus import set_consensus

CLASSES = [f"c{k}" for k in range(6)]


def crowd(seed: int, n_items: int = 400, errors=(0.05, 0.1, 0.4)):
    """True sets and each annotator's answers, every class flipped with the annotator's error rate."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n_items, len(CLASSES))) < 0.3
    answers = [{f"a{r}": frozenset(c for c, bit in zip(CLASSES, row ^ (rng.random(len(CLASSES)) < e)) if bit)
                for r, e in enumerate(errors)} for row in truth]
    return [frozenset(c for c, bit in zip(CLASSES, row) if bit) for row in truth], answers


def class_errors(sets, truth) -> float:
    """Wrong in/out decisions per item."""
    return float(np.mean([len(s ^ t) for s, t in zip(sets, truth)]))


@pytest.mark.parametrize("seed", range(4))
def test_majority_per_class_beats_every_annotator_but_the_best(seed):
    truth, answers = crowd(seed)
    settled = [set_consensus(a, classes=CLASSES) for a in answers]
    majority = class_errors([c.labels for c in settled], truth)
    alone = {r: class_errors([a[r] for a in answers], truth) for r in answers[0]}
    assert majority < alone["a1"] < alone["a2"]
    # unanimous classes are certain, split ones are not
    for c, a in zip(settled, answers):
        for cls in CLASSES:
            votes = sum(cls in s for s in a.values())
            assert c.class_confidence(cls) == pytest.approx(max(votes, 3 - votes) / 3)
        assert c.confidence == pytest.approx(np.prod([c.class_confidence(k) for k in CLASSES]))


@pytest.mark.parametrize("seed", range(4))
def test_accuracies_outvote_the_careless_annotator(seed):
    """Two annotators, one careless: equal weights cannot break their ties, accuracies can."""
    truth, answers = crowd(seed, errors=(0.05, 0.4))
    gold = GoldChecks()
    for r, hits in (("a0", 19), ("a1", 12)):
        for k in range(20):
            gold.add(r, k < hits)
    weighted = class_errors([set_consensus(a, CLASSES, gold.estimate).labels for a in answers], truth)
    equal = class_errors([set_consensus(a, CLASSES).labels for a in answers], truth)
    assert weighted < equal
    assert weighted == pytest.approx(class_errors([a["a0"] for a in answers], truth))  # the careful one decides


def test_confidence_is_a_calibrated_posterior_with_accuracies():
    """With the true accuracies, the per-class posterior of the winning side matches how often it is right."""
    truth, answers = crowd(9, n_items=3000, errors=(0.1, 0.2, 0.3))
    acc = {"a0": 0.9, "a1": 0.8, "a2": 0.7}.get
    conf, right = [], []
    for t, a in zip(truth, answers):
        c = set_consensus(a, CLASSES, acc)
        for cls in CLASSES:
            conf.append(c.class_confidence(cls))
            right.append((cls in c.labels) == (cls in t))
    conf, right = np.array(conf), np.array(right)
    # the prior is not 50/50 (30% of classes are in), so allow a few points of miscalibration
    for low, high in ((0.5, 0.9), (0.9, 0.97), (0.97, 1.0)):
        mask = (conf >= low) & (conf < high + 1e-12)
        assert mask.sum() > 100
        assert abs(right[mask].mean() - conf[mask].mean()) < 0.08


def test_empty_and_missing():
    with pytest.raises(ValueError):
        set_consensus({})
    c = set_consensus({"x": frozenset(), "y": frozenset()}, classes=["a"])
    assert c.labels == frozenset() and c.confidence == 1.0
    assert set_consensus({"x": "a|b"}).labels == {"a", "b"}


def test_loader_reads_a_multi_label_csv(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("x1,x2,topics\n0.5,1,billing|refund\n1.5,2,refund\n2.5,,billing | login\n")
    d = load(str(path), label_column="topics")
    assert [x for x, _ in d.rows] == [{"x1": 0.5, "x2": 1.0}, {"x1": 1.5, "x2": 2.0}, {"x1": 2.5}]
    assert label_sets(d) == [{"billing", "refund"}, {"refund"}, {"billing", "login"}]
    assert label_sets(Dataset("single", [({}, "a"), ({}, "b")])) is None
    assert label_sets(load("phishing")) is None


def test_yeast_is_a_multi_label_dataset_from_rivers_wheel():
    from river import datasets

    from feedbackloop.datasets import yeast

    d = yeast()
    sets = label_sets(d)
    truth = [frozenset(c for c, on in y.items() if on) for _, y in datasets.Yeast()]
    assert sets == truth and all(sets) and d.text is False
    assert 3.5 < np.mean([len(s) for s in sets]) < 4.5  # Yeast's label cardinality, 4.24
