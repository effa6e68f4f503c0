"""Agreement metrics against reference implementations, the tracker against the batch functions, and the CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from nltk.metrics.agreement import AnnotationTask
from sklearn.metrics import accuracy_score, cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project is not installed in the venv
    sys.path.insert(0, str(ROOT))

from feedbackloop import agreement as cli  # noqa: E402
from streams.labels import agreement as ag  # noqa: E402

TOL = dict(rel=1e-12, abs=1e-12)
MISSING = -1
SIZES = [(12, 2, 2), (40, 3, 3), (80, 4, 4), (150, 5, 5), (200, 6, 6), (25, 6, 2), (60, 2, 6)]
CASES = [(seed, *size) for seed, size in enumerate(SIZES)]


def matrix(seed: int, n_items: int, n_raters: int, n_classes: int, missing: float = 0.0) -> np.ndarray:
    """Items x raters of class indices (``MISSING`` where not labeled): a true class per
    item, raters of accuracy 0.4 to 0.95 who otherwise pick a wrong class at random."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(n_classes, size=n_items)
    accuracy = rng.uniform(0.4, 0.95, size=n_raters)
    right = rng.random((n_items, n_raters)) < accuracy
    wrong = (truth[:, None] + rng.integers(1, n_classes, size=(n_items, n_raters))) % n_classes
    out = np.where(right, truth[:, None], wrong)
    out[rng.random(out.shape) < missing] = MISSING
    return out


def triples(m: np.ndarray) -> list[tuple]:
    """``(item, rater, label)`` with string ids and labels, missing cells left out."""
    return [(f"i{i}", f"r{r}", f"c{m[i, r]}") for i in range(m.shape[0]) for r in range(m.shape[1])
            if m[i, r] != MISSING]


def nltk_task(m: np.ndarray) -> AnnotationTask:
    return AnnotationTask([(r, i, label) for i, r, label in triples(m)])


# --------------------------------------------------------------------------- coefficients vs references


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn on pairs where kappa is undefined
@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
@pytest.mark.parametrize("missing", [0.0, 0.35])
def test_cohen_kappa_matches_sklearn_for_every_pair(seed, n_items, n_raters, n_classes, missing):
    m = matrix(seed, n_items, n_raters, n_classes, missing)
    rows = ag.pairwise_kappa(triples(m))
    expected_pairs = 0
    for ra, rb in itertools.combinations(range(n_raters), 2):
        shared = (m[:, ra] != MISSING) & (m[:, rb] != MISSING)
        if not shared.any():
            continue
        expected_pairs += 1
        row = next(p for p in rows if (p["a"], p["b"]) == (f"r{ra}", f"r{rb}"))
        assert row["n"] == shared.sum()
        assert row["agreement"] == pytest.approx(accuracy_score(m[shared, ra], m[shared, rb]), **TOL)
        reference = cohen_kappa_score(m[shared, ra], m[shared, rb])
        if row["kappa"] is None:
            assert math.isnan(reference)
        else:
            assert row["kappa"] == pytest.approx(reference, **TOL)
    assert len(rows) == expected_pairs


@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
def test_complete_data_matches_nltk(seed, n_items, n_raters, n_classes):
    m = matrix(seed, n_items, n_raters, n_classes)
    data, task = triples(m), nltk_task(m)
    assert ag.percent_agreement(data) == pytest.approx(task.avg_Ao(), **TOL)
    kappas = [p["kappa"] for p in ag.pairwise_kappa(data)]
    assert len(kappas) == math.comb(n_raters, 2)
    assert np.mean(kappas) == pytest.approx(task.kappa(), **TOL)
    assert ag.multi_kappa(data) == pytest.approx(task.multi_kappa(), **TOL)
    assert ag.fleiss_kappa(data) == pytest.approx(task.pi(), **TOL)  # Fleiss' kappa is multi-pi
    assert ag.krippendorff_alpha(data) == pytest.approx(task.alpha(), **TOL)


