"""The annotators' web UI in a real browser: Debian's headless Chromium, driven by Playwright.

Tasks go on ``labeling.tasks``; the page, opened with a token link, shows each
one (text, or a table of features; the suggestion, the model's confidence and
why it was chosen, the guideline); an annotator labels three of them and skips
a fourth with the keyboard only, and the labels are read back from ``labels``
(each with the guideline version its task was shown with); paused by a
reviewer, the annotator is told why no task comes.
An item flagged as ambiguous (with a note) reaches a reviewer, whose decision
is a label too. The page asks nothing of any host but the service.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from consumers.labeling.service import LabelingService
from consumers.labeling.tokens import Tokens
from feedbackloop import stack
from schemas import codec

pytestmark = pytest.mark.kafka

ANN, REV = f"ann-{secrets.token_urlsafe(32)}", f"rev-{secrets.token_urlsafe(32)}"
CHROMIUM = os.environ.get("FEEDBACKLOOP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def task(task_id: str, priority: float, label_set: list[str], reasons: list[str], **fields) -> dict:
    record = {"task_id": task_id, "event_id": f"e-{task_id}", "item_id": f"item-{task_id}", "created_ts": 1,
              "source_ts": 1, "kind": "prediction", "reasons": reasons, "signals": {"margin": 0.04},
              "selection_probability": 0.05, "priority": priority, "suggested_label": label_set[0],
              "confidence": 0.52, "label_set": label_set, "features": {}, "text": None,
              "predicted_label": label_set[0], "user_label": None, "note": None, "model_name": "prod",
              "model_version": "7", "shadow_version": 3, "policy_version": "p", "context": {}}
    record.update(fields)
    return record


TASKS = [
    task("text", 0.9, ["ham", "spam"], ["uncertain"], text="WIN a FREE cruise!!! Reply YES now",
         suggested_label="spam"),
    task("table", 0.8, ["setosa", "versicolor", "virginica"], ["override"], kind="override",
         features={"petal_length": 4.7, "petal_width": 1.4, "sepal_length": 6.1},
         predicted_label="versicolor", user_label="virginica", suggested_label="virginica", confidence=0.31),
    task("control", 0.5, ["ham", "spam"], ["control"], text="Lunch at noon?", confidence=0.97),
    task("later", 0.1, ["ham", "spam"], ["uncertain"], text="Your parcel is waiting"),
]


GUIDELINE = """# Spam or ham
Spam sells something nobody asked for.

## spam
unsolicited selling

### Examples
- Cheap meds, no prescription
- You have won a cruise, reply YES

