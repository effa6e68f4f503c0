"""ClickHouse connection, migrations and the batched sink, on the real engine (chDB).

chDB hosts one data directory per process: a client to another directory can be
opened only once every client of the previous one is closed. Each test gets its
own directory and the fixture closes its client afterwards.
"""

from __future__ import annotations

import shutil
import threading
from datetime import datetime, timezone

import pytest

from consumers.clickhouse_sink import TABLE_KEYS, TABLES, ClickHouseSink, SinkError, counts, optimize
from dashboards.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate
from feedbackloop import clickhouse
from feedbackloop.clickhouse import connect, connect_settings
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
        "shadow_label": None if i % 5 == 0 else "ham", "shadow_version": 3,
        "signals": {"entropy": 0.1 * (i % 7), "margin": 0.25}, "scored_at": T0 + i + 5,
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
            "metric": "cohen_kappa", "value": 0.7, "n": 12,
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
    assert p["signals"] == {"entropy": 0.0, "margin": 0.25}
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


def test_rows_survive_reopening_and_redelivery_still_counts_once(tmp_path):
    dsn = "chdb://" + str(tmp_path / "ch")
    for _ in range(2):
        client = connect(dsn)
        try:
            assert migrate(client) in ([f"{m.version:04d}_{m.name}" for m in load_migrations()], [])
            sink = ClickHouseSink(client)
            sink.add_many("labels", [one_row_per_table(i)["labels"] for i in range(10)])
            sink.flush()
            assert counts(client, tables=["labels"]) == {"labels": 10}
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


def test_a_failed_insert_keeps_its_rows(db):
    sink = ClickHouseSink(db)
    sink.add("predictions", prediction(0, confidence="not a number"))
    sink.add("labels", one_row_per_table()["labels"])
    with pytest.raises(SinkError, match="1 rows into predictions"):
        sink.flush()
    assert sink.pending() == {"predictions": 1, "labels": 1}  # labels come after predictions
    sink._buffers["predictions"][0]["confidence"] = 0.9
    assert sink.flush() == 2
    assert counts(db, tables=["predictions", "labels"]) == {"predictions": 1, "labels": 1}


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