@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
def test_fleiss_kappa_matches_statsmodels(seed, n_items, n_raters, n_classes):
    m = matrix(seed, n_items, n_raters, n_classes)
    counts, _ = aggregate_raters(m)
    assert ag.fleiss_kappa(triples(m)) == pytest.approx(fleiss_kappa(counts, method="fleiss"), **TOL)
    # the classic design: the same number of raters per item, not the same raters
    rng, per_item = np.random.default_rng(seed), min(n_raters, 3)
    sparse = np.full((n_items, n_raters + 3), MISSING)
    for i in range(n_items):
        chosen = rng.choice(n_raters + 3, size=per_item, replace=False)
        sparse[i, chosen] = rng.integers(n_classes, size=len(chosen))
    counts, _ = aggregate_raters(np.array([row[row != MISSING] for row in sparse]))
    assert ag.fleiss_kappa(triples(sparse)) == pytest.approx(fleiss_kappa(counts, method="fleiss"), **TOL)


@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
@pytest.mark.parametrize("missing", [0.0, 0.2, 0.5])
def test_krippendorff_alpha_matches_krippendorff_and_nltk(seed, n_items, n_raters, n_classes, missing):
    m = matrix(seed, n_items, n_raters, n_classes, missing)
    reliability = np.where(m == MISSING, np.nan, m).T.astype(float)  # raters x items
    ours = ag.krippendorff_alpha(triples(m))
    if ((m != MISSING).sum(1) < 2).all():  # nothing pairable
        assert ours is None
        with pytest.raises(ValueError, match="at least two coders"):
            krippendorff.alpha(reliability, level_of_measurement="nominal")
        return
    assert ours == pytest.approx(krippendorff.alpha(reliability, level_of_measurement="nominal"), **TOL)
    assert ours == pytest.approx(nltk_task(m).alpha(), **TOL)


@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
def test_percent_agreement_and_fleiss_with_missing_annotations(seed, n_items, n_raters, n_classes):
    m = matrix(seed, n_items, n_raters, n_classes, missing=0.4)
    shares, pooled = [], Counter()
    for row in m:
        given = row[row != MISSING]
        if len(given) >= 2:
            pairs = list(itertools.combinations(given, 2))
            shares.append(sum(x == y for x, y in pairs) / len(pairs))
            pooled.update(given.tolist())
    data = triples(m)
    assert ag.percent_agreement(data) == pytest.approx(np.mean(shares), **TOL)
    chance = sum((c / sum(pooled.values())) ** 2 for c in pooled.values())
    assert ag.fleiss_kappa(data) == pytest.approx((np.mean(shares) - chance) / (1 - chance), **TOL)


@pytest.mark.parametrize("seed,n_items,n_raters,n_classes", CASES)
def test_gold_accuracy_matches_sklearn(seed, n_items, n_raters, n_classes):
    m = matrix(seed, n_items, n_raters, n_classes, missing=0.3)
    gold_idx = np.random.default_rng(seed).integers(n_classes, size=n_items)
    gold = {f"i{i}": f"c{gold_idx[i]}" for i in range(0, n_items, 2)}  # every other item is gold
    ours = ag.gold_accuracy(triples(m), gold)
    for r in range(n_raters):
        on_gold = [i for i in range(0, n_items, 2) if m[i, r] != MISSING]
        if not on_gold:
            assert f"r{r}" not in ours
            continue
        assert ours[f"r{r}"] == pytest.approx(accuracy_score(gold_idx[on_gold], m[on_gold, r]), **TOL)


