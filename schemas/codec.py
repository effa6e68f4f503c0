"""Wire format of every topic: Avro single-object encoding, and JSON input.

An event on the wire is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the
writer schema (little-endian, as the Avro spec says) + the Avro binary body.
Input topics also accept a UTF-8 JSON object that validates against the same
schema. :func:`decode` turns either into ``(schema name, record dict)`` with
defaults filled, or raises :class:`DecodeError`, whose ``error`` code and
``reason`` go to the dead-letter topic as they are.

What decodes can be stored: every string is valid UTF-8 (a JSON ``"\\ud800"``,
a lone surrogate, is refused), strings, maps and arrays stay within
:class:`Limits`, and the times of input events fall in a window around now
(:data:`TIMES`; by default one year back to one day ahead), so the warehouse
never refuses a row for what it holds, and a block of input rows spans at most
14 monthly partitions, not hundreds.

Schemas are the ``*.avsc`` files beside this module, parsed once at import; a
batch schema names its item type (``feedbackloop.Prediction``), and its
fingerprint is taken over the canonical form with that type written inline,
as any Avro tool does.

>>> event = {"event_id": "e1", "item_id": "i1", "ts": int(time.time() * 1000),
...          "model_name": "spam", "model_version": "3", "predicted_label": "spam",
...          "probabilities": {"spam": 0.9, "ham": 0.1}, "features": {"links": 4.0}}
>>> data = encode("Prediction", event)
>>> data[:10] == MARKER + fingerprint("Prediction")
True
>>> name, record = decode(data, accept=("Prediction", "PredictionBatch"))
>>> name, record["features"], record["text"]
('Prediction', {'links': 4.0}, None)
>>> decode(json.dumps(event).encode(), accept=("Prediction",)) == (name, record)
True
>>> bad = dict(event, probabilities={"spam": float("nan"), "ham": 0.1})
>>> try:
...     decode(json.dumps(bad).encode(), accept=("Prediction",))
... except DecodeError as e:
...     print(e.error, "-", e.reason)
invalid - probabilities contain NaN for class 'spam'
>>> try:
...     decode(json.dumps(dict(event, item_id="\\ud800")).encode(), accept=("Prediction",))
... except DecodeError as e:
...     print(e.error, "-", e.reason)
unencodable - field 'item_id': not valid UTF-8 (lone surrogate '\\ud800' at index 0)
>>> stale = encode("Prediction", dict(event, ts=1700000000000))
>>> try:
...     decode(stale, accept=("Prediction",), now_ms=1700000000000 + 400 * DAY_MS)
... except DecodeError as e:
...     print(e.error, "-", e.reason)
out_of_range - field 'ts': 1700000000000 (2023-11-14 22:13:20 UTC) is more than 365 days before now (2024-12-18 22:13:20 UTC)
>>> decode(stale, accept=("Prediction",), now_ms=1700000000000 + 400 * DAY_MS,
...        limits=Limits(past_ms=500 * DAY_MS))[0]
'Prediction'
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from functools import lru_cache
from io import BytesIO
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, NamedTuple

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import (
    UnknownType,
    fingerprint as _crc64,
    parse_schema,
    to_parsing_canonical_form,
)
from fastavro.validation import ValidationError, validate

__all__ = [
    "SCHEMA_DIR", "MARKER", "MAX_BYTES", "NAMES", "DAY_MS", "TIMES", "LIMITS",
    "DecodeError", "InvalidEvent", "Limits",
    "encode", "decode", "fingerprint", "schema",
]

#: Directory holding the ``*.avsc`` contracts (package data).
SCHEMA_DIR = Path(__file__).resolve().parent
#: First two bytes of Avro single-object encoding.
MARKER = b"\xc3\x01"
#: Payloads larger than this are refused before any parsing (``decode(max_bytes=...)``).
MAX_BYTES = 1 << 20
#: Batch schema name -> (array field, item schema name).
BATCHES = {"PredictionBatch": ("events", "Prediction"), "CandidateBatch": ("candidates", "Candidate")}
#: Kinds of input event, as written in ``Candidate.kind`` and ``LabelingTask.kind``.
KINDS = frozenset({"prediction", "override", "appeal"})
#: Milliseconds in a day.
DAY_MS = 86_400_000
#: Schema -> its epoch-millis fields that must fall in the window of :class:`Limits`: the
#: times of input events, written by other systems. Times this system writes (tasks,
#: model versions, labels from the labeling service) are not checked: a model version
#: may rightly be a year old.
TIMES: dict[str, tuple[str, ...]] = {"Prediction": ("ts",), "Override": ("ts",), "Appeal": ("ts",),
                                     "PredictionColumns": ("ts",)}


class Limits(NamedTuple):
    """What :func:`decode` accepts beyond the schema, so what it returns can be stored.

    ``past_ms`` and ``future_ms``: the :data:`TIMES` fields fall in
    ``[now - past_ms, now + future_ms]``; ``max_string``: characters in any
    string (field, map key or value, array item); ``max_entries``: entries in
    any map; ``max_items``: items in any array, events in a batch. The payload
    itself is bounded by ``decode(max_bytes=...)``.

    >>> Limits(past_ms=7 * DAY_MS).future_ms == DAY_MS
    True
    """

    past_ms: int = 365 * DAY_MS
    future_ms: int = DAY_MS
    max_string: int = 65_536
    max_entries: int = 10_000
    max_items: int = 10_000


#: The default :class:`Limits`.
LIMITS = Limits()


class DecodeError(Exception):
    """Bytes that are not a valid event.

    ``error`` is a short code (``undecodable``, ``unknown_schema``,
    ``schema_mismatch``, ``invalid``, ``unencodable``, ``out_of_range``,
    ``too_large``); ``reason`` says what was wrong, in words (never quoting a
    string that could not be stored, so the reason itself can be).
    """

    def __init__(self, error: str, reason: str):
        super().__init__(error, reason)
        self.error = error
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.error}: {self.reason}"


class InvalidEvent(DecodeError):
    """A record that breaks its schema or a semantic rule (``error == "invalid"``), or
    holds what cannot be stored (``unencodable``, ``out_of_range``, ``too_large``)."""

    def __init__(self, reason: str, error: str = "invalid"):
        super().__init__(error, reason)

    def __reduce__(self):
        return (InvalidEvent, (self.reason, self.error))


# --------------------------------------------------------------------------- registry


class _Entry(NamedTuple):
    name: str  # short name, e.g. "Prediction"
    parsed: dict  # fastavro-parsed schema (named types by reference)
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the canonical form
    header: bytes  # MARKER + fingerprint
    fields: frozenset  # field names
    required: frozenset  # field names without a default
    check: Callable[[dict], None] | None  # semantic rules, raise InvalidEvent
    reader: dict | None = None  # an earlier version's entry: the current schema, its records resolve into


def _load(directory: Path) -> tuple[dict[str, _Entry], dict[bytes, _Entry], dict[str, dict]]:
    """Parse every ``*.avsc`` in ``directory``, dependencies first."""
    pending = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.avsc"))}
    named: dict[str, dict] = {}
    by_name: dict[str, _Entry] = {}
    while pending:
        progress = False
        for filename, raw in list(pending.items()):
            before = dict(named)
            try:
                parsed = parse_schema(raw, named_schemas=named)
            except UnknownType:
                named.clear()
                named.update(before)
                continue
            expanded = parse_schema(raw, named_schemas=dict(before), expand=True)
            fp = bytes.fromhex(_crc64(to_parsing_canonical_form(expanded), "CRC-64-AVRO"))
            short = parsed["name"].rpartition(".")[2]
            fields = parsed["fields"]
            by_name[short] = _Entry(
                short, parsed, fp, MARKER + fp,
                frozenset(f["name"] for f in fields),
                frozenset(f["name"] for f in fields if "default" not in f),
                _CHECKS.get(short),
            )
            del pending[filename]
            progress = True
        if not progress:
            raise ValueError(f"unresolvable named types in {', '.join(sorted(pending))}")
    for entry in list(by_name.values()):
        by_name[entry.parsed["name"]] = entry  # full names work too
    fingerprints = {e.fingerprint: e for e in by_name.values()}
    # Earlier versions of a schema (history/NAME.N.avsc, as they were before a field was added)
    # still decode: Avro resolution fills the fields they lack with the current defaults.
    for path in sorted((directory / "history").glob("*.avsc")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        full = f"{raw.get('namespace', '')}.{raw['name']}".lstrip(".")
        others = {k: v for k, v in named.items() if k != full}
        writer = parse_schema(raw, named_schemas=dict(others))
        expanded = parse_schema(raw, named_schemas=dict(others), expand=True)
        fp = bytes.fromhex(_crc64(to_parsing_canonical_form(expanded), "CRC-64-AVRO"))
        current = by_name[full]
        if fp not in fingerprints:
            fingerprints[fp] = current._replace(parsed=writer, fingerprint=fp, header=MARKER + fp,
                                                reader=current.parsed)
    return by_name, fingerprints, named


# --------------------------------------------------------------------------- semantic rules

_isfinite = math.isfinite


def _num(v: float) -> str:
    return "NaN" if v != v else repr(v)


def _nonempty(record: dict, *names: str) -> None:
    for n in names:
        if not record[n]:
            raise InvalidEvent(f"{n} is empty")


def _finite_map(m: dict, field: str, what: str = "key") -> None:
    # One C-level sum: finite only if every value is finite (overflow rechecks).
    if m and not _isfinite(sum(m.values())):
        for k, v in m.items():
            if not _isfinite(v):
                raise InvalidEvent(f"{field} contain {_num(v)} for {what} {k!r}")


def _unit_map(m: dict, field: str) -> None:
    """Finite values within [0, 1]."""
    if not m:
        return
    _finite_map(m, field, "class")
    vals = m.values()
    if min(vals) < 0.0 or max(vals) > 1.0:
        for k, v in m.items():
            if not 0.0 <= v <= 1.0:
                raise InvalidEvent(f"{field} of class {k!r} is {_num(v)}, outside [0, 1]")


def _unit(record: dict, field: str, low_open: bool = False) -> None:
    v = record.get(field)
    if v is None:
        return
    if not (_isfinite(v) and (0.0 < v if low_open else 0.0 <= v) and v <= 1.0):
        raise InvalidEvent(f"{field} is {_num(v)}, outside {'(0' if low_open else '[0'}, 1]")


def _kind(record: dict) -> None:
    if record["kind"] not in KINDS:
        raise InvalidEvent(f"kind {record['kind']!r} is not one of {', '.join(sorted(KINDS))}")


def _check_prediction(r: dict, sets: bool = False) -> None:
    # The hot path of the stream: a few C-level calls when all is well.
    if not r["event_id"] or not r["item_id"]:
        _nonempty(r, "event_id", "item_id")
    p = r["probabilities"]
    if not p:
        raise InvalidEvent("probabilities are empty")
    vals = p.values()
    total = sum(vals)
    if not (_isfinite(total) and min(vals) >= 0.0 and max(vals) <= 1.0):
        _unit_map(p, "probabilities")
    if sets:  # a multi-label model: each class's P(in the set), any sum; the predicted set joined by "|"
        _check_set(r["predicted_label"], p)
    elif abs(total - 1.0) > 0.01:
        raise InvalidEvent(f"probabilities sum to {total:.6g}, not 1 (tolerance 0.01)")
    elif r["predicted_label"] not in p:
        classes = ", ".join(repr(k) for k in list(p)[:10])
        raise InvalidEvent(f"predicted_label {r['predicted_label']!r} is not a class in probabilities ({classes})")
    f = r.get("features")  # optional fields may be absent on the encode side
    if f and not _isfinite(sum(f.values())):
        _finite_map(f, "features")


def _check_set(predicted: str, classes) -> None:
    """A multi-label prediction's predicted set: classes joined by ``|`` (or none), each one of ``classes``."""
    unknown = [c for c in predicted.split("|") if c and c not in classes] if predicted else []
    if unknown:
        raise InvalidEvent(f"predicted_label {predicted!r} names {unknown[0]!r}, not a class in probabilities")


