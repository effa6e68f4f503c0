"""Annotator gating: calibration on hidden gold items, a pause under the threshold, re-admission.

In process first (labels leave through a list), then through the real
service against the real broker: a paused annotator gets no task from the
web queue, the task they held goes to someone else, and the pause and the
re-admission reach the ``audit`` topic.
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient

from consumers.labeling import readmit as readmit_cli
from consumers.labeling.api import create_app
from consumers.labeling.gating import Gate
from consumers.labeling.outbox import Outbox
from consumers.labeling.service import LabelingService
from consumers.labeling.store import Store
from consumers.labeling.tokens import Tokens
from schemas import codec
from tests.test_service import ANN, BOB, REV, TOKENS, Sink, call, produce, read, task, wait_for

GOLD = {f"g{i}": {"item_id": f"g{i}", "label": "spam" if i % 2 else "ham", "features": {"x": float(i)},
                  "text": None} for i in range(6)}


def client(app, token: str) -> TestClient:
    c = TestClient(app, base_url="http://localhost")
    c.headers["Authorization"] = f"Bearer {token}"
    return c


@pytest.fixture
def gated(tmp_path):
    """``(clients by name, store, sink)``: ten real tasks, six gold items, K=3, threshold 0.7."""
    store, sink = Store(tmp_path / "q.sqlite3"), Sink()
    store.add_tasks([task(i, priority=i / 10) for i in range(10)], {})
    gate = Gate(store, GOLD, tasks=3, threshold=0.7, seed=1)
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS), lease_seconds=60, gate=gate)
    return {"ann": client(app, ANN), "bob": client(app, BOB), "rev": client(app, REV)}, store, sink


def answer(c: TestClient, right: bool) -> dict:
    """Lease the next task and label it: the gold answer (or the other label) on a gold item."""
    t = c.post("/api/tasks/next").json()
    truth = GOLD[t["item_id"]]["label"] if t["item_id"] in GOLD else "ham"
    label = truth if right else next(l for l in t["label_set"] if l != truth)
    assert c.post(f"/api/tasks/{t['task_id']}/label", json={"label": label}).status_code == 200
    return t


def test_a_new_annotators_first_k_tasks_are_gold_dressed_as_real_ones(gated):
    clients, store, sink = gated
    real = store.peek("ann")
    first = [answer(clients["ann"], right=True) for _ in range(3)]
    assert [t["item_id"] in GOLD for t in first] == [True, True, True]
    assert len({t["item_id"] for t in first}) == 3, "no gold item twice"
    for t in first:  # the shape, reasons and signals of the real task they stand in for
        assert t["reasons"] == real["reasons"] and set(t["label_set"]) == {"ham", "spam"}
        assert t["model_version"] == real["model_version"] and t["suggested_label"] in t["label_set"]
        assert not t["task_id"].startswith("gold") and t["kind"] == real["kind"]
    assert sink.sent == [], "an exam answer never reaches the labels topic"
    after = answer(clients["ann"], right=True)
    assert after["item_id"] not in GOLD, "calibrated: real tasks now"
    assert [l["item_id"] for l in sink.sent] == [after["item_id"]]
    assert store.gold_record("ann") == (3, 3) and store.gate("ann")["state"] == "active"
    # another newcomer is calibrated too; the first one's gold tasks are not offered to them
    assert clients["bob"].post("/api/tasks/next").json()["item_id"] in GOLD


def test_under_the_threshold_an_annotator_is_paused_until_a_reviewer_readmits_them(gated):
    clients, store, sink = gated
    ann, rev = clients["ann"], clients["rev"]
    answer(ann, right=True)
    answer(ann, right=False)
    assert store.gate("ann")["state"] == "active", "not judged before K checks"
    answer(ann, right=False)  # 1 of 3: under 0.7
    assert store.gate("ann")["state"] == "paused"
    r = ann.post("/api/tasks/next")
    assert r.status_code == 423 and "re-admit" in r.json()["detail"]
    assert ann.get("/api/me").json()["state"] == "paused"
    assert ann.post("/api/review/annotators/ann/readmit").status_code == 403, "an annotator cannot re-admit"
    listed = rev.get("/api/review/annotators").json()
    assert [(g["annotator_id"], g["state"], g["by"], g["gold_checks"], g["gold_correct"]) for g in listed] == \
        [("ann", "paused", "gate", 3, 1)]
    assert json.loads(listed[0]["reason"])["gold_accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    back = rev.post("/api/review/annotators/ann/readmit")
    assert back.status_code == 200 and back.json()["state"] == "active" and back.json()["gold_checks"] == 0
    assert rev.post("/api/review/annotators/ann/readmit").status_code == 409, "not paused any more"
    assert ann.post("/api/tasks/next").json()["item_id"] in GOLD, "calibrated again from a clean record"
    actions = [(e["action"], e["annotator_id"], json.loads(e["detail"]).get("by")) for _, e in store.unsent_audit()
               if e["action"] in ("pause", "readmit")]
    assert actions == [("pause", "ann", "gate"), ("readmit", "ann", "rev")]


def test_a_pause_returns_open_leases_and_a_later_gold_item_counts(gated):
    clients, store, _ = gated
    ann, bob, rev = clients["ann"], clients["bob"], clients["rev"]
    for _ in range(3):
        answer(ann, right=True)
    held = ann.post("/api/tasks/next").json()
    assert store.task(held["task_id"])["owner"] == "ann"
    assert rev.post("/api/review/annotators/ann/pause", json={"note": "rushing"}).json()["state"] == "paused"
    assert store.task(held["task_id"])["state"] == "pending", "the lease went back to the queue"
    assert ann.post(f"/api/tasks/{held['task_id']}/label", json={"label": "ham"}).status_code == 409
    assert ann.post("/api/tasks/next").status_code == 423
    for _ in range(3):
        answer(bob, right=True)
    assert bob.post("/api/tasks/next").json()["task_id"] == held["task_id"], "someone else takes it"
    # a gold item the worker mixed in is a gold check like a calibration task
    store.add_tasks([task(99, priority=5.0, item_id="g4")], {})
    answer(bob, right=True)  # bob's held task
    assert answer(bob, right=False)["item_id"] == "g4" and store.gold_record("bob") == (4, 3)


def test_readmit_from_the_command_line(gated, tmp_path, capsys):
    clients, store, _ = gated
    for _ in range(3):
        answer(clients["ann"], right=False)
    args = lambda *a: type("Args", (), dict(zip(("annotator", "by", "db"), a)))()  # noqa: E731
    from feedbackloop.settings import Settings
    assert readmit_cli.run(args(None, "cli", str(store.path)), Settings()) == 0
    assert capsys.readouterr().out.startswith("ann\tpaused by gate\t0 of 3")
    assert readmit_cli.run(args("ann", "lead", str(store.path)), Settings()) == 0
    assert store.gate("ann")["state"] == "active" and store.gate("ann")["by"] == "lead"
    assert readmit_cli.run(args("ann", "lead", str(store.path)), Settings()) == 1


# --------------------------------------------------------------------------- through the real service


@pytest.fixture
def fresh(kafka):
    from feedbackloop import stack
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}gate-{run}.", app_id=f"gate-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    return settings


def audit_events(settings, expect: int, timeout: float = 30.0) -> list[dict]:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("audit")])
    out = []
    try:
        def enough():
            out.extend(codec.decode(m.value(), ("AuditEvent",))[1]
                       for m in consumer.consume(100, timeout=0.3) if not m.error())
            return len([e for e in out if e["action"] in ("pause", "readmit")]) >= expect
        wait_for(enough, timeout, "pause and readmit events on the audit topic")
    finally:
        consumer.close()
    return [e for e in out if e["action"] in ("pause", "readmit")]


@pytest.mark.kafka
def test_a_paused_annotator_gets_no_task_from_the_web_queue(fresh, tmp_path, clickhouse_dsn):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in GOLD.values()))
    settings = fresh.replace(gold_path=str(gold), gate_gold_tasks=2, gate_threshold=0.75)
    produce(settings, [task(i, priority=i / 10) for i in range(8)])
    service = LabelingService(settings, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        url = service.url
        wait_for(lambda: service.store.counts()["pending"] == 8, what="8 tasks queued")

        def give(token: str, right: bool) -> dict:
            status, t = call(url, "POST", "/api/tasks/next", token)
            assert status == 200, (status, t)
            truth = GOLD[t["item_id"]]["label"] if t["item_id"] in GOLD else "ham"
            label = truth if right else next(l for l in t["label_set"] if l != truth)
            assert call(url, "POST", f"/api/tasks/{t['task_id']}/label", token, {"label": label})[0] == 200
            return t

        assert [give(ANN, right=False)["item_id"] in GOLD for _ in range(2)] == [True, True]
        status, body = call(url, "POST", "/api/tasks/next", ANN)
        assert status == 423 and "paused" in body["detail"]
        assert [give(BOB, right=True)["item_id"] in GOLD for _ in range(3)] == [True, True, False]
        held = call(url, "POST", "/api/tasks/next", BOB)[1]
        # the reviewer pauses bob over HTTP: his lease goes back, ann stays shut out
        assert call(url, "POST", "/api/review/annotators/bob/pause", REV, {"note": "spot check"})[0] == 200
        for token in (ANN, BOB):
            status, _ = call(url, "POST", "/api/tasks/next", token)
            assert status == 423
        assert service.store.task(held["task_id"])["state"] == "pending"
        assert call(url, "POST", "/api/review/annotators/ann/readmit", REV)[0] == 200
        again = give(ANN, right=True)
        assert again["item_id"] in GOLD, "re-admitted: calibrated again"
        labels = read(settings, "labels", expect=1, timeout=10)
        assert [l["item_id"] for l in labels] == [f"item-{i}" for i in (7,)], \
            "only bob's real label reached Kafka; the exam answers stayed in the service"
        events = audit_events(settings, expect=3)
        assert [(e["action"], e["annotator_id"]) for e in events] == [("pause", "ann"), ("pause", "bob"),
                                                                       ("readmit", "ann")]
        assert json.loads(events[0]["detail"])["gold_accuracy"] == 0.0
        assert json.loads(events[1]["detail"])["released"] == [held["task_id"]]
        # the worker's audit agent sinks them into audit_log; migration 0016 copies them to annotator_gating
        from dashboards.connection import connect
        from dashboards.migrate import migrate
        from dashboards.sink import ClickHouseSink
        db = connect(clickhouse_dsn)
        migrate(db)
        sink = ClickHouseSink(db)
        for e in audit_events(settings, expect=3):
            sink.add("audit_log", e)
        sink.flush()
        rows = db.query("SELECT annotator_id, action, decided_by, gold_accuracy, gold_checks, released "
                        "FROM annotator_gating FINAL ORDER BY ts").result_rows
        assert rows == [("ann", "pause", "gate", 0.0, 2, []), ("bob", "pause", "rev", 1.0, 2, [held["task_id"]]),
                        ("ann", "readmit", "rev", 0.0, 2, [])]
    finally:
        service.stop()


# --------------------------------------------------------------------------- how often the gate pauses


def paused_by(error: float, checks: int, k: int, threshold: float) -> float:
    """Exactly: the chance an annotator who errs at ``error`` is paused within ``checks``
    gold checks (judged from the k-th on, under ``threshold``): a walk over their record."""
    alive, paused = {0: 1.0}, 0.0
    for n in range(1, checks + 1):
        step = {}
        for right, p in alive.items():
            for ok, q in ((1, 1 - error), (0, error)):
                if n >= k and (right + ok) / n < threshold:
                    paused += p * q
                else:
                    step[right + ok] = step.get(right + ok, 0.0) + p * q
        alive = step
    return paused


@pytest.mark.parametrize("error", [0.05, 0.4])
def test_the_gate_pauses_as_often_as_the_binomial_says(error):
    """200 annotators through the real queue and gate, every task a gold item:
    the share paused within 20 checks is the exact figure within 4 standard errors
    (K=5, threshold 0.7: 3.5% of careful annotators at 5% error, 93% of careless ones at 40%)."""
    import math
    import random

    rng, store = random.Random(int(error * 100)), Store(":memory:")
    gate = Gate(store, GOLD, tasks=5, threshold=0.7, seed=0)
    paused, n = 0, 200
    for a in range(n):
        who = f"a{a}"
        store.add_tasks([task(10_000 * a + i, priority=0.5, item_id=f"g{i % 6}") for i in range(20)], {})
        for _ in range(20):
            gate.prepare(who)
            leased = store.lease(who)
            if leased is None:
                break
            t = leased["task"]
            truth = GOLD[t["item_id"]]["label"]
            answer = truth if rng.random() >= error else next(l for l in t["label_set"] if l != truth)
            record, _ = store.label(t["task_id"], who, answer, note=None)
            gate.judge(record, "test")
        paused += store.gate(who)["state"] == "paused"
    expected = paused_by(error, 20, 5, 0.7)
    assert abs(paused / n - expected) <= 4 * math.sqrt(expected * (1 - expected) / n) + 1 / n, (paused / n, expected)


def test_a_multi_label_gold_answer_is_judged_as_a_set():
    """A gold item whose answer is a set, written in any order (``dog|cat``): the same set in
    another order is right, a subset is wrong; a string comparison would call both wrong."""
    store = Store(":memory:")
    gold = {"g": {"item_id": "g", "label": "dog|cat", "features": {}, "text": None}}
    store.add_tasks([task(i, label_set=("cat", "dog", "fox"), multi_label=True) for i in range(4)], {})
    gate = Gate(store, gold, tasks=2, threshold=0.7, seed=0)
    for answer in (["cat", "dog"], ["cat"]):
        gate.prepare("ann")
        leased = store.lease("ann")["task"]
        assert leased["item_id"] == "g" and leased["multi_label"]
        record, _ = store.label(leased["task_id"], "ann", answer, note=None)
        gate.judge(record, "test")
    assert store.gold_record("ann") == (2, 1)
    assert store.gate("ann")["state"] == "paused"  # 1 of 2 right, under 0.7