def test_table_input_equals_triples_and_later_labels_replace_earlier():
    m = matrix(3, 50, 4, 3, missing=0.2)
    data = triples(m)
    noisy = [(i, r, "c0") for i, r, _ in data[::3]] + data  # earlier labels, overwritten
    tab = ag.table(data)
    assert ag.table(noisy) == tab
    for metric in (ag.percent_agreement, ag.fleiss_kappa, ag.krippendorff_alpha, ag.multi_kappa,
                   ag.pairwise_kappa, ag.disagreement_by_class, ag.agreement_with_majority):
        assert metric(tab) == metric(data) == metric(noisy)


# --------------------------------------------------------------------------- edge cases


def test_single_class_leaves_chance_corrected_coefficients_undefined():
    data = [(i, r, "spam") for i in range(5) for r in ("a", "b", "c")]
    assert ag.percent_agreement(data) == 1.0
    assert ag.fleiss_kappa(data) is None
    assert ag.krippendorff_alpha(data) is None
    assert ag.multi_kappa(data) is None
    assert [p["kappa"] for p in ag.pairwise_kappa(data)] == [None, None, None]
    # the references: NaN for 0/0 (nltk's alpha alone calls it perfect agreement)
    with pytest.warns(Warning):
        assert math.isnan(cohen_kappa_score(["spam"] * 5, ["spam"] * 5))
    with np.errstate(invalid="ignore", divide="ignore"):
        assert math.isnan(fleiss_kappa(np.array([[3]] * 5)))
    assert AnnotationTask([(r, i, label) for i, r, label in data]).alpha() == 1
    json.dumps(ag.report(data), allow_nan=False)  # None, never NaN


def test_single_class_per_annotator_is_defined_when_they_differ():
    data = [(i, "a", "x") for i in range(4)] + [(i, "b", "y") for i in range(4)]
    assert ag.pairwise_kappa(data)[0]["kappa"] == cohen_kappa_score(["x"] * 4, ["y"] * 4) == 0.0
    assert ag.krippendorff_alpha(data) == pytest.approx(
        krippendorff.alpha(np.array([[0.0] * 4, [1.0] * 4]), level_of_measurement="nominal"), **TOL)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_perfect_agreement(n_classes):
    m = np.repeat(np.arange(30)[:, None] % n_classes, 4, axis=1)
    m[::5, 0] = MISSING
    data = triples(m)
    assert ag.percent_agreement(data) == ag.fleiss_kappa(data) == ag.krippendorff_alpha(data) == 1.0
    assert ag.multi_kappa(data) == 1.0
    assert all(p["kappa"] == 1.0 and p["agreement"] == 1.0 for p in ag.pairwise_kappa(data))
    assert all(v["disagreement_rate"] == 0.0 for v in ag.disagreement_by_class(data).values())
    assert set(ag.agreement_with_majority(data).values()) == {1.0}


def test_one_annotator():
    data = [(i, "solo", "x" if i % 3 else "y") for i in range(9)]
    r = ag.report(data)
    assert r["n_items_multi"] == 0 and r["cohen_kappa"] == []
    assert r["percent_agreement"] is r["fleiss_kappa"] is r["krippendorff_alpha"] is r["multi_kappa"] is None
    assert r["disagreement_by_class"] == {}
    solo = r["per_annotator"]["solo"]
    assert solo["agreement_with_majority"] is None and solo["items_shared"] == 0
    assert solo["n_labels"] == 9 and solo["distribution"] == {"x": 6 / 9, "y": 3 / 9}


def test_items_labeled_once_are_ignored_by_the_coefficients():
    m = matrix(5, 60, 4, 3, missing=0.3)
    data = triples(m)
    lonely = [(f"extra{i}", f"r{i % 4}", f"c{i % 3}") for i in range(20)]
    for metric in (ag.percent_agreement, ag.fleiss_kappa, ag.krippendorff_alpha, ag.pairwise_kappa,
                   ag.disagreement_by_class, ag.agreement_with_majority):
        assert metric(data + lonely) == metric(data)
    assert ag.report(data + lonely)["n_items"] == ag.report(data)["n_items"] + 20


