"""Multi-label agreement against reference implementations: MASI alpha against nltk,
per-class kappa against statsmodels and scikit-learn."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from nltk.metrics.agreement import AnnotationTask
from nltk.metrics.distance import jaccard_distance as nltk_jaccard
from nltk.metrics.distance import masi_distance as nltk_masi
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from streams.labels import set_agreement as sa

SEEDS = range(8)


def answers(seed: int, n_items: int = 60, n_raters: int = 4, n_classes: int = 5, missing: float = 0.2,
            empty: bool = False) -> list[tuple[str, str, frozenset]]:
    """``(item, rater, set)``: a true set per item, each rater flipping each class with
    their own error rate (0.05 to 0.4); some cells missing; no empty set unless ``empty``."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n_items, n_classes)) < 0.3
    error = rng.uniform(0.05, 0.4, size=n_raters)
    rows = []
    for i in range(n_items):
        for r in range(n_raters):
            if rng.random() < missing:
                continue
            chosen = truth[i] ^ (rng.random(n_classes) < error[r])
            if not chosen.any() and not empty:
                chosen[rng.integers(n_classes)] = True
            rows.append((f"i{i:03d}", f"r{r}", frozenset(f"c{k}" for k in np.flatnonzero(chosen))))
    return rows


def nltk_alpha(rows, distance=nltk_masi) -> float:
    return AnnotationTask([(r, i, s) for i, r, s in rows], distance=distance).alpha()