## ham
anything else
"""


@pytest.fixture
def service(kafka, tmp_path):
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}ui-{run}.", app_id=f"ui-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    producer = Producer(settings.kafka_config())
    for t in TASKS:
        producer.produce(settings.topic("labeling.tasks"), codec.encode("LabelingTask", t), key=t["task_id"].encode())
    assert producer.flush(10) == 0
    (tmp_path / "guidelines").mkdir()
    (tmp_path / "guidelines" / "spam.md").write_text(GUIDELINE)
    settings = settings.replace(guidelines_path=str(tmp_path / "guidelines"))
    svc = LabelingService(settings, Tokens.parse(f"{ANN}:ann:annotator,{REV}:rev:reviewer"), port=0,
                          db=tmp_path / "queue.sqlite3").start()
    try:
        deadline = time.monotonic() + 30
        while svc.store.counts()["pending"] < len(TASKS):
            assert time.monotonic() < deadline, "tasks did not reach the queue"
            time.sleep(0.1)
        yield settings, svc
    finally:
        svc.stop()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium) "
                    "or point FEEDBACKLOOP_CHROMIUM at a Chromium binary", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def read_labels(settings, expect: int, timeout: float = 20.0) -> list[dict]:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("labels")])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expect:
            out += [codec.decode(m.value(), ("Label",))[1] for m in consumer.consume(10, timeout=0.3) if not m.error()]
        out += [codec.decode(m.value(), ("Label",))[1] for m in consumer.consume(10, timeout=1.0) if not m.error()]
    finally:
        consumer.close()
    return out


def test_label_three_tasks_with_the_keyboard(service, browser, tmp_path):
    from playwright.sync_api import expect

    settings, svc = service
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(svc.link(ANN))
    item = page.locator("#item-id")

    # a text item the model is unsure about, with the guideline
    expect(item).to_have_text("item-text")
    assert "#token" not in page.url, "the token leaves the address bar"
    expect(page.locator("#text")).to_have_text("WIN a FREE cruise!!! Reply YES now")
    expect(page.locator("#features")).to_be_hidden()
    expect(page.locator("#why")).to_contain_text("the model is unsure: 52% for 'spam', margin 4 points")
    expect(page.locator("#suggested")).to_have_text("spam")
    expect(page.locator("#confidence")).to_contain_text("52%")
    expect(page.locator("#guideline")).to_have_text("Spam sells something nobody asked for.")
    expect(page.locator("#label-guidelines")).to_contain_text("unsolicited selling")
    expect(page.locator("#guideline-title")).to_have_text("Spam or ham")
    expect(page.locator("#guideline-version")).to_contain_text("version 1-")
    # the suggested class's worked examples
    expect(page.locator("#examples-label")).to_have_text("spam")
    expect(page.locator("#examples li")).to_have_text(["Cheap meds, no prescription", "You have won a cruise, reply YES"])
    expect(page.locator(".choice")).to_have_count(2)
    page.screenshot(path=str(tmp_path / "text-task.png"))
    page.keyboard.press("2")
    expect(page.locator(".choice.chosen")).to_contain_text("spam")
    page.keyboard.press("Enter")

    # a multi-class item shown as a table of features, chosen because a user overrode the model
    expect(item).to_have_text("item-table")
    expect(page.locator("#features tbody tr")).to_have_count(3)
    expect(page.locator("#features tbody tr").first).to_contain_text("petal_length")
    expect(page.locator("#features tbody tr").first).to_contain_text("4.7")
    expect(page.locator("#why")).to_contain_text("a user overrode the model: it said 'versicolor'")
    expect(page.locator("#confidence")).to_contain_text("31%")
    expect(page.locator(".choice")).to_have_count(3)
    expect(page.locator("#examples-box")).to_be_hidden()  # no guideline names these labels
    page.screenshot(path=str(tmp_path / "table-task.png"))
    page.keyboard.press("3")
    page.keyboard.press("Enter")

    # a control sample: Enter before choosing asks for a choice and sends nothing
    expect(item).to_have_text("item-control")
    expect(page.locator("#why")).to_contain_text("random control sample")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("Choose a label first")
    expect(item).to_have_text("item-control")
    page.keyboard.press("1")
    page.keyboard.press("Enter")

    # the last one is skipped with S, and the queue is empty for this annotator
    expect(item).to_have_text("item-later")
    page.keyboard.press("s")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#pace")).to_contain_text("3 labeled")

    # a reviewer pauses the annotator: the page, still asking for work, says why none comes
    import json
    import urllib.request
    request = urllib.request.Request(f"{svc.url}/api/review/annotators/ann/pause", method="POST",
                                     data=json.dumps({"note": "spot check"}).encode(),
                                     headers={"Authorization": f"Bearer {REV}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.loads(r.read())["state"] == "paused"
    expect(page.locator("#empty-text")).to_contain_text("Paused", timeout=10_000)
    expect(page.locator("#empty-text")).to_contain_text("re-admit")

    labels = read_labels(settings, expect=3)
    assert {l["task_id"]: l["label"] for l in labels} == {"text": "spam", "table": "virginica", "control": "ham"}
    assert len(labels) == 3 and all(l["annotator_id"] == "ann" and l["duration_ms"] > 0 for l in labels)
    shown = {l["task_id"]: l["guideline_version"] for l in labels}  # inherited from the task as shown
    assert shown["text"] == shown["control"] != "" and shown["text"].startswith("1-") and shown["table"] == ""
    assert svc.store.counts()["pending"] == 1, "the skipped task is back in the queue for others"
    assert errors == [], errors  # nor anything the security headers refused
    outside = [u for u in requests if not u.startswith(svc.url)]
    assert outside == [], f"the page asked other hosts: {outside}"


def test_flag_as_ambiguous_then_a_reviewer_decides(service, browser):
    from playwright.sync_api import expect

    settings, svc = service
    annotator = browser.new_context().new_page()
    annotator.goto(svc.link(ANN))
    expect(annotator.locator("#item-id")).to_have_text("item-text")
    expect(annotator.locator("#tab-review")).to_be_hidden()
    annotator.keyboard.press("f")
    expect(annotator.locator("#status")).to_contain_text("Say in the note what makes it ambiguous")
    annotator.keyboard.type("a friend may really be offering a cruise")  # F put the cursor in the note
    annotator.keyboard.press("Escape")
    annotator.keyboard.press("f")
    expect(annotator.locator("#status")).to_have_text("Flagged for a reviewer.")
    expect(annotator.locator("#item-id")).to_have_text("item-table")

    reviewer = browser.new_context().new_page()
    reviewer.goto(svc.link(REV))
    reviewer.locator("#tab-review").click()
    flagged = reviewer.locator("#flagged > li")
    expect(flagged).to_have_count(1)
    expect(flagged).to_contain_text("WIN a FREE cruise")
    expect(flagged).to_contain_text("ann (flag): a friend may really be offering a cruise")
    flagged.get_by_role("button", name="spam", exact=True).click()
    expect(reviewer.locator("#review-empty")).to_be_visible()

    labels = read_labels(settings, expect=1)
    assert [(l["task_id"], l["label"], l["annotator_id"]) for l in labels] == [("text", "spam", "rev")]