def test_majority_and_ties():
    assert ag.majority(["b", "a", "b"]) == ("b", 2 / 3)
    assert ag.majority(["b", "a"]) == ("a", 0.5)  # ties: first label in order
    assert ag.majority([3, 1, 3, 1, 2]) == (1, 0.4)
    with pytest.raises(ValueError):
        ag.majority([])
    # others tied between two labels: agreeing with one of them is worth 1/2
    data = {"i1": {"x": "a", "y": "a", "z": "b"}, "i2": {"x": "a", "y": "b"}, "i3": {"x": "b", "y": "a", "z": "b"}}
    assert ag.agreement_with_majority(data) == {"x": (0.5 + 0 + 0.5) / 3, "y": (0.5 + 0 + 0) / 3, "z": (0 + 0.5) / 2}
    # a tied item goes to the first tied class, and always disagrees
    assert ag.disagreement_by_class(data) == {"a": {"items": 2, "disagreement_rate": 1.0},
                                              "b": {"items": 1, "disagreement_rate": 1.0}}


def test_cohen_kappa_of_sequences():
    y1, y2 = ["a", "b", "c", "a", "b", "a"], ["a", "b", "b", "a", "c", "c"]
    assert ag.cohen_kappa(y1, y2) == pytest.approx(cohen_kappa_score(y1, y2), **TOL)
    assert ag.cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="differ in length"):
        ag.cohen_kappa(["a"], ["a", "b"])


# --------------------------------------------------------------------------- per annotator


def test_label_drift_is_total_variation_between_halves():
    rng = random.Random(7)
    data = [(n, rng.choice("abc"), rng.choice("wxyz"[: rng.randint(1, 4)])) for n in range(300)]
    drift = ag.label_drift(data)
    classes = sorted({label for *_, label in data})
    for a in "abc":
        seq = [label for _, who, label in data if who == a]
        half = len(seq) // 2
        p, q = ([Counter(part)[c] / len(part) for c in classes] for part in (seq[:half], seq[half:]))
        assert drift[a] == pytest.approx(0.5 * np.abs(np.subtract(p, q)).sum(), **TOL)
    assert ag.label_drift([(1, "x", "a"), (2, "x", "a"), (3, "x", "b"), (4, "x", "b")]) == {"x": 1.0}
    assert ag.label_drift([(1, "x", "a"), (2, "x", "b"), (3, "x", "a"), (4, "x", "b")]) == {"x": 0.0}
    assert ag.label_drift([(1, "x", "a")]) == {"x": None}


def test_labeling_speed():
    rng = np.random.default_rng(1)
    durations = rng.exponential(4000, size=41)
    data = [(n, "x", "a", 1_000_000 + 90_000 * n, float(d)) for n, d in enumerate(durations)]
    speed = ag.labeling_speed(data + [(0, "y", "a"), (1, "z", "a", 5), (2, "z", "b", 5)])
    assert speed["x"]["time_to_label_p50_ms"] == pytest.approx(np.median(durations), **TOL)
    assert speed["x"]["time_to_label_p90_ms"] == pytest.approx(np.percentile(durations, 90), **TOL)
    assert speed["x"]["labels_per_hour"] == pytest.approx(40.0)  # one label every 90 s
    assert set(speed["y"].values()) == {None}
    assert speed["z"]["labels_per_hour"] is None  # no time elapsed


