"""A multi-label CSV through the live loop: real Kafka, the worker process, the simulated
annotators and the real ClickHouse engine (``feedbackloop.demo.play``). A label column that joins
classes with ``|`` marks the run multi-label: the router's tasks on ``labeling.tasks`` take any
subset and suggest a set, the annotators answer sets, the worker's one-vs-rest learner learns the
settled sets and publishes versions, and ClickHouse holds the set labels, the settled sets and
the agreement ``feedbackloop agreement --multi-label`` measures on the run's labels."""

from __future__ import annotations

import csv
import json
import random

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer

from dashboards.connection import connect
from feedbackloop import cli, demo, export
from schemas import codec
from streams.labels.set_agreement import label_set

pytestmark = pytest.mark.kafka

CLASSES = ("a", "b", "c")


def write_csv(path, n: int = 400, seed: int = 0) -> None:
    """Three classes, each decided by one or two features: a one-vs-rest linear model learns them."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "z", "labels"])
        for _ in range(n):
            x, y, z = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
            chosen = [c for c, on in zip(CLASSES, (x > 0, y > -0.3, x + z > 0.5)) if on] or ["b"]
            w.writerow([round(x, 4), round(y, 4), round(z, 4), "|".join(chosen)])


def tasks_sent(settings, prefix: str) -> list[dict]:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"check-{prefix}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([prefix + "labeling.tasks"])
    out, idle = [], 0
    while idle < 5:
        batch = consumer.consume(500, timeout=1.0)
        idle = 0 if batch else idle + 1
        out.extend(codec.decode(m.value(), ("LabelingTask",), check=False)[1] for m in batch if not m.error())
    consumer.close()
    return out


def test_a_multi_label_csv_runs_through_the_live_loop(kafka, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the demo's worker keeps its local state
    data = tmp_path / "sets.csv"
    write_csv(data)
    settings = kafka.replace(state_dir=str(tmp_path / "demo"), budget_fraction=0.3, control_fraction=0.3,
                             publish_every=10, min_control=5, overlap=2, gold_rate=0.0)
    report = demo.play(settings, dataset=str(data), label_column="labels", events=400, rate=400.0, seed=2,
                       annotator_error=0.05, progress=False)
    assert report["predictions"] == 400 and report["dead_letters"] == 0, report

    # tasks went out multi-label, with the label set's classes and a suggested set
    tasks = [t for t in tasks_sent(kafka, report["topic_prefix"]) if not t["round"]]
    assert len(tasks) >= 60 and all(t["multi_label"] for t in tasks)
    # a prediction's task offers every class; an appeal that overtook the first predictions offers those seen
    assert all(set(t["label_set"]) == set(CLASSES) for t in tasks if t["kind"] == "prediction")
    assert all(set(t["label_set"]) <= set(CLASSES) for t in tasks)
    assert all(set(t["suggested_labels"]) == label_set(t["suggested_label"] or "") for t in tasks)

    # ClickHouse holds the annotators' sets and the sets the consensus settled
    client = connect(report["clickhouse_dsn"])
    labels = client.query("SELECT item_id, annotator_id, label FROM labels").result_rows
    assert len(labels) == 2 * report["tasks"] and any("|" in y for *_, y in labels)
    assert all(label_set(y) <= set(CLASSES) for *_, y in labels)
    settled = client.query("SELECT uniqExact(task_id) FROM consensus_labels WHERE method = 'set_vote'").result_rows
    assert settled[0][0] == report["tasks"] == report["multi_label"]["sets_settled"]

    # the run's labeled set exports with its sets, the same bytes twice (the CLI's own function:
    # this process holds the engine's data directory)
    first, again = (export.export(client, tmp_path / name) for name in ("a.parquet", "b.parquet"))
    assert first["content_hash"] == again["content_hash"] and again["recorded_before"]
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len(rows) == report["tasks"] and all(r["labels"] == sorted(label_set(r["label"])) for r in rows)
    assert all(len(r["annotator_label_sets"]) == 2 for r in rows)

    # the worker's learner learned the sets: versions published, and their control micro-F1 is high
    last = report["control_accuracy"][max(report["control_accuracy"], key=int)]
    assert report["model_versions"] >= 3 and last > 0.75, report["control_accuracy"]
    assert max(report["labels_seen"].values()) >= report["tasks"] - 10

    # agreement on the sets: two annotators at 5% error agree closely; the CLI finds the same alpha
    alpha = report["multi_label"]["krippendorff_alpha"]
    assert report["multi_label"]["items_labeled_twice"] >= 0.8 * report["tasks"] and 0.7 < alpha < 1.0
    out = tmp_path / "a.json"
    assert cli.main(["agreement", report["labels_csv"], "--multi-label", "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["krippendorff_alpha"] - alpha) < 1e-9
    # ... and the reference implementation agrees (each annotator's last answer on an item)
    from nltk.metrics.agreement import AnnotationTask
    from nltk.metrics.distance import masi_distance

    with open(report["labels_csv"], newline="") as f:
        answers = {(r["item_id"], r["annotator_id"]): label_set(r["label"]) for r in csv.DictReader(f)}
    masi = lambda a, b: masi_distance(a, b) if a or b else 0.0  # noqa: E731 (nltk divides by zero on two empty sets)
    reference = AnnotationTask(data=[(a, i, s) for (i, a), s in answers.items()], distance=masi).alpha()
    assert abs(reference - alpha) < 1e-6
