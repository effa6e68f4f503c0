"""Multi-label tasks reach annotators: the labeling service, the web UI and the terminal labeler take a set.

A task with ``multi_label`` is answered with ``labels``, any subset of its
label set (the empty one too, said explicitly); the label record carries the
set, and ``label`` the set joined by ``|``. Single-label tasks are unchanged,
and a task written before the field existed is one. In process first (the
rules of the API), then through the real service on the real broker, and in a
real browser.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from fastapi.testclient import TestClient

from consumers import terminal
from consumers.labeling.api import create_app
from consumers.labeling.outbox import Outbox
from consumers.labeling.service import LabelingService
from consumers.labeling.store import Store
from consumers.labeling.tokens import Tokens
from feedbackloop import stack
from schemas import codec
from tests.test_service import ANN, BOB, REV, TOKENS, Sink, call, produce, read, task, wait_for

ANIMALS = ("cat", "dog", "fox")


def multi(i: int, priority: float = 0.5, suggested=("dog",), **extra) -> dict:
    """A multi-label LabelingTask record."""
    return task(i, priority, label_set=ANIMALS, multi_label=True,
                suggested_labels=None if suggested is None else list(suggested), **extra)


@pytest.fixture
def local(tmp_path):
    """``(client factory, store, sink)``: a multi-label task t-1 first in the queue, a single-label t-2 next."""
    store, sink = Store(tmp_path / "queue.sqlite3"), Sink()
    store.add_tasks([multi(1, 0.9), task(2, 0.5)], {("labeling.tasks", 0): 1})
    app = create_app(store, Outbox(store, sink), Tokens.parse(TOKENS), lease_seconds=60)

    def client(token: str) -> TestClient:
        c = TestClient(app, base_url="http://localhost")
        c.headers["Authorization"] = f"Bearer {token}"
        return c

    yield client, store, sink
    store.close()


def test_a_multi_label_task_is_shown_as_one_and_takes_a_set_once(local):
    client, store, sink = local
    ann = client(ANN)
    shown = ann.post("/api/tasks/next").json()
    assert (shown["task_id"], shown["multi_label"], shown["suggested_labels"]) == ("t-1", True, ["dog"])
    r = ann.post("/api/tasks/t-1/label", json={"labels": ["fox", "cat"], "note": "both in the picture"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["label"], out["labels"], out["duplicate"]) == ("cat|fox", ["cat", "fox"], False)
    [sent] = sink.sent
    assert (sent["label"], sent["labels"], sent["note"]) == ("cat|fox", ["cat", "fox"], "both in the picture")
    assert codec.decode(codec.encode("Label", sent), ("Label",))[1] == sent  # valid under the codec's rules
    again = ann.post("/api/tasks/t-1/label", json={"labels": ["dog"]})  # a second submit finds the first
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["labels"] == ["cat", "fox"]
    assert len(sink.sent) == 1
    single = ann.post("/api/tasks/next").json()
    assert (single["task_id"], single["multi_label"], single["suggested_labels"]) == ("t-2", False, None)
    out = ann.post("/api/tasks/t-2/label", json={"label": "spam"}).json()
    assert (out["label"], out["labels"]) == ("spam", None)
    assert sink.sent[1]["labels"] is None


def test_the_empty_set_is_an_answer(local):
    client, _store, sink = local
    ann = client(ANN)
    ann.post("/api/tasks/next")
    out = ann.post("/api/tasks/t-1/label", json={"labels": []}).json()
    assert (out["label"], out["labels"]) == ("", [])
    audited = [e["detail"] for _, e in _store.unsent_audit() if e["action"] == "label"]
    assert audited == ["[]"], "the audit log says the empty set, not an empty string"
    assert codec.decode(codec.encode("Label", sink.sent[0]), ("Label",))[1]["labels"] == []


@pytest.mark.parametrize("task_id, body, words", [
    ("t-1", {"label": "cat"}, "is multi-label: send the set of labels"),
    ("t-1", {"labels": ["cat", "wolf"]}, "'wolf' are not in the task's label set"),
    ("t-1", {"labels": ["cat"], "label": "cat"}, "either label (one class) or labels"),
    ("t-1", {"note": "no answer"}, "either label (one class) or labels"),
    ("t-1", {"labels": ["cat", ""]}, "at least 1 character"),
    ("t-1", {"labels": "cat"}, "valid list"),
    ("t-2", {"labels": ["spam"]}, "takes one label, not a set"),
])
def test_an_answer_of_the_wrong_kind_gets_422_and_writes_nothing(local, task_id, body, words):
    client, store, sink = local
    ann, bob = client(ANN), client(BOB)
    ann.post("/api/tasks/next")  # t-1 to ann
    bob.post("/api/tasks/next")  # t-2 to bob
    who = ann if task_id == "t-1" else bob
    r = who.post(f"/api/tasks/{task_id}/label", json=body)
    assert r.status_code == 422 and words in json.dumps(r.json()), r.text
    assert sink.sent == [] and store.unsent() == []
    assert store.task(task_id)["state"] == "leased", "still held: the annotator may answer again"


def test_a_reviewer_decides_a_flagged_multi_label_task_with_a_set(local):
    client, _store, sink = local
    ann, rev = client(ANN), client(REV)
    ann.post("/api/tasks/next")
    assert ann.post("/api/tasks/t-1/flag", json={"note": "a dog-fox?"}).status_code == 200
    [flagged] = rev.get("/api/review/flagged").json()
    assert flagged["multi_label"] is True
    assert rev.post("/api/review/t-1/label", json={"label": "dog"}).status_code == 422
    out = rev.post("/api/review/t-1/label", json={"labels": ["dog", "fox"]}).json()
    assert (out["label"], out["annotator_id"]) == ("dog|fox", "rev")
    assert sink.sent[0]["labels"] == ["dog", "fox"]


def test_the_terminal_labeler_takes_several_choices():
    t = multi(1, suggested=None)
    typed = iter(["", "4", "1 x", "3,1,3"])  # no suggestion to accept, out of range, not a number, then 1 and 3
    assert terminal.ask(t, read=lambda _: next(typed)) == ["cat", "fox"]
    assert terminal.ask(t, read=lambda _: "none") == []
    assert terminal.ask(t, read=lambda _: "s") is None
    assert terminal.ask(task(2), read=lambda _: "2") == "spam", "a single-label task as before"
    out = io.StringIO()
    terminal.show({**multi(1, suggested=["dog", "fox"]), "guideline_version": ""}, out=out)
    assert "suggested: dog, fox" in out.getvalue() and "1,3" in out.getvalue()


# --------------------------------------------------------------------------- against the real broker


def old_task(record: dict) -> bytes:
    """``record`` as a writer of the task schema before multi-label tasks encoded it."""
    old = fastavro.parse_schema(json.loads((codec.SCHEMA_DIR / "history" / "labeling_task.2.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, record)
    return codec.MARKER + bytes.fromhex(fastavro.schema.fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO")) \
        + body.getvalue()


@pytest.fixture
def fresh(kafka):
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}multi-{run}.", app_id=f"multi-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    return settings


@pytest.mark.kafka
def test_sets_in_and_out_through_the_real_service(fresh, tmp_path):
    """Multi-label tasks, a single-label one and one written with the schema before, through Kafka and HTTP."""
    produce(fresh, [multi(1, 0.9), multi(2, 0.8, suggested=None), task(3, 0.7),
                    old_task({**task(4, 0.6), "overlap": 1, "exclude_annotators": [], "tier": "annotator",
                              "round": 0, "guideline_version": ""})])
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 4, what="4 tasks queued")
        answers = {"t-1": {"labels": ["fox", "dog"]}, "t-2": {"labels": []}, "t-3": {"label": "ham"},
                   "t-4": {"label": "spam"}}
        for expected, body in answers.items():
            status, shown = call(service.url, "POST", "/api/tasks/next", ANN)
            assert status == 200 and shown["task_id"] == expected
            assert shown["multi_label"] is (expected in ("t-1", "t-2"))
            if expected == "t-1":
                wrong = call(service.url, "POST", f"/api/tasks/{expected}/label", ANN, {"label": "dog"})
                assert wrong[0] == 422
            status, out = call(service.url, "POST", f"/api/tasks/{expected}/label", ANN, body)
            assert status == 200, out
        labels = {l["task_id"]: l for l in read(fresh, "labels", expect=4, timeout=10)}
        assert {t: (l["label"], l["labels"]) for t, l in labels.items()} == {
            "t-1": ("dog|fox", ["dog", "fox"]), "t-2": ("", []), "t-3": ("ham", None), "t-4": ("spam", None)}
    finally:
        service.stop()


@pytest.mark.kafka
def test_the_web_ui_ticks_several_labels_and_says_none(fresh, tmp_path):
    """In a real browser: tick two labels with the keyboard, then answer "none of these" explicitly."""
    from playwright.sync_api import expect

    from tests.test_ui_browser import ARGS, CHROMIUM

    produce(fresh, [multi(1, 0.9, suggested=["dog"]), multi(2, 0.8)])
    service = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        wait_for(lambda: service.store.counts()["pending"] == 2, what="2 tasks queued")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(service.link(ANN))
                expect(page.locator("#item-id")).to_have_text("item-1")
                expect(page.locator("#choices input[type=checkbox]")).to_have_count(4)  # three labels and "none"
                expect(page.locator("#suggested")).to_have_text("dog")
                expect(page.locator(".choice.suggested")).to_have_text("2 dog")
                page.keyboard.press("Enter")  # nothing ticked: asks, sends nothing
                expect(page.locator("#status")).to_contain_text("or 0 if none of them does")
                page.keyboard.press("1")
                page.keyboard.press("3")
                page.keyboard.press("2")
                page.keyboard.press("2")  # untick
                expect(page.locator(".choice.chosen")).to_have_count(2)
                page.keyboard.press("Enter")
                expect(page.locator("#item-id")).to_have_text("item-2")
                page.keyboard.press("1")
                page.keyboard.press("0")  # none of these: clears the label
                expect(page.locator(".choice.chosen")).to_have_text(["0 none of these"])
                page.keyboard.press("Enter")
                expect(page.locator("#empty")).to_be_visible()
                assert errors == []
            finally:
                browser.close()
        labels = {l["task_id"]: l for l in read(fresh, "labels", expect=2, timeout=10)}
        assert {t: l["labels"] for t, l in labels.items()} == {"t-1": ["cat", "fox"], "t-2": []}
    finally:
        service.stop()


# --------------------------------------------------------------------------- the trainer settles the set


def test_the_trainer_settles_a_multi_label_task_class_by_class():
    """What the service sends, the trainer takes: sets (the empty one too) settle by majority per class,
    a correction settles again, a class outside the label set is refused, and gold is judged as a set."""
    from streams.labels.consensus import Consensus
    from streams.labels.trainer import Trainer, UnknownLabel
    from streams.learning.learner import Learner
    from streams import events

    trainer = Trainer(Learner("m", kind="linear"), Consensus(overlap=3), gold={"item-9": "fox|cat"})
    for i in (1, 9):
        trainer.add_task(multi(i))

    def give(who: str, i: int, classes) -> list[dict]:
        text, labels = events.set_label(classes)
        return trainer.add_label(events.label(event_id=uuid.uuid4().hex, task_id=f"t-{i}", item_id=f"item-{i}",
                                              label=text, annotator_id=who, ts=1, labels=labels)).consensus

    assert give("ann", 1, ["cat", "dog"]) == [] and give("bob", 1, []) == []
    [settled] = give("cy", 1, ["dog"])
    assert (settled["label"], settled["n_labels"], settled["method"]) == ("dog", 3, "set_vote")
    [again] = give("cy", 1, ["cat", "dog"])  # cy corrects: cat now has two of three
    assert again["label"] == "cat|dog"
    assert give("bob", 1, []) == [], "the same answer again (a new event) settles nothing new"
    with pytest.raises(UnknownLabel):
        give("dan", 1, ["wolf"])
    give("ann", 9, ["cat", "fox"])
    give("bob", 9, ["cat"])
    assert trainer.consensus.gold.estimate("ann") > trainer.consensus.gold.estimate("bob")