@pytest.mark.parametrize("seed", SEEDS)
def test_masi_alpha_matches_nltk(seed):
    rows = answers(seed, n_items=20 + 15 * seed, n_raters=2 + seed % 4, n_classes=2 + seed % 5)
    assert sa.krippendorff_alpha(rows) == pytest.approx(nltk_alpha(rows), abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_jaccard_alpha_matches_nltk(seed):
    rows = answers(seed)
    assert sa.krippendorff_alpha(rows, sa.jaccard_distance) == pytest.approx(nltk_alpha(rows, nltk_jaccard), abs=1e-6)


def test_masi_distance_matches_nltk_on_every_pair_of_small_sets():
    sets = [frozenset(c) for n in range(1, 4) for c in itertools.combinations("abcd", n)]
    for a, b in itertools.product(sets, repeat=2):
        assert sa.masi_distance(a, b) == pytest.approx(nltk_masi(set(a), set(b)), abs=1e-12)
    assert sa.masi_distance(frozenset(), frozenset()) == 0.0
    assert sa.masi_distance(frozenset(), frozenset("a")) == 1.0


def test_text_answers_equal_set_answers_and_later_answers_replace_earlier():
    rows = answers(3)
    text = [(i, r, "|".join(sorted(s))) for i, r, s in rows]
    assert sa.krippendorff_alpha(text) == sa.krippendorff_alpha(rows)
    assert sa.report(text) == sa.report(rows)
    i, r, s = rows[0]
    corrected = [(i, r, frozenset({"zz"}))] + rows  # the first answer is replaced by rows[0]
    assert sa.krippendorff_alpha(corrected) == sa.krippendorff_alpha(rows)
    assert sa.report(corrected)["n_annotations"] == len(rows) + 1


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_per_class_fleiss_matches_statsmodels(seed):
    rows = answers(seed, missing=0.0)  # statsmodels wants every rater on every item
    per_class = sa.per_class_kappa(rows)
    assert sorted(per_class) == sa.classes(rows)
    items = sorted({i for i, _, _ in rows})
    for cls, figures in per_class.items():
        table = sa.binarize(rows, cls)
        matrix = np.array([[int(table[i][r]) for r in sorted(table[i])] for i in items])
        assert figures["fleiss_kappa"] == pytest.approx(fleiss_kappa(aggregate_raters(matrix)[0]), abs=1e-9)
        assert figures["prevalence"] == pytest.approx(matrix.mean(), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_per_class_cohen_of_two_raters_matches_sklearn(seed):
    rows = answers(seed, n_raters=2, missing=0.1)
    shared = [i for i in sorted({i for i, _, _ in rows}) if sum(1 for j, _, _ in rows if j == i) == 2]
    tab = sa.set_table(rows)
    for cls, figures in sa.per_class_kappa(rows).items():
        y1 = [cls in tab[i]["r0"] for i in shared]
        y2 = [cls in tab[i]["r1"] for i in shared]
        expected = cohen_kappa_score(y1, y2) if len(set(y1) | set(y2)) > 1 else None
        if expected is None:
            assert figures["cohen_kappa"] is None
        else:
            assert figures["cohen_kappa"] == pytest.approx(expected, abs=1e-9)
        agree = np.mean(np.array(y1) == np.array(y2))
        assert figures["percent_agreement"] == pytest.approx(agree, abs=1e-12)


def test_agreement_falls_as_annotators_get_careless():
    def alpha(error):
        rng = random.Random(7)
        truth = {f"i{i}": frozenset(c for c in "abcde" if rng.random() < 0.35) or frozenset("a") for i in range(300)}
        flip = lambda s: frozenset(c for c in "abcde" if (c in s) != (rng.random() < error)) or frozenset("e")
        return sa.krippendorff_alpha([(i, r, flip(s)) for i, s in truth.items() for r in ("x", "y", "z")])

    careful, sloppy, random_ = alpha(0.02), alpha(0.15), alpha(0.5)
    assert careful > 0.85 and careful > sloppy > random_ and abs(random_) < 0.1


def test_degenerate_cases():
    assert sa.krippendorff_alpha([("i1", "x", "a|b"), ("i1", "y", "a|b")]) is None  # one value: undefined
    assert sa.krippendorff_alpha([("i1", "x", "a"), ("i2", "y", "b")]) is None  # nothing labeled twice
    same = [(i, r, "a|b") for i in ("i1", "i2") for r in ("x", "y")] + [("i3", "x", "a"), ("i3", "y", "a")]
    assert sa.krippendorff_alpha(same) == 1.0
    k = sa.per_class_kappa(same)
    assert k["a"]["fleiss_kappa"] is None and k["a"]["prevalence"] == 1.0  # everyone chose a: undefined
    assert k["b"]["fleiss_kappa"] == 1.0 and k["b"]["cohen_kappa"] == 1.0
    empty = [("i1", "x", frozenset()), ("i1", "y", frozenset()), ("i2", "x", "a"), ("i2", "y", "a")]
    assert sa.krippendorff_alpha(empty) == 1.0


def test_report():
    rows = answers(5, n_raters=3, missing=0.0)
    r = sa.report(rows)
    assert r["krippendorff_alpha"] == pytest.approx(nltk_alpha(rows), abs=1e-6)
    assert r["n_items"] == r["n_items_multi"] == 60 and r["n_annotators"] == 3
    assert set(r["per_class"]) == set(r["classes"])
    tab = sa.set_table(rows)
    pairs = [(t[a], t[b]) for t in tab.values() for a, b in itertools.combinations(sorted(t), 2)]
    assert r["exact_agreement"] == pytest.approx(np.mean([a == b for a, b in pairs]), abs=1e-12)
    for a, row in r["per_annotator"].items():
        mine = [1 - nltk_masi(t[a], t[b]) for t in tab.values() for b in t if b != a]
        assert row["masi_agreement"] == pytest.approx(np.mean(mine), abs=1e-12)  # same count of others per item
        assert row["n_labels"] == 60


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_any_distance_pair_by_pair_and_the_nominal_case(seed):
    """A distance without an array form is called pair by pair; 0/1 on whole sets is nominal alpha."""
    from streams.labels.agreement import krippendorff_alpha as nominal

    rows = answers(seed, empty=True)
    same_or_not = sa.krippendorff_alpha(rows, lambda a, b: float(a != b))
    assert same_or_not == pytest.approx(nominal([(i, r, "|".join(sorted(s))) for i, r, s in rows]), abs=1e-9)
    masi_by_pairs = sa.krippendorff_alpha(rows, lambda a, b: sa.masi_distance(a, b))
    assert masi_by_pairs == pytest.approx(sa.krippendorff_alpha(rows), abs=1e-12)
