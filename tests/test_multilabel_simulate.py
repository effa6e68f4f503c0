"""``feedbackloop simulate`` on a multi-label CSV (labels joined by ``|``): the live loop built
multi-label, simulated annotators answering sets, compared with random on held-out micro-F1."""

import csv
import json
import random

from feedbackloop import cli


def write_csv(path, n=900, seed=0):
    """Three classes, each decided by a feature (c by two), any subset per row."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "z", "labels"])
        for _ in range(n):
            x, y, z = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
            chosen = [c for c, on in (("a", x > 0.3), ("b", y > -0.5), ("c", x + z > 1.0)) if on]
            w.writerow([x, y, z, "|".join(chosen)])


def run(tmp_path, *extra):
    data, out = tmp_path / "sets.csv", tmp_path / "out.json"
    write_csv(data)
    assert cli.main(["simulate", str(data), "--label-column", "labels", "--seeds", "2", "--budget", "200",
                     "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_simulate_runs_a_multi_label_csv_against_random(tmp_path, capsys):
    result = run(tmp_path)
    assert "micro-F1" in capsys.readouterr().out
    assert result["metric"] == "micro_f1" and result["classes"] == 3 and result["seeds"] == 2
    default, rand = result["strategies"]["default"], result["strategies"]["random"]
    assert default["labels_spent"] == [200, 200] and rand["labels_spent"] == [200, 200]
    # perfect annotators: every learned set is the truth, and 200 sets teach a linear model per class
    assert default["label_error_rate"] == [0.0, 0.0]
    assert 0.7 < default["worst_micro_f1"] <= result["all_labels_micro_f1"] + 0.1
    assert rand["worst_micro_f1"] > 0.7


def test_annotators_who_err_give_wrong_sets_and_overlap_settles_them(tmp_path):
    alone = run(tmp_path, "--annotator-error", "0.3")["strategies"]["default"]
    # one class flipped on 30% of answers: about 30% of the learned sets are wrong
    assert all(0.18 < e < 0.42 for e in alone["label_error_rate"])
    panel = run(tmp_path, "--annotator-error", "0.3", "--overlap", "3")["strategies"]["default"]
    # three answers settled class by class: a wrong set needs two annotators to flip the same class
    # (about 7% of items; on 66 items a seed, 5% and 21% were seen)
    assert sum(panel["label_error_rate"]) < 0.6 * sum(alone["label_error_rate"])
    assert panel["labels_spent"] == [198, 198]
