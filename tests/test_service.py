"""The labeling service: its API in process, then against a real broker.

In process, labels leave through a list instead of Kafka, so every rule of the
API is checked quickly: tokens and roles, leases and their timeout, priority
order, skip, flag and review, bad requests that write nothing, a double submit
that counts once, a label Kafka did not confirm. Against the real broker: tasks
in from ``labeling.tasks``, labels out on ``labels``, re-ranking when a model
version arrives, a bad message to ``deadletter``, and a service killed with
SIGKILL (twice) that loses no task and no label.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from consumers.labeling.api import UI, create_app
from consumers.labeling.outbox import DeliveryError, Outbox
from consumers.labeling.service import LabelingService
from consumers.labeling.store import Store, event_id
from consumers.labeling.tokens import Tokens
from feedbackloop import keys, stack
from schemas import codec
from streams.learning.learner import Learner

ROOT = Path(__file__).resolve().parent.parent
#: Each test annotator's token: a readable name, then 256 random bits.
TOKEN = {who: f"{who}-{secrets.token_urlsafe(32)}" for who in ("ann", "bob", "rev", "adm", "cat")}
ANN, BOB, REV, ADM = (TOKEN[who] for who in ("ann", "bob", "rev", "adm"))
TOKENS = f"{ANN}:ann:annotator,{BOB}:bob:annotator,{REV}:rev:reviewer,{ADM}:adm:admin"


def task(i: int, priority: float = 0.5, reasons=("uncertain",), label_set=("ham", "spam"), **extra) -> dict:
    """A LabelingTask record."""
    return {"task_id": f"t-{i}", "event_id": f"e-{i}", "item_id": f"item-{i}", "created_ts": 1, "source_ts": 1,
            "kind": "prediction", "reasons": list(reasons), "signals": {"margin": 0.04, "uncertainty": 0.96},
            "selection_probability": 0.3, "priority": priority, "suggested_label": label_set[0],
            "confidence": 0.52, "label_set": list(label_set), "features": {"x": float(i), "y": 1.5},
            "text": None, "predicted_label": label_set[0], "user_label": None, "note": None,
            "model_name": "prod", "model_version": "7", "shadow_version": 0, "policy_version": "p", "context": {},
            **extra}


class Sink:
    """Stands in for Kafka: keeps what is sent, or fails while ``down``."""

    def __init__(self):
        self.sent: list[dict] = []
        self.down = False

    def __call__(self, records):
        if self.down:
            raise DeliveryError("broker unreachable")
        self.sent.extend(records)


@pytest.fixture
def local(tmp_path):
    """``(client factory, store, sink)`` over an app with a file-backed store and four tasks."""
    store, sink = Store(tmp_path / "queue.sqlite3"), Sink()
    store.add_tasks([task(1, 0.2), task(2, 0.9), task(3, 0.5, label_set=("cat", "dog", "fox")),
                     task(4, 0.1, reasons=("override",), user_label="spam")], {("labeling.tasks", 0): 3})
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS),
                     {"text": "Spam sells something.", "labels": {"spam": "unsolicited selling"}}, lease_seconds=60)

    def client(token: str | None = ANN) -> TestClient:
        c = TestClient(app, base_url="http://localhost")
        if token:
            c.headers["Authorization"] = f"Bearer {token}"
        return c

    yield client, store, sink
    store.close()


# --------------------------------------------------------------------------- in process


def test_tokens_and_roles_are_enforced(local):
    client, store, _ = local
    bare = client(None)
    r = bare.post("/api/tasks/next")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    assert client("not-a-token").post("/api/tasks/next").status_code == 401
    assert client(ANN).get("/api/review/flagged").status_code == 403
    assert "reviewer" in client(ANN).get("/api/review/flagged").json()["detail"]
    assert client(REV).get("/api/review/flagged").status_code == 200
    assert client(REV).get("/api/admin/stats").status_code == 403
    assert client(ADM).get("/api/admin/stats").status_code == 200
    assert client(ANN).post("/api/admin/tasks/t-1/requeue", json={}).status_code == 403
    assert bare.get("/healthz").status_code == 200
    assert store.counts()["leased"] == 0, "refused requests lease nothing"


def test_next_follows_priority_and_explains_why(local):
    client, _, _ = local
    first = client(ANN).post("/api/tasks/next").json()
    assert first["task_id"] == "t-2"
    assert first["why"] == ["the model is unsure: 52% for 'ham', margin 4 points"]
    assert first["guideline"] == "Spam sells something."
    assert first["label_guidelines"] == {"spam": "unsolicited selling"}
    assert first["features"] == {"x": 2.0, "y": 1.5} and first["state"] == "leased"
    again = client(ANN).post("/api/tasks/next").json()
    assert again["task_id"] == "t-2", "holding a lease gets the same task"
    assert [client(t).post("/api/tasks/next").json()["task_id"] for t in (BOB, REV)] \
        == ["t-3", "t-1"]
    last = client(ADM).post("/api/tasks/next").json()
    assert last["why"] == ["a user overrode the model: it said 'ham', the user chose 'spam'"]
    assert client(ADM).post("/api/tasks/next").json()["task_id"] == "t-4"
    r = client(ANN).post("/api/tasks/next")
    assert r.status_code == 200 and r.json()["task_id"] == "t-2"


def test_label_goes_out_with_annotator_duration_and_note_once(local):
    client, store, sink = local
    ann = client(ANN)
    leased = ann.post("/api/tasks/next").json()
    time.sleep(0.05)
    r = ann.post(f"/api/tasks/{leased['task_id']}/label", json={"label": "spam", "note": "sells pills"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["duplicate"] is False and out["event_id"] == event_id("t-2", "ann")
    assert len(sink.sent) == 1
    label = sink.sent[0]
    assert (label["task_id"], label["item_id"], label["label"], label["annotator_id"], label["note"]) == \
        ("t-2", "item-2", "spam", "ann", "sells pills")
    assert label["duration_ms"] >= 50
    codec.encode("Label", label)  # a valid Label record

    twice = ann.post("/api/tasks/t-2/label", json={"label": "spam", "note": "sells pills"})
    assert twice.status_code == 200 and twice.json()["duplicate"] is True
    assert twice.json()["event_id"] == out["event_id"]
    assert len(sink.sent) == 1, "a label submitted twice is sent once"
    assert store.counts()["labeled"] == 1
    assert ann.post("/api/tasks/next").json()["task_id"] == "t-3", "a labeled task is not offered again"
    me = ann.get("/api/me").json()
    assert (me["annotator_id"], me["role"], me["labels"], me["labels_last_hour"]) == ("ann", "annotator", 1, 1)
    assert me["median_seconds"] is not None


def test_bad_requests_get_a_clear_4xx_and_write_nothing(local):
    client, store, sink = local
    ann = client(ANN)
    ann.post("/api/tasks/next")  # t-2 leased to ann
    before = store.counts()

    r = ann.post("/api/tasks/nope/label", json={"label": "spam"})
    assert r.status_code == 404 and r.json()["detail"] == "no task 'nope'"
    r = ann.post("/api/tasks/t-2/label", json={"label": "eggs"})
    assert r.status_code == 422 and "'eggs' is not in the task's label set" in r.json()["detail"][0]["msg"]
    r = ann.post("/api/tasks/t-2/label", json={"label": "spam", "note": "x" * 2001})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "note"]
    assert ann.post("/api/tasks/t-2/label", json={}).status_code == 422
    assert ann.post("/api/tasks/t-2/label", content=b"{not json", headers={"Content-Type": "application/json"}
                    ).status_code == 422
    assert ann.post("/api/tasks/t-2/flag", json={"note": ""}).status_code == 422
    r = ann.post("/api/tasks/t-3/label", json={"label": "cat"})
    assert r.status_code == 409 and "not leased to you" in r.json()["detail"]
    assert client(BOB).post("/api/tasks/t-2/skip").status_code == 409
    assert ann.post("/api/tasks/nope/skip").status_code == 404

    assert store.counts() == before and sink.sent == [] and store.unsent() == []
    assert store.task("t-2")["state"] == "leased" and store.task("t-2")["owner"] == "ann"


def test_lease_timeout_returns_the_task_to_the_queue(tmp_path):
    store, sink = Store(tmp_path / "q.sqlite3"), Sink()
    store.add_tasks([task(1)], {})
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS), lease_seconds=0.3)
    ann, bob = TestClient(app, base_url="http://localhost"), TestClient(app, base_url="http://localhost")
    ann.headers["Authorization"], bob.headers["Authorization"] = f"Bearer {ANN}", f"Bearer {BOB}"
    assert ann.post("/api/tasks/next").json()["task_id"] == "t-1"
    assert bob.post("/api/tasks/next").status_code == 204, "leased tasks are not handed out twice"
    time.sleep(0.4)
    assert bob.post("/api/tasks/next").json()["task_id"] == "t-1", "the timed-out lease went back to the queue"
    r = ann.post("/api/tasks/t-1/label", json={"label": "ham"})
    assert r.status_code == 409 and sink.sent == []
    assert bob.post("/api/tasks/t-1/label", json={"label": "ham"}).status_code == 200
    assert [s["annotator_id"] for s in sink.sent] == ["bob"]


def test_late_label_is_taken_when_nobody_else_took_the_task(tmp_path):
    store, sink = Store(tmp_path / "q.sqlite3"), Sink()
    store.add_tasks([task(1)], {})
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS), lease_seconds=0.1)
    ann = TestClient(app, base_url="http://localhost")
    ann.headers["Authorization"] = f"Bearer {ANN}"
    ann.post("/api/tasks/next")
    time.sleep(0.2)
    assert store.counts()["pending"] == 1
    assert ann.post("/api/tasks/t-1/label", json={"label": "spam"}).status_code == 200
    assert store.counts()["labeled"] == 1


def test_skip_offers_the_task_to_others_only(local):
    client, store, _ = local
    ann, bob = client(ANN), client(BOB)
    assert ann.post("/api/tasks/next").json()["task_id"] == "t-2"
    assert ann.post("/api/tasks/t-2/skip").json() == {"task_id": "t-2", "state": "pending"}
    assert ann.post("/api/tasks/next").json()["task_id"] == "t-3"
    assert bob.post("/api/tasks/next").json()["task_id"] == "t-2"
    assert ann.get("/api/me").json()["skips"] == 1


def test_overlap_adjudication_rounds_and_tiers(tmp_path):
    """A task wanting two labels gets them from two annotators; the adjudication
    round the trainer sends back (same task id, next round, the disagreeing
    annotators barred, the reviewer tier) reopens it for a reviewer alone."""
    store, sink = Store(tmp_path / "queue.sqlite3"), Sink()
    store.add_tasks([task(1, 0.9, overlap=2)], {("labeling.tasks", 0): 0})
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS + f",{TOKEN['cat']}:cat:annotator"), {})
    c = {who: TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {TOKEN[who]}"})
         for who in ("ann", "bob", "cat", "rev")}
    for who, answer in (("ann", "ham"), ("bob", "spam")):
        assert c[who].post("/api/tasks/next").json()["task_id"] == "t-1"
        assert c[who].post("/api/tasks/t-1/label", json={"label": answer}).status_code == 200
        assert c[who].post("/api/tasks/next").status_code == 204, "nobody labels a task twice"
    assert store.task("t-1")["state"] == "labeled" and [l["label"] for l in sink.sent] == ["ham", "spam"]

    adjudication = task(1, 0.9, overlap=1, round=1, tier="reviewer", exclude_annotators=["ann", "bob"])
    assert store.add_tasks([adjudication], {("labeling.tasks", 0): 1}) == 1
    assert store.add_tasks([adjudication], {("labeling.tasks", 0): 1}) == 0, "a round is taken once"
    assert all(c[who].post("/api/tasks/next").status_code == 204 for who in ("ann", "bob", "cat"))
    assert c["rev"].post("/api/tasks/next").json()["task_id"] == "t-1"
    assert c["rev"].post("/api/tasks/t-1/label", json={"label": "spam"}).status_code == 200
    assert store.task("t-1")["state"] == "labeled"
    assert [(l["annotator_id"], l["tier"]) for l in sink.sent] == [("ann", "annotator"), ("bob", "annotator"),
                                                                   ("rev", "reviewer")]
    store.close()


def test_flag_review_and_resolve(local):
    client, store, sink = local
    ann, rev = client(ANN), client(REV)
    ann.post("/api/tasks/next")
    r = ann.post("/api/tasks/t-2/flag", json={"note": "a newsletter the user signed up for?"})
    assert r.json() == {"task_id": "t-2", "state": "flagged"}
    assert ann.post("/api/tasks/next").json()["task_id"] == "t-3", "flagged tasks leave the queue"
    assert client(BOB).post("/api/tasks/next").json()["task_id"] == "t-1"

    flagged = rev.get("/api/review/flagged").json()
    assert [t["task_id"] for t in flagged] == ["t-2"]
    assert flagged[0]["notes"][0]["note"] == "a newsletter the user signed up for?"
    assert rev.post("/api/review/t-3/label", json={"label": "cat"}).status_code == 409, "t-3 is not flagged"
    r = rev.post("/api/review/t-2/label", json={"label": "ham", "note": "opted in"})
    assert r.status_code == 200
    assert (sink.sent[-1]["annotator_id"], sink.sent[-1]["label"], sink.sent[-1]["note"]) == ("rev", "ham", "opted in")
    assert rev.get("/api/review/flagged").json() == []

    # the other way out: back to the queue, with the reviewer's note for the next annotator
    ann.post("/api/tasks/t-3/flag", json={"note": "fox or dog?"})
    assert rev.post("/api/review/t-3/requeue", json={"note": "ears decide: pointed is fox"}).status_code == 200
    again = client(ADM).post("/api/tasks/next").json()
    assert again["task_id"] == "t-3"
    assert [n["note"] for n in again["notes"]] == ["fox or dog?", "ears decide: pointed is fox"]


def test_admin_sees_figures_and_requeues(local):
    client, store, _ = local
    ann, adm = client(ANN), client(ADM)
    ann.post("/api/tasks/next")
    ann.post("/api/tasks/t-2/label", json={"label": "ham"})
    ann.post("/api/tasks/next")  # t-3 leased
    stats = adm.get("/api/admin/stats").json()
    assert stats["queue"] == {"pending": 2, "leased": 1, "flagged": 0, "labeled": 1, "unsent_labels": 0,
                              "model_version": 0}
    assert [(a["annotator_id"], a["labels"]) for a in stats["annotators"]] == [("ann", 1)]
    assert adm.post("/api/admin/tasks/t-3/requeue", json={}).status_code == 200
    assert client(BOB).post("/api/tasks/next").json()["task_id"] == "t-3"
    assert adm.post("/api/admin/tasks/t-2/requeue", json={}).status_code == 409, "labeled tasks stay labeled"
    assert adm.post("/api/admin/tasks/nope/requeue", json={}).status_code == 404


def test_a_label_kafka_did_not_confirm_is_kept_and_sent_once(local):
    client, store, sink = local
    ann = client(ANN)
    ann.post("/api/tasks/next")
    sink.down = True
    r = ann.post("/api/tasks/t-2/label", json={"label": "spam"})
    assert r.status_code == 503 and "submitting again is safe" in r.json()["detail"]
    assert store.counts()["unsent_labels"] == 1 and store.counts()["labeled"] == 1
    sink.down = False
    r = ann.post("/api/tasks/t-2/label", json={"label": "spam"})
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert len(sink.sent) == 1 and store.counts()["unsent_labels"] == 0
    assert Outbox(store, sink).retry() == 0 and len(sink.sent) == 1


def test_openapi_describes_every_operation_with_bearer_auth(local):
    client, _, _ = local
    spec = client(None).get("/openapi.json").json()
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops == {("GET", "/api/me"), ("POST", "/api/tasks/next"), ("POST", "/api/tasks/{task_id}/label"),
                   ("POST", "/api/tasks/{task_id}/skip"), ("POST", "/api/tasks/{task_id}/flag"),
                   ("GET", "/api/review/flagged"), ("POST", "/api/review/{task_id}/label"),
                   ("POST", "/api/review/{task_id}/requeue"), ("GET", "/api/admin/stats"),
                   ("POST", "/api/admin/tasks/{task_id}/requeue"), ("GET", "/healthz"),
                   ("GET", "/api/review/annotators"), ("POST", "/api/review/annotators/{annotator_id}/pause"),
                   ("POST", "/api/review/annotators/{annotator_id}/readmit")}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    label = spec["paths"]["/api/tasks/{task_id}/label"]["post"]
    assert {"200", "401", "404", "408", "409", "413", "422", "429", "503"} <= set(label["responses"])
    assert client(None).get("/docs").status_code == 404, "no page that loads scripts from elsewhere"


def test_ui_is_served_with_no_outside_assets(local):
    client, _, _ = local
    page = client(None).get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset in ("/ui/app.js", "/ui/style.css"):
        assert client(None).get(asset).status_code == 200
    for path in UI.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


# --------------------------------------------------------------------------- against the real broker


def produce(settings, records: list, name: str = "LabelingTask", topic: str = "labeling.tasks") -> None:
    p = Producer(settings.kafka_config())
    for r in records:
        if isinstance(r, bytes):
            p.produce(settings.topic(topic), r)
        else:
            key = r.get("task_id") or r["model_name"]  # models is compacted: every message has a key
            p.produce(settings.topic(topic), codec.encode(name, r), key=key.encode())
    assert p.flush(10) == 0


def read(settings, topic: str, expect: int, timeout: float = 30.0, settle: float = 1.0) -> list[dict]:
    """Records on ``topic`` from the start, once ``expect`` arrived (and ``settle`` s more)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic(topic)])
    out, deadline = [], time.monotonic() + timeout
    name = {"labels": "Label", "deadletter": "DeadLetter"}[topic]
    try:
        while time.monotonic() < deadline:
            out += [codec.decode(m.value(), (name,))[1] for m in consumer.consume(100, timeout=0.3) if not m.error()]
            if len(out) >= expect:
                out += [codec.decode(m.value(), (name,))[1] for m in consumer.consume(100, timeout=settle)
                        if not m.error()]
                return out
    finally:
        consumer.close()
    raise AssertionError(f"{len(out)} of {expect} records on {topic} after {timeout} s")


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def call(url: str, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | None]:
    """An HTTP request over the network, as any client makes it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def fresh(kafka):
    """Settings with topics of their own."""
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}svc-{run}.", app_id=f"svc-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    return settings


@pytest.mark.kafka
def test_tasks_in_labels_out_over_http(fresh, tmp_path):
    tasks = [task(i, priority=i / 100) for i in range(30)]
    produce(fresh, tasks)
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 30, what="30 tasks queued")
        latencies = []
        for expected in range(29, -1, -1):
            status, leased = call(service.url, "POST", "/api/tasks/next", ANN)
            assert status == 200 and leased["task_id"] == f"t-{expected}", "highest priority first"
            started = time.perf_counter()
            status, out = call(service.url, "POST", f"/api/tasks/t-{expected}/label", ANN,
                               {"label": "spam" if expected % 2 else "ham", "note": f"n{expected}"})
            latencies.append(time.perf_counter() - started)
            assert status == 200 and out["duplicate"] is False
        # what a 200 promised: every label already on the topic, once each
        labels = read(fresh, "labels", expect=30, timeout=5)
        assert len(labels) == 30 and len({l["event_id"] for l in labels}) == 30
        by_task = {l["task_id"]: l for l in labels}
        assert by_task["t-7"]["label"] == "spam" and by_task["t-8"]["label"] == "ham"
        assert by_task["t-7"]["annotator_id"] == "ann" and by_task["t-7"]["note"] == "n7"
        assert all(l["duration_ms"] >= 0 and l["item_id"] == l["task_id"].replace("t-", "item-") for l in labels)
        assert call(service.url, "POST", "/api/tasks/next", ANN)[0] == 204
        p50, p95 = statistics.median(latencies), sorted(latencies)[int(0.95 * len(latencies))]
        print(f"\nlabel submit over HTTP, on Kafka before the answer: p50 {p50 * 1000:.1f} ms, "
              f"p95 {p95 * 1000:.1f} ms")
        assert p50 < 0.5
    finally:
        service.stop()


@pytest.mark.kafka
def test_a_bad_task_message_goes_to_deadletter_and_the_rest_is_queued(fresh, tmp_path):
    produce(fresh, [task(1), b"\x00garbage", task(2)])
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 2, what="both good tasks queued")
        dead = read(fresh, "deadletter", expect=1)
        assert [d["payload"] for d in dead] == [b"\x00garbage"] and dead[0]["error"] == "undecodable"
    finally:
        service.stop()


@pytest.mark.kafka
def test_a_new_model_version_reranks_the_queue(fresh, tmp_path):
    # the production model was unsure about all four; the shadow model learns x < 0 is ham, x > 0 spam
    tasks = [task(i, priority=0.9, features={"x": x}) for i, x in enumerate([-20.0, -0.05, 0.05, 20.0])]
    tasks.append(task(9, priority=0.5, reasons=("control",), features={"x": -20.0}))
    produce(fresh, tasks)
    learner = Learner(fresh.model_name, kind="linear", publish_every=1, min_control=0)
    for i in range(400):
        x = (i % 41 - 20) / 4
        learner.learn({"x": x}, "spam" if x > 0 else "ham")
    version = learner.publish(0, keys.signing_key(fresh))
    forged = dict(learner.publish(0, Ed25519PrivateKey.generate()), version=version["version"] + 5)
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 5, what="tasks queued")
        produce(fresh, [forged], "ModelVersion", "models")
        time.sleep(2)
        assert service.store.model_version() == 0, "a snapshot with a bad signature is refused"
        produce(fresh, [version], "ModelVersion", "models")
        wait_for(lambda: service.store.model_version() == version["version"], what="re-ranked")
        order = [call(service.url, "POST", "/api/tasks/next", token)[1]["task_id"]
                 for token in (ANN, BOB, REV, ADM)]
        # items near the boundary stay on top; the ones the model is now sure about sink below the control
        assert set(order[:2]) == {"t-1", "t-2"} and order[2] == "t-9"
        priorities = {t: service.store.task(t)["priority"] for t in ("t-0", "t-1", "t-9")}
        assert priorities["t-0"] < 0.6 < priorities["t-1"] and priorities["t-9"] == 0.5
    finally:
        service.stop()


@pytest.mark.kafka
def test_a_label_left_unsent_by_a_crash_is_sent_at_restart(fresh, tmp_path):
    db = tmp_path / "q.sqlite3"
    produce(fresh, [task(1)])
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=db).start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 1, what="task queued")
        call(service.url, "POST", "/api/tasks/next", ANN)
        broken = Sink()
        broken.down = True
        service.outbox.send = broken  # as if the process died between the store's commit and Kafka
        status, out = call(service.url, "POST", "/api/tasks/t-1/label", ANN, {"label": "spam"})
        assert status == 503
    finally:
        service.stop()
    again = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=db).start()
    try:
        labels = read(fresh, "labels", expect=1)
        assert [(l["task_id"], l["label"], l["annotator_id"]) for l in labels] == [("t-1", "spam", "ann")]
        assert again.store.counts()["unsent_labels"] == 0
    finally:
        again.stop()


def spawn(settings, db: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
               FEEDBACKLOOP_TOPIC_PREFIX=settings.topic_prefix, FEEDBACKLOOP_APP_ID=settings.app_id,
               FEEDBACKLOOP_LABELING_TOKENS=TOKENS, PYTHONPATH=str(ROOT),
               FEEDBACKLOOP_MODEL_VERIFY_KEY=settings.model_verify_key)
    return subprocess.Popen([sys.executable, "-m", "consumers.labeling.cli", "--port", str(port),
                             "--db", str(db), "--lease-seconds", "120"],
                            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def up(process, url: str, log: Path) -> None:
    def ready():
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return True
        except OSError:
            return False
    wait_for(ready, 60, "the service to answer")


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def queued(url: str) -> int:
    status, stats = call(url, "GET", "/api/admin/stats", ADM)
    q = stats["queue"]
    return q["pending"] + q["leased"] + q["flagged"] + q["labeled"]


@pytest.mark.kafka
def test_a_killed_service_loses_no_task_and_no_label(fresh, tmp_path, free_port):
    db, log, port = tmp_path / "q.sqlite3", tmp_path / "service.log", free_port()
    url = f"http://127.0.0.1:{port}"
    n = 3000
    produce(fresh, [task(i, priority=(i % 97) / 97) for i in range(n)])

    # killed while reading the topic
    process = spawn(fresh, db, port, log)
    try:
        up(process, url, log)
        wait_for(lambda: queued(url) > 0, what="the first tasks")
        kill(process)
        process = spawn(fresh, db, port, log)
        up(process, url, log)
        wait_for(lambda: queued(url) == n, 60, f"all {n} tasks after the restart")

        # killed with a label sent and a task leased
        status, first = call(url, "POST", "/api/tasks/next", ANN)
        status, sent = call(url, "POST", f"/api/tasks/{first['task_id']}/label", ANN, {"label": "ham"})
        assert status == 200
        status, held = call(url, "POST", "/api/tasks/next", BOB)
        kill(process)
        produce(fresh, [task(i) for i in range(n, n + 5)])
        process = spawn(fresh, db, port, log)
        up(process, url, log)
        wait_for(lambda: queued(url) == n + 5, 60, "the tasks sent while the service was down")
        status, again = call(url, "POST", f"/api/tasks/{first['task_id']}/label", ANN, {"label": "ham"})
        assert status == 200 and again["duplicate"] is True and again["event_id"] == sent["event_id"]
        assert call(url, "POST", "/api/tasks/next", BOB)[1]["task_id"] == held["task_id"], \
            "the lease survived the crash"
        for _ in range(3):
            status, leased = call(url, "POST", "/api/tasks/next", ANN)
            assert call(url, "POST", f"/api/tasks/{leased['task_id']}/label", ANN,
                        {"label": "spam"})[0] == 200
        stats = call(url, "GET", "/api/admin/stats", ADM)[1]["queue"]
        assert (stats["labeled"], stats["leased"], stats["pending"]) == (4, 1, n)
    finally:
        process.terminate()
        process.wait(10)
    labels = read(fresh, "labels", expect=4)
    assert len(labels) == 4 and len({l["task_id"] for l in labels}) == 4
