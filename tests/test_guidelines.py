"""Guideline versions: the markdown read, versions recorded, tasks and labels carrying them.

The wire format first (labels and tasks written before the ``guideline_version``
field still decode), then the labeling service in process and against the real
broker: a task is shown with the guideline of its label set and the version,
the label inherits it, a changed file is a new version, and the versions reach
ClickHouse through the audit log.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import codec
from streams import events

ROOT = Path(__file__).resolve().parent.parent


def old_event(schema_file: str, record: dict) -> bytes:
    """``record`` as a writer of the schema before ``guideline_version`` encoded it."""
    parsed = parse_schema(json.loads((ROOT / "schemas" / "history" / schema_file).read_text()))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    out = io.BytesIO(codec.MARKER + fp)
    out.seek(0, io.SEEK_END)
    schemaless_writer(out, parsed, record)
    return out.getvalue()


def test_labels_and_tasks_written_before_guideline_versions_still_decode():
    label = events.label(event_id="l1", task_id="t1", item_id="i1", label="a", annotator_id="ann", ts=5)
    old = {k: v for k, v in label.items() if k != "guideline_version"}
    data = old_event("label.1.avsc", old)
    assert data[2:10] != codec.fingerprint("Label"), "an earlier writer schema"
    assert codec.decode(data, ("Label",)) == ("Label", {**old, "guideline_version": ""})
    task = events.task(task_id="t1", event_id="e1", item_id="i1", created_ts=1, source_ts=1, kind="prediction",
                       reasons=["uncertain"], signals={}, selection_probability=0.5, priority=0.5, confidence=0.5,
                       label_set=["a", "b"], model_name="m", model_version="1", shadow_version=0, policy_version="p")
    old = {k: v for k, v in task.items() if k != "guideline_version"}
    assert codec.decode(old_event("labeling_task.1.avsc", old), ("LabelingTask",))[1] == task
    # and the current writer carries the version
    shown = {**label, "guideline_version": "2-5f1c0e9a7b3d"}
    assert codec.decode(codec.encode("Label", shown), ("Label",))[1] == shown


# --------------------------------------------------------------------------- the service, in process

SPAM = """# Spam or ham
Judge the message, not the sender.

## spam
Unsolicited selling.

### Examples
- WIN a free cruise, reply YES

## ham
Anything a person wrote to you.
"""
IRIS = """# Irises
Measure twice.

## setosa
Short petals.

### Examples
- petal length 1.4 cm

## versicolor
Middling petals.