def _check_prediction_columns(r: dict, sets: bool = False) -> None:
    # Whole columns at a time: C-level passes when all is well, a search for the culprit when not.
    n, classes, names = len(r["event_id"]), r["classes"], r.get("feature_names") or []
    k, f = len(classes), len(names)
    for name in ("item_id", "ts", "model_name", "model_version", "predicted_label"):
        if len(r[name]) != n:
            raise InvalidEvent(f"{name} has {len(r[name])} entries, event_id {n}")
    for name in ("text", "context"):
        if r.get(name) and len(r[name]) != n:
            raise InvalidEvent(f"{name} has {len(r[name])} entries, event_id {n} (or none)")
    if not k:
        raise InvalidEvent("classes are empty")
    if len(set(classes)) != k or len(set(names)) != f:
        raise InvalidEvent("classes and feature_names must not repeat a name")
    p, x = r["probabilities"], r.get("features") or []
    if len(p) != n * k:
        raise InvalidEvent(f"probabilities has {len(p)} entries, not events x classes = {n} x {k}")
    if len(x) != n * f:
        raise InvalidEvent(f"features has {len(x)} entries, not events x feature_names = {n} x {f}")
    if not all(r["event_id"]) or not all(r["item_id"]):
        i = next(i for i in range(n) if not r["event_id"][i] or not r["item_id"][i])
        raise InvalidEvent(f"event {i}: event_id or item_id is empty")
    if p and not (_isfinite(sum(p)) and min(p) >= 0.0 and max(p) <= 1.0):
        i = next(i for i, v in enumerate(p) if not (_isfinite(v) and 0.0 <= v <= 1.0))
        raise InvalidEvent(f"event {i // k}: probabilities of class {classes[i % k]!r} is {_num(p[i])}, "
                           f"outside [0, 1]")
    if sets:
        for predicted in set(r["predicted_label"]):
            _check_set(predicted, classes)
    sums = [] if sets else list(map(sum, zip(*(p[j::k] for j in range(k)))))
    if sums and (min(sums) < 0.99 or max(sums) > 1.01):
        i = next(i for i, total in enumerate(sums) if abs(total - 1.0) > 0.01)
        raise InvalidEvent(f"event {i}: probabilities sum to {sums[i]:.6g}, not 1 (tolerance 0.01)")
    unknown = set() if sets else set(r["predicted_label"]) - set(classes)
    if unknown:
        label = sorted(unknown)[0]
        raise InvalidEvent(f"event {r['predicted_label'].index(label)}: predicted_label {label!r} is not one of "
                           f"classes")
    if x and not _isfinite(sum(x)):
        i = next(i for i, v in enumerate(x) if not _isfinite(v))
        raise InvalidEvent(f"event {i // f}: features contain {_num(x[i])} for key {names[i % f]!r}")


