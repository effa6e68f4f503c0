"""The pending store: the labeling queue, durable in one SQLite file.

Tasks arrive from ``labeling.tasks`` together with the Kafka offset they were
read at, and both are written in one transaction, so a crash between the two
cannot lose a task (on restart, reading resumes after the stored offset).

A task is ``pending`` until an annotator leases it (``leased``), then
``labeled``, or back to ``pending`` when skipped or when its lease times out,
or ``flagged`` as ambiguous until a reviewer resolves it. A label is written
here before it is sent to Kafka, with an event id fixed by task and annotator:
submitting twice finds the first label, and labels whose sending was cut short
are sent again (the *outbox*). Audit events (:mod:`consumers.labeling.audit`)
wait here too, written in the transaction of the action they record, until
Kafka has them.

>>> store = Store(":memory:")
>>> task = {"task_id": "t1", "item_id": "i1", "priority": 0.8, "label_set": ["cat", "dog"]}
>>> store.add_tasks([task], {("labeling.tasks", 0): 41})
1
>>> store.offsets()
{('labeling.tasks', 0): 41}
>>> store.lease("ann", now_ms=1000, seconds=60)["task"]["task_id"]
't1'
>>> store.lease("bob", now_ms=2000, seconds=60) is None
True
>>> label, new = store.label("t1", "ann", "dog", note=None, now_ms=4000)
>>> new, label["label"], label["duration_ms"]
(True, 'dog', 3000)
>>> store.label("t1", "ann", "dog", note=None, now_ms=5000)[1]  # the second submit finds the first
False
>>> [l["event_id"] for l in store.unsent()] == [label["event_id"]]
True
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from streams import events

#: Event ids of labels are uuid5(NAMESPACE, "task_id/annotator_id").
NAMESPACE = uuid.UUID("b5c2d0f4-8e1a-4c7b-9f3e-2a6d1c8e7b40")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    priority REAL NOT NULL,
    arrived_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT,
    leased_ms INTEGER,
    lease_until_ms INTEGER,
    ranked_version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (state, priority DESC, arrived_ms);
CREATE TABLE IF NOT EXISTS barred (
    task_id TEXT NOT NULL, annotator_id TEXT NOT NULL,
    PRIMARY KEY (task_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS skips (
    task_id TEXT NOT NULL, annotator_id TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (task_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS notes (
    task_id TEXT NOT NULL, annotator_id TEXT NOT NULL, kind TEXT NOT NULL, note TEXT NOT NULL, ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_task ON notes (task_id);
CREATE TABLE IF NOT EXISTS labels (
    event_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    annotator_id TEXT NOT NULL,
    record TEXT NOT NULL,
    ts INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS labels_annotator ON labels (annotator_id, ts);
CREATE INDEX IF NOT EXISTS labels_task ON labels (task_id, annotator_id);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gating (
    annotator_id TEXT PRIMARY KEY, state TEXT NOT NULL, since_ms INTEGER NOT NULL,
    admitted_ms INTEGER NOT NULL DEFAULT 0, by TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS guideline_versions (
    key TEXT NOT NULL, sequence INTEGER NOT NULL, digest TEXT NOT NULL, content TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (key, sequence)
);
CREATE TABLE IF NOT EXISTS gold_checks (
    task_id TEXT NOT NULL, annotator_id TEXT NOT NULL, item_id TEXT NOT NULL, correct INTEGER NOT NULL,
    ts INTEGER NOT NULL, PRIMARY KEY (task_id, annotator_id)
);
"""


