"""Overlap, adjudication, gold checks and agreement metrics through a real worker."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer as KafkaProducer

from dashboards.sink import optimize
from feedbackloop import stack, worker
from dashboards.connection import connect
from feedbackloop.producer import Producer
from schemas import codec
from streams.labels.agreement import report
from tests.test_loop import read_all

pytestmark = pytest.mark.kafka


def test_disagreements_are_adjudicated_and_weak_annotators_flagged(kafka, tmp_path):
    run = uuid.uuid4().hex[:8]
    gold_path = tmp_path / "gold.jsonl"
    gold_path.write_text("".join(json.dumps({"item_id": f"gold-{j}", "label": "a", "features": {"x": 9.0}}) + "\n"
                                 for j in range(5)))
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}quality-{run}.", app_id=f"quality-{run}",
                             clickhouse_dsn="chdb://" + str(tmp_path / "clickhouse"), budget_fraction=0.5,
                             control_fraction=0.0, overlap=2, gold_path=str(gold_path), gold_rate=1.0,
                             min_control=0, publish_every=5)
    stack.ensure_topics(settings.kafka_config(), settings)
    process = worker.spawn(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(settings, process)
        with Producer(settings) as producer:
            for i in range(40):
                producer.prediction(f"item-{i}", {"a": 0.5, "b": 0.5}, "a", features={"x": float(i % 2)},
                                    event_id=f"p-{i}")
        assert worker.wait_drained(settings, process, timeout=60)
        tasks = [codec.decode(m.value(), ("LabelingTask",))[1] for m in read_all(settings, "labeling.tasks", 10)]
        real = [t for t in tasks if not t["item_id"].startswith("gold-")]
        gold = [t for t in tasks if t["item_id"].startswith("gold-")]
        assert real and gold and all(t["overlap"] == 2 for t in real)
        assert {t["reasons"][0] for t in gold} <= {"uncertain", "disagreement", "control"}  # disguised

        sent = []
        labels = KafkaProducer(settings.kafka_config())

        def send(task, annotator, value):
            record = {"event_id": f"{task['task_id']}-{annotator}", "task_id": task["task_id"],
                      "item_id": task["item_id"], "label": value, "annotator_id": annotator,
                      "ts": int(time.time() * 1000), "duration_ms": 2000}
            labels.produce(settings.topic("labels"), codec.encode("Label", record))
            model = None if task["item_id"].startswith("gold-") else task["suggested_label"]
            sent.append((task["item_id"], annotator, value, None, None, model))

        truth = lambda t: "a" if t["item_id"].startswith("gold-") or t["features"].get("x", 0) == 0 else "b"
        for t in real + gold:
            send(t, "good", truth(t))
            send(t, "careless", "b" if truth(t) == "a" else "a")  # always wrong
        labels.flush(10)
        assert worker.wait_drained(settings, process, timeout=60)
        reissued = [codec.decode(m.value(), ("LabelingTask",))[1]
                    for m in read_all(settings, "labeling.tasks", len(tasks) + 1)][len(tasks):]
        assert reissued and all(r["exclude_annotators"] == ["careless", "good"] and r["round"] == 1
                                for r in reissued)
        for r in reissued:
            send(r, "third", truth(r))
        labels.flush(10)
        assert worker.wait_drained(settings, process, timeout=60)
    finally:
        worker.stop(process)

    client = connect(settings.clickhouse_dsn)
    try:
        optimize(client)
        rows = lambda sql: client.query(sql).result_rows
        adjudicated = rows("SELECT uniqExact(task_id) FROM adjudications")[0][0]
        assert adjudicated == len(reissued)
        settled = dict(rows("SELECT task_id, argMax(label, ts) FROM consensus_labels GROUP BY task_id"))
        assert len(settled) == len({r["task_id"] for r in reissued})
        assert all(settled[r["task_id"]] == truth(r) for r in reissued)
        flagged = dict(rows("SELECT annotator_id, argMax(flagged, ts) FROM annotator_quality GROUP BY annotator_id"))
        assert flagged["careless"] == 1 and flagged["good"] == 0
        model = dict(rows("SELECT annotator_id, argMax(model_agreement, ts) FROM annotator_quality "
                          "GROUP BY annotator_id"))
        for annotator, figures in report(sent)["per_annotator"].items():  # model against annotator
            assert model[annotator] == pytest.approx(figures["model_agreement"])
        assert {w for (w,) in rows("SELECT DISTINCT window_seconds FROM annotator_agreement")} == {0, 3600, 86400}
        stored = dict(rows("SELECT metric, argMax(value, window_start) FROM annotator_agreement "
                           "WHERE annotator_a = '*' AND window_seconds = 0 GROUP BY metric"))
        expected = report(sent)
        for metric in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha"):
            assert stored[metric] == pytest.approx(expected[metric])
        pairs = {(a, b): v for a, b, v in rows(
            "SELECT annotator_a, annotator_b, argMax(value, window_start) FROM annotator_agreement "
            "WHERE metric = 'cohen_kappa' AND window_seconds = 0 GROUP BY annotator_a, annotator_b")}
        for pair in expected["cohen_kappa"]:
            got = pairs[(pair["a"], pair["b"])]
            assert (got is None and pair["kappa"] is None) or got == pytest.approx(pair["kappa"])
    finally:
        client.close()
