"""The dashboard page in a real browser, after a real demo.

The demo runs the whole loop on the local broker; then the page is served from
the demo's ClickHouse and loaded in headless Chromium (Debian's package, driven
by Playwright; no browser download). The plots must be drawn, with the numbers
ClickHouse holds; a row written afterwards must show up without a reload; and a
screenshot is kept.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from feedbackloop import dashboard, demo
from dashboards.connection import connect

pytestmark = pytest.mark.kafka

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def after_demo(kafka, tmp_path_factory):
    """A finished demo's report, and the page served from its ClickHouse."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("worker"))  # where the demo's worker keeps its local state
    try:
        settings = kafka.replace(state_dir=str(tmp_path_factory.mktemp("demo")), budget_fraction=0.2,
                                 control_fraction=0.2, publish_every=10, min_control=5)
        report = demo.play(settings, events=1500, rate=1500, seed=3, progress=False)
    finally:
        os.chdir(here)
    server = dashboard.start(settings.replace(clickhouse_dsn=report["clickhouse_dsn"]), port=0)
    try:
        yield report, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(after_demo):
    from playwright.sync_api import sync_playwright

    _, server = after_demo
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "?refresh=1")
            page.wait_for_selector("body[data-updates]", timeout=30_000)
            page.errors = errors
            yield page
        finally:
            browser.close()


def numbers(page, selector: str) -> list[tuple[str, float]]:
    """(series, y) of the marks drawn for ``selector``."""
    return [tuple(m) for m in page.eval_on_selector_all(selector, "els => els.map(e => [e.dataset.series, +e.dataset.y])")]


def test_the_plots_show_what_clickhouse_holds(after_demo, page, tmp_path):
    report, server = after_demo
    client = server.dashboard.client
    with server.dashboard.lock:
        scalar = lambda sql: client.query(sql).result_rows[0][0]  # noqa: E731
        truth = {
            "predictions": scalar("SELECT count() FROM predictions FINAL"),
            "tasks": scalar("SELECT count() FROM labeling_tasks FINAL"),
            "labels": scalar("SELECT count() FROM labels FINAL"),
            "model_version": scalar("SELECT max(version) FROM model_versions FINAL"),
        }
        labelled = scalar("SELECT uniqExact(task_id) FROM labels FINAL")
        control = client.query("SELECT labels_seen, round(control_accuracy, 4) FROM model_versions FINAL "
                               "WHERE control_accuracy IS NOT NULL ORDER BY labels_seen").result_rows
        by_reason = dict(client.query("SELECT reason, count() FROM labeling_tasks FINAL "
                                      "ARRAY JOIN reasons AS reason GROUP BY reason").result_rows)
        by_annotator = dict(client.query("SELECT annotator_id, count() FROM labels FINAL "
                                         "GROUP BY annotator_id").result_rows)
    assert truth["predictions"] == report["predictions"] == 1500
    # every task labelled; a review of a suspect label is one more label on the same task
    assert truth["tasks"] > 50 and labelled == truth["tasks"] <= truth["labels"] and len(control) >= 2

    tiles = dict(page.eval_on_selector_all("#panel-overview .tile",
                                           "els => els.map(e => [e.dataset.column, e.dataset.value])"))
    assert {k: int(tiles[k]) for k in truth} == truth

    # learning curve: one point per model version, at its control accuracy
    points = page.eval_on_selector_all("#panel-learning_curve circle.point[data-series='control slice']",
                                       "els => els.map(e => [+e.dataset.x, +e.dataset.y])")
    assert sorted(map(tuple, points)) == [(float(x), float(y)) for x, y in control]
    assert page.locator("#panel-learning_curve path.series-line").count() == 2

    # reasons mix: stacked bars add up to the tasks of each reason
    drawn = Counter()
    for reason, value in numbers(page, "#panel-reasons_mix rect.bar"):
        drawn[reason] += value
    assert drawn == by_reason and {"control", "override"} <= set(drawn)

    # annotator overview and budget burn
    bars = page.eval_on_selector_all("#panel-annotators rect.bar", "els => els.map(e => [e.dataset.x, +e.dataset.y])")
    assert dict(bars) == by_annotator and len(by_annotator) == 3
    bought = [y for s, y in numbers(page, "#panel-budget_burn circle.point") if s == "tasks this hour"]
    assert bought == sorted(bought) and bought[-1] <= truth["tasks"]

    # throughput: every stage has points, and the scorer handled every prediction
    stages = Counter()
    for stage, per_second in numbers(page, "#panel-throughput circle.point"):
        stages[stage] += per_second * 60
    assert {"score", "route", "learn"} <= set(stages)
    assert stages["score"] == pytest.approx(truth["predictions"], abs=1)

    # the plots are really drawn: visible, inside their panel, not collapsed
    for name in ("learning_curve", "budget_burn", "reasons_mix", "annotators", "throughput"):
        box = page.locator(f"#panel-{name} svg.chart").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100, name
    for name in ("agreement_over_time", "drift_events"):  # drawn, or said to be empty, never an error
        assert page.locator(f"#panel-{name} .error").count() == 0
        assert page.locator(f"#panel-{name} svg.chart, #panel-{name} .empty").count() == 1
    assert not page.errors

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_the_page_follows_new_rows_without_a_reload(after_demo, page):
    _, server = after_demo
    updates = int(page.evaluate("document.body.dataset.updates"))
    with server.dashboard.lock:
        server.dashboard.client.command(
            "INSERT INTO drift_events (ts, model_name, version, detector, detail) "
            "VALUES (now64(3), 'shadow', 1, 'adwin:control_error', '{\"width\": 40}')")
    page.wait_for_function(f"+document.body.dataset.updates > {updates + 1}", timeout=20_000)
    page.wait_for_selector("#panel-drift_events rect.bar", timeout=20_000)
    assert numbers(page, "#panel-drift_events rect.bar") == [("adwin:control_error", 1.0)]
