"""Batched, idempotent writes of event rows to ClickHouse, that no row can stall.

:class:`ClickHouseSink` buffers rows per table and inserts each buffer in one
batch. Rows are deduplicated twice over: the sink drops a row whose key
(:data:`TABLE_KEYS`) it has seen recently, so a re-delivered batch is not
inserted again, and the tables are ReplacingMergeTrees ordered by that key, so
what gets past the sink (from a second worker) collapses on merge. After a
restart, :meth:`ClickHouseSink.remember_recent` seeds the keys from the rows
written last, so plain counts (without ``FINAL``) stay exact.

An insert that fails is either transient (:func:`transient`: the server, the
network or the disks are unwell) and its rows stay buffered for a retry, or it
is about the rows: then the block is bisected, every part that goes in lands,
and each row refused on its own goes to the ``dead_letters`` table, with the
error and the row as JSON, and to :meth:`ClickHouseSink.take_rejected`.

Time columns take epoch milliseconds (as the Avro events carry them) or
datetimes (naive ones are read as UTC).

Typical use in an asyncio worker, the blocking insert on an executor::

    sink = ClickHouseSink(client)
    sink.remember_recent()
    sink.add("predictions", row)
    if sink.due():
        await loop.run_in_executor(None, sink.flush)  # SinkError(transient=True): retry later
    for table, row, error in sink.take_rejected():
        ...  # e.g. to the deadletter topic
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from operator import itemgetter
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping, NamedTuple

from streams.recent import Recent

__all__ = ["TABLE_KEYS", "TABLES", "TRANSIENT_CODES", "ClickHouseSink", "SinkError", "Rejected",
           "counts", "optimize", "to_ticks", "transient"]

log = logging.getLogger(__name__)

#: Table -> the columns that identify a row (the table's ORDER BY).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "predictions": ("event_id",),
    "routing_decisions": ("event_id",),
    "labeling_tasks": ("task_id",),
    "labels": ("event_id",),
    "model_versions": ("model_name", "version"),
    "dead_letters": ("event_id",),
    "consensus_labels": ("task_id", "ts"),
    "adjudications": ("task_id", "round"),
    "annotator_quality": ("annotator_id", "ts"),
    "annotator_agreement": ("metric", "annotator_a", "annotator_b", "window_seconds", "window_start",
                            "guideline_version"),
    "drift_events": ("model_name", "detector", "ts"),
    "policy_lift": ("version", "ts"),
    "stopping_signals": ("metric", "version", "ts"),
    "budget_state": ("ts",),
    "agent_stats": ("worker", "agent", "ts"),
    "audit_log": ("event_id",),
    "label_savings": ("version", "ts"),
    "production_accuracy": ("model_name", "model_version", "estimator", "metric", "class", "version", "ts"),
    "suspect_labels": ("task_id", "status"),
}
TABLES = tuple(TABLE_KEYS)

_DATETIME64 = re.compile(r"DateTime64\((\d)")
#: The range of ClickHouse's DateTime64, in milliseconds: 1900-01-01 to 2299-12-31 23:59:59.999.
DATETIME64_MS = (-2_208_988_800_000, 10_413_791_999_999)

#: ClickHouse error codes that blame the server, its network or its disks, not the rows: an
#: insert failing with one is retried as it is. (252, TOO_MANY_PARTS, is transient when
#: merges lag behind inserts, and about the rows when one block spans too many partitions.)
TRANSIENT_CODES = frozenset({
    3, 23, 24, 32,  # the connection ended mid-stream
    60, 81, 218, 733,  # unknown or dropped table or database: for an operator to fix, not the rows' fault
    74, 75, 76, 77, 87, 88, 107, 172, 204, 243, 400, 458, 586,  # files: open, read, write, fsync, space
    159, 209, 210, 279,  # timeouts, network
    164, 242,  # read only
    173, 241,  # memory
    202, 203, 745, 439,  # overloaded
    236, 394,  # aborted, cancelled
    285, 286, 319, 999,  # replication, keeper
    425, 1000, 1001,  # system, Poco and std exceptions: the embedded engine's I/O errors come as these
    499, 500, 660,  # object storage
})


def transient(exc: BaseException) -> bool:
    """True if an insert that raised ``exc`` may succeed as it is later; False if
    the rows are to blame (bad values, types, a block over too many partitions).

    >>> transient(ConnectionRefusedError()), transient(TimeoutError()), transient(UnicodeEncodeError("utf-8", "", 0, 1, "x"))
    (True, True, False)
    >>> transient(ValueError("could not convert string to float: 'x'"))
    False
    """
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        if code == 252:
            return "partitions for single insert block" not in str(exc).lower()
        return code in TRANSIENT_CODES
    if isinstance(exc, (OSError, TimeoutError)):  # connections refused or reset, sockets, files
        return True
    kind = type(exc).__name__
    if kind == "OperationalError":  # clickhouse-connect: the request did not get through
        return True
    return kind == "DatabaseError"  # from the server, with no code to blame the rows


class SinkError(RuntimeError):
    """A batch could not be written for a transient reason; its rows stay buffered
    for the next flush (``transient`` is True: retry with backoff)."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient


