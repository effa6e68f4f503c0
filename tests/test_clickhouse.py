"""ClickHouse connection, migrations and the batched sink, on the real engine (chDB).

chDB hosts one data directory per process: a client to another directory can be
opened only once every client of the previous one is closed. Each test gets its
own directory and the fixture closes its client afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import datetime, timezone

import pytest

from dashboards.sink import (DATETIME64_MS, TABLE_KEYS, TABLES, ClickHouseSink, SinkError, counts, optimize,
                                      transient)
from dashboards.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate
from dashboards import connection as clickhouse
from dashboards.connection import connect, connect_settings
from feedbackloop.settings import Settings

T0 = 1_700_000_000_000  # epoch millis


@pytest.fixture
def ch_client(tmp_path):
    client = connect("chdb://" + str(tmp_path / "ch"))
    yield client
    client.close()


@pytest.fixture
def db(ch_client):
    migrate(ch_client)
    return ch_client


def prediction(i: int, **extra) -> dict:
    row = {
        "event_id": f"p-{i}", "item_id": f"item-{i % 97}", "ts": T0 + i, "model_name": "prod",
        "model_version": "v1", "predicted_label": "spam" if i % 3 else "ham", "confidence": 0.5 + (i % 50) / 100,
        "shadow_label": None if i % 5 == 0 else "ham", "shadow_version": 3, "scored_at": T0 + i + 5,
    }
    row.update(extra)
    return row


def one_row_per_table(i: int = 0) -> dict[str, dict]:
    return {
        "predictions": prediction(i),
        "routing_decisions": {
            "event_id": f"p-{i}", "item_id": "item-1", "ts": T0, "kind": "prediction", "selected": 1,
            "reasons": ["uncertain", "disagreement"], "selection_probability": 0.2, "priority": 0.9,
            "signals": {"entropy": 0.69}, "task_id": f"t-{i}", "policy_version": "policy-1",
            "model_version": "v1", "shadow_version": 3, "decided_at": T0 + 7,
        },
        "labeling_tasks": {
            "task_id": f"t-{i}", "event_id": f"p-{i}", "item_id": "item-1", "kind": "prediction",
            "created_at": T0 + 7, "source_ts": T0, "reasons": ["uncertain"], "signals": {"entropy": 0.69},
            "selection_probability": 0.2, "priority": 0.9, "suggested_label": "ham", "confidence": 0.51,
            "predicted_label": "spam", "user_label": None, "model_version": "v1", "shadow_version": 3,
            "policy_version": "policy-1",
        },
        "labels": {
            "event_id": f"l-{i}", "task_id": f"t-{i}", "item_id": "item-1", "label": "ham", "annotator_id": "ann-1",
            "ts": T0 + 60_000, "duration_ms": 4200, "note": None, "learned_by_version": 4,
            "shadow_prediction": "spam", "reasons": ["uncertain"], "control": 0,
        },
        "model_versions": {
            "model_name": "shadow", "version": 4 + i, "ts": T0 + 61_000, "labels_seen": 25,
            "prequential_accuracy": 0.8, "control_accuracy": None, "control_labels": 0,
        },
        "dead_letters": {
            "event_id": f"deadletter-{i}", "ts": T0, "topic": "predictions", "partition": 2, "offset": 1234 + i,
            "reason": "undecodable Avro", "error": "DecodeError", "payload": b"\xc3\x01\xff\x00garbage",
        },
        "consensus_labels": {
            "task_id": f"t-{i}", "item_id": "item-1", "label": "ham", "confidence": 0.8, "method": "weighted_vote",
            "annotators": ["ann-1", "ann-2"], "n_labels": 2, "round": 0, "ts": T0 + 61_000, "learned_by_version": 4,
        },
        "adjudications": {
            "task_id": f"t-{i}", "item_id": "item-1", "round": 1, "tier": "annotator",
            "reason": "annotators disagree", "annotators": ["ann-1", "ann-2"], "ts": T0 + 60_000,
        },
        "annotator_quality": {
            "ts": T0 + 60_000 + i, "annotator_id": "ann-1", "labels": 10, "gold_checks": 2, "gold_accuracy": 0.5,
            "agreement_with_majority": 0.9, "flagged": 0,
        },
        "annotator_agreement": {
            "window_start": T0 + i, "window_seconds": 0, "annotator_a": "ann-1", "annotator_b": "ann-2",
            "metric": "cohen_kappa", "value": 0.7, "n": 12, "guideline_version": "",
        },
        "drift_events": {"ts": T0 + i, "model_name": "shadow", "version": 3, "detector": "adwin", "detail": "{}"},
        "policy_lift": {"ts": T0 + i, "version": 3, "policy_accuracy": 0.8, "control_accuracy": 0.7, "lift": 0.1,
                        "ci_low": 0.0, "ci_high": 0.2, "n_policy": 50, "n_control": 20},
        "stopping_signals": {"ts": T0 + i, "version": 3, "metric": "kappa_average", "value": 0.9,
                             "recommendation": "continue"},
        "budget_state": {"ts": T0 + i, "spent_hour": 3, "spent_day": 9, "spent_week": 9, "cap_hour": 100,
                         "cap_day": 1000, "cap_week": None, "target_fraction": 0.1, "realised_fraction": 0.09},
        "agent_stats": {"ts": T0 + i, "worker": "w1", "agent": "score", "events": 500, "seconds": 0.2, "lag": 0},
        "audit_log": {"event_id": f"a-{i}", "ts": T0 + i, "action": "label", "annotator_id": "ann-1",
                      "role": "annotator", "client": "10.0.0.7", "task_id": f"t-{i}", "detail": "ham",
                      "service": "labeling-1:42"},
        "label_savings": {"ts": T0 + i, "version": 3, "policy_labels": 40, "random_labels_needed": 80,
                          "target_accuracy": 0.8, "ratio": 0.5, "ci_low": 0.3, "ci_high": 0.9, "policy_labels_seen": 90,
                          "policy_accuracy": 0.85, "random_labels_seen": 85, "random_accuracy": 0.8, "n_eval": 40},
        "production_accuracy": {"ts": T0 + i, "version": 3, "model_name": "prod", "model_version": "v1",
                                "estimator": "weighted", "metric": "recall", "class": "spam", "value": 0.8,
                                "ci_low": 0.7, "ci_high": 0.9, "n": 40, "weight": 400.0},
        "suspect_labels": {"ts": T0 + i, "task_id": f"t-{i}", "item_id": "item-1", "status": "found", "version": 3,
                           "label": "ham", "suggested_label": "spam", "probability": 0.1, "threshold": 0.7,
                           "suggested_probability": 0.9, "score": 0.8, "reason": "low", "annotators": ["ann-1"]},
    }


# -- connect ----------------------------------------------------------------------

def test_connect_chdb_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b"
    client = connect(f"chdb://{path}")
    try:
        assert client.command("SELECT 1") == 1
        assert path.is_dir()
    finally:
        client.close()


def test_connect_settings_uses_the_dsn(tmp_path):
    settings = Settings.from_env({"FEEDBACKLOOP_STATE_DIR": str(tmp_path / "state")})
    assert settings.clickhouse_dsn == "chdb://" + str((tmp_path / "state" / "clickhouse").resolve())
    client = connect_settings(settings)
    try:
        assert client.command("SELECT 2") == 2
    finally:
        client.close()


def test_connect_server_passes_credentials_and_database(monkeypatch):
    calls = []
    monkeypatch.setattr(clickhouse.clickhouse_connect, "get_client", lambda **kw: calls.append(kw) or "client")
    assert connect("https://ch.example:8443/analytics", "bob", "pw") == "client"
    assert calls[-1] == {"dsn": "https://ch.example:8443/analytics", "interface": "https", "username": "bob", "password": "pw"}
    connect("http://localhost:8123")
    assert calls[-1]["interface"] == "http" and calls[-1]["username"] is None


def test_connect_rejects_other_schemes_without_leaking_the_password():
    with pytest.raises(ValueError, match="unsupported") as info:
        connect("tcp://bob:s3cret@localhost:9000")
    assert "s3cret" not in str(info.value)


def test_a_second_data_directory_needs_the_first_closed(ch_client, tmp_path):
    """chDB quirk: one engine path per process while a client is open."""
    with pytest.raises(ConnectionError, match="one data directory at a time"):
        connect("chdb://" + str(tmp_path / "other"))
    same = connect("chdb://" + str(tmp_path / "ch"))  # more clients of the same path are fine
    assert same.command("SELECT 3") == 3
    same.close()


# -- migrations -------------------------------------------------------------------

def test_migrations_apply_once(ch_client):
    shipped = load_migrations()
    assert migrate(ch_client) == [f"{m.version:04d}_{m.name}" for m in shipped]
    tables = {r[0] for r in ch_client.query("SHOW TABLES").result_rows}
    assert set(TABLES) | {"schema_migrations"} <= tables
    assert migrate(ch_client) == []
    rows = ch_client.query("SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version").result_rows
    assert rows == [(m.version, m.name, m.checksum) for m in shipped]


def test_every_table_is_replacing_and_ordered_by_its_key(db):
    for table, key in TABLE_KEYS.items():
        engine, sorting = db.query(
            "SELECT engine, sorting_key FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table}).result_rows[0]
        assert engine == "ReplacingMergeTree"
        assert sorting == ", ".join(key)


def test_new_migration_is_applied_and_a_changed_one_refused(ch_client, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_core.sql", folder)
    assert migrate(ch_client, folder) == ["0001_core"]

    (folder / "0002_notes.sql").write_text(
        "-- a second migration\nALTER TABLE labels ADD COLUMN IF NOT EXISTS reviewer Nullable(String);\n"
        "CREATE TABLE IF NOT EXISTS notes (id String) ENGINE = ReplacingMergeTree ORDER BY id;\n")
    assert migrate(ch_client, folder) == ["0002_notes"]
    assert ch_client.command("SELECT count() FROM system.columns WHERE table = 'labels' AND name = 'reviewer'") == 1

    core = folder / "0001_core.sql"
    core.write_text(core.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match="0001_core.*checksum"):
        migrate(ch_client, folder)


def test_a_failed_migration_is_not_recorded(ch_client, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_broken.sql").write_text("CREATE TABLE IF NOT EXISTS ok (x UInt8) ENGINE = Memory;\nSELEC nonsense;\n")
    with pytest.raises(MigrationError, match="0001_broken, statement 2"):
        migrate(ch_client, folder)
    assert ch_client.command("SELECT count() FROM schema_migrations") == 0
    (folder / "0001_broken.sql").write_text("CREATE TABLE IF NOT EXISTS ok (x UInt8) ENGINE = Memory;\n")
    assert migrate(ch_client, folder) == ["0001_broken"]


def test_badly_named_migration_file(tmp_path):
    (tmp_path / "create_tables.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        load_migrations(tmp_path)


# -- sink -------------------------------------------------------------------------

def test_sink_writes_every_table(db):
    sink = ClickHouseSink(db)
    for table, row in one_row_per_table().items():
        assert sink.add(table, row)
    assert sink.pending() == {t: 1 for t in TABLES}
    assert sink.flush() == len(TABLES)
    assert len(sink) == 0
    assert counts(db) == {t: 1 for t in TABLES}


def test_rows_round_trip(db):
    sink = ClickHouseSink(db)
    rows = one_row_per_table()
    rows["predictions"]["ts"] = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)
    for table, row in rows.items():
        sink.add(table, row)
    sink.flush()

    p = db.query("SELECT * FROM predictions").named_results().__next__()
    assert p["ts"] == datetime(2023, 11, 14, 22, 13, 20, 123000)  # UTC, returned naive
    assert p["scored_at"] == datetime(2023, 11, 14, 22, 13, 20, 5000)
    assert "signals" not in p  # stored once, in the decision row (migration 0019)
    assert p["shadow_label"] is None

    r = next(db.query("SELECT reasons, signals, task_id, selected FROM routing_decisions").named_results())
    assert r == {"reasons": ["uncertain", "disagreement"], "signals": {"entropy": 0.69}, "task_id": "t-0", "selected": 1}
    t = next(db.query("SELECT suggested_label, user_label FROM labeling_tasks").named_results())
    assert t == {"suggested_label": "ham", "user_label": None}
    m = next(db.query("SELECT version, prequential_accuracy, control_accuracy FROM model_versions").named_results())
    assert m == {"version": 4, "prequential_accuracy": 0.8, "control_accuracy": None}
    payload = db.query("SELECT payload FROM dead_letters", query_formats={"String": "bytes"}).result_rows[0][0]
    assert payload == b"\xc3\x01\xff\x00garbage"


def test_missing_columns_take_their_defaults(db):
    sink = ClickHouseSink(db)
    label = one_row_per_table()["labels"]
    for column in ("learned_by_version", "control", "note", "shadow_prediction"):
        del label[column]
    sink.add("labels", label)
    sink.add("labels", one_row_per_table(1)["labels"])  # a full row: a second insert
    sink.flush()
    rows = db.query("SELECT event_id, learned_by_version, control, note, shadow_prediction FROM labels ORDER BY event_id")
    assert rows.result_rows == [("l-0", 0, 0, None, None), ("l-1", 4, 0, None, "spam")]


def test_readding_a_batch_in_one_sink_is_skipped(db):
    sink = ClickHouseSink(db)
    batch = [prediction(i) for i in range(100)]
    assert sink.add_many("predictions", batch) == 100
    assert sink.add_many("predictions", batch) == 0  # still buffered
    sink.flush()
    assert sink.add_many("predictions", batch[:50] + [prediction(i) for i in range(100, 110)]) == 10
    sink.flush()
    assert sink.skipped == 150
    assert counts(db, final=False)["predictions"] == 110


def test_a_second_sink_collapses_on_final_and_optimize(db):
    batch = [prediction(i) for i in range(200)]
    for _ in range(2):  # e.g. a worker restarted and re-read the same offsets
        sink = ClickHouseSink(db)
        sink.add_many("predictions", batch)
        sink.flush()
    assert counts(db)["predictions"] == 200
    optimize(db)
    assert counts(db, final=False)["predictions"] == 200


def test_rows_survive_reopening_and_redelivery_counts_once_without_final(tmp_path):
    dsn = "chdb://" + str(tmp_path / "ch")
    for _ in range(2):
        client = connect(dsn)
        try:
            assert migrate(client) in ([f"{m.version:04d}_{m.name}" for m in load_migrations()], [])
            sink = ClickHouseSink(client)
            sink.remember_recent()
            sink.add_many("labels", [one_row_per_table(i)["labels"] for i in range(10)])
            sink.flush()
            assert counts(client, final=False, tables=["labels"]) == {"labels": 10}
        finally:
            client.close()


def test_labels_keep_the_row_written_after_learning(db):
    sink = ClickHouseSink(db)
    first = one_row_per_table()["labels"] | {"learned_by_version": 5}
    sink.add("labels", first)
    sink.flush()
    other = ClickHouseSink(db)
    other.add("labels", first | {"learned_by_version": 0})
    other.flush()
    assert db.query("SELECT learned_by_version FROM labels FINAL").result_rows == [(5,)]


def test_model_versions_key_on_name_and_version(db):
    sink = ClickHouseSink(db)
    v = one_row_per_table()["model_versions"]
    assert sink.add("model_versions", v)
    assert not sink.add("model_versions", dict(v))
    assert sink.add("model_versions", v | {"model_name": "other"})
    sink.flush()
    assert counts(db, tables=["model_versions"]) == {"model_versions": 2}


def test_flush_by_size(db):
    sink = ClickHouseSink(db, batch_size=3, flush_interval=60, clock=lambda: 0.0)
    for i in range(2):
        sink.add("predictions", prediction(i))
        assert sink.maybe_flush() == 0
    sink.add("predictions", prediction(2))
    assert sink.due()
    assert sink.maybe_flush() == 3
    assert counts(db)["predictions"] == 3


def test_flush_by_interval(db):
    now = [0.0]
    sink = ClickHouseSink(db, batch_size=1000, flush_interval=1.0, clock=lambda: now[0])
    now[0] = 5.0
    assert not sink.due()  # nothing buffered
    sink.add("predictions", prediction(0))
    now[0] = 5.5
    assert sink.due()  # the last flush was 5.5 s ago
    assert sink.maybe_flush() == 1
    sink.add("predictions", prediction(1))
    now[0] = 6.4
    assert sink.maybe_flush() == 0
    now[0] = 6.5
    assert sink.maybe_flush() == 1
    assert counts(db)["predictions"] == 2


def test_flush_on_an_executor_thread_while_adding(db):
    sink = ClickHouseSink(db)
    errors = []

    def flush_repeatedly():
        try:
            for _ in range(20):
                sink.flush()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=flush_repeatedly)
    thread.start()
    for i in range(3000):
        sink.add("predictions", prediction(i))
    thread.join()
    sink.flush()
    assert not errors
    assert counts(db, final=False)["predictions"] == 3000


def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_lands(db):
    sink = ClickHouseSink(db)
    rows = [prediction(i) for i in range(50)]
    rows[17] = prediction(17, item_id="\ud800")  # a lone surrogate: no UTF-8 for it
    rows[33] = prediction(33, confidence="not a number")
    sink.add_many("predictions", rows)
    sink.add("labels", one_row_per_table()["labels"])
    assert sink.flush() == 48 + 1 + 2  # 48 predictions, the label, 2 dead letters
    assert counts(db, final=False, tables=["predictions", "labels", "dead_letters"]) == {
        "predictions": 48, "labels": 1, "dead_letters": 2}
    assert sorted(db.query("SELECT event_id FROM predictions").result_columns[0]) == sorted(
        f"p-{i}" for i in range(50) if i not in (17, 33))

    rejected = sink.take_rejected()
    assert [(r.table, r.row["event_id"]) for r in rejected] == [("predictions", "p-17"), ("predictions", "p-33")]
    assert "UnicodeEncodeError" in rejected[0].error and "could not convert string to float" in rejected[1].error
    assert sink.take_rejected() == []
    letters = db.query("SELECT topic, `partition`, key, error, reason, payload FROM dead_letters ORDER BY key")
    for (topic, partition, key, error, reason, payload), i in zip(letters.result_rows, (17, 33)):
        assert (topic, partition, key, error) == ("clickhouse:predictions", -1, f'"p-{i}"', "unstorable_row")
        assert reason.startswith("ClickHouse refused a predictions row: ")
        assert json.loads(payload) == rows[i]  # the row as it was, lone surrogate included
    assert not sink.add("predictions", rows[17])  # re-delivered: seen already
    assert sink.flush() == 0


def test_a_block_over_101_monthly_partitions_lands_whole_by_bisection(db):
    months = [prediction(i, ts=int(datetime(2020 + i // 12, 1 + i % 12, 15, tzinfo=timezone.utc).timestamp() * 1000))
              for i in range(101)]
    with pytest.raises(Exception) as refused:  # what ClickHouse says to one insert of them all
        ClickHouseSink(db)._describe("predictions")
        db.insert("predictions", [(r["event_id"], r["item_id"], r["ts"]) for r in months],
                  column_names=["event_id", "item_id", "ts"])
    assert refused.value.code == 252 and not transient(refused.value)
    sink = ClickHouseSink(db)
    sink.add_many("predictions", months)
    assert sink.flush() == 101
    assert sink.take_rejected() == []
    assert counts(db, final=False, tables=["predictions", "dead_letters"]) == {"predictions": 101, "dead_letters": 0}
    assert db.command("SELECT uniqExact(toYYYYMM(ts)) FROM predictions") == 101


def test_a_block_over_too_many_partitions_is_cut_by_partition(db):
    """5,000 rows over 150 months, interleaved: halves of the rows sorted by month fit at once."""
    sink = ClickHouseSink(db)
    sink.add_many("predictions", [prediction(i, ts=int(datetime(2014 + i % 150 // 12, 1 + i % 150 % 12, 1,
                                                               tzinfo=timezone.utc).timestamp() * 1000))
                                  for i in range(5000)])
    assert sink.flush() == 5000
    assert db.command("SELECT uniqExact(toYYYYMM(ts)) FROM predictions") == 150
    parts = db.command("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'predictions'")
    assert parts <= 2 * 150  # two inserts of 75 months each, not dozens of slices over every month


def test_times_datetime64_cannot_hold_are_dead_lettered(db):
    sink = ClickHouseSink(db)
    sink.add("predictions", prediction(0))
    sink.add("predictions", prediction(1, ts=10**16))  # year 318857
    sink.add("predictions", prediction(2, scored_at=-3 * 10**12))  # 1874
    sink.add("predictions", prediction(3, ts=DATETIME64_MS[1], scored_at=DATETIME64_MS[0]))  # the very edges
    assert sink.flush() == 2 + 2
    rejected = {r.row["event_id"]: r.error for r in sink.take_rejected()}
    assert rejected == {"p-1": "ts is 10000000000000000, outside the range of DateTime64 (1900-01-01 to 2299-12-31)",
                        "p-2": "scored_at is -3000000000000, outside the range of DateTime64 (1900-01-01 to 2299-12-31)"}
    rows = db.query("SELECT event_id, ts, scored_at FROM predictions ORDER BY event_id").result_rows  # all readable
    assert rows[1] == ("p-3", datetime(2299, 12, 31, 23, 59, 59, 999000), datetime(1900, 1, 1))


def test_a_transient_failure_keeps_the_rows_then_writes_them_once(db, tmp_path):
    fault = tmp_path / "clickhouse-down"
    sink = ClickHouseSink(db, fault_path=fault)
    sink.add_many("predictions", [prediction(i) for i in range(10)])
    sink.add("labels", one_row_per_table()["labels"])
    fault.touch()
    for _ in range(3):
        with pytest.raises(SinkError, match="10 rows into predictions failed, kept for a retry") as info:
            sink.flush()
        assert info.value.transient
        assert isinstance(info.value.__cause__, ConnectionError)
    assert sink.pending() == {"predictions": 10, "labels": 1}
    assert sink.take_rejected() == []
    sink.add("predictions", prediction(10))  # the stream goes on adding meanwhile
    fault.unlink()
    assert sink.flush() == 12
    assert sink.flush() == 0
    assert counts(db, final=False, tables=["predictions", "labels", "dead_letters"]) == {
        "predictions": 11, "labels": 1, "dead_letters": 0}


def test_the_fault_hook_is_a_setting(tmp_path):
    path = str(tmp_path / "fault")
    assert Settings.from_env({"FEEDBACKLOOP_SINK_FAULT_PATH": path}).sink_fault_path == path
    assert Settings().sink_fault_path == ""


def test_transient_or_about_the_rows(db, free_port):
    assert transient(ConnectionResetError()) and transient(TimeoutError())
    with pytest.raises(Exception) as closed:  # a ClickHouse server that is not up
        clickhouse.clickhouse_connect.get_client(host="127.0.0.1", port=free_port(), connect_timeout=2)
    assert transient(closed.value)
    with pytest.raises(Exception) as missing:  # for an operator to fix: the rows are not to blame
        db.insert("no_such_table", [("x",)], column_names=["event_id"], column_type_names=["String"])
    assert missing.value.code == 60 and transient(missing.value)
    with pytest.raises(Exception) as busy:
        raise type(missing.value)("Code: 252. DB::Exception: Too many parts (3001). Merges are processing "
                                  "significantly slower than inserts", code=252)
    assert transient(busy.value)  # the same code, but the server is behind
    with pytest.raises(UnicodeEncodeError) as surrogate:
        db.insert("predictions", [("\ud800",)], column_names=["event_id"], column_type_names=["String"])
    assert not transient(surrogate.value)


# -- restarts -----------------------------------------------------------------------

#: The tables migration 0011 gives an ``inserted_at`` column (a later table has its own).
STAMPED = re.findall(r"^ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS inserted_at",
                     (MIGRATIONS_DIR / "0011_inserted_at.sql").read_text(), re.M)


def stamped(client) -> set[str]:
    return set(client.query("SELECT table FROM system.columns WHERE database = currentDatabase() "
                            "AND name = 'inserted_at' AND type = 'DateTime64(3, \\'UTC\\')'").result_columns[0])


def test_a_new_sink_remembers_what_was_written_before_a_restart(db):
    rows = {t: [one_row_per_table(i)[t] for i in range(20)] for t in TABLES}
    before = ClickHouseSink(db)
    for table, batch in rows.items():
        before.add_many(table, batch)
    before.flush()
    assert counts(db, final=False) == {t: 20 for t in TABLES}

    after = ClickHouseSink(db)  # the worker restarted; its input is re-delivered
    assert after.remember_recent() == {t: 20 for t in TABLES if t in stamped(db)}
    for table, batch in rows.items():
        if table not in stamped(db):
            continue
        redelivered = [dict(r) for r in batch]
        for r in redelivered:  # times as datetimes this time: keyed alike
            for column in ("ts", "window_start"):
                if column in r and table in ("consensus_labels", "annotator_agreement", "agent_stats"):
                    r[column] = datetime.fromtimestamp(r[column] / 1000, timezone.utc)
        assert after.add_many(table, redelivered) == 0, table
    assert after.remembers("routing_decisions", "p-3") and not after.remembers("routing_decisions", "p-99")
    assert after.remembers("consensus_labels", ("t-3", T0 + 61_000))
    after.add_many("predictions", [prediction(i) for i in range(15, 25)])  # 5 new
    after.flush()
    assert counts(db, final=False, tables=STAMPED) == {t: 25 if t == "predictions" else 20 for t in STAMPED}


def test_remember_recent_counts_back_from_the_newest_row_not_from_now(db):
    hours_ago = int(datetime.now(timezone.utc).timestamp() * 1000) - 5 * 3_600_000
    sink = ClickHouseSink(db)
    for i in range(30):  # written 5 hours ago, one second apart; the worker was down since
        sink.add("predictions", {**prediction(i), "inserted_at": hours_ago + i * 1000})
    sink.flush()
    seeded = ClickHouseSink(db)
    assert seeded.remember_recent(seconds=9.5)["predictions"] == 10  # the rows of the last 9.5 s before the newest
    assert [seeded.remembers("predictions", f"p-{i}") for i in (19, 20, 29)] == [False, True, True]
    assert ClickHouseSink(db).remember_recent(seconds=9.5, limit=4)["predictions"] == 4
    assert ClickHouseSink(db).remember_recent()["labels"] == 0


def test_a_dead_letter_is_written_once_across_a_restart(db):
    bad = prediction(1, item_id="\ud800")
    for _ in range(2):  # rejected, the worker restarts before its offset is committed, rejected again
        sink = ClickHouseSink(db)
        sink.remember_recent()
        sink.add_many("predictions", [prediction(0), bad])
        sink.flush()
        assert [r.row["event_id"] for r in sink.take_rejected()] == ["p-1"]
    assert counts(db, final=False, tables=["predictions", "dead_letters"]) == {"predictions": 1, "dead_letters": 1}


def test_every_table_of_the_sink_records_when_rows_arrived(db):
    sink = ClickHouseSink(db)
    sink.add("labels", one_row_per_table()["labels"])
    sink.flush()
    arrived = db.command("SELECT dateDiff('second', inserted_at, now64(3)) FROM labels")
    assert 0 <= arrived < 60
    assert len(STAMPED) == 15 and set(STAMPED) <= set(TABLES)
    assert set(STAMPED) <= stamped(db)


def test_a_table_without_inserted_at_is_not_remembered(db):
    db.command("ALTER TABLE budget_state DROP COLUMN inserted_at")
    sink = ClickHouseSink(db)
    sink.add("budget_state", one_row_per_table()["budget_state"])
    sink.flush()
    seeded = ClickHouseSink(db).remember_recent()
    assert "budget_state" not in seeded and seeded["predictions"] == 0


def test_bad_rows_are_refused_on_add(db):
    sink = ClickHouseSink(db)
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        sink.add("nope", {})
    with pytest.raises(ValueError, match="no column 'colour'"):
        sink.add("predictions", prediction(0, colour="red"))
    with pytest.raises(ValueError, match="key column 'event_id'"):
        sink.add("labels", {"task_id": "t"})
    with pytest.raises(ValueError, match="predictions.ts"):
        sink.add("predictions", prediction(1, ts="yesterday"))
    assert sink.add("predictions", prediction(1))  # the refused row's key was not kept
    assert len(sink) == 1


def test_a_table_that_does_not_exist_says_migrate(ch_client):
    with pytest.raises(ValueError, match="run the migrations"):
        ClickHouseSink(ch_client).add("predictions", prediction(0))

