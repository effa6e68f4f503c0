"""Dataset versions of multi-label tasks, on the real ClickHouse engine: a multi-label stream
goes through the worker's own Loop (two annotators a task, sets settled class by class), its rows
through the real sink into chDB, and ``feedbackloop export`` runs as a process. Each row carries
the consensus set and every annotator's set as lists; exported again, the file is the same bytes,
and its hash is the one ``dataset_versions`` records."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consumers.annotators import SimulatedAnnotator
from dashboards.connection import connect
from dashboards.migrate import migrate
from dashboards.sink import ClickHouseSink
from feedbackloop import export
from streams.loop import Loop
from tests.test_export import export_cli

CLASSES = ("a", "b", "c", "d")
T0 = 1_700_000_000_000


def run_loop(dsn: str, n: int = 1500, seed: int = 0) -> dict:
    rng = random.Random(seed)
    loop = Loop.build(budget_fraction=0.15, budget_per_hour=0, budget_per_day=0, control_fraction=0.3,
                      min_control=10, model_kind="linear", publish_every=30, seed=seed, overlap=2,
                      multi_label=True)
    truth: dict[str, str] = {}
    annotators = [SimulatedAnnotator(f"ann-{i}", truth.get, error_rate=0.2, seed=seed + i) for i in range(2)]
    key = Ed25519PrivateKey.generate()
    client = connect(dsn)
    migrate(client)
    sink = ClickHouseSink(client)
    versions = []
    try:
        for i in range(n):
            x = {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)}
            chosen = [c for c, on in zip(CLASSES, (x["x"] > 0, x["y"] > 0, x["x"] + x["y"] > 1, x["x"] < -1)) if on]
            truth[f"i{i}"] = "|".join(chosen)
            proba = {c: rng.random() for c in CLASSES}
            event = {"event_id": f"e{i}", "item_id": f"i{i}", "ts": T0 + 100 * i, "model_name": "prod",
                     "model_version": "v1", "predicted_label": "|".join(c for c in CLASSES if proba[c] > 0.5),
                     "probabilities": proba, "features": x, "text": None, "context": {}}
            now = event["ts"] + 10
            effects = loop.score("Prediction", event, now)
            for candidate in effects.candidates:
                effects.extend(loop.route(candidate, now))
            for task in list(effects.tasks):
                effects.extend(loop.take("LabelingTask", task, now))
                for annotator in annotators:
                    answer = {**annotator.label(task, now + 5), "event_id": f"l{i}-{annotator.annotator_id}"}
                    effects.extend(loop.take("Label", answer, now + 6, offset=i))
                if loop.due:
                    published = loop.publish(now + 7, key)
                    versions.append(published.models[0]["version"])
                    effects.extend(published)
            for table, row in effects.rows:
                sink.add(table, row, project=True)
        sink.flush()
    finally:
        client.close()
    return {"truth": truth, "versions": versions}


def test_a_multi_label_export_carries_the_sets_and_is_byte_identical(tmp_path):
    dsn = "chdb://" + str(tmp_path / "ch")
    run = run_loop(dsn)
    assert len(run["versions"]) >= 4
    version = run["versions"][len(run["versions"]) // 2]
    first = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "a.parquet"))
    again = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "b.parquet"))
    data = (tmp_path / "a.parquet").read_bytes()
    assert data == (tmp_path / "b.parquet").read_bytes() and again["recorded_before"]
    assert first["content_hash"] == export.content_hash(data)
    client = connect(dsn)
    recorded = client.query("SELECT content_hash FROM dataset_versions WHERE version = {v:UInt32}",
                            parameters={"v": version}).result_rows
    client.close()  # one process owns the engine's data directory: the export process next
    assert {h for (h,) in recorded} == {first["content_hash"]}

    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.names == export.SET_SCHEMA.names
    rows = table.to_pylist()
    assert len(rows) == first["rows"] >= 50
    for r in rows:
        assert r["consensus_method"] == "set_vote" and r["labels"] == sorted(filter(None, r["label"].split("|")))
        sets = {a["annotator_id"]: a["labels"] for a in r["annotator_label_sets"]}
        assert sorted(sets) == ["ann-0", "ann-1"]
        assert sets == {a["annotator_id"]: sorted(filter(None, a["label"].split("|"))) for a in r["annotator_labels"]}
        # a class is in the consensus set only when both annotators chose it (a tie leaves it out)
        assert set(r["labels"]) == set(sets["ann-0"]) & set(sets["ann-1"])
    # the annotators err (one class flipped on 20% of answers); the consensus set is mostly the truth
    right = sum("|".join(r["labels"]) == run["truth"][r["item_id"]] for r in rows) / len(rows)
    assert 0.6 < right < 1.0
    # the whole labeled set now is a later, larger version
    now = export_cli(dsn, "--out", str(tmp_path / "now.parquet"))
    assert now["rows"] > first["rows"] and now["content_hash"] != first["content_hash"]
