"""The worker's write schedule on the real engine (chDB): a due write takes the tables holding a tenth of a
block and restarts the age; the small tables wait for the commit or SMALL_WAIT (streams.app.Runtime.due_tables)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dashboards.sink import ClickHouseSink, counts
from streams.app import SMALL_WAIT, Runtime

T0 = 1_700_000_000_000


def decision(i: int) -> dict:
    return {"event_id": f"e-{i}", "item_id": f"i-{i}", "ts": T0 + i, "kind": "prediction", "selected": 0,
            "reasons": [], "selection_probability": 0.1, "priority": 0.5, "signals": {"margin": 0.5},
            "task_id": None, "policy_version": "p", "model_version": "1", "shadow_version": 3, "decided_at": T0 + i}


def stats(i: int) -> dict:
    return {"ts": T0 + i, "worker": "w", "agent": "score", "events": 500, "seconds": 0.1, "lag": -1}


def test_a_restarting_flush_of_the_big_tables_leaves_the_small_ones_for_later(db):
    now = [0.0]
    sink = ClickHouseSink(db, batch_size=100, flush_interval=1.0, clock=lambda: now[0])
    sink.add_many("routing_decisions", [decision(i) for i in range(30)])
    sink.add_many("agent_stats", [stats(i) for i in range(3)])
    now[0] = 1.5
    assert sink.due()
    runtime = SimpleNamespace(sink=sink, _all_written=time.monotonic())
    tables = Runtime.due_tables(runtime)
    assert tables == {"routing_decisions"}  # 30 rows: a tenth of the block; agent_stats' 3 are not
    assert sink.flush(tables, restart=True) == 30
    assert sink.pending() == {"agent_stats": 3} and not sink.due(), "the rows left wait another interval"
    now[0] = 2.6
    assert sink.due()
    assert Runtime.due_tables(runtime) == set()  # nothing big: the small ones wait for SMALL_WAIT or the commit
    assert sink.flush(set(), restart=True) == 0 and not sink.due()
    runtime._all_written = time.monotonic() - SMALL_WAIT
    assert Runtime.due_tables(runtime) is None  # every table, SMALL_WAIT after they were all written
    assert sink.flush(Runtime.due_tables(runtime)) == 3
    assert counts(db, tables=("routing_decisions", "agent_stats")) == {"routing_decisions": 30, "agent_stats": 3}


def test_a_flush_of_some_tables_without_restart_leaves_the_age_as_it_was(db):
    now = [0.0]
    sink = ClickHouseSink(db, batch_size=100, flush_interval=1.0, clock=lambda: now[0])
    sink.add_many("routing_decisions", [decision(i) for i in range(30)])
    sink.add("agent_stats", stats(0))
    now[0] = 1.5
    assert sink.flush({"routing_decisions"}) == 30
    assert sink.due(), "the learner's flush of its own tables leaves the others due"
