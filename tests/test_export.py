"""Dataset versions: the labeled set exported as of a model version, on the real ClickHouse engine.

A stream with a known truth goes through the worker's own :class:`~streams.loop.Loop`
(score, route, label, learn, publish) and its rows through the real sink into
chDB; ``feedbackloop export`` then runs as a process, as a user runs it. The
stream's classes are imbalanced and the production model is least sure of the
rare class, so the policy over-samples it: the plain label counts are biased,
and weighting each row by ``1 / selection_probability`` must recover the
stream's class balance within sampling error.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dashboards.connection import connect
from dashboards.migrate import migrate
from dashboards.sink import ClickHouseSink
from feedbackloop import export
from streams.evaluation.production import weighted_proportion
from streams.loop import Loop

CLASSES = ("a", "b", "c")
SHARES = (0.6, 0.3, 0.1)
#: how often the production model is right, per true class: worst on the rare one
RIGHT = {"a": 0.9, "b": 0.7, "c": 0.35}
T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parent.parent


def stream(n: int, seed: int):
    """Prediction events with their true class (imbalanced), and whether the production model was right."""
    rng = random.Random(seed)
    for i in range(n):
        truth = rng.choices(CLASSES, SHARES)[0]
        right = rng.random() < RIGHT[truth]
        said = truth if right else rng.choice([c for c in CLASSES if c != truth])
        top = 0.9 if truth == "a" else 0.6 if truth == "b" else 0.4  # unsure of what it gets wrong
        probabilities = {c: (top if c == said else (1 - top) / 2) for c in CLASSES}
        centre = CLASSES.index(truth)
        yield truth, right, {
            "event_id": f"e{seed}-{i}", "item_id": f"i{seed}-{i}", "ts": T0 + 100 * i, "model_name": "prod",
            "model_version": "v1" if i < n // 2 else "v2", "predicted_label": said, "probabilities": probabilities,
            "features": {"x": centre + rng.gauss(0, 0.3), "y": rng.gauss(0, 1)}, "text": f"item {i} of {truth}",
            "context": {}}


def run_loop(dsn: str, n: int = 4000, seed: int = 0) -> dict:
    """The stream through a Loop, its rows through the sink; the truth and what the loop sent."""
    loop = Loop.build(budget_fraction=0.12, budget_per_hour=0, budget_per_day=0, control_fraction=0.25,
                      min_control=20, model_kind="linear", publish_every=40, seed=seed,
                      milestones={"every_labels": 100, "accuracy_gain": 0.0, "on_drift": False, "on_stop": False})
    key = Ed25519PrivateKey.generate()
    client = connect(dsn)
    migrate(client)
    sink = ClickHouseSink(client)
    truths, right, retraining, versions = [], [], [], []
    try:
        for i, (truth, ok, event) in enumerate(stream(n, seed)):
            now = event["ts"] + 10
            truths.append(truth)
            right.append(ok)
            effects = loop.score("Prediction", event, now)
            for candidate in effects.candidates:
                effects.extend(loop.route(candidate, now))
            for task in list(effects.tasks):
                effects.extend(loop.take("LabelingTask", task, now))
                effects.extend(loop.take("Label", {
                    "event_id": f"l-{task['task_id']}", "task_id": task["task_id"], "item_id": task["item_id"],
                    "label": event_truth(task, truths, seed), "annotator_id": "ann-1", "ts": now + 5,
                    "duration_ms": 900, "note": None, "tier": "annotator",
                    "guideline_version": "2" if i % 2 == 0 else ""}, now + 6, offset=i))
                if loop.due:
                    published = loop.publish(now + 7, key)
                    versions.append(published.models[0]["version"])
                    effects.extend(published)
            for table, row in effects.rows:
                sink.add(table, row, project=True)
            retraining.extend(effects.retraining)
            if i % 500 == 0:
                sink.flush()
        sink.flush()
    finally:
        client.close()
    return {"truths": truths, "right": right, "retraining": retraining, "versions": versions}


def event_truth(task: dict, truths: list[str], seed: int) -> str:
    """The true class of a task's item (a perfect annotator)."""
    return truths[int(task["item_id"].rsplit("-", 1)[1])]


