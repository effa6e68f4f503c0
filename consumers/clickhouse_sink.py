"""Batched, idempotent writes of event rows to ClickHouse.

:class:`ClickHouseSink` buffers rows per table and inserts each buffer in one
batch. Rows are deduplicated twice over: the sink drops a row whose key
(:data:`TABLE_KEYS`) it has seen recently, so a re-delivered batch is not
inserted again, and the tables are ReplacingMergeTrees ordered by that key, so
what gets past the sink (after a restart, from a second worker) collapses on
merge. Count with ``FINAL`` (:func:`counts`) or after :func:`optimize`.

Time columns take epoch milliseconds (as the Avro events carry them) or
datetimes (naive ones are read as UTC).

Typical use in an asyncio worker, the blocking insert on an executor::

    sink = ClickHouseSink(client)
    sink.add("predictions", row)
    if sink.due():
        await loop.run_in_executor(None, sink.flush)
"""

from __future__ import annotations

import re
import threading
import time
from operator import itemgetter
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

__all__ = ["TABLE_KEYS", "TABLES", "ClickHouseSink", "SinkError", "RecentKeys", "counts", "optimize", "to_ticks"]

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
    "annotator_agreement": ("metric", "annotator_a", "annotator_b", "window_seconds", "window_start"),
    "drift_events": ("model_name", "detector", "ts"),
    "policy_lift": ("version", "ts"),
    "stopping_signals": ("metric", "version", "ts"),
    "budget_state": ("ts",),
    "agent_stats": ("worker", "agent", "ts"),
    "audit_log": ("event_id",),
}
TABLES = tuple(TABLE_KEYS)

_DATETIME64 = re.compile(r"DateTime64\((\d)")


class SinkError(RuntimeError):
    """A batch could not be written; its rows stay buffered for the next flush."""


class RecentKeys:
    """Remembers at least the last ``window`` keys (at most twice as many), in O(1).

    Two generations of sets: when the newer one is full, the older one is dropped.

    >>> seen = RecentKeys(window=2)
    >>> [seen.add(k) for k in ["a", "b", "c", "a", "d", "e", "a"]]
    [True, True, True, False, True, True, True]
    """

    def __init__(self, window: int = 1_000_000):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._new: set = set()
        self._old: set = set()

    def add(self, key) -> bool:
        """Record ``key``; False if it was seen recently."""
        if key in self._new or key in self._old:
            return False
        if len(self._new) >= self.window:
            self._old, self._new = self._new, set()
        self._new.add(key)
        return True

    def discard(self, key) -> None:
        self._new.discard(key)
        self._old.discard(key)

    def __contains__(self, key) -> bool:
        return key in self._new or key in self._old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


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
        A clickhouse-connect client (see :func:`feedbackloop.clickhouse.connect`).
    batch_size
        :meth:`due` is true once a table buffers this many rows.
    flush_interval
        ... or once this many seconds passed since the last flush (with rows buffered).
    dedupe_window
        Keys remembered per table (at least this many of the most recent).
    keys
        Table -> key columns; :data:`TABLE_KEYS` by default.
    clock
        Monotonic seconds, for tests.

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
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = client
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.keys = {t: tuple(k) for t, k in (TABLE_KEYS if keys is None else keys).items()}
        self.clock = clock
        self.skipped = 0  # rows dropped as already seen
        self._seen = {t: RecentKeys(dedupe_window) for t in self.keys}
        self._buffers: dict[str, list[dict]] = {t: [] for t in self.keys}
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
        if table not in self.keys:
            raise ValueError(f"unknown table {table!r}; the sink writes {', '.join(self.keys)}")
        columns = self._columns.get(table) or self._describe(table)
        if project and not columns.keys() >= row.keys():
            row = {k: v for k, v in row.items() if k in columns}
        if not columns.keys() >= row.keys():
            unknown = [c for c in row if c not in columns]
            raise ValueError(f"{table} has no column {', '.join(map(repr, unknown))}")
        key_columns = self.keys[table]
        try:
            key = row[key_columns[0]] if len(key_columns) == 1 else tuple(row[c] for c in key_columns)
        except KeyError as exc:
            raise ValueError(f"a {table} row needs its key column {exc.args[0]!r}") from None
        if not self._seen[table].add(key):
            self.skipped += 1
            return False
        convert = [c for c, p in self._times[table].items() if c in row and (p != 3 or type(row[c]) is not int)]
        if convert:  # epoch millis into DateTime64(3) go as they are
            row = dict(row)
            for column in convert:
                try:
                    row[column] = to_ticks(row[column], self._times[table][column])
                except TypeError as exc:
                    self._seen[table].discard(key)
                    raise ValueError(f"{table}.{column}: {exc}") from None
        with self._swap_lock:
            self._buffers[table].append(row)
        return True

    def add_many(self, table: str, rows: Iterable[Mapping]) -> int:
        """:meth:`add` each row; the number buffered."""
        return sum(self.add(table, row) for row in rows)

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

    def flush(self) -> int:
        """Insert every buffer, one batch per table; the rows written.

        If an insert fails its rows go back to the buffer and :class:`SinkError`
        is raised (tables already written stay written).
        """
        with self._flush_lock:
            self._last_flush = self.clock()
            written = 0
            for table in self.keys:
                with self._swap_lock:
                    rows, self._buffers[table] = self._buffers[table], []
                if not rows:
                    continue
                try:
                    self._insert(table, rows)
                except Exception as exc:
                    with self._swap_lock:
                        self._buffers[table][:0] = rows
                    raise SinkError(f"insert of {len(rows)} rows into {table} failed: {exc}") from exc
                written += len(rows)
            return written

    def _insert(self, table: str, rows: list[dict]) -> None:
        # Rows with the same set of columns go in one insert (usually all of them);
        # ClickHouse fills in the defaults of the columns a row leaves out.
        keys = rows[0].keys()
        if all(row.keys() == keys for row in rows):
            groups = {frozenset(keys): rows}
        else:
            groups = {}
            for row in rows:
                groups.setdefault(frozenset(row), []).append(row)
        types = self._columns[table]
        for names, group in groups.items():
            columns = [c for c in types if c in names]
            if len(columns) == 1:
                data = [(row[columns[0]],) for row in group]
            else:
                data = list(map(itemgetter(*columns), group))
            self.client.insert(table, data, column_names=columns, column_type_names=[types[c] for c in columns])

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


def counts(client, final: bool = True, tables: Iterable[str] = TABLES) -> dict[str, int]:
    """Table -> row count; with ``final`` duplicates not merged yet count once."""
    suffix = " FINAL" if final else ""
    return {t: int(client.command(f"SELECT count() FROM {t}{suffix}")) for t in tables}


def optimize(client, tables: Iterable[str] = TABLES) -> None:
    """Merge each table fully (``OPTIMIZE TABLE ... FINAL``), so a plain count is exact."""
    for t in tables:
        client.command(f"OPTIMIZE TABLE {t} FINAL")