def _check_override(r: dict) -> None:
    _nonempty(r, "event_id", "item_id", "override_label")


def _check_appeal(r: dict) -> None:
    _nonempty(r, "event_id", "item_id")


def _check_candidate(r: dict) -> None:
    _nonempty(r, "event_id", "item_id")
    _kind(r)
    _unit_map(r.get("probabilities"), "probabilities")
    _finite_map(r.get("features"), "features")
    _finite_map(r.get("signals"), "signals", "signal")
    _unit(r, "selection_probability")


def _check_task(r: dict) -> None:
    _nonempty(r, "task_id", "event_id", "item_id")
    _kind(r)
    _finite_map(r["signals"], "signals", "signal")
    _finite_map(r.get("features"), "features")
    _unit(r, "selection_probability", low_open=True)
    _unit(r, "confidence")
    if not _isfinite(r["priority"]):
        raise InvalidEvent(f"priority is {_num(r['priority'])}")


def _check_label(r: dict) -> None:
    _nonempty(r, "event_id", "task_id", "item_id", "annotator_id")
    labels = r.get("labels")
    if labels is None:
        _nonempty(r, "label")
    elif any(not c or "|" in c for c in labels) or labels != sorted(set(labels)) or r["label"] != "|".join(labels):
        raise InvalidEvent(f"labels {labels!r} are not distinct sorted classes joined as label {r['label']!r}")
    if r.get("duration_ms", 0) < 0:
        raise InvalidEvent(f"duration_ms is negative ({r['duration_ms']})")


def _check_model_version(r: dict) -> None:
    _nonempty(r, "model_name")
    _unit(r, "prequential_accuracy")
    _unit(r, "control_accuracy")


