"""The bench's bare loop takes the worker's path (:func:`feedbackloop.bench.bare_message`: a message
scored and preselected as columns, the preselected admitted), and that path gives every event the
decision row, and every selected one the task, :meth:`Loop.route` gives it one candidate at a time."""

from __future__ import annotations

import pytest

from feedbackloop import bench
from feedbackloop.producer import as_columns
from feedbackloop.settings import Settings
from streams.loop import Loop

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def trained():
    return bench.trained_in_process(Settings(), 300)


def by_event(rows) -> dict:
    """``(table, event_id) -> row`` of every row; each event has one row per table."""
    out = {}
    for table, row in rows:
        assert (table, row["event_id"]) not in out
        out[table, row["event_id"]] = row
    return out


def as_rows(effects) -> list[tuple[str, dict]]:
    blocks = [(table, dict(zip(block, values))) for table, block in effects.columns for values in zip(*block.values())]
    return blocks + effects.rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bare_loop_decides_as_route_does(trained, seed):
    record, key = trained
    routed, bare = Loop.build(seed=seed), Loop.build(seed=seed)
    for loop in (routed, bare):
        loop.resume(record, key)
    messages = [("PredictionColumns", as_columns(list(bench._events(n, seed=seed * 100 + i, prefix=f"b{seed}-{i}-"))))
                for i, n in enumerate([500, 500, 37])]
    messages.append(("PredictionBatch", {"events": list(bench._events(60, seed=seed * 100 + 7, prefix=f"p{seed}-"))}))
    messages.append(("Prediction", next(bench._events(1, seed=seed * 100 + 8, prefix=f"one{seed}-"))))
    rows_a, rows_b, tasks_a, tasks_b = [], [], [], []
    for name, message in messages:
        scored = routed.score(name, message, NOW)
        rows_a += scored.rows
        for c in scored.candidates:
            out = routed.route(c, NOW)
            rows_a += out.rows
            tasks_a += out.tasks
        out = bench.bare_message(bare, name, message, NOW)
        rows_b += as_rows(out)
        tasks_b += out.tasks
    a, b = by_event(rows_a), by_event(rows_b)
    assert a == b and len(a) == 2 * 1098 + len(tasks_a)
    assert sorted(t["task_id"] for t in tasks_a) == sorted(t["task_id"] for t in tasks_b) and len(tasks_a) > 50
    assert {t["task_id"]: t for t in tasks_a} == {t["task_id"]: t for t in tasks_b}
    assert routed.router.policy.state() == bare.router.policy.state()