class Rejected(NamedTuple):
    """A row ClickHouse refused on its own; it is in ``dead_letters`` too."""

    table: str
    row: dict
    error: str


def to_ticks(value, precision: int = 3):
    """A DateTime64(precision) value as an integer: epoch millis are scaled, datetimes converted.

    Naive datetimes are UTC. ``None`` passes through (Nullable columns).

    >>> to_ticks(1700000000123)
    1700000000123
    >>> to_ticks(datetime(2023, 11, 14, 22, 13, 20, 123000))
    1700000000123
    >>> to_ticks(1700000000123, precision=6)
    1700000000123000
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros * 10**precision // 1_000_000
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected epoch milliseconds (int) or a datetime, got {value!r}")
    return value * 10**precision // 1000 if precision >= 3 else value // 10 ** (3 - precision)


class ClickHouseSink:
    """Buffer rows per table; insert each buffer as one batch, skipping rows already seen.

    Parameters
    ----------
    client
        A clickhouse-connect client (see :func:`dashboards.connection.connect`).
    batch_size
        :meth:`due` is true once a table buffers this many rows.
    flush_interval
        ... or once this many seconds passed since the last flush (with rows buffered).
    dedupe_window
        Keys remembered per table: the most recent this many (a :class:`~streams.recent.Recent`).
    keys
        Table -> key columns; :data:`TABLE_KEYS` by default.
    clock
        Monotonic seconds, for tests.
    fault_path
        A test hook (``Settings.sink_fault_path``): while a file exists at this
        path, every insert fails as if ClickHouse were down (a transient
        :class:`ConnectionError`). The embedded engine cannot be taken down
        otherwise from outside its process.

    The column names and types of the tables are read from the database when the
    first row is added. :meth:`flush` may run on an executor thread while the event
    loop keeps adding rows; run one flush at a time, and give the sink a client of
    its own (a clickhouse-connect client takes one query at a time).
    """

    def __init__(
        self,
        client,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        dedupe_window: int = 1_000_000,
        keys: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fault_path: str | os.PathLike | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = client
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.keys = {t: tuple(k) for t, k in (TABLE_KEYS if keys is None else keys).items()}
        self.clock = clock
        self.fault_path = os.fspath(fault_path) if fault_path else None
        self.skipped = 0  # rows dropped as already seen
        self._seen = {t: Recent(dedupe_window) for t in self.keys}
        self._buffers: dict[str, list[dict]] = {t: [] for t in self.keys}
        self._rejected: list[Rejected] = []
        self._columns: dict[str, dict[str, str]] = {}  # table -> column -> type
        self._times: dict[str, dict[str, int]] = {}  # table -> DateTime64 column -> precision
        self._flush_lock = threading.Lock()  # one flush at a time
        self._swap_lock = threading.Lock()  # a buffer is swapped out whole, never mid-append
        self._last_flush = clock()

    # -- adding -------------------------------------------------------------
    def add(self, table: str, row: Mapping, project: bool = False) -> bool:
        """Buffer ``row`` for ``table``; False (and nothing buffered) if its key was seen.

        Missing columns get their default (NULL for Nullable columns). Unknown
        columns or a missing key column raise ``ValueError``, unless ``project``
        is set: then keys that are not columns are left out, so an event can be
        written as it is. The row is kept as given until it is flushed: don't
        change it meanwhile.
        """
        row = self._admitted(table, row, project)
        if row is None:
            return False
        with self._swap_lock:
            self._buffers[table].append(row)
        return True

    def _table_columns(self, table: str) -> dict[str, str]:
        """The columns of ``table`` (described once); ``ValueError`` for a table the sink does not write."""
        columns = self._columns.get(table)
        if columns is None:
            if table not in self.keys:
                raise ValueError(f"unknown table {table!r}; the sink writes {', '.join(self.keys)}")
            columns = self._describe(table)
        return columns

    def _admitted(self, table: str, row: Mapping, project: bool) -> Mapping | None:
        """``row`` as :meth:`add` buffers it (projected, times in ticks), None if its key was seen."""
        columns = self._table_columns(table)
        if not columns.keys() >= row.keys():
            if not project:
                unknown = [c for c in row if c not in columns]
                raise ValueError(f"{table} has no column {', '.join(map(repr, unknown))}")
            row = {k: row[k] for k in columns if k in row}  # the table's dozen columns, not the event's keys
        times = self._times[table]
        convert = [c for c, p in times.items() if c in row and (p != 3 or type(row[c]) is not int)]
        if convert:  # epoch millis into DateTime64(3) go as they are
            row = dict(row)
            for column in convert:
                try:
                    row[column] = to_ticks(row[column], times[column])
                except TypeError as exc:
                    raise ValueError(f"{table}.{column}: {exc}") from None
        key_columns = self.keys[table]
        try:
            key = row[key_columns[0]] if len(key_columns) == 1 else tuple(row[c] for c in key_columns)
        except KeyError as exc:
            raise ValueError(f"a {table} row needs its key column {exc.args[0]!r}") from None
        if not self._seen[table].add(key):
            self.skipped += 1
            return None
        return row

    def add_many(self, table: str, rows: Iterable[Mapping], project: bool = False) -> int:
        """:meth:`add` each row of ``table``; the number buffered.

        The same checks as :meth:`add`, made once for the batch where they can be
        (the table's columns and times looked up once, one lock for the buffer):
        half the cost of adding the rows one by one, for a scorer's message of rows.
        """
        columns = self._table_columns(table)
        names, times, key_columns = columns.keys(), self._times[table], self.keys[table]
        fast = [c for c, p in times.items() if p == 3]  # epoch millis go as they are into DateTime64(3)
        slow = [c for c, p in times.items() if p != 3]
        one_key = key_columns[0] if len(key_columns) == 1 else None
        new, kept = self._seen[table].add, []
        try:
            for row in rows:
                if names >= row.keys() and not slow:
                    for column in fast:
                        if type(row.get(column, 0)) is not int:
                            break
                    else:  # the usual row: stored as it is
                        try:
                            key = row[one_key] if one_key is not None else tuple(row[c] for c in key_columns)
                        except KeyError as exc:
                            raise ValueError(f"a {table} row needs its key column {exc.args[0]!r}") from None
                        if new(key):
                            kept.append(row)
                        else:
                            self.skipped += 1
                        continue
                row = self._admitted(table, row, project)  # projected or converted, as add does
                if row is not None:
                    kept.append(row)
        finally:  # the rows before one that raised are buffered, as one add at a time would have
            with self._swap_lock:
                self._buffers[table].extend(kept)
        return len(kept)

    def remembers(self, table: str, key) -> bool:
        """True if a row with ``key`` was added recently, or written before a restart
        (:meth:`remember_recent`). A key is one value, or a tuple for keys of several
        columns; times in it are ticks (epoch millis for ``DateTime64(3)``)."""
        return key in self._seen[table]

    def remembered(self, table: str) -> Callable[[object], bool]:
        """:meth:`remembers` for ``table``, as one function of the key: for a loop over many keys."""
        return self._seen[table].__contains__

    def pending(self) -> dict[str, int]:
        """Table -> rows buffered."""
        return {t: len(rows) for t, rows in self._buffers.items() if rows}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._buffers.values())

    # -- flushing -----------------------------------------------------------
    def due(self) -> bool:
        """True if a buffer is full, or rows wait longer than ``flush_interval``."""
        if any(len(rows) >= self.batch_size for rows in self._buffers.values()):
            return True
        return len(self) > 0 and self.clock() - self._last_flush >= self.flush_interval

    def maybe_flush(self) -> int:
        """:meth:`flush` if :meth:`due`; the rows written (0 if not due)."""
        return self.flush() if self.due() else 0

    def flush(self, tables: Iterable[str] | None = None, restart: bool = False) -> int:
        """Insert every buffer (or only those of ``tables``), one batch per table; the rows written.

        A flush of every table starts the age :meth:`due` measures again; a flush of
        some tables leaves it as it was, unless ``restart``: then the rows left
        buffered wait another ``flush_interval`` too (the caller writes them later).

        A block ClickHouse refuses for its rows is bisected: every part that goes
        in is written, and each row refused on its own is rejected (see
        :meth:`take_rejected`). On a :func:`transient` failure the rows not
        written yet go back to the buffer and :class:`SinkError` is raised
        (``transient=True``; tables already written stay written). Dead letters
        of this flush are written last, in the same flush.
        """
        with self._flush_lock:
            if tables is None or restart:  # a flush of some tables leaves the others' age as it is
                self._last_flush = self.clock()
            written = 0
            for table in sorted(self.keys if tables is None else set(tables) & self.keys.keys(),
                                key=lambda t: t == "dead_letters"):
                with self._swap_lock:
                    rows, self._buffers[table] = self._buffers[table], []
                if not rows:
                    continue
                try:
                    written += self._store(table, rows)
                except _Unwritten as stop:
                    with self._swap_lock:
                        self._buffers[table][:0] = stop.rows
                    exc = stop.__cause__
                    raise SinkError(f"insert of {len(stop.rows)} rows into {table} failed, "
                                    f"kept for a retry: {type(exc).__name__}: {exc}") from exc
            return written

    def take_rejected(self) -> list[Rejected]:
        """The rows refused since the last call, as ``(table, row, error)``, and forget them.

        Each is in the ``dead_letters`` table already (once the flush that rejected it
        wrote it), keyed by its table and key; this list is for the ``deadletter`` topic.
        """
        with self._swap_lock:
            rejected, self._rejected = self._rejected, []
        return rejected

    def _store(self, table: str, rows: list[dict]) -> int:
        """Insert ``rows``, bisecting blocks refused for their rows; the rows written."""
        # Rows with the same set of columns go in one insert (usually all of them);
        # ClickHouse fills in the defaults of the columns a row leaves out.
        keys = rows[0].keys()
        if all(row.keys() == keys for row in rows):
            groups = [rows]
        else:
            by_columns: dict[frozenset, list[dict]] = {}
            for row in rows:
                by_columns.setdefault(frozenset(row), []).append(row)
            groups = list(by_columns.values())
        written = 0
        for g, group in enumerate(groups):
            todo = [self._in_range(table, group)]  # blocks still to insert, the next one last
            while todo:
                block = todo.pop()
                try:
                    self._insert(table, block)
                except Exception as exc:
                    if transient(exc):
                        rest = [row for part in reversed(todo) for row in part] + block
                        raise _Unwritten(rest + [row for later in groups[g + 1:] for row in later]) from exc
                    if len(block) == 1:
                        self._reject(table, block[0], f"{type(exc).__name__}: {exc}")
                    else:
                        if getattr(exc, "code", None) == 252:  # too many partitions: halves of sorted rows span half
                            block = sorted(block, key=self._partition_order(table))
                        half = len(block) // 2
                        todo += [block[half:], block[:half]]
                    continue
                written += len(block)
        return written

    def _partition_order(self, table: str) -> Callable[[dict], tuple]:
        """A sort key of rows by the columns of the table's partition key (NULLs first)."""
        key = self.client.command("SELECT partition_key FROM system.tables WHERE database = currentDatabase() "
                                  "AND name = {t:String}", parameters={"t": table})
        columns = [c for c in self._columns[table] if re.search(rf"\b{re.escape(c)}\b", str(key))]
        return lambda row: tuple((row.get(c) is not None, row.get(c)) for c in columns)

    def _in_range(self, table: str, rows: list[dict]) -> list[dict]:
        """``rows`` without those whose times DateTime64 cannot hold (they are rejected:
        ClickHouse would store them, but no client could read them back)."""
        for column, precision in self._times[table].items():
            if not rows or column not in rows[0]:  # the rows of a group have the same columns
                continue
            low, high = (t * 10**precision // 1000 for t in DATETIME64_MS)
            values = [v for v in map(itemgetter(column), rows) if v is not None]
            if values and (min(values) < low or max(values) > high):
                kept = []
                for row in rows:
                    value = row.get(column)
                    if value is not None and not low <= value <= high:
                        self._reject(table, row, f"{column} is {value}, outside the range of DateTime64 "
                                                 f"(1900-01-01 to 2299-12-31)")
                    else:
                        kept.append(row)
                rows = kept
        return rows

    def _insert(self, table: str, rows: list[dict]) -> None:
        """One insert of rows that all have the same columns."""
        if not rows:
            return
        if self.fault_path is not None and os.path.exists(self.fault_path):
            raise ConnectionError(f"ClickHouse insert refused while {self.fault_path} exists (test fault hook)")
        types = self._columns[table]
        columns = [c for c in types if c in rows[0]]
        if len(columns) == 1:
            data = [(row[columns[0]],) for row in rows]
        else:
            data = list(map(itemgetter(*columns), rows))
        self.client.insert(table, data, column_names=columns, column_type_names=[types[c] for c in columns])

    def _reject(self, table: str, row: dict, error: str) -> None:
        """Set a row aside, and write it to ``dead_letters`` (keyed by its table and key)."""
        key_columns = self.keys[table]
        key = row.get(key_columns[0]) if len(key_columns) == 1 else [row.get(c) for c in key_columns]
        error = error[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
        log.warning("ClickHouse refused a %s row (key %s): %s", table, _json(key)[:200], error)
        with self._swap_lock:
            self._rejected.append(Rejected(table, row, error))
        if table == "dead_letters":  # a dead letter that cannot be stored is only handed back
            return
        key_text = _json(key)
        self.add("dead_letters", {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"clickhouse/{table}/{key_text}")),
            "ts": int(time.time() * 1000), "topic": f"clickhouse:{table}", "partition": -1, "offset": -1,
            "key": key_text, "reason": f"ClickHouse refused a {table} row: {error}", "error": "unstorable_row",
            "payload": _json(row),
        })

    # -- restarts -------------------------------------------------------------
    def remember_recent(self, seconds: float = 120.0, limit: int = 500_000) -> dict[str, int]:
        """Seed each table's seen keys from its rows written last; table -> keys seeded.

        Reads the keys of the rows inserted within ``seconds`` before the table's
        newest ``inserted_at`` (at most ``limit`` of the newest), so a worker
        restarted hours after it stopped still finds what it wrote just before.

        Call it once at worker start. It does what an insert deduplication token
        derived from topic, partition and offsets would do: a worker makes its
        rows durable before it commits their offsets, so the rows a restart can
        deliver again are those written after the last commit, at most one
        commit interval (seconds) before the newest row of their table. Their
        keys are seeded here, and a re-delivered row is skipped as already
        seen. Unlike a token it does not need the blocks cut the same way twice
        (they are not after a restart), and plain counts without ``FINAL`` stay
        exact. Rows of another worker that fails over later collapse on merge.
        """
        if not self._columns:
            self._describe(next(iter(self.keys)))
        seeded = {}
        for table, key_columns in self.keys.items():
            if "inserted_at" not in self._columns.get(table, {}):
                log.warning("%s has no inserted_at column: its keys are not remembered across restarts "
                            "(add one as migration 0011 does)", table)
                continue
            select = ", ".join(self._key_expression(table, c) for c in key_columns)
            result = self.client.query(
                f"SELECT {select} FROM {table} WHERE inserted_at >= "
                f"(SELECT max(inserted_at) FROM {table}) - toIntervalMillisecond({{ms:Int64}}) "
                f"ORDER BY inserted_at DESC LIMIT {{limit:UInt64}}",
                parameters={"ms": int(seconds * 1000), "limit": limit})
            seen = self._seen[table]
            for row in reversed(result.result_rows):
                seen.add(row[0] if len(row) == 1 else tuple(row))
            seeded[table] = len(result.result_rows)
        return seeded

    def _key_expression(self, table: str, column: str) -> str:
        """SQL reading ``column`` as :meth:`add` keys it (DateTime64 as ticks)."""
        precision = self._times[table].get(column)
        if precision is None:
            return f"`{column}`"
        if precision <= 6:
            return f"intDiv(toUnixTimestamp64Micro(`{column}`), {10 ** (6 - precision)})"
        return f"intDiv(toUnixTimestamp64Nano(`{column}`), {10 ** (9 - precision)})"

    def _describe(self, table: str) -> dict[str, str]:
        # One query for every table of the sink, before any flush can run, so the
        # client is never used from two threads at once.
        result = self.client.query(
            "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table IN {tables:Array(String)} AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') "
            "ORDER BY table, position",
            parameters={"tables": list(self.keys)},
        )
        found: dict[str, dict[str, str]] = {}
        for name, column, kind in result.result_rows:
            found.setdefault(name, {})[column] = kind
        for name, columns in found.items():
            self._columns[name] = columns
            self._times[name] = {c: int(m.group(1)) for c, t in columns.items() if (m := _DATETIME64.search(t))}
        if table not in found:
            raise ValueError(f"table {table!r} does not exist: run the migrations first (dashboards.migrate)")
        return found[table]


class _Unwritten(Exception):
    """Raised (from a transient error) with the rows a flush did not write."""

    def __init__(self, rows: list[dict]):
        super().__init__(len(rows))
        self.rows = rows


def _json(value) -> str:
    """``value`` as ASCII JSON: storable whatever strings it holds (lone surrogates are escaped).

    >>> _json({"id": "\\ud800", "payload": b"\\xff", "n": 3})
    '{"id": "\\\\ud800", "payload": "\\\\u00ff", "n": 3}'
    """
    return json.dumps(value, ensure_ascii=True, default=_plain)


def _plain(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")  # one char per byte, as Avro's JSON encoding
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def counts(client, final: bool = True, tables: Iterable[str] = TABLES) -> dict[str, int]:
    """Table -> row count; with ``final`` duplicates not merged yet count once."""
    suffix = " FINAL" if final else ""
    return {t: int(client.command(f"SELECT count() FROM {t}{suffix}")) for t in tables}


def optimize(client, tables: Iterable[str] = TABLES) -> None:
    """Merge each table fully (``OPTIMIZE TABLE ... FINAL``), so a plain count is exact."""
    for t in tables:
        client.command(f"OPTIMIZE TABLE {t} FINAL")
