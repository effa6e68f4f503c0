"""``feedbackloop agreement FILE --multi-label``: a CSV of '|'-joined label sets, through the installed command."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nltk.metrics.agreement import AnnotationTask
from nltk.metrics.distance import masi_distance
from sklearn.metrics import cohen_kappa_score

from feedbackloop import agreement as cli
from streams.labels import set_agreement as sa

ROOT = Path(__file__).resolve().parents[1]


def write_export(path: Path, seed: int, n_items: int = 80, raters: int = 3, classes: int = 4) -> list[tuple]:
    """A label export with the chosen classes joined by '|' (order shuffled), a gold set on
    every fifth item, some cells missing; returns ``(item, rater, frozenset)``."""
    rng = np.random.default_rng(seed)
    names = [f"topic {k}" for k in range(classes)]  # a space inside a class name survives
    rows = []
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item_id", "annotator_id", "label", "gold"])
        for i in range(n_items):
            truth = rng.random(classes) < 0.35
            truth[rng.integers(classes)] = True
            gold = "|".join(n for n, t in zip(names, truth) if t) if i % 5 == 0 else ""
            for r in range(raters):
                if rng.random() < 0.15:
                    continue
                chosen = truth ^ (rng.random(classes) < 0.1 + 0.15 * r)
                if not chosen.any():
                    chosen[rng.integers(classes)] = True
                picked = [n for n, c in zip(names, chosen) if c]
                rng.shuffle(picked)
                out.writerow([f"item-{i}", f"ann-{r}", "|".join(picked), gold])
                rows.append((f"item-{i}", f"ann-{r}", frozenset(picked)))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_label_alpha_equals_nltk(tmp_path, seed):
    rows = write_export(tmp_path / "labels.csv", seed, raters=2 + seed)
    out = tmp_path / "a.json"
    parser = argparse.ArgumentParser(prog="feedbackloop")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["agreement", str(tmp_path / "labels.csv"), "--multi-label", "--out", str(out)])
    assert args.func(args) == 0
    rep = json.loads(out.read_text())
    expected = AnnotationTask([(r, i, s) for i, r, s in rows], distance=masi_distance).alpha()
    assert rep["krippendorff_alpha"] == pytest.approx(expected, abs=1e-6)
    assert rep["classes"] == [f"topic {k}" for k in range(4)]
    assert rep["n_annotations"] == len(rows) and rep["n_annotators"] == 2 + seed
    # per-class Cohen's kappa of the first two annotators, on the items both labeled
    if seed == 0:
        tab = sa.set_table(rows)
        both = [t for t in tab.values() if {"ann-0", "ann-1"} <= set(t)]
        for cls, figures in rep["per_class"].items():
            y0, y1 = [cls in t["ann-0"] for t in both], [cls in t["ann-1"] for t in both]
            assert figures["cohen_kappa"] == pytest.approx(cohen_kappa_score(y0, y1), abs=1e-9)
    # the careful annotator matches gold best
    gold = {a: row["gold_exact"] for a, row in rep["per_annotator"].items()}
    assert all(row["n_gold"] > 0 for row in rep["per_annotator"].values())
    assert gold["ann-0"] >= max(gold.values()) - 1e-12


def test_installed_command_writes_the_report(tmp_path):
    write_export(tmp_path / "labels.csv", seed=4)
    out = tmp_path / "a.json"
    done = subprocess.run([str(Path(sys.executable).parent / "feedbackloop"), "agreement",
                           str(tmp_path / "labels.csv"), "--multi-label", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    rep = json.loads(out.read_text())
    assert "MASI distance" in done.stdout and f"{rep['krippendorff_alpha']:.3f}" in done.stdout
    assert all(f"topic {k}" in done.stdout for k in range(4))
    assert set(rep["per_class"]["topic 0"]) == {"prevalence", "percent_agreement", "fleiss_kappa", "cohen_kappa"}


def test_without_the_flag_sets_are_plain_labels(tmp_path):
    """The single-label report sees 'a|b' and 'b|a' as different labels; --multi-label sees one set."""
    path = tmp_path / "labels.csv"
    path.write_text("item_id,annotator_id,label\ni1,x,a|b\ni1,y,b|a\ni2,x,a\ni2,y,b\n")
    rows, _ = cli.read_export(str(path))
    assert cli.report(rows)["percent_agreement"] == 0.0
    assert sa.report(rows)["exact_agreement"] == 0.5


def test_jsonl_lists_and_orderless_sets(tmp_path):
    """In JSONL a set may be a list; 'b|a' and ['a', 'b'] are the same answer, gold included."""
    lines = [{"item_id": 1, "annotator_id": "x", "label": ["b", "a"], "gold": "a|b"},
             {"item_id": 1, "annotator_id": "y", "label": "a|b", "gold": ["a", "b"]},
             {"item_id": 2, "annotator_id": "x", "label": ["a"]},
             {"item_id": 2, "annotator_id": "y", "label": []}]
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows, gold = cli.read_export(str(path), multi_label=True)
    assert [r.label for r in rows] == ["a|b", "a|b", "a", ""] and gold == {"1": "a|b"}
    rep = sa.report(rows, gold=gold)
    assert rep["exact_agreement"] == 0.5 and rep["per_annotator"]["y"]["gold_exact"] == 1.0
    # the empty answer is the empty set, at MASI distance 1 from {a}: by hand, observed 2 (item 2's
    # ordered pair), expected 2 * (2 * 1 * 2/3 + 2 * 1 * 1 + 1 * 1 * 1) = 26/3 over n = 4 answers
    assert rep["krippendorff_alpha"] == pytest.approx(1 - 3 * 2 / (26 / 3), abs=1e-12)
    with pytest.raises(ValueError, match="gold for item"):
        cli.parse_export("item_id,annotator_id,label,gold\ni1,x,a,a|b\ni1,y,a,a|c\n", "x.csv", multi_label=True)
