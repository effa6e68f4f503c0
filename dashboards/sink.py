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
        self._blocks: dict[str, list[dict[str, list]]] = {t: [] for t in self.keys}  # rows as columns, add_columns
        self._block_rows: dict[str, int] = {t: 0 for t in self.keys}
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

    def add_columns(self, table: str, columns: Mapping[str, list], project: bool = False) -> int:
        """:meth:`add` the rows of ``table`` given as columns (column -> one value a row, in row
        order); the number buffered. The checks :meth:`add` makes of each row are made of each
        column once (its name, its times' types); only the keys are looked at row by row, to
        skip rows already seen. The block goes to ClickHouse as columns, with the rows of the
        same columns added by :meth:`add` (a row ClickHouse refuses is found as
        :meth:`flush` finds it in rows). The lists are kept as given until flushed.

        >>> sink = ClickHouseSink(client=None, keys={"t": ("id",)})
        >>> sink._columns["t"], sink._times["t"] = {"id": "String", "ts": "DateTime64(3)"}, {"ts": 3}
        >>> sink.add_columns("t", {"id": ["a", "b", "a"], "ts": [1, 2, 3]}), sink.pending(), sink.skipped
        (2, {'t': 2}, 1)
        >>> sink._blocks["t"]
        [{'id': ['a', 'b'], 'ts': [1, 2]}]
        """
        names, times, key_columns = self._table_columns(table), self._times[table], self.keys[table]
        unknown = [c for c in columns if c not in names]
        if unknown:
            if not project:
                raise ValueError(f"{table} has no column {', '.join(map(repr, unknown))}")
            columns = {c: v for c, v in columns.items() if c in names}
        for c in key_columns:
            if c not in columns:
                raise ValueError(f"a {table} row needs its key column {c!r}")
        n = len(columns[key_columns[0]])
        if any(len(v) != n for v in columns.values()):
            raise ValueError(f"the columns of a {table} block differ in length")
        convert = [c for c, p in times.items() if c in columns and (p != 3 or {*map(type, columns[c])} - {int})]
        if convert:  # epoch millis into DateTime64(3) go as they are
            columns = dict(columns)
            for c in convert:
                try:
                    columns[c] = [to_ticks(v, times[c]) for v in columns[c]]
                except TypeError as exc:
                    raise ValueError(f"{table}.{c}: {exc}") from None
        keys = columns[key_columns[0]] if len(key_columns) == 1 else zip(*(columns[c] for c in key_columns))
        new = self._seen[table].add
        kept = [new(key) for key in keys]
        count = sum(kept)
        if count < n:
            self.skipped += n - count
            columns = {c: [v for v, k in zip(values, kept) if k] for c, values in columns.items()}
        if count:
            with self._swap_lock:
                self._blocks[table].append(columns)
                self._block_rows[table] += count
        return count

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
        counts = {t: len(rows) + self._block_rows[t] for t, rows in self._buffers.items()}
        return {t: n for t, n in counts.items() if n}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._buffers.values()) + sum(self._block_rows.values())

    # -- flushing -----------------------------------------------------------
    def due(self) -> bool:
        """True if a buffer is full, or rows wait longer than ``flush_interval``."""
        if any(len(rows) + self._block_rows[t] >= self.batch_size for t, rows in self._buffers.items()):
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
                    blocks, self._blocks[table], self._block_rows[table] = self._blocks[table], [], 0
                if not rows and not blocks:
                    continue
                try:
                    if blocks:
                        done, rows = self._store_columns(table, blocks, rows)
                        written += done
                    written += self._store(table, rows) if rows else 0
                except _Unwritten as stop:
                    with self._swap_lock:
                        self._buffers[table][:0] = stop.rows
                        self._blocks[table][:0] = stop.blocks
                        self._block_rows[table] += sum(len(next(iter(b.values()))) for b in stop.blocks)
                    exc = stop.__cause__
                    raise SinkError(f"insert of {stop.count} rows into {table} failed, "
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

    def _store_columns(self, table: str, blocks: list[dict[str, list]], rows: list[dict]) -> tuple[int, list[dict]]:
        """Insert ``blocks`` (of :meth:`add_columns`) and the ``rows`` that have the same columns,
        one insert per set of columns; the rows written, and the rows left for :meth:`_store`. A
        block ClickHouse refuses, or one with a time out of range, goes to :meth:`_store` as rows
        (which bisects it and sets aside the rows at fault)."""
        groups: dict[tuple, dict[str, list]] = {}
        for block in blocks:
            merged = groups.setdefault(tuple(block), {c: [] for c in block})
            for c, values in block.items():
                merged[c].extend(values)
        rest = []
        for row in rows:  # the same columns (say the owner's decision rows): pivoted into the block
            merged = groups.get(tuple(row))
            if merged is None:
                rest.append(row)
            else:
                for c, value in row.items():
                    merged[c].append(value)
        written, todo = 0, list(groups.values())
        while todo:
            columns = todo.pop()
            names = list(columns)
            try:
                if self._times_in_range(table, columns):
                    self._insert_columns(table, columns)
                    written += len(columns[names[0]])
                    continue
            except Exception as exc:
                if transient(exc):
                    raise _Unwritten(rest, todo + [columns]) from exc
            rest += [dict(zip(names, values)) for values in zip(*columns.values())]  # found out row by row
        return written, rest

    def _times_in_range(self, table: str, columns: dict[str, list]) -> bool:
        """True if every time in ``columns`` is one DateTime64 holds (see :meth:`_in_range`)."""
        for column, precision in self._times[table].items():
            values = [v for v in columns.get(column, ()) if v is not None]
            low, high = (t * 10**precision // 1000 for t in DATETIME64_MS)
            if values and (min(values) < low or max(values) > high):
                return False
        return True

    def _insert_columns(self, table: str, columns: dict[str, list]) -> None:
        """One insert of a block of columns."""
        if self.fault_path is not None and os.path.exists(self.fault_path):
            raise ConnectionError(f"ClickHouse insert refused while {self.fault_path} exists (test fault hook)")
        types = self._columns[table]
        names = [c for c in types if c in columns]
        self.client.insert(table, [columns[c] for c in names], column_names=names,
                           column_type_names=[types[c] for c in names], column_oriented=True)

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
    """Raised (from a transient error) with the rows (and blocks of columns) a flush did not write."""

    def __init__(self, rows: list[dict], blocks: list[dict[str, list]] = ()):
        self.rows, self.blocks = rows, list(blocks)
        self.count = len(rows) + sum(len(next(iter(b.values()))) for b in self.blocks)
        super().__init__(self.count)


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