## virginica
Long petals.
"""


@pytest.fixture
def book(tmp_path):
    """``(folder, store, client)``: two guidelines, tasks of both label sets, one annotator."""
    from fastapi.testclient import TestClient

    from consumers.labeling.api import create_app
    from consumers.labeling.guidelines import Guidebook
    from consumers.labeling.outbox import Outbox
    from consumers.labeling.store import Store
    from consumers.labeling.tokens import Tokens
    from tests.test_service import ANN, TOKENS, Sink, task

    folder = tmp_path / "guidelines"
    folder.mkdir()
    (folder / "spam.md").write_text(SPAM)
    (folder / "iris.md").write_text(IRIS)
    store, sink = Store(tmp_path / "q.sqlite3"), Sink()
    store.add_tasks([task(1, 0.9), task(2, 0.8, label_set=("setosa", "versicolor", "virginica")), task(3, 0.7),
                     task(4, 0.6)], {})
    client = TestClient(create_app(store, Outbox(store, sink), Tokens.parse(TOKENS), Guidebook(folder, store)),
                        base_url="http://localhost")
    client.headers["Authorization"] = f"Bearer {ANN}"
    return folder, store, client, sink


def test_a_task_is_shown_with_its_label_sets_guideline_and_the_label_inherits_the_version(book):
    from streams.labels.guidelines import parse

    folder, store, client, sink = book
    first = client.post("/api/tasks/next").json()
    assert first["guideline_title"] == "Spam or ham" and first["guideline"] == "Judge the message, not the sender."
    assert first["label_guidelines"] == {"ham": "Anything a person wrote to you.", "spam": "Unsolicited selling."}
    assert first["examples"] == {"spam": ["WIN a free cruise, reply YES"]}
    spam_v1 = first["guideline_version"]
    assert spam_v1 == f"1-{parse(SPAM).digest[:12]}"
    # the guideline changes while the task is held: the label keeps the version it was shown with
    (folder / "spam.md").write_text(SPAM.replace("Unsolicited selling.", "Unsolicited selling, or phishing."))
    client.post(f"/api/tasks/{first['task_id']}/label", json={"label": "spam"})
    assert sink.sent[-1]["guideline_version"] == spam_v1
    second = client.post("/api/tasks/next").json()
    assert second["guideline_title"] == "Irises" and second["examples"] == {"setosa": ["petal length 1.4 cm"]}
    assert second["guideline_version"].startswith("1-")
    client.post(f"/api/tasks/{second['task_id']}/label", json={"label": "setosa"})
    third = client.post("/api/tasks/next").json()
    assert third["guideline_version"].startswith("2-") and third["label_guidelines"]["spam"].endswith("phishing.")
    client.post(f"/api/tasks/{third['task_id']}/label", json={"label": "ham"})
    assert [l["guideline_version"][:2] for l in sink.sent] == ["1-", "1-", "2-"]
    # back to the first text: what annotators see changed again, so a third version
    (folder / "spam.md").write_text(SPAM)
    assert client.post("/api/tasks/next").json()["guideline_version"].startswith("3-")
    assert [s for s, _ in store.guideline_history("ham|spam")] == [1, 2, 3]
    recorded = [json.loads(e["detail"]) for _, e in store.unsent_audit() if e["action"] == "guideline"]
    assert [(r["label_set"], r["sequence"]) for r in recorded] == \
        [("setosa|versicolor|virginica", 1), ("ham|spam", 1), ("ham|spam", 2), ("ham|spam", 3)]
    assert recorded[-1]["content"] == parse(SPAM).content


def test_versions_survive_a_restart_of_the_service(book, tmp_path):
    from consumers.labeling.guidelines import Guidebook
    from consumers.labeling.store import Store

    folder, store, client, _ = book
    shown = client.post("/api/tasks/next").json()["guideline_version"]
    store.close()
    again = Store(tmp_path / "q.sqlite3")
    assert Guidebook(folder, again).for_labels(["spam", "ham"])[1] == shown, "unchanged text, same version"
    (folder / "spam.md").write_text(SPAM + "\nWhen unsure, flag it.\n")
    assert Guidebook(folder, again).for_labels(["spam", "ham"])[1].startswith("2-")


# --------------------------------------------------------------------------- the real broker and engine


@pytest.mark.kafka
def test_versions_and_labels_reach_clickhouse_and_agreement_splits_by_version(kafka, tmp_path, clickhouse_dsn):
    import uuid

    from consumers.labeling.service import LabelingService
    from consumers.labeling.tokens import Tokens
    from dashboards.connection import connect
    from dashboards.migrate import migrate
    from dashboards.sink import ClickHouseSink
    from feedbackloop import stack
    from streams.labels.agreement import AgreementTracker, agreement_rows
    from tests.test_service import ANN, BOB, TOKENS, call, produce, read, task, wait_for

    run = uuid.uuid4().hex[:8]
    folder = tmp_path / "guidelines"
    folder.mkdir()
    (folder / "spam.md").write_text(SPAM)
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}guide-{run}.", app_id=f"guide-{run}",
                             guidelines_path=str(folder))
    stack.ensure_topics(settings.kafka_config(), settings)
    produce(settings, [task(i, priority=1 - i / 10, overlap=2) for i in range(6)])
    service = LabelingService(settings, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 6, what="6 tasks queued")

        def both_label(n: int, ann_says, bob_says) -> None:
            for _ in range(n):
                for token, says in ((ANN, ann_says), (BOB, bob_says)):
                    status, t = call(service.url, "POST", "/api/tasks/next", token)
                    assert status == 200
                    assert call(service.url, "POST", f"/api/tasks/{t['task_id']}/label", token,
                                {"label": says(t)})[0] == 200

        both_label(3, lambda t: "spam", lambda t: "spam")            # version 1: they agree
        (folder / "spam.md").write_text(SPAM.replace("Unsolicited selling.", "Selling, or phishing."))
        both_label(3, lambda t: "spam", lambda t: "ham")             # version 2: they do not
        labels = read(settings, "labels", expect=12, timeout=20)
    finally:
        service.stop()
    versions = sorted({l["guideline_version"] for l in labels})
    assert [v[:2] for v in versions] == ["1-", "2-"]

    # the worker's sink: labels, and the audit log (whose guideline events migration 0017 copies)
    from confluent_kafka import Consumer
    consumer = Consumer({**settings.kafka_config(), "group.id": f"r-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("audit")])
    audit = []
    wait_for(lambda: audit.extend(codec.decode(m.value(), ("AuditEvent",))[1]
                                  for m in consumer.consume(100, timeout=0.3) if not m.error())
             or sum(e["action"] == "guideline" for e in audit) >= 2, what="guideline versions on the audit topic")
    consumer.close()
    db = connect(clickhouse_dsn)
    migrate(db)
    sink = ClickHouseSink(db)
    for e in audit:
        sink.add("audit_log", e)
    tracker = AgreementTracker()
    for l in labels:
        sink.add("labels", {**l, "reasons": ["uncertain"], "control": 0}, project=True)
        tracker.add(l["item_id"], l["annotator_id"], l["label"], ts_ms=l["ts"], guideline_version=l["guideline_version"])
    now = max(l["ts"] for l in labels) + 1
    for row in agreement_rows(tracker, now):
        sink.add("annotator_agreement", row)
    sink.flush()
    stored = db.query("SELECT sequence, version, title FROM guideline_versions FINAL ORDER BY sequence").result_rows
    assert [(s, v) for s, v, _ in stored] == [(1, versions[0]), (2, versions[1])] and stored[0][2] == "Spam or ham"
    by_version = dict(db.query("SELECT guideline_version, count() FROM labels FINAL GROUP BY guideline_version")
                      .result_rows)
    assert by_version == {versions[0]: 6, versions[1]: 6}
    split = dict(db.query("SELECT guideline_version, value FROM annotator_agreement FINAL "
                          "WHERE metric = 'percent_agreement' AND window_seconds = 0").result_rows)
    assert split == {"": 0.5, versions[0]: 1.0, versions[1]: 0.0}


@pytest.mark.kafka
def test_the_terminal_labelers_label_inherits_its_tasks_guideline_version(kafka, monkeypatch):
    import uuid

    from consumers import terminal
    from feedbackloop import stack
    from tests.test_service import produce, read, task

    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}term-{run}.", app_id=f"term-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    produce(settings, [task(1, guideline_version="4-0123456789ab"), task(2)])
    monkeypatch.setattr(terminal.ask, "__defaults__", (lambda prompt="": "2",))  # the annotator types 2
    assert terminal.label_tasks(settings, "ann", limit=2) == 0  # its exit status
    got = {l["task_id"]: (l["label"], l["guideline_version"]) for l in read(settings, "labels", expect=2)}
    assert got == {"t-1": ("spam", "4-0123456789ab"), "t-2": ("spam", "")}