def export_cli(dsn: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "feedbackloop", "export", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"CLICKHOUSE_DSN": dsn, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    dsn = "chdb://" + str(tmp_path_factory.mktemp("export") / "ch")
    return dsn, run_loop(dsn)


def test_an_export_is_byte_identical_and_recorded_with_its_hash(labeled, tmp_path):
    dsn, run = labeled
    version = run["versions"][len(run["versions"]) // 2]
    first = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "a.parquet"))
    again = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "b.parquet"))
    data = (tmp_path / "a.parquet").read_bytes()
    assert data == (tmp_path / "b.parquet").read_bytes()
    assert first["content_hash"] == again["content_hash"] == export.content_hash(data)
    assert (first["recorded_before"], again["recorded_before"]) == (False, True)
    newest = export_cli(dsn, "--out", str(tmp_path / "now.parquet"))  # every label now: more rows
    assert newest["version"] == 0 and newest["rows"] > first["rows"] > 0
    client = connect(dsn)
    try:
        recorded = client.query("SELECT version, content_hash, rows, label_counts FROM dataset_versions FINAL "
                                "ORDER BY version, content_hash").result_rows
        # only what version N had learned (and its control labels): consensus settled before N was published
        settled = client.query("SELECT uniqExact(task_id) FROM consensus_labels WHERE learned_by_version < {v:UInt32}",
                               parameters={"v": version}).result_rows[0][0]
    finally:
        client.close()
    assert sorted(recorded) == sorted([(version, first["content_hash"], first["rows"], first["label_counts"]),
                                       (0, newest["content_hash"], newest["rows"], newest["label_counts"])])
    assert first["rows"] == settled