def _batch(key: str, check: Callable[[dict], None]) -> Callable[[dict], None]:
    def check_batch(r: dict) -> None:
        for i, item in enumerate(r[key]):
            try:
                check(item)
            except InvalidEvent as e:
                raise InvalidEvent(f"{key}[{i}]: {e.reason}") from None

    return check_batch


_CHECKS: dict[str, Callable[[dict], None]] = {
    "Prediction": _check_prediction,
    "PredictionBatch": _batch("events", _check_prediction),
    "PredictionColumns": _check_prediction_columns,
    "Override": _check_override,
    "Appeal": _check_appeal,
    "Candidate": _check_candidate,
    "CandidateBatch": _batch("candidates", _check_candidate),
    "LabelingTask": _check_task,
    "Label": _check_label,
    "ModelVersion": _check_model_version,
}

#: The checks of predictions when the label set is multi-label (``multi_label=True`` to
#: :func:`encode` and :func:`decode`): probabilities are each class's P(in the set), in
#: [0, 1] with any sum, and ``predicted_label`` is the predicted set joined by ``|``.
_SET_CHECKS: dict[str, Callable[[dict], None]] = {
    "Prediction": lambda r: _check_prediction(r, sets=True),
    "PredictionBatch": _batch("events", lambda r: _check_prediction(r, sets=True)),
    "PredictionColumns": lambda r: _check_prediction_columns(r, sets=True),
}

_REGISTRY, _BY_FINGERPRINT, _NAMED = _load(SCHEMA_DIR)
#: Short names of all schemas.
NAMES: tuple[str, ...] = tuple(sorted(n for n in _REGISTRY if "." not in n))


# --------------------------------------------------------------------------- storable values
# One checker per schema, built once from the parsed schema: strings, maps and arrays
# within the limits, strings encodable as UTF-8 (only JSON can yield a lone surrogate:
# the Avro reader decodes strictly), the times of input events in the window.


class _Ctx(NamedTuple):
    max_string: int
    max_entries: int
    max_items: int
    text: bool  # look for lone surrogates
    low: int  # the window of TIMES fields
    high: int
    now: int
    limits: Limits


class _Bad(Exception):
    """A value that cannot be stored; the path to it is filled in on the way up."""

    def __init__(self, error: str, what: str):
        super().__init__(error, what)
        self.error, self.what, self.path = error, what, []

    def event(self) -> InvalidEvent:
        where = ""
        for part in reversed(self.path):
            where += part if part[:1] == "[" or not where else "." + part
        return InvalidEvent(f"field {where!r}: {self.what}" if where else self.what, self.error)


