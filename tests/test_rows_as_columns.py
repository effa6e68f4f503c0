"""A scored message's rows as columns (Loop.score and Loop.preselect_many with ``columns``,
Router.preselect_columns, ClickHouseSink.add_columns) are the rows of the path with one dict a
row, bit for bit: the same predictions and decision rows in the same order, the same candidates
sent to the owner, the same router and policy state, and the same rows in ClickHouse (the real
engine, chDB), a row it refuses found and set aside as in rows."""

from __future__ import annotations

import math

import pytest

from dashboards.sink import ClickHouseSink, SinkError
from feedbackloop import bench
from feedbackloop.producer import as_columns
from feedbackloop.settings import Settings
from streams.loop import Loop
from streams.selection.scorer import Scored

NOW = 1_700_000_000_000


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, and floats bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def rows_of(blocks) -> list[tuple[str, dict]]:
    return [(table, dict(zip(block, values))) for table, block in blocks for values in zip(*block.values())]


def stream(seed: int) -> list[tuple[str, dict]]:
    """PredictionColumns messages of a trained kNN's stream, one message again (re-delivered), one with
    an event twice, and overrides and appeals of items scored before in between."""
    messages = [as_columns(list(bench._events(size, seed=seed * 1000 + i, prefix=f"s{seed}-{i}-")))
                for i, size in enumerate([500, 300, 2, 500, 411])]
    twice = list(bench._events(40, seed=seed * 1000 + 9, prefix=f"s{seed}-t-"))
    out = [("PredictionColumns", m) for m in messages[:3]]
    out.append(("PredictionColumns", messages[1]))  # delivered again
    out.append(("PredictionColumns", as_columns(twice + twice[5:7])))
    item = messages[0]["item_id"][7]
    out.append(("Override", {"event_id": f"o{seed}", "item_id": item, "ts": NOW, "predicted_label": None,
                             "override_label": "b", "user_id": "u", "context": {}}))
    out.append(("Appeal", {"event_id": f"a{seed}", "item_id": messages[2]["item_id"][1], "ts": NOW,
                           "predicted_label": None, "reason": "wrong", "user_id": "u", "context": {}}))
    out += [("PredictionColumns", m) for m in messages[3:]]
    return out


@pytest.fixture(scope="module")
def trained():
    return bench.trained_in_process(Settings(), 300)


def loops(trained, seed):
    record, key = trained
    pair = Loop.build(seed=seed, budget_fraction=0.1), Loop.build(seed=seed, budget_fraction=0.1)
    for loop in pair:
        loop.resume(record, key)
    return pair


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_message_as_columns_gives_the_rows_and_candidates_of_the_rows_path(trained, seed):
    by_rows, by_columns = loops(trained, seed)
    messages = stream(seed)
    before = loops(trained, seed + 10)[0]  # tasks sent before a restart, for events of a later message
    sent = [t for c in before.score(*messages[-1], NOW).candidates[:200] for t in before.route(c, NOW).tasks]
    assert len(sent) >= 2
    for loop in (by_rows, by_columns):
        loop.router.restore(sent)
    decided = set()  # the decisions written, as the sink remembers them: a re-delivered event is left out
    kinds = set()
    for name, record in messages:
        a = by_rows.score(name, record, NOW)
        b = by_columns.score(name, record, NOW, columns=True)
        kinds.add(type(b.candidates).__name__)
        assert same(a.rows, rows_of(b.columns)) and not b.rows
        assert same(list(a.candidates), list(b.candidates))
        a = by_rows.preselect_many(a.candidates, NOW + 1, recorded=decided.__contains__)
        b = by_columns.preselect_many(b.candidates, NOW + 1, recorded=decided.__contains__, columns=True)
        assert same(a.rows, rows_of(b.columns)) and not b.rows
        assert same(a.candidates, b.candidates)
        decided.update(row["event_id"] for _, row in a.rows)
    assert kinds == {"Scored", "list"}  # the kNN's columns, and an override's or appeal's one candidate
    ra, rb = by_rows.router, by_columns.router
    assert ra.labels == rb.labels and list(ra._preselected) == list(rb._preselected)
    assert ra.policy.state() == rb.policy.state()
    assert all(same(by_rows.scorer.seen(i), by_columns.scorer.seen(i)) for i in by_rows.scorer._recent)


