"""ClickHouseSink.add_many buffers and writes what add, one row at a time, does (on the real engine, chDB)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dashboards.sink import ClickHouseSink

T0 = 1_700_000_000_000


def decision(i: int, **extra) -> dict:
    row = {"event_id": f"e-{i % 40}", "item_id": f"i-{i}", "ts": T0 + i, "kind": "prediction", "selected": i % 2,
           "reasons": ["uncertain"] if i % 2 else [], "selection_probability": 0.1 * (i % 10), "priority": 0.5,
           "signals": {"margin": i / 100}, "task_id": None, "policy_version": "p", "model_version": "1",
           "shadow_version": 3, "decided_at": T0 + i + 1}
    row.update(extra)
    return row


def mixed(n: int = 120) -> list[dict]:
    """Usual rows, repeated keys, rows with keys the table lacks, datetimes and a naive datetime."""
    rows = []
    for i in range(n):
        if i % 7 == 3:
            rows.append(decision(i, features={"x": 1.0}))  # projected away
        elif i % 11 == 5:
            rows.append(decision(i, ts=datetime(2023, 11, 14, 22, 13, 20, i * 1000, tzinfo=timezone.utc)))
        elif i % 13 == 6:
            rows.append(decision(i, decided_at=datetime(2023, 11, 14, 22, 13, 21)))
        else:
            rows.append(decision(i))
    return rows


def test_add_many_buffers_and_writes_what_add_does(db):
    one, many = ClickHouseSink(db), ClickHouseSink(db)
    rows = mixed()
    added = [one.add("routing_decisions", row, project=True) for row in rows]
    assert many.add_many("routing_decisions", rows[:50], project=True) + \
        many.add_many("routing_decisions", iter(rows[50:]), project=True) == sum(added) == 40
    assert many._buffers["routing_decisions"] == one._buffers["routing_decisions"]
    assert many.skipped == one.skipped == len(rows) - 40
    many.flush()
    written = db.query("SELECT event_id, ts, decided_at, signals FROM routing_decisions ORDER BY event_id").result_rows
    assert len(written) == 40 and written[3][0] == "e-11" and written[3][3] == {"margin": 0.11}


def test_add_many_refuses_unknown_columns_and_rows_without_a_key_after_buffering_those_before(db):
    sink = ClickHouseSink(db)
    with pytest.raises(ValueError, match="no column 'features'"):
        sink.add_many("routing_decisions", [decision(1), decision(2, features={})])
    assert sink.pending() == {"routing_decisions": 1}
    bad = decision(3)
    del bad["event_id"]
    with pytest.raises(ValueError, match="key column 'event_id'"):
        sink.add_many("routing_decisions", [decision(4), bad])
    assert sink.pending() == {"routing_decisions": 2}
    with pytest.raises(ValueError, match="unknown table"):
        sink.add_many("nowhere", [decision(5)])
    assert sink.add_many("agent_stats", [{"ts": T0, "worker": "w", "agent": "score", "events": 1, "seconds": 0.1,
                                          "lag": -1}] * 2) == 1  # a key of several columns