class TaskError(Exception):
    """A request the queue cannot honour; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def event_id(task_id: str, annotator_id: str) -> str:
    """The id of ``annotator_id``'s label for ``task_id``: the same on every submit.

    >>> event_id("t1", "ann") == event_id("t1", "ann") != event_id("t1", "bob")
    True
    """
    return str(uuid.uuid5(NAMESPACE, f"{task_id}/{annotator_id}"))


def _now() -> int:
    return int(time.time() * 1000)


#: Columns added to ``tasks`` after the first release of the queue file.
_ADDED_COLUMNS = {
    "wanted": "INTEGER NOT NULL DEFAULT 1",      # labels the task needs, from different annotators
    "tier": "TEXT NOT NULL DEFAULT 'annotator'",  # 'reviewer': only reviewers may take it
    "round": "INTEGER NOT NULL DEFAULT 0",       # adjudication round of the newest version of the task
    "assignee": "TEXT",                          # only this annotator may take it (a calibration task)
    "calibration": "INTEGER NOT NULL DEFAULT 0",  # 1: a gold item made here; its labels never leave
    "guideline_version": "TEXT NOT NULL DEFAULT ''",  # the guideline version it was last shown with
}


def _answer(task: dict, label: str | list[str]) -> tuple[str, list[str] | None]:
    """``(label, labels)`` of an answer to ``task``; :class:`TaskError` 422 if it does not fit the task."""
    allowed = ", ".join(map(repr, task["label_set"]))
    if not task.get("multi_label"):
        if not isinstance(label, str):
            raise TaskError(422, f"task {task['task_id']!r} takes one label, not a set: one of {allowed}")
        if label not in task["label_set"]:
            raise TaskError(422, f"label {label!r} is not in the task's label set: {allowed}")
        return label, None
    if isinstance(label, str):
        raise TaskError(422, f"task {task['task_id']!r} is multi-label: send the set of labels that apply "
                             f"(labels, a list; an empty one when none does) out of {allowed}")
    unknown = sorted(set(label) - set(task["label_set"]))
    if unknown:
        raise TaskError(422, f"labels {', '.join(map(repr, unknown))} are not in the task's label set: {allowed}")
    return events.set_label(label)


class Store:
    """The queue of labeling tasks, the labels given and the Kafka offsets read, in SQLite.

    One connection, used under a lock by every thread; every method is one
    transaction. ``path`` may be ``":memory:"`` for tests.
    """

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(tasks)")}
        for column, kind in _ADDED_COLUMNS.items():  # a queue file written before these columns
            if column not in columns:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self):
        return _Transaction(self._db, self._lock)

    def transaction(self):
        """``with store.transaction():`` makes the calls inside one transaction
        (all written, or none if the block raises)."""
        return self._tx()

    # ------------------------------------------------------------------ input

    def add_tasks(self, tasks: list[dict], offsets: dict[tuple[str, int], int], now_ms: int | None = None) -> int:
        """Queue ``tasks`` (a task id seen before is ignored) and record the
        ``{(topic, partition): offset}`` they were read at; returns how many were new."""
        now_ms = _now() if now_ms is None else now_ms
        added = 0
        with self._tx() as db:
            for t in tasks:
                added += self._add(db, t, now_ms)
            self._save_offsets(db, offsets)
        return added

    @staticmethod
    def _given(db, task_id: str) -> int:
        """How many labels the task has."""
        return db.execute("SELECT count(*) FROM labels WHERE task_id = ?", (task_id,)).fetchone()[0]

    @staticmethod
    def _add(db, t: dict, now_ms: int) -> bool:
        """Queue one task; a later adjudication round of a known task (same id,
        higher ``round``) opens it again for one more label, from its tier and
        from no annotator it bars."""
        round_ = int(t.get("round") or 0)
        row = db.execute("SELECT round FROM tasks WHERE task_id = ?", (t["task_id"],)).fetchone()
        if row is not None and row["round"] >= round_:
            return False
        wanted = Store._given(db, t["task_id"]) + max(1, int(t.get("overlap") or 1))
        db.execute(
            "INSERT INTO tasks (task_id, record, priority, arrived_ms, wanted, tier, round) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET record = excluded.record, "
            "priority = excluded.priority, wanted = excluded.wanted, tier = excluded.tier, round = excluded.round, "
            "state = 'pending', owner = NULL, lease_until_ms = NULL",
            (t["task_id"], json.dumps(t), float(t["priority"]), now_ms, wanted, t.get("tier") or "annotator",
             round_))
        db.executemany("INSERT OR IGNORE INTO barred (task_id, annotator_id) VALUES (?, ?)",
                       [(t["task_id"], a) for a in t.get("exclude_annotators") or []])
        return True

    @staticmethod
    def _save_offsets(db, offsets: dict[tuple[str, int], int]) -> None:
        db.executemany('INSERT INTO offsets (topic, partition, "offset") VALUES (?, ?, ?) '
                       'ON CONFLICT (topic, partition) DO UPDATE SET "offset" = excluded."offset"',
                       [(t, p, o) for (t, p), o in offsets.items()])

    def offsets(self) -> dict[tuple[str, int], int]:
        """The last offset stored for each ``(topic, partition)``."""
        with self._tx() as db:
            return {(r[0], r[1]): r[2] for r in db.execute('SELECT topic, partition, "offset" FROM offsets')}

    # ------------------------------------------------------------------ re-ranking

    def rankable(self) -> list[tuple[str, dict]]:
        """``(task_id, task)`` of every task still waiting for a label."""
        with self._tx() as db:
            return [(r[0], json.loads(r[1])) for r in
                    db.execute("SELECT task_id, record FROM tasks WHERE state IN ('pending', 'leased')")]

    def rerank(self, priorities: dict[str, float], version: int, offsets: dict[tuple[str, int], int]) -> None:
        """Set new priorities, remember the model version they come from and the offsets read."""
        with self._tx() as db:
            db.executemany("UPDATE tasks SET priority = ?, ranked_version = ? WHERE task_id = ?",
                           [(p, version, t) for t, p in priorities.items()])
            db.execute("INSERT INTO meta (key, value) VALUES ('model_version', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(version),))
            self._save_offsets(db, offsets)

    def model_version(self) -> int:
        """The model version the queue was last ranked by (0: none yet)."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ annotators

    def _get(self, db, task_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskError(404, f"no task {task_id!r}")
        return row

    @staticmethod
    def _expire(db, now_ms: int) -> None:
        db.execute("UPDATE tasks SET state = 'pending' WHERE state = 'leased' AND lease_until_ms <= ?", (now_ms,))

    def lease(self, annotator_id: str, now_ms: int | None = None, seconds: float = 600,
              reviewer: bool = False) -> dict | None:
        """The next task for ``annotator_id``, leased to them for ``seconds``, or None.

        An annotator holding a lease gets the same task again, its lease renewed;
        otherwise the waiting task of highest priority (oldest first on ties)
        that the annotator has not skipped, labeled or been barred from (a task
        wanting several labels gets them from different annotators; an
        adjudication goes to someone outside the disagreement), and of the
        reviewer tier only if ``reviewer``. Leases that timed out return to
        the queue first.
        """
        now_ms = _now() if now_ms is None else now_ms
        until = now_ms + int(seconds * 1000)
        with self._tx() as db:
            self._expire(db, now_ms)
            if self._paused(db, annotator_id):
                return None
            row = db.execute("SELECT * FROM tasks WHERE state = 'leased' AND owner = ? "
                             "ORDER BY leased_ms LIMIT 1", (annotator_id,)).fetchone()
            if row is not None:
                db.execute("UPDATE tasks SET lease_until_ms = ? WHERE task_id = ?", (until, row["task_id"]))
            else:
                row = db.execute(
                    "SELECT * FROM tasks WHERE state = 'pending' AND (tier = 'annotator' OR ?) "
                    "AND (assignee IS NULL OR assignee = ?) "
                    "AND task_id NOT IN (SELECT task_id FROM skips WHERE annotator_id = ?) "
                    "AND task_id NOT IN (SELECT task_id FROM barred WHERE annotator_id = ?) "
                    "AND task_id NOT IN (SELECT task_id FROM labels WHERE annotator_id = ?) "
                    "ORDER BY assignee IS NULL, priority DESC, arrived_ms, task_id LIMIT 1",
                    (reviewer, annotator_id, annotator_id, annotator_id, annotator_id)).fetchone()
                if row is None:
                    return None
                db.execute("UPDATE tasks SET state = 'leased', owner = ?, leased_ms = ?, lease_until_ms = ? "
                           "WHERE task_id = ?", (annotator_id, now_ms, until, row["task_id"]))
            return self._view(db, row, state="leased", owner=annotator_id, lease_until_ms=until)

    def _view(self, db, row: sqlite3.Row, **changes) -> dict:
        notes = [dict(n) for n in db.execute(
            "SELECT annotator_id, kind, note, ts FROM notes WHERE task_id = ? ORDER BY ts", (row["task_id"],))]
        view = {"task": json.loads(row["record"]), "state": row["state"], "priority": row["priority"],
                "owner": row["owner"], "lease_until_ms": row["lease_until_ms"], "notes": notes}
        view.update(changes)
        return view

    def task(self, task_id: str) -> dict:
        """One task with its state and notes; :class:`TaskError` 404 if unknown."""
        with self._tx() as db:
            return self._view(db, self._get(db, task_id))

    def _held(self, db, task_id: str, annotator_id: str, now_ms: int) -> sqlite3.Row:
        """The task, if ``annotator_id`` holds it: leased to them, or their lease
        ran out and nobody else took it since."""
        self._expire(db, now_ms)
        row = self._get(db, task_id)
        if row["state"] == "labeled":
            raise TaskError(409, f"task {task_id!r} is already labeled")
        if row["state"] == "flagged":
            raise TaskError(409, f"task {task_id!r} is flagged as ambiguous and waits for a reviewer")
        if row["owner"] != annotator_id:
            raise TaskError(409, f"task {task_id!r} is not leased to you: ask for the next task first")
        return row

    def label(self, task_id: str, annotator_id: str, label: str | list[str], note: str | None,
              now_ms: int | None = None, check_lease: bool = True) -> tuple[dict, bool]:
        """Record ``annotator_id``'s label for the task; returns ``(Label record, new)``.

        ``label`` is one class of a single-label task, or the classes chosen
        on a ``multi_label`` task (any subset of its label set, the empty one
        too; the record's ``labels``, and ``label`` them joined, see
        :func:`streams.events.set_label`). The record is stored unsent; ``new``
        is False when this annotator had already labeled the task (the first
        label is returned, nothing written). Raises :class:`TaskError`: 404
        unknown task, 422 label outside the label set or of the wrong kind
        (a set for a single-label task, or one class for a multi-label one),
        409 task not held by the annotator or already labeled.

        >>> store = Store(":memory:")
        >>> _ = store.add_tasks([{"task_id": "t1", "item_id": "i1", "priority": 0.5, "multi_label": True,
        ...                       "label_set": ["cat", "dog", "fox"]}], {})
        >>> _ = store.lease("ann")
        >>> record, _ = store.label("t1", "ann", ["fox", "cat"], note=None)
        >>> record["label"], record["labels"]
        ('cat|fox', ['cat', 'fox'])
        """
        now_ms = _now() if now_ms is None else now_ms
        eid = event_id(task_id, annotator_id)
        with self._tx() as db:
            done = db.execute("SELECT record FROM labels WHERE event_id = ?", (eid,)).fetchone()
            if done is not None:
                return json.loads(done[0]), False
            row = self._held(db, task_id, annotator_id, now_ms) if check_lease else self._get(db, task_id)
            task = json.loads(row["record"])
            label, labels = _answer(task, label)
            started = row["leased_ms"] if check_lease and row["leased_ms"] is not None else now_ms
            record = events.label(event_id=eid, task_id=task_id, item_id=task["item_id"], label=label,
                                  annotator_id=annotator_id, ts=now_ms, duration_ms=max(0, now_ms - started),
                                  note=note, tier=task.get("tier") or "annotator",
                                  guideline_version=row["guideline_version"], labels=labels)
            # a calibration task's label is an exam answer: kept here, never sent (no worker knows the task)
            db.execute("INSERT INTO labels (event_id, task_id, annotator_id, record, ts, sent) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (eid, task_id, annotator_id, json.dumps(record), now_ms, int(row["calibration"])))
            given = self._given(db, task_id)
            # done once it has all the labels it wants; until then, back in the queue for someone else
            db.execute("UPDATE tasks SET state = CASE WHEN ? >= wanted THEN 'labeled' ELSE 'pending' END, "
                       "owner = CASE WHEN ? >= wanted THEN owner END, lease_until_ms = NULL WHERE task_id = ?",
                       (given, given, task_id))
            return record, True

    def skip(self, task_id: str, annotator_id: str, now_ms: int | None = None) -> None:
        """Give the task back to the queue; this annotator will not be offered it again."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            self._held(db, task_id, annotator_id, now_ms)
            db.execute("INSERT OR IGNORE INTO skips (task_id, annotator_id, ts) VALUES (?, ?, ?)",
                       (task_id, annotator_id, now_ms))
            db.execute("UPDATE tasks SET state = 'pending', owner = NULL, lease_until_ms = NULL "
                       "WHERE task_id = ?", (task_id,))

    def flag(self, task_id: str, annotator_id: str, note: str, now_ms: int | None = None) -> None:
        """Set the task aside as ambiguous, with the annotator's note, for a reviewer."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            self._held(db, task_id, annotator_id, now_ms)
            db.execute("INSERT INTO notes (task_id, annotator_id, kind, note, ts) VALUES (?, ?, 'flag', ?, ?)",
                       (task_id, annotator_id, note, now_ms))
            db.execute("UPDATE tasks SET state = 'flagged', lease_until_ms = NULL WHERE task_id = ?", (task_id,))

    # ------------------------------------------------------------------ reviewers and admins

    def flagged(self, limit: int = 100) -> list[dict]:
        """Flagged tasks, oldest flag first, with their notes."""
        with self._tx() as db:
            rows = db.execute("SELECT t.* FROM tasks t WHERE state = 'flagged' ORDER BY "
                              "(SELECT min(ts) FROM notes n WHERE n.task_id = t.task_id), task_id LIMIT ?",
                              (limit,)).fetchall()
            return [self._view(db, r) for r in rows]

    def requeue(self, task_id: str, by: str, note: str | None = None, now_ms: int | None = None,
                only_flagged: bool = False) -> None:
        """Put a task back in the queue for anyone (a note is kept for the next annotator)."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            row = self._get(db, task_id)
            if row["state"] == "labeled":
                raise TaskError(409, f"task {task_id!r} is already labeled")
            if only_flagged and row["state"] != "flagged":
                raise TaskError(409, f"task {task_id!r} is not flagged")
            if note:
                db.execute("INSERT INTO notes (task_id, annotator_id, kind, note, ts) VALUES (?, ?, 'review', ?, ?)",
                           (task_id, by, note, now_ms))
            db.execute("UPDATE tasks SET state = 'pending', owner = NULL, lease_until_ms = NULL WHERE task_id = ?",
                       (task_id,))
            db.execute("DELETE FROM skips WHERE task_id = ?", (task_id,))

    def resolve(self, task_id: str, reviewer: str, label: str | list[str], note: str | None,
                now_ms: int | None = None) -> tuple[dict, bool]:
        """A reviewer's label for a flagged task (see :meth:`label`)."""
        with self._tx() as db:
            done = db.execute("SELECT record FROM labels WHERE event_id = ?",
                              (event_id(task_id, reviewer),)).fetchone()
            if done is None and self._get(db, task_id)["state"] != "flagged":
                raise TaskError(409, f"task {task_id!r} is not flagged")
            return self.label(task_id, reviewer, label, note, now_ms, check_lease=False)

    # ------------------------------------------------------------------ guidelines

    def shown(self, task_id: str, version: str) -> None:
        """Remember the guideline version a task is shown with: its label inherits it."""
        with self._tx() as db:
            db.execute("UPDATE tasks SET guideline_version = ? WHERE task_id = ?", (version, task_id))

    def guideline_history(self, key: str) -> list[tuple[int, str]]:
        """``(sequence, digest)`` of every version recorded for label set ``key``."""
        with self._tx() as db:
            return [(r[0], r[1]) for r in db.execute(
                "SELECT sequence, digest FROM guideline_versions WHERE key = ? ORDER BY sequence", (key,))]

    def record_guideline(self, key: str, sequence: int, digest: str, content: str, now_ms: int | None = None) -> None:
        """Record a new guideline version (its text too: what annotators saw is kept)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO guideline_versions (key, sequence, digest, content, ts) "
                       "VALUES (?, ?, ?, ?, ?)", (key, sequence, digest, content, _now() if now_ms is None else now_ms))

    # ------------------------------------------------------------------ gating

    @staticmethod
    def _paused(db, annotator_id: str) -> bool:
        row = db.execute("SELECT state FROM gating WHERE annotator_id = ?", (annotator_id,)).fetchone()
        return row is not None and row[0] == "paused"

    def gate(self, annotator_id: str) -> dict:
        """``{"annotator_id", "state", "since_ms", "admitted_ms", "by", "reason"}``:
        ``active`` (the default) or ``paused`` since ``since_ms``; gold checks
        count from ``admitted_ms`` (the last re-admission)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM gating WHERE annotator_id = ?", (annotator_id,)).fetchone()
        return dict(row) if row else {"annotator_id": annotator_id, "state": "active", "since_ms": 0,
                                      "admitted_ms": 0, "by": "", "reason": ""}

    def gates(self) -> list[dict]:
        """Every annotator who was ever paused, with their gold record since ``admitted_ms``."""
        with self._tx() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM gating ORDER BY annotator_id")]
        return [{**r, **dict(zip(("gold_checks", "gold_correct"), self.gold_record(r["annotator_id"])))}
                for r in rows]

    @staticmethod
    def _set_gate(db, annotator_id: str, state: str, by: str, reason: str, now_ms: int) -> None:
        admitted = now_ms if state == "active" else 0
        db.execute("INSERT INTO gating (annotator_id, state, since_ms, admitted_ms, by, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (annotator_id) DO UPDATE SET state = excluded.state, "
                   "since_ms = excluded.since_ms, by = excluded.by, reason = excluded.reason, "
                   "admitted_ms = CASE WHEN excluded.state = 'active' THEN excluded.admitted_ms ELSE admitted_ms END",
                   (annotator_id, state, now_ms, admitted, by, reason))

    def pause(self, annotator_id: str, by: str, reason: str, now_ms: int | None = None) -> list[str]:
        """Stop leasing to ``annotator_id``; their open leases go back to the
        queue. Returns the ids of the tasks released."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            released = [r[0] for r in db.execute(
                "SELECT task_id FROM tasks WHERE state = 'leased' AND owner = ?", (annotator_id,))]
            db.execute("UPDATE tasks SET state = 'pending', owner = NULL, lease_until_ms = NULL "
                       "WHERE state = 'leased' AND owner = ?", (annotator_id,))
            self._set_gate(db, annotator_id, "paused", by, reason, now_ms)
            return released

    def readmit(self, annotator_id: str, by: str, now_ms: int | None = None) -> None:
        """Lease to a paused annotator again; their gold record starts afresh.
        :class:`TaskError` 409 if they are not paused."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            if not self._paused(db, annotator_id):
                raise TaskError(409, f"annotator {annotator_id!r} is not paused")
            self._set_gate(db, annotator_id, "active", by, "re-admitted", now_ms)

    def add_calibration(self, annotator_id: str, task: dict, now_ms: int | None = None) -> None:
        """Queue ``task`` (a disguised gold item) for ``annotator_id`` alone."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            db.execute("INSERT INTO tasks (task_id, record, priority, arrived_ms, assignee, calibration) "
                       "VALUES (?, ?, ?, ?, ?, 1)",
                       (task["task_id"], json.dumps(task), float(task["priority"]), now_ms, annotator_id))

    def calibration_open(self, annotator_id: str) -> bool:
        """Whether a calibration task waits for ``annotator_id`` (not labeled, not skipped)."""
        with self._tx() as db:
            return db.execute(
                "SELECT 1 FROM tasks WHERE calibration = 1 AND assignee = ? AND state IN ('pending', 'leased') "
                "AND task_id NOT IN (SELECT task_id FROM skips WHERE annotator_id = ?) LIMIT 1",
                (annotator_id, annotator_id)).fetchone() is not None

    def peek(self, annotator_id: str, reviewer: bool = False) -> dict | None:
        """The real task :meth:`lease` would give ``annotator_id`` next, without leasing it."""
        with self._tx() as db:
            row = db.execute(
                "SELECT record FROM tasks WHERE state = 'pending' AND (tier = 'annotator' OR ?) "
                "AND assignee IS NULL "
                "AND task_id NOT IN (SELECT task_id FROM skips WHERE annotator_id = ?) "
                "AND task_id NOT IN (SELECT task_id FROM barred WHERE annotator_id = ?) "
                "AND task_id NOT IN (SELECT task_id FROM labels WHERE annotator_id = ?) "
                "ORDER BY priority DESC, arrived_ms, task_id LIMIT 1",
                (reviewer, annotator_id, annotator_id, annotator_id)).fetchone()
        return json.loads(row[0]) if row else None

    def gold_check(self, task_id: str, annotator_id: str, item_id: str, correct: bool, now_ms: int) -> None:
        """Record one answer on a gold item."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO gold_checks (task_id, annotator_id, item_id, correct, ts) "
                       "VALUES (?, ?, ?, ?, ?)", (task_id, annotator_id, item_id, int(correct), now_ms))

    def gold_record(self, annotator_id: str) -> tuple[int, int]:
        """``(checks, correct)`` of ``annotator_id`` since they were last admitted."""
        with self._tx() as db:
            since = db.execute("SELECT admitted_ms FROM gating WHERE annotator_id = ?", (annotator_id,)).fetchone()
            n, right = db.execute("SELECT count(*), coalesce(sum(correct), 0) FROM gold_checks "
                                  "WHERE annotator_id = ? AND ts >= ?",
                                  (annotator_id, since[0] if since else 0)).fetchone()
        return n, right

    def gold_seen(self, annotator_id: str) -> set[str]:
        """Gold item ids ``annotator_id`` was given as calibration tasks, ever."""
        with self._tx() as db:
            return {json.loads(r[0])["item_id"] for r in db.execute(
                "SELECT record FROM tasks WHERE calibration = 1 AND assignee = ?", (annotator_id,))}

    # ------------------------------------------------------------------ outbox

    def unsent(self, limit: int = 1000) -> list[dict]:
        """Labels stored but not yet confirmed on Kafka, oldest first."""
        with self._tx() as db:
            return [json.loads(r[0]) for r in
                    db.execute("SELECT record FROM labels WHERE sent = 0 ORDER BY ts LIMIT ?", (limit,))]

    def mark_sent(self, event_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE labels SET sent = 1 WHERE event_id = ?", [(e,) for e in event_ids])

    def is_sent(self, event_id: str) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT sent FROM labels WHERE event_id = ?", (event_id,)).fetchone()
        return bool(row and row[0])

    # ------------------------------------------------------------------ audit events

    def audit(self, event: dict) -> None:
        """Keep an audit event until it is on Kafka (see :meth:`forget_audit`)."""
        with self._tx() as db:
            db.execute("INSERT INTO audit (record) VALUES (?)", (json.dumps(event),))

    def unsent_audit(self, limit: int = 1000) -> list[tuple[int, dict]]:
        """``(seq, event)`` of the audit events not yet on Kafka, oldest first."""
        with self._tx() as db:
            return [(r[0], json.loads(r[1])) for r in
                    db.execute("SELECT seq, record FROM audit ORDER BY seq LIMIT ?", (limit,))]

    def forget_audit(self, seqs: list[int]) -> None:
        """Drop audit events Kafka confirmed."""
        with self._tx() as db:
            db.executemany("DELETE FROM audit WHERE seq = ?", [(s,) for s in seqs])

    # ------------------------------------------------------------------ figures

    def annotator_stats(self, annotator_id: str | None = None, now_ms: int | None = None) -> list[dict]:
        """Per annotator: labels, skips, flags, labels in the last hour and
        median seconds per label (over their last 50 labels)."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            who = [annotator_id] if annotator_id else [r[0] for r in db.execute(
                "SELECT annotator_id FROM labels UNION SELECT annotator_id FROM skips "
                "UNION SELECT annotator_id FROM notes WHERE kind = 'flag' ORDER BY 1")]
            out = []
            for a in who:
                labels, last_hour = db.execute(
                    "SELECT count(*), count(*) FILTER (WHERE ts > ?) FROM labels WHERE annotator_id = ?",
                    (now_ms - 3_600_000, a)).fetchone()
                durations = sorted(json.loads(r[0])["duration_ms"] for r in db.execute(
                    "SELECT record FROM labels WHERE annotator_id = ? ORDER BY ts DESC LIMIT 50", (a,)))
                out.append({
                    "annotator_id": a, "labels": labels, "labels_last_hour": last_hour,
                    "skips": db.execute("SELECT count(*) FROM skips WHERE annotator_id = ?", (a,)).fetchone()[0],
                    "flags": db.execute("SELECT count(*) FROM notes WHERE annotator_id = ? AND kind = 'flag'",
                                        (a,)).fetchone()[0],
                    "median_seconds": round(durations[len(durations) // 2] / 1000, 1) if durations else None,
                })
            return out

    def counts(self, now_ms: int | None = None) -> dict[str, int]:
        """Tasks by state (a lease that timed out counts as pending), and unsent labels."""
        now_ms = _now() if now_ms is None else now_ms
        with self._tx() as db:
            self._expire(db, now_ms)
            out = {s: 0 for s in ("pending", "leased", "flagged", "labeled")}
            out.update({r[0]: r[1] for r in db.execute("SELECT state, count(*) FROM tasks GROUP BY state")})
            out["unsent_labels"] = db.execute("SELECT count(*) FROM labels WHERE sent = 0").fetchone()[0]
            return out


class _Transaction:
    """``with``: hold the store's lock inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db, self.lock, self.outer = db, lock, False

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        try:
            if self.outer:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.lock.release()