def _utf8(v: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Bad("unencodable", f"not valid UTF-8 (lone surrogate {v[e.start]!r} at index {e.start})") from None


def _string(v: str, c: _Ctx) -> None:
    if len(v) > c.max_string:
        raise _Bad("too_large", f"{len(v)} characters exceed the limit of {c.max_string}")
    if c.text and not v.isascii():
        _utf8(v)


def _short(values, c: _Ctx) -> bool:
    """Every string of ``values`` within the limits, in one C-level pass (two for JSON)."""
    return not values or (max(map(len, values)) <= c.max_string and (not c.text or all(map(str.isascii, values))))


def _keys(m: dict, c: _Ctx) -> None:
    if not _short(m, c):
        for k in m:
            try:
                _string(k, c)
            except _Bad as e:  # an unencodable key is not shown, a long one in part
                e.what = f"key {k[:12]!r}... {e.what}" if e.error == "too_large" else f"key {e.what}"
                raise


def _values(pairs, c: _Ctx) -> None:
    """Check the strings of ``(path part, string)`` pairs."""
    for part, v in pairs:
        try:
            _string(v, c)
        except _Bad as e:
            e.path.append(part)
            raise


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "not a representable date"


def _span(ms: int) -> str:
    for unit, size in (("day", DAY_MS), ("hour", 3_600_000), ("minute", 60_000)):
        if ms and ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{ms / 1000:g} s"


def _window(v: int | list, c: _Ctx) -> None:
    if type(v) is list:  # a column of times
        if v and (min(v) < c.low or max(v) > c.high):
            for i, x in enumerate(v):
                try:
                    _window(x, c)
                except _Bad as e:
                    e.path.append(f"[{i}]")
                    raise
        return
    if not c.low <= v <= c.high:
        side = f"{_span(c.limits.past_ms)} before" if v < c.low else f"{_span(c.limits.future_ms)} after"
        raise _Bad("out_of_range", f"{v} ({_when(v)}) is more than {side} now ({_when(c.now)})")


def _checker(s: Any) -> Callable[[Any, _Ctx], None] | None:
    """The storability check of values of schema ``s``; None if there is nothing to check."""
    if isinstance(s, str):
        if s in _NAMED:
            return _checker(_NAMED[s])
        return _string if s == "string" else None
    if isinstance(s, list):  # union: the branch the Python type of the value picks
        by_type = {}
        for branch in s:
            check = _checker(branch)
            if check is not None:
                by_type.setdefault(_PY_TYPE[_type_name(branch)], check)
        if not by_type:
            return None

        def union(v, c):
            check = by_type.get(type(v))
            if check is not None:
                check(v, c)
        return union
    t = s["type"]
    if t == "record":
        short = s["name"].rpartition(".")[2]
        fields = [(f["name"], check) for f in s["fields"] if (check := _checker(f["type"])) is not None]
        times = TIMES.get(short, ())
        if not fields and not times:
            return None

        def record(v, c):
            name = None
            try:
                for name, check in fields:
                    check(v[name], c)
                for name in times:
                    _window(v[name], c)
            except _Bad as e:
                e.path.append(name)
                raise
        return record
    if t == "map":
        values = _checker(s["values"])
        strings = s["values"] == "string"

        def map_(v, c):
            if len(v) > c.max_entries:
                raise _Bad("too_large", f"{len(v)} entries exceed the limit of {c.max_entries}")
            _keys(v, c)
            if strings:
                if not _short(v.values(), c):
                    _values(((f"[{k!r}]", x) for k, x in v.items()), c)
            elif values is not None:
                for k, x in v.items():
                    try:
                        values(x, c)
                    except _Bad as e:
                        e.path.append(f"[{k!r}]")
                        raise
        return map_
    if t == "array":
        items = _checker(s["items"])

        def array(v, c):
            if len(v) > c.max_items:
                raise _Bad("too_large", f"{len(v)} items exceed the limit of {c.max_items}")
            if items is _string:
                if not _short(v, c):
                    _values(((f"[{i}]", x) for i, x in enumerate(v)), c)
            elif items is not None:
                i = 0
                try:
                    for i, x in enumerate(v):
                        items(x, c)
                except _Bad as e:
                    e.path.append(f"[{i}]")
                    raise
        return array
    return _checker(t) if t == "string" else None


def _type_name(s: Any) -> str:
    if isinstance(s, str):
        return _NAMED[s]["type"] if s in _NAMED else s
    return "union" if isinstance(s, list) else s["type"]


_PY_TYPE = {"string": str, "record": dict, "map": dict, "array": list, "enum": str, "bytes": bytes}
_STORABLE = {name: _checker(entry.parsed) for name, entry in _REGISTRY.items()}


# The same limits on the hot path, in a few C-level passes over a whole batch: a record
# whose fields are strings, maps and arrays of strings is checked through itemgetters.
# Only when a pass finds something does the checker above run, to name the field.


class _Flat(NamedTuple):
    """Getters of a flat record's fields, each returning a tuple (or None: no such field)."""

    strings: Callable | None  # string and optional string fields
    maps: Callable | None  # map fields (their keys are strings)
    text_maps: Callable | None  # map fields whose values are strings
    arrays: Callable | None  # arrays of strings
    times: Callable | None  # the TIMES field (one at most), its value


def _getter(names: list) -> Callable | None:
    if not names:
        return None
    return itemgetter(*names) if len(names) > 1 else itemgetter(names[0], names[0])  # a tuple either way


def _flat(s: Any) -> _Flat | None:
    """The getters of record schema ``s``, None if a field holds records or containers of them."""
    found: dict[str, list] = {"strings": [], "maps": [], "text_maps": [], "arrays": []}
    for f in s["fields"]:
        t = f["type"]
        branches = [b for b in t if b != "null"] if isinstance(t, list) else [t]
        kinds = {_type_name(b) for b in branches}
        if kinds <= {"string", "enum"}:
            found["strings"].append(f["name"])
        elif kinds == {"map"} and len(branches) == 1:
            values = _type_name(branches[0]["values"])
            if values not in _PRIMITIVES:
                return None
            found["maps"].append(f["name"])
            if values == "string":
                found["text_maps"].append(f["name"])
        elif kinds == {"array"} and len(branches) == 1:
            if _type_name(branches[0]["items"]) != "string":
                return None
            found["arrays"].append(f["name"])
        elif not kinds <= _PRIMITIVES:
            return None
    times = TIMES.get(s["name"].rpartition(".")[2], ())
    if len(times) > 1:
        return None
    return _Flat(*(_getter(found[k]) for k in _Flat._fields[:-1]), itemgetter(times[0]) if times else None)


def _within(records: list, flat: _Flat, c: Limits, lengths: bool, low: int, high: int) -> bool:
    """True if every record certainly passes :data:`_STORABLE` (lone surrogates aside):
    within the limits ``c``, times in ``[low, high]``; ``lengths=False`` when the
    payload is too small to break a length limit."""
    if lengths:
        strings = []
        if flat.strings is not None:
            strings.append(filter(None, chain.from_iterable(map(flat.strings, records))))
        if flat.maps is not None:
            maps = list(chain.from_iterable(map(flat.maps, records)))
            if max(map(len, maps), default=0) > c.max_entries:
                return False
            strings.append(chain.from_iterable(maps))
        if flat.text_maps is not None:
            strings.append(chain.from_iterable(map(dict.values, chain.from_iterable(map(flat.text_maps, records)))))
        if flat.arrays is not None:
            arrays = list(filter(None, chain.from_iterable(map(flat.arrays, records))))  # optional arrays: None
            if max(map(len, arrays), default=0) > c.max_items:
                return False
            strings.append(chain.from_iterable(arrays))
        if max(map(len, chain.from_iterable(strings)), default=0) > c.max_string:
            return False
    if flat.times is not None:
        times = list(map(flat.times, records))
        if times and (min(times) < low or max(times) > high):
            return False
    return True


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string", "enum", "fixed"}


def _fast(entry: _Entry) -> tuple[str | None, _Flat] | None:
    """(batch array field or None, getters of the records), None if the schema is not flat."""
    if entry.name in BATCHES:
        key, item = BATCHES[entry.name]
        flat = _flat(_REGISTRY[item].parsed)
        return None if flat is None else (key, flat)
    flat = _flat(entry.parsed)
    return None if flat is None else (None, flat)


_FAST = {name: _fast(entry) for name, entry in _REGISTRY.items()}


def _storable(entry: _Entry, record: dict, text: bool, limits: Limits, now_ms: int | None, size: int) -> None:
    """Raise :class:`InvalidEvent` if ``record`` holds what cannot be stored (see :class:`Limits`).

    ``size`` is the payload's: no string, map or array decoded from it has more
    characters, entries or items than it has bytes.
    """
    check = _STORABLE[entry.name]
    if check is None:
        return
    now = int(time.time() * 1000) if now_ms is None else now_ms
    low, high = now - limits.past_ms, now + limits.future_ms
    fast = _FAST[entry.name]
    if not text and fast is not None:
        key, flat = fast
        if key is None and size <= limits.max_string and size <= limits.max_entries and size <= limits.max_items:
            if flat.times is None or low <= flat.times(record) <= high:  # one small event: its time only
                return
        else:
            records = [record] if key is None else record[key]
            lengths = size > min(limits.max_string, limits.max_entries, limits.max_items)
            if (not lengths or len(records) <= limits.max_items) and _within(records, flat, limits, lengths, low, high):
                return
    c = _Ctx(limits.max_string, limits.max_entries, limits.max_items, text, low, high, now, limits)
    try:
        check(record, c)
    except _Bad as e:
        raise e.event() from None


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(NAMES)}") from None