def test_per_annotator_report():
    data = [("i1", "x", "a", 0, 1000), ("i1", "y", "a", 10, 2000), ("i1", "z", "b", 20, 3000),
            ("i2", "x", "b", 3_600_000, 1000), ("i2", "y", "b", 30), ("i3", "x", "a", 7_200_000)]
    r = ag.report(data, gold={"i1": "a", "i2": "a"})
    x = r["per_annotator"]["x"]
    assert x["n_labels"] == 3 and x["items_shared"] == 2 and x["agreement_with_majority"] == 0.75
    assert x["n_gold"] == 2 and x["gold_accuracy"] == 0.5
    assert x["distribution"] == {"a": 2 / 3, "b": 1 / 3} and x["drift"] == pytest.approx(0.5)
    assert x["labels_per_hour"] == 1.0 and x["time_to_label_p50_ms"] == 1000.0
    assert r["per_annotator"]["z"]["gold_accuracy"] == 0.0
    assert r["disagreement_by_class"] == {"a": {"items": 1, "disagreement_rate": 1.0},
                                          "b": {"items": 1, "disagreement_rate": 0.0}}
    assert (r["n_annotations"], r["n_labels"], r["n_items"], r["n_items_multi"], r["classes"]) == (6, 6, 3, 2, ["a", "b"])


# --------------------------------------------------------------------------- consensus


def test_dawid_skene_sees_through_biased_annotators():
    rng = np.random.default_rng(0)
    n, k = 400, 3
    truth = rng.integers(k, size=n)
    data, correct = [], Counter()
    for i in range(n):
        for a in ("good1", "good2"):
            label = truth[i] if rng.random() < 0.85 else rng.integers(k)
            data.append((i, a, int(label)))
        for a in ("lazy1", "lazy2", "lazy3"):  # mostly say 0, whatever the item
            label = 0 if rng.random() < 0.8 else rng.integers(k)
            data.append((i, a, int(label)))
    for i, a, label in data:
        correct[a] += label == truth[i]
    consensus, accuracy = ag.dawid_skene(data)
    tab = ag.table(data)
    voted = np.mean([ag.majority(tab[i].values())[0] == truth[i] for i in range(n)])
    em = np.mean([consensus[i][0] == truth[i] for i in range(n)])
    assert voted < 0.75 and em > 0.9
    for a in accuracy:
        assert accuracy[a] == pytest.approx(correct[a] / n, abs=0.06)
    assert all(0.0 < conf <= 1.0 for _, conf in consensus.values())


def test_dawid_skene_on_unanimous_and_degenerate_data():
    consensus, accuracy = ag.dawid_skene([(i, a, "xy"[i % 2]) for i in range(10) for a in "abc"])
    assert {i: label for i, (label, _) in consensus.items()} == {i: "xy"[i % 2] for i in range(10)}
    assert min(conf for _, conf in consensus.values()) > 0.99 and min(accuracy.values()) > 0.99
    consensus, accuracy = ag.dawid_skene([(1, "a", "only"), (2, "a", "only")])
    assert consensus == {1: ("only", 1.0), 2: ("only", 1.0)} and accuracy == {"a": 1.0}
    assert ag.dawid_skene([]) == ({}, {})


# --------------------------------------------------------------------------- the tracker