def test_the_sink_writes_columns_as_it_writes_the_same_rows(db, trained):
    by_rows, by_columns = loops(trained, 4)
    rows, blocks = [], []
    for name, record in stream(4):
        a, b = by_rows.score(name, record, NOW), by_columns.score(name, record, NOW, columns=True)
        rows += a.rows
        blocks += b.columns
        a, b = by_rows.preselect_many(a.candidates, NOW + 1), by_columns.preselect_many(b.candidates, NOW + 1,
                                                                                         columns=True)
        rows += a.rows
        blocks += b.columns
        for c in a.candidates:  # the owner's decision rows: dicts of a block's columns, written with them
            rows += by_rows.admit(c, NOW + 2).rows
        for c in b.candidates:
            blocks.append(("rows", by_columns.admit(c, NOW + 2).rows))
    rows[5] = (rows[5][0], {**rows[5][1], "item_id": "\ud800"})  # a lone surrogate: no UTF-8 for it
    blocks[0][1]["item_id"][5] = "\ud800"
    written = []
    for how in ("rows", "columns"):
        for table in ("predictions", "routing_decisions", "labeling_tasks", "dead_letters"):
            db.command(f"TRUNCATE TABLE {table}")
        sink = ClickHouseSink(db)
        if how == "rows":
            for table, row in rows:
                sink.add(table, row, project=True)
        else:
            for table, block in blocks:
                if table == "rows":
                    for t, row in block:
                        sink.add(t, row, project=True)
                else:
                    sink.add_columns(table, block, project=True)
        added = sink.pending()
        sink.flush()
        assert [(r.table, r.row["event_id"]) for r in sink.take_rejected()] == [("predictions", rows[5][1]["event_id"])]
        written.append({"skipped": sink.skipped, **added})
        written.append({t: db.query(f"SELECT * EXCEPT ({skip}) FROM {t} FINAL ORDER BY {key}").result_rows
                        for t, key, skip in (("predictions", "event_id", "inserted_at"),
                                             ("routing_decisions", "event_id", "inserted_at"),
                                             ("labeling_tasks", "task_id", "inserted_at"),
                                             ("dead_letters", "event_id", "inserted_at, ts"))})  # ts: the flush's
    assert written[0] == written[2] and written[0]["skipped"] > 300  # the rows buffered and skipped
    assert len(written[1]["predictions"]) > 1500 and len(written[1]["labeling_tasks"]) > 10
    assert len(written[1]["dead_letters"]) == 1
    assert written[1] == written[3]


def test_a_block_of_columns_is_checked_kept_for_a_retry_and_deduplicated(db, tmp_path):
    fault = tmp_path / "down"
    sink = ClickHouseSink(db, fault_path=fault)
    block = {"event_id": ["e1", "e2", "e1"], "item_id": ["i1", "i2", "i1"], "ts": [NOW, NOW + 1, NOW],
             "scored_at": [NOW, NOW, NOW]}
    with pytest.raises(ValueError, match="no column 'colour'"):
        sink.add_columns("predictions", {**block, "colour": ["r"] * 3})
    with pytest.raises(ValueError, match="key column 'event_id'"):
        sink.add_columns("predictions", {"item_id": ["i"]})
    with pytest.raises(ValueError, match="differ in length"):
        sink.add_columns("predictions", {**block, "item_id": ["i1"]})
    assert sink.add_columns("predictions", block) == 2 and sink.skipped == 1
    sink.add("predictions", {"event_id": "e3", "item_id": "i3", "ts": NOW, "scored_at": NOW})  # same columns
    fault.touch()
    with pytest.raises(SinkError, match="3 rows into predictions"):
        sink.flush()
    assert sink.pending() == {"predictions": 3} and sink.due() is False
    fault.unlink()
    assert sink.flush() == 3 and sink.pending() == {}
    assert db.query("SELECT event_id, toUnixTimestamp64Milli(ts) FROM predictions ORDER BY event_id").result_rows \
        == [("e1", NOW), ("e2", NOW + 1), ("e3", NOW)]
    assert sink.add_columns("predictions", block) == 0 and sink.remembers("predictions", "e2")


def test_a_scored_message_makes_a_candidate_only_when_asked(trained):
    loop = loops(trained, 5)[0]
    record = as_columns(list(bench._events(50, seed=5)))
    scored = loop.score("PredictionColumns", record, NOW, columns=True).candidates
    assert isinstance(scored, Scored) and scored._made == [None] * 50
    _, chosen = loop.router.preselect_columns(scored, NOW)
    made = sum(c is not None for c in scored._made)
    assert made == len(chosen) < 50  # only the preselected became dicts