def fingerprint(name: str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of schema ``name``, in wire byte order."""
    return _entry(name).fingerprint


def schema(name: str) -> dict:
    """The fastavro-parsed schema ``name`` (short or full name)."""
    return _entry(name).parsed


def leading_string(data: bytes, name: str, field: int) -> str | None:
    """String field number ``field`` (counted from 0; it and every field before it a string) of an Avro
    message written with this version of schema ``name``, read without decoding the rest; None for
    anything else (JSON, another schema or version, a short message): decode those whole.

    >>> task = {"task_id": "t1", "event_id": "e1", "item_id": "i1", "created_ts": 1, "source_ts": 1,
    ...         "kind": "prediction", "reasons": [], "signals": {}, "selection_probability": 1.0, "priority": 0.0,
    ...         "confidence": 0.0, "label_set": [], "model_name": "m", "model_version": "1", "shadow_version": 0,
    ...         "policy_version": "p"}
    >>> data = encode("LabelingTask", task)
    >>> leading_string(data, "LabelingTask", 1), leading_string(data, "Label", 1)
    ('e1', None)
    >>> leading_string(b'{"task_id": "t1"}', "LabelingTask", 0) is None  # JSON: decode it whole
    True
    """
    entry = _entry(name)
    if data[:10] != entry.header or any(f["type"] != "string" for f in entry.parsed["fields"][:field + 1]):
        return None
    at = 10
    for _ in range(field + 1):
        length = shift = 0
        while True:  # a zig-zag varint
            if at >= len(data):
                return None
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        length = (length >> 1) ^ -(length & 1)
        start, at = at, at + length
        if length < 0 or at > len(data):
            return None
    return bytes(data[start:at]).decode("utf-8", "replace")


# --------------------------------------------------------------------------- encode


def _validation_reason(exc: ValidationError) -> str:
    errors = getattr(exc, "errors", None) or [str(exc)]
    return "; ".join(str(e) for e in errors[:3])


def _check_fields(entry: _Entry, record: Any) -> None:
    if not isinstance(record, dict):
        raise InvalidEvent(f"{entry.name} must be a dict, not {type(record).__name__}")
    extra = record.keys() - entry.fields
    if extra:
        raise InvalidEvent(f"unknown field(s) {_names(extra)} in {entry.name}")
    if entry.name in BATCHES:
        key, item = BATCHES[entry.name]
        items = record.get(key)
        if isinstance(items, list):
            item_entry = _REGISTRY[item]
            for i, it in enumerate(items):
                try:
                    _check_fields(item_entry, it)
                except InvalidEvent as e:
                    raise InvalidEvent(f"{key}[{i}]: {e.reason}") from None


def encode(name: str, record: dict, *, check: bool = True, multi_label: bool = False) -> bytes:
    """Encode ``record`` as Avro single-object encoding with schema ``name``.

    Fields with defaults may be left out. Raises :class:`InvalidEvent` (naming
    the field) if the record breaks the schema or a semantic rule; ``check=False``
    skips those checks for records this process built itself (about twice as fast).
    ``multi_label``: predictions of a multi-label model (see :data:`_SET_CHECKS`).

    >>> p = {"event_id": "e", "item_id": "i", "ts": 1, "model_name": "m", "model_version": "1",
    ...      "predicted_label": "a|c", "probabilities": {"a": 0.9, "b": 0.2, "c": 0.7}}
    >>> len(encode("Prediction", p, multi_label=True)) > 10
    True
    >>> encode("Prediction", p)
    Traceback (most recent call last):
    ...
    schemas.codec.InvalidEvent: invalid: probabilities sum to 1.8, not 1 (tolerance 0.01)
    """
    entry = _entry(name)
    if check:
        _check_fields(entry, record)
        try:
            validate(record, entry.parsed, raise_errors=True)
        except ValidationError as e:
            raise InvalidEvent(_validation_reason(e)) from None
        check_record = _SET_CHECKS.get(name, entry.check) if multi_label else entry.check
        if check_record is not None:
            check_record(record)
    out = BytesIO()
    out.write(entry.header)
    try:
        schemaless_writer(out, entry.parsed, record)
    except UnicodeEncodeError:
        raise _unencodable(entry, record) from None
    return out.getvalue()


def _unencodable(entry: _Entry, record: dict) -> InvalidEvent:
    """The error for a record holding a lone surrogate, naming the field if it can."""
    storable = _STORABLE[entry.name]
    try:
        if storable is not None:
            storable(record, _Ctx(1 << 62, 1 << 62, 1 << 62, True, -(1 << 62), 1 << 62, 0, LIMITS))
    except _Bad as e:
        if e.error == "unencodable":
            return e.event()
    except Exception:  # a record fastavro would have refused for another reason
        pass
    return InvalidEvent(f"a string in this {entry.name} is not valid UTF-8 (a lone surrogate)", "unencodable")


# --------------------------------------------------------------------------- decode


class _Plan(NamedTuple):
    names: frozenset  # accepted short names
    batches: tuple  # ((array key, entry), ...) accepted batch schemas
    singles: tuple  # (entry, ...) accepted non-batch schemas
    label: str  # for messages


@lru_cache(maxsize=256)
def _plan(accept: tuple) -> _Plan:
    if isinstance(accept, str):
        accept = (accept,)
    entries = [_entry(n) for n in accept]
    if not entries:
        raise ValueError("accept names no schema")
    return _Plan(
        frozenset(e.name for e in entries),
        tuple((BATCHES[e.name][0], e) for e in entries if e.name in BATCHES),
        tuple(e for e in entries if e.name not in BATCHES),
        ", ".join(e.name for e in entries),
    )


def decode(data: bytes, accept: tuple[str, ...], max_bytes: int = MAX_BYTES, *,
           check: bool = True, limits: Limits = LIMITS, now_ms: int | None = None,
           multi_label: bool = False) -> tuple[str, dict]:
    """Decode one message into ``(schema name, record)``; the name is one of ``accept``.

    ``data`` is Avro single-object encoding (any known writer schema) or a UTF-8
    JSON object. Raises :class:`DecodeError` for anything else, including events
    that break a semantic rule (NaN or non-normalised probabilities, empty ids...)
    or hold what cannot be stored: a string that is not valid UTF-8
    (``unencodable``), a time of an input event outside the window of ``limits``
    around ``now_ms`` (``out_of_range``; now by default), a string, map or array
    beyond ``limits`` (``too_large``). ``check=False`` skips the semantic rules
    and the limits, for internal topics whose messages this process family
    wrote itself. ``multi_label``: predictions of a multi-label model (see :data:`_SET_CHECKS`).
    """
    try:
        plan = _plan(accept)
    except TypeError:  # a list, say
        plan = _plan(tuple(accept))
    try:
        size = len(data)
    except TypeError:
        raise DecodeError("undecodable", f"payload is {type(data).__name__}, not bytes") from None
    if size > max_bytes:
        raise DecodeError("too_large", f"payload of {size} bytes exceeds the {max_bytes}-byte limit")
    if data[:2] == MARKER:
        if size < 10:
            raise DecodeError("undecodable", f"truncated single-object header ({size} bytes)")
        entry = _BY_FINGERPRINT.get(bytes(data[2:10]))
        if entry is None:
            raise DecodeError("unknown_schema", f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
        if entry.name not in plan.names:
            raise DecodeError("schema_mismatch", f"got a {entry.name}, this topic accepts {plan.label}")
        fo = BytesIO(data)
        fo.seek(10)
        try:
            record = schemaless_reader(fo, entry.parsed, entry.reader)
        except EOFError:
            raise DecodeError("undecodable", f"truncated Avro body for {entry.name} ({size} bytes)") from None
        except UnicodeDecodeError as e:
            raise DecodeError("unencodable", f"a string in the Avro body of {entry.name} is not valid UTF-8 "
                                             f"({e.reason})") from None
        except Exception as e:  # fastavro raises many kinds on corrupt input
            raise DecodeError(
                "undecodable", f"corrupt Avro body for {entry.name}: {type(e).__name__}: {str(e)[:200]}"
            ) from None
        if fo.tell() != size:
            raise DecodeError(
                "undecodable", f"{size - fo.tell()} trailing bytes after the Avro body of {entry.name}"
            )
        text = False  # the Avro reader refuses invalid UTF-8 itself
    else:
        entry, record, text = _from_json(data, plan)
    if check:
        _storable(entry, record, text, limits, now_ms, size)
        check_record = _SET_CHECKS.get(entry.name, entry.check) if multi_label else entry.check
        if check_record is not None:
            check_record(record)
    return entry.name, record


#: A JSON escape of a surrogate code point (U+D800 to U+DFFF): a string without one
#: cannot hold a lone surrogate once parsed (raw surrogates are refused as invalid UTF-8).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _from_json(data: Any, plan: _Plan) -> tuple[_Entry, dict, bool]:
    """The entry and record of a JSON object, and whether its text escapes a surrogate."""
    if not data:
        raise DecodeError("undecodable", "empty payload")
    try:
        raw = data if isinstance(data, bytes) else bytes(data)
        obj = json.loads(raw.decode("utf-8")) if raw.lstrip()[:1] == b"{" else None
    except (ValueError, TypeError, RecursionError):  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        obj = None
    if not isinstance(obj, dict):
        raise DecodeError("undecodable", "not Avro single-object encoding nor a JSON object")
    entry = _choose(obj, plan)
    try:
        record = _coerce(entry.parsed, obj, "")
        validate(record, entry.parsed, raise_errors=True)
    except InvalidEvent:
        other = _exact_match(obj, plan)
        if other is not None:
            raise DecodeError(
                "schema_mismatch", f"JSON object has the fields of a {other.name}, this topic accepts {plan.label}"
            ) from None
        raise
    except ValidationError as e:
        raise InvalidEvent(_validation_reason(e)) from None
    return entry, record, _SURROGATE_ESCAPE.search(raw) is not None


def _fits(entry: _Entry, keys) -> bool:
    return entry.required <= keys and keys <= entry.fields


def _choose(obj: dict, plan: _Plan) -> _Entry:
    for key, entry in plan.batches:
        if key in obj:
            return entry
    singles = plan.singles
    if not singles:
        return plan.batches[0][1]
    if len(singles) == 1:
        return singles[0]
    keys = obj.keys()
    return min(singles, key=lambda e: len(e.required - keys) + len(keys - e.fields))  # first on ties


def _exact_match(obj: dict, plan: _Plan) -> _Entry | None:
    keys = obj.keys()
    for name in NAMES:
        entry = _REGISTRY[name]
        if name not in plan.names and _fits(entry, keys):
            return entry
    return None


# --------------------------------------------------------------------------- JSON -> record

_LONG = (-(1 << 63), (1 << 63) - 1)
_INT = (-(1 << 31), (1 << 31) - 1)
_JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number",
               str: "string", list: "array", dict: "object"}


def _names(keys) -> str:
    keys = sorted(map(str, keys))
    shown = ", ".join(repr(k) for k in keys[:10])
    return shown + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")


def _where(path: str) -> str:
    return f"field {path!r}" if path else "the event"


def _got(v: Any) -> str:
    text = repr(v)
    return f"{_JSON_TYPES.get(type(v), type(v).__name__)} {text if len(text) <= 40 else text[:37] + '...'}"


def _describe(s: Any) -> str:
    if isinstance(s, str):
        return s.rpartition(".")[2]
    if isinstance(s, list):
        return " or ".join(_describe(b) for b in s)
    t = s["type"]
    if t == "record":
        return f"{s['name'].rpartition('.')[2]} object"
    if t == "map":
        return f"object of {_describe(s['values'])}"
    if t == "array":
        return f"array of {_describe(s['items'])}"
    return t


def _coerce(s: Any, v: Any, path: str) -> Any:
    """A copy of JSON value ``v`` as schema ``s`` wants it, defaults filled; raises InvalidEvent."""
    if isinstance(s, str):
        named = _NAMED.get(s)
        if named is not None:
            return _coerce(named, v, path)
        return _primitive(s, v, path)
    if isinstance(s, list):  # union: first branch that takes the value
        for branch in s:
            try:
                return _coerce(branch, v, path)
            except InvalidEvent:
                pass
        raise InvalidEvent(f"{_where(path)}: expected {_describe(s)}, got {_got(v)}")
    t = s["type"]
    if t == "record":
        if not isinstance(v, dict):
            raise InvalidEvent(f"{_where(path)}: expected {_describe(s)}, got {_got(v)}")
        prefix = f"{path}." if path else ""
        short = s["name"].rpartition(".")[2]
        extra = v.keys() - {f["name"] for f in s["fields"]}
        if extra:
            raise InvalidEvent(f"unknown field(s) {_names(extra)} in {short}" + (f" at {path}" if path else ""))
        out, missing = {}, []
        for f in s["fields"]:
            name = f["name"]
            if name in v:
                out[name] = _coerce(f["type"], v[name], prefix + name)
            elif "default" in f:
                out[name] = _coerce(f["type"], f["default"], prefix + name)  # a fresh copy
            else:
                missing.append(prefix + name)
        if missing:
            raise InvalidEvent(f"missing required field(s) {_names(missing)} in {short}")
        return out
    if t == "map":
        if not isinstance(v, dict):
            raise InvalidEvent(f"{_where(path)}: expected {_describe(s)}, got {_got(v)}")
        values = s["values"]
        return {k: _coerce(values, x, f"{path}[{k!r}]") for k, x in v.items()}
    if t == "array":
        if not isinstance(v, list):
            raise InvalidEvent(f"{_where(path)}: expected {_describe(s)}, got {_got(v)}")
        items = s["items"]
        return [_coerce(items, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if t == "enum":
        if v not in s["symbols"]:
            raise InvalidEvent(f"{_where(path)}: expected one of {', '.join(s['symbols'])}, got {_got(v)}")
        return v
    if t == "fixed":
        b = _primitive("bytes", v, path)
        if len(b) != s["size"]:
            raise InvalidEvent(f"{_where(path)}: expected {s['size']} bytes, got {len(b)}")
        return b
    return _primitive(t, v, path)  # {"type": "long"} and the like


def _primitive(t: str, v: Any, path: str) -> Any:
    vt = type(v)
    if t == "string":
        if vt is str:
            return v
    elif t in ("double", "float"):
        if vt is float:
            return v
        if vt is int:
            try:
                return float(v)
            except OverflowError:
                raise InvalidEvent(f"{_where(path)}: {v} is out of range for {t}") from None
    elif t in ("long", "int"):
        if vt is int:
            low, high = _LONG if t == "long" else _INT
            if not low <= v <= high:
                raise InvalidEvent(f"{_where(path)}: {v} is out of range for {t}")
            return v
    elif t == "null":
        if v is None:
            return v
    elif t == "boolean":
        if vt is bool:
            return v
    elif t == "bytes":  # Avro's JSON encoding: one char per byte
        if vt is bytes:
            return v
        if vt is str:
            try:
                return v.encode("latin-1")
            except UnicodeEncodeError:
                raise InvalidEvent(f"{_where(path)}: bytes as a JSON string take code points 0-255 only") from None
    raise InvalidEvent(f"{_where(path)}: expected {t}, got {_got(v)}")