def stream(seed: int, n: int = 600) -> tuple[list[ag.Annotation], dict]:
    """Annotations in time order with corrections, durations on most, and gold on some items."""
    rng = random.Random(seed)
    rows, ts = [], 1_700_000_000_000
    for _ in range(n):
        ts += rng.randint(0, 120_000)
        item = f"i{rng.randint(0, n // 4)}"
        duration = rng.uniform(500, 30_000) if rng.random() < 0.8 else None
        rows.append(ag.Annotation(item, f"r{rng.randint(0, 5)}", rng.choice("abcd"[: 2 + seed % 3]), ts, duration))
    gold = {f"i{i}": rng.choice("abcd") for i in range(0, n // 4, 5)}
    return rows, gold


@pytest.mark.parametrize("seed", range(4))
def test_tracker_equals_batch_report(seed):
    rows, gold = stream(seed)
    assert len({(r.item_id, r.annotator_id) for r in rows}) < len(rows)  # corrections happen
    tracker = ag.AgreementTracker(gold=gold)
    for n, row in enumerate(rows, 1):
        tracker.add(*row)
        if n % 97 == 0 or n == len(rows):
            assert tracker.report() == ag.report(rows[:n], gold=gold)
    final = tracker.report()
    assert final["percent_agreement"] == ag.percent_agreement(rows)
    assert final["krippendorff_alpha"] == ag.krippendorff_alpha(rows)
    assert final["fleiss_kappa"] == ag.fleiss_kappa(rows)
    assert final["cohen_kappa"] == ag.pairwise_kappa(rows)
    assert json.loads(json.dumps(final, allow_nan=False))["n_annotations"] == len(rows)


def test_tracker_gold_declared_late_equals_gold_up_front():
    rows, gold = stream(11)
    early = {k: v for k, v in list(gold.items())[:3]}
    tracker = ag.AgreementTracker(gold=early)
    for row in rows:
        tracker.add(*row)
    for item, label in gold.items():
        tracker.set_gold(item, "z")  # wrong first, then corrected
        tracker.set_gold(item, label)
    tracker.set_gold("never-labeled", "a")
    assert tracker.report() == ag.report(rows, gold={**gold, "never-labeled": "a"})
    assert tracker.report() != ag.report(rows)


def test_tracker_window():
    rows, gold = stream(2)
    tracker = ag.AgreementTracker(gold=gold)
    for row in rows:
        tracker.add(*row)
    now, hour = rows[-1].ts_ms, 3_600_000
    recent = [r for r in rows if now - 2 * hour < r.ts_ms <= now]
    assert 0 < len(recent) < len(rows)
    assert tracker.report(window_ms=2 * hour) == ag.report(recent, gold=gold)
    earlier = [r for r in rows if now - 3 * hour < r.ts_ms <= now - hour]
    assert tracker.report(window_ms=2 * hour, now_ms=now - hour) == ag.report(earlier, gold=gold)


def with_model(seed: int, rows: list[ag.Annotation]) -> list[ag.Annotation]:
    """The rows with the model's suggestion for each item (fixed per item) on most,
    and guideline version v1 before the middle of the stream, v2 after."""
    rng = random.Random(seed)
    suggestion = {r.item_id: rng.choice("abcd"[:2 + seed % 3]) for r in rows}
    middle = rows[len(rows) // 2].ts_ms
    return [r._replace(model_label=suggestion[r.item_id] if rng.random() < 0.9 else None,
                       guideline_version="v1" if r.ts_ms < middle else "v2") for r in rows]


@pytest.mark.parametrize("seed", range(3))
def test_model_against_annotator_matches_sklearn_and_the_tracker(seed):
    rows = with_model(seed, stream(seed)[0])
    tracker = ag.AgreementTracker()
    for row in rows:
        tracker.add(*row)
    report = tracker.report()
    assert report == ag.report(rows)
    for a, x in report["per_annotator"].items():
        latest = {}
        for r in rows:
            if r.annotator_id == a and r.model_label is not None:
                latest[r.item_id] = (r.label, r.model_label)
        ours, model = zip(*latest.values())
        assert x["n_model"] == len(latest)
        assert x["model_agreement"] == pytest.approx(accuracy_score(model, ours), **TOL)
        assert x["model_kappa"] == pytest.approx(cohen_kappa_score(ours, model), **TOL)


@pytest.mark.parametrize("seed", range(3))
def test_agreement_rows_per_hour_per_day_and_per_guideline_version(seed):
    rows = with_model(seed, stream(seed, n=900)[0])
    tracker = ag.AgreementTracker()
    for row in rows:
        tracker.add(*row)
    now = rows[-1].ts_ms + 1
    out = ag.agreement_rows(tracker, now)

    def rows_of(seconds, version=""):
        return {(r["metric"], r["annotator_a"], r["annotator_b"]): (r["value"], r["n"], r["window_start"])
                for r in out if r["window_seconds"] == seconds and r["guideline_version"] == version}

    hour_start, day_start = now - now % 3_600_000, now - now % 86_400_000
    for seconds, start in ((3600, hour_start), (86400, day_start)):
        inside = [r for r in rows if start <= r.ts_ms <= now]
        assert 0 < len(inside) < len(rows) or seconds == 86400
        expected = ag.report(inside)
        got = rows_of(seconds)
        assert got[("krippendorff_alpha", "*", "*")] == (expected["krippendorff_alpha"], expected["n_items_multi"], start)
        assert got[("fleiss_kappa", "*", "*")][0] == expected["fleiss_kappa"]
        assert {k[1:]: v[0] for k, v in got.items() if k[0] == "cohen_kappa"} == \
            {(p["a"], p["b"]): p["kappa"] for p in expected["cohen_kappa"]}
    for version in ("v1", "v2"):
        expected = ag.report([r for r in rows if r.guideline_version == version])
        got = rows_of(0, version)
        assert got[("percent_agreement", "*", "*")][:2] == (expected["percent_agreement"], expected["n_items_multi"])
    assert rows_of(0)[("percent_agreement", "*", "*")][0] == ag.percent_agreement(rows)
    assert {r["window_seconds"] for r in out} == {0, 3600, 86400}


# --------------------------------------------------------------------------- the command


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="feedbackloop")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is cli.run
    return args.func(args)


def write_csv(path: Path, rows: list[ag.Annotation], gold: dict) -> None:
    lines = ["item_id,annotator_id,label,ts,duration_ms,gold"]
    for r in rows:
        lines.append(f"{r.item_id},{r.annotator_id},{r.label},{r.ts_ms},"
                     f"{'' if r.duration_ms is None else r.duration_ms},{gold.get(r.item_id, '')}")
    path.write_text("\n".join(lines) + "\n")


def test_cli_writes_the_report_as_json(tmp_path, capsys):
    rows, gold = stream(5, n=300)
    rows = [r._replace(annotator_id="noisy") if r.annotator_id == "r0" else r for r in rows]
    rows += [ag.Annotation(f"i{i}", "noisy", "b" if i % 2 else "a", rows[-1].ts_ms + i) for i in range(75)]
    write_csv(tmp_path / "export.csv", rows, gold)
    out = tmp_path / "agreement.json"
    assert run_cli(["agreement", str(tmp_path / "export.csv"), "--out", str(out), "--pairs", "3"]) == 0
    written = json.loads(out.read_text())
    for key in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha", "cohen_kappa", "per_annotator"):
        assert key in written
    assert all(set(p) >= {"a", "b", "kappa"} for p in written["cohen_kappa"])
    expected = json.loads(json.dumps(ag.report(rows, gold=gold)))
    assert written == expected
    assert written["per_annotator"]["r1"]["n_gold"] > 0
    printed = capsys.readouterr().out
    worst = min((p for p in written["cohen_kappa"] if p["kappa"] is not None), key=lambda p: p["kappa"])
    assert "percent agreement" in printed and "worst pairs" in printed
    table = printed.split("worst pairs")[1].split("\n\n")[0].splitlines()[1:]
    assert len(table) == 3 and table[0].split()[:2] == [worst["a"], worst["b"]]
    assert all(a in printed for a in written["per_annotator"])


def test_cli_reads_jsonl_in_time_order(tmp_path):
    lines = [{"item_id": 1, "annotator_id": "x", "label": "b", "ts": "2024-05-01T10:03:00Z", "duration_ms": 900},
             {"item_id": 1, "annotator_id": "y", "label": "b", "ts": 1714557600000},
             {"item_id": 2, "annotator_id": "x", "label": "a", "ts": "2024-05-01T10:01:00"},
             {"item_id": 2, "annotator_id": "y", "label": "a", "ts": 1714557660000, "gold": "a"},
             {"item_id": 3, "annotator_id": "x", "label": "b", "ts": "2024-05-01T10:02:00+00:00"},
             {"item_id": 4, "annotator_id": "x", "label": "a", "ts": "2024-05-01T10:00:00Z"}]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    rows, gold = cli.read_export(str(path))
    assert [r.ts_ms for r in rows] == sorted(r.ts_ms for r in rows) and rows[0].ts_ms == 1714557600000
    assert gold == {"2": "a"} and rows[-1].duration_ms == 900.0 and rows[-1].item_id == "1"
    out = tmp_path / "r.json"
    run_cli(["agreement", str(path), "--out", str(out)])
    x = json.loads(out.read_text())["per_annotator"]["x"]
    assert x["drift"] == 1.0  # a, a then b, b in time order (b, a, b, a in the file)
    assert x["labels_per_hour"] == 60.0 and x["gold_accuracy"] == 1.0


MALFORMED = [
    ("export.csv", "", "export.csv:1: empty file"),
    ("export.csv", "  \n\n", "export.csv:1: empty file"),
    ("export.csv", "item_id,annotator_id,label\n", "export.csv: no annotations"),
    ("export.csv", "item_id,annotator,label\ni1,a,x\n", "export.csv:1: missing column 'annotator_id'"),
    ("export.csv", "item_id,annotator_id,label\ni1,a,x\n\ni1,b, \ni2,a,y\n", "export.csv:4: empty label"),
    ("export.csv", "item_id,annotator_id,label\ni1,a,x\n,b,y\n", "export.csv:3: empty item_id"),
    ("export.csv", "item_id,annotator_id,label\ni1,a,x\ni1,b,y,z\n", "export.csv:3: expected 3 fields, got 4"),
    ("export.csv", "item_id,annotator_id,label,ts\ni1,a,x,yesterday\n", "export.csv:2: bad ts 'yesterday'"),
    ("export.csv", "item_id,annotator_id,label,duration_ms\ni1,a,x,-5\n", "export.csv:2: bad duration_ms '-5'"),
    ("export.csv", "item_id,annotator_id,label,gold\ni1,a,x,x\ni1,b,x,y\n",
     "export.csv:3: gold for item 'i1' is 'y' here but 'x' on line 2"),
    ("export.jsonl", '{"item_id": 1, "annotator_id": "a", "label": "x"}\n\n{"item_id": 2, "annotator_id": "a", "label":\n',
     "export.jsonl:3: bad JSON"),
    ("export.jsonl", '{"item_id": 1, "annotator_id": "a", "label": "x"}\n{"item_id": 2, "annotator_id": "a"}\n',
     "export.jsonl:2: missing column 'label'"),
    ("export.jsonl", '{"item_id": 1, "annotator_id": "a", "label": "x"}\n["i2", "a", "x"]\n',
     "export.jsonl:2: expected a JSON object"),
    ("export.jsonl", '{"item_id": 1, "annotator_id": "a", "label": null}\n', "export.jsonl:1: empty label"),
    ("export.jsonl", '{"item_id": 1, "annotator_id": "a", "label": ["x"]}\n',
     "export.jsonl:1: label must be a string or a number"),
]


@pytest.mark.parametrize("name,text,message", MALFORMED)
def test_malformed_exports_name_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as err:
        run_cli(["agreement", str(tmp_path / name)])
    assert str(err.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_cli_gold_column_and_missing_file(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("item_id,annotator_id,label,truth\ni1,a,x,x\ni1,b,y,x\n")
    out = tmp_path / "r.json"
    run_cli(["agreement", str(path), "--gold-column", "truth", "--out", str(out)])
    assert json.loads(out.read_text())["per_annotator"]["b"]["gold_accuracy"] == 0.0
    with pytest.raises(ValueError, match="no column 'answer'"):
        run_cli(["agreement", str(path), "--gold-column", "answer"])
    with pytest.raises(ValueError, match="cannot read"):
        run_cli(["agreement", str(tmp_path / "missing.csv")])