def test_rows_carry_what_a_trainer_needs(labeled, tmp_path):
    dsn, run = labeled
    export_cli(dsn, "--out", str(tmp_path / "now.parquet"))
    table = pq.read_table(tmp_path / "now.parquet")
    assert table.schema.equals(export.SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    truths = run["truths"]
    assert [r["task_id"] for r in rows] == sorted(r["task_id"] for r in rows)
    for r in rows:
        i = int(r["item_id"].rsplit("-", 1)[1])
        assert r["label"] == truths[i] and r["text"] == f"item {i} of {truths[i]}"
        assert r["annotator_labels"] == [{"annotator_id": "ann-1", "label": truths[i], "tier": "annotator"}]
        assert 0 < r["selection_probability"] <= 1 and r["weight"] == pytest.approx(1 / r["selection_probability"])
        assert {k for k, _ in r["features"]} == {"x", "y"} and r["model_name"] == "prod"
        assert r["control"] == ("control" in r["reasons"]) and r["reasons"]
        assert r["guideline_version"] == ("2" if i % 2 == 0 else None)  # the labels' version; empty: not known
    assert {r["model_version"] for r in rows} == {"v1", "v2"}


def test_weighting_by_the_inverse_selection_probability_recovers_the_stream_class_balance(labeled, tmp_path):
    dsn, run = labeled
    recorded = export_cli(dsn, "--out", str(tmp_path / "now.parquet"))
    rows = pq.read_table(tmp_path / "now.parquet").to_pylist()
    assert {r["kind"] for r in rows} == {"prediction"}
    stream_share = Counter(run["truths"])
    plain = Counter(r["label"] for r in rows)
    for c in CLASSES:
        truth = stream_share[c] / len(run["truths"])
        e = weighted_proportion([r["label"] == c for r in rows], [r["selection_probability"] for r in rows])
        se = (e["ci_high"] - e["ci_low"]) / (2 * 1.96)
        assert abs(e["value"] - truth) < 3 * se + 0.01, (c, e, truth)
        assert recorded["weighted_label_shares"][c] == pytest.approx(e["value"])  # as dataset_versions has it
    # the policy chose the rare, doubtful class far above its share: unweighted counts would mislead
    assert plain["c"] / len(rows) > 1.5 * stream_share["c"] / len(run["truths"])


def test_the_production_model_is_estimated_per_release(labeled):
    dsn, run = labeled
    n = len(run["truths"])
    true_accuracy = {"v1": sum(run["right"][: n // 2]) / (n // 2), "v2": sum(run["right"][n // 2:]) / (n - n // 2)}
    client = connect(dsn)
    try:
        newest = client.query("""
            SELECT model_version, estimator, argMax(value, (version, ts)), argMax(ci_low, (version, ts)),
                   argMax(ci_high, (version, ts)), argMax(n, (version, ts))
            FROM production_accuracy FINAL WHERE metric = 'accuracy'
            GROUP BY model_version, estimator ORDER BY model_version, estimator""").result_rows
        classes = client.query("SELECT DISTINCT class FROM production_accuracy WHERE metric = 'recall'").result_rows
    finally:
        client.close()
    assert {(r[0], r[1]) for r in newest} == {(v, e) for v in ("v1", "v2") for e in ("control", "weighted")}
    for model_version, estimator, value, low, high, count in newest:
        assert low <= true_accuracy[model_version] <= high, (model_version, estimator, value, low, high)
        assert count > 0 and not math.isnan(value)
    assert sorted(c for (c,) in classes) == list(CLASSES)


def test_retraining_events_name_a_published_version(labeled, tmp_path):
    dsn, run = labeled
    events = run["retraining"]
    assert events and all(e["reasons"] == ["labels"] and e["new_labels"] >= 100 for e in events)
    assert {e["dataset_version"] for e in events} <= set(run["versions"])
    assert len({e["event_id"] for e in events}) == len(events)
    last = events[-1]
    out = export_cli(dsn, "--version", str(last["dataset_version"]), "--out", str(tmp_path / "train.parquet"))
    assert out["rows"] > 0


def test_a_version_never_published_is_refused(labeled, tmp_path):
    dsn, _ = labeled
    done = subprocess.run([sys.executable, "-m", "feedbackloop", "export", "--version", "9999", "--out",
                           str(tmp_path / "x.parquet")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"CLICKHOUSE_DSN": dsn, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "no published version 9999" in done.stderr
    assert not (tmp_path / "x.parquet").exists()


# -- through a real worker and broker ------------------------------------------------------

@pytest.mark.kafka
def test_a_worker_announces_retraining_and_its_dataset_version_exports_byte_for_byte(kafka, tmp_path):
    """Predictions in, tasks out, labels back: the worker publishes versions, sends a Retraining
    event naming one, and that version exports to the same bytes twice, recorded with its hash."""
    import time
    import uuid

    from confluent_kafka import Consumer, Producer as KafkaProducer

    from feedbackloop import stack, worker
    from feedbackloop.producer import Producer
    from schemas import codec

    run = uuid.uuid4().hex[:8]
    dsn = "chdb://" + str(tmp_path / "clickhouse")
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}export-{run}.", app_id=f"export-{run}",
                             clickhouse_dsn=dsn, budget_fraction=0.3, control_fraction=0.3, publish_every=5,
                             min_control=2, model_kind="knn", retrain_every_labels=10, retrain_accuracy_gain=0.0,
                             retrain_on_drift=0, retrain_on_stop=0)
    stack.ensure_topics(settings.kafka_config(), settings)
    truth = {}

    def read(topic: str, expect: int, timeout: float = 60.0) -> list:
        consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([settings.topic(topic)])
        messages, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and len(messages) < expect:
                messages.extend(m for m in consumer.consume(500, timeout=0.5) if not m.error())
            messages.extend(m for m in consumer.consume(500, timeout=1.0) if not m.error())
        finally:
            consumer.close()
        assert len(messages) >= expect, f"{len(messages)} of {expect} messages on {topic}"
        return messages

    process = worker.spawn(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(settings, process)
        rng = random.Random(3)
        with Producer(settings, batch_size=50) as producer:
            for i in range(400):
                label = rng.choices(CLASSES, SHARES)[0]
                truth[f"item-{i}"] = label
                said = label if rng.random() < RIGHT[label] else rng.choice([c for c in CLASSES if c != label])
                top = 0.9 if label == "a" else 0.5
                producer.prediction(f"item-{i}", {c: (top if c == said else (1 - top) / 2) for c in CLASSES},
                                    features={"x": CLASSES.index(label) + rng.gauss(0, 0.3)}, text=f"text {i}",
                                    event_id=f"p-{i}", model_name="prod", model_version="7")
        assert worker.wait_drained(settings, process, timeout=90)
        tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read("labeling.tasks", expect=30)]
        labels = KafkaProducer(settings.kafka_config())
        for t in tasks:
            labels.produce(settings.topic("labels"), codec.encode("Label", {
                "event_id": f"l-{t['task_id']}", "task_id": t["task_id"], "item_id": t["item_id"],
                "label": truth[t["item_id"]], "annotator_id": "tester", "ts": int(time.time() * 1000),
                "duration_ms": 1000}), key=t["task_id"].encode())
        labels.flush(10)
        assert worker.wait_drained(settings, process, timeout=60)
        versions = [codec.decode(m.value(), ("ModelVersion",))[1]["version"] for m in read("models", expect=2)]
        events = [codec.decode(m.value(), ("Retraining",))[1] for m in read("retraining", expect=1)]
    finally:
        worker.stop(process)
        print((tmp_path / "worker.log").read_text()[-3000:])

    assert all("labels" in e["reasons"] and e["new_labels"] >= 10 for e in events)
    assert {e["dataset_version"] for e in events} <= set(versions)
    version = events[-1]["dataset_version"]
    first = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "a.parquet"))
    again = export_cli(dsn, "--version", str(version), "--out", str(tmp_path / "b.parquet"))
    data = (tmp_path / "a.parquet").read_bytes()
    assert data == (tmp_path / "b.parquet").read_bytes() and first["content_hash"] == export.content_hash(data)
    assert again["recorded_before"] and first["rows"] > 0
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    for r in rows:  # the task's features and text reached ClickHouse through the worker's sink
        assert r["label"] == truth[r["item_id"]] and r["text"] == f"text {r['item_id'].split('-')[1]}"
        assert [k for k, _ in r["features"]] == ["x"] and 0 < r["selection_probability"] <= 1
    client = connect(dsn)
    try:
        assert client.query("SELECT content_hash FROM dataset_versions FINAL WHERE version = {v:UInt32}",
                            parameters={"v": version}).result_rows == [(first["content_hash"],)]
        estimated = client.query("SELECT DISTINCT model_version, estimator FROM production_accuracy "
                                 "WHERE metric = 'accuracy' AND value IS NOT NULL").result_rows
    finally:
        client.close()
    assert sorted(estimated) == [("7", "control"), ("7", "weighted")]
