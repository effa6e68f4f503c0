"""Wire format of every topic: Avro single-object encoding, and JSON input.

An event on the wire is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the
writer schema (little-endian, as the Avro spec says) + the Avro binary body.
Input topics also accept a UTF-8 JSON object that validates against the same
schema. :func:`decode` turns either into ``(schema name, record dict)`` with
defaults filled, or raises :class:`DecodeError`, whose ``error`` code and
``reason`` go to the dead-letter topic as they are.

Schemas are the ``*.avsc`` files beside this module, parsed once at import; a
batch schema names its item type (``feedbackloop.Prediction``), and its
fingerprint is taken over the canonical form with that type written inline,
as any Avro tool does.

>>> event = {"event_id": "e1", "item_id": "i1", "ts": 1700000000000,
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
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from io import BytesIO
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
    "SCHEMA_DIR", "MARKER", "MAX_BYTES", "NAMES",
    "DecodeError", "InvalidEvent",
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


class DecodeError(Exception):
    """Bytes that are not a valid event.

    ``error`` is a short code (``undecodable``, ``unknown_schema``,
    ``schema_mismatch``, ``invalid``, ``too_large``); ``reason`` says what was
    wrong, in words.
    """

    def __init__(self, error: str, reason: str):
        super().__init__(error, reason)
        self.error = error
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.error}: {self.reason}"


class InvalidEvent(DecodeError):
    """A record that breaks its schema or a semantic rule (``error == "invalid"``)."""

    def __init__(self, reason: str):
        super().__init__("invalid", reason)

    def __reduce__(self):
        return (InvalidEvent, (self.reason,))


# --------------------------------------------------------------------------- registry


class _Entry(NamedTuple):
    name: str  # short name, e.g. "Prediction"
    parsed: dict  # fastavro-parsed schema (named types by reference)
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the canonical form
    header: bytes  # MARKER + fingerprint
    fields: frozenset  # field names
    required: frozenset  # field names without a default
    check: Callable[[dict], None] | None  # semantic rules, raise InvalidEvent


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
    return by_name, {e.fingerprint: e for e in by_name.values()}, named


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


def _check_prediction(r: dict) -> None:
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
    if abs(total - 1.0) > 0.01:
        raise InvalidEvent(f"probabilities sum to {total:.6g}, not 1 (tolerance 0.01)")
    if r["predicted_label"] not in p:
        classes = ", ".join(repr(k) for k in list(p)[:10])
        raise InvalidEvent(f"predicted_label {r['predicted_label']!r} is not a class in probabilities ({classes})")
    f = r.get("features")  # optional fields may be absent on the encode side
    if f and not _isfinite(sum(f.values())):
        _finite_map(f, "features")


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
    _nonempty(r, "event_id", "task_id", "item_id", "label", "annotator_id")
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
    "Override": _check_override,
    "Appeal": _check_appeal,
    "Candidate": _check_candidate,
    "CandidateBatch": _batch("candidates", _check_candidate),
    "LabelingTask": _check_task,
    "Label": _check_label,
    "ModelVersion": _check_model_version,
}

_REGISTRY, _BY_FINGERPRINT, _NAMED = _load(SCHEMA_DIR)
#: Short names of all schemas.
NAMES: tuple[str, ...] = tuple(sorted(n for n in _REGISTRY if "." not in n))


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


def encode(name: str, record: dict, *, check: bool = True) -> bytes:
    """Encode ``record`` as Avro single-object encoding with schema ``name``.

    Fields with defaults may be left out. Raises :class:`InvalidEvent` (naming
    the field) if the record breaks the schema or a semantic rule; ``check=False``
    skips those checks for records this process built itself (about twice as fast).
    """
    entry = _entry(name)
    if check:
        _check_fields(entry, record)
        try:
            validate(record, entry.parsed, raise_errors=True)
        except ValidationError as e:
            raise InvalidEvent(_validation_reason(e)) from None
        if entry.check is not None:
            entry.check(record)
    out = BytesIO()
    out.write(entry.header)
    schemaless_writer(out, entry.parsed, record)
    return out.getvalue()


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
           check: bool = True) -> tuple[str, dict]:
    """Decode one message into ``(schema name, record)``; the name is one of ``accept``.

    ``data`` is Avro single-object encoding (any known writer schema) or a UTF-8
    JSON object. Raises :class:`DecodeError` for anything else, including events
    that break a semantic rule (NaN or non-normalised probabilities, empty ids...).
    ``check=False`` skips the semantic rules, for internal topics whose
    messages this process family wrote itself.
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
            record = schemaless_reader(fo, entry.parsed)
        except EOFError:
            raise DecodeError("undecodable", f"truncated Avro body for {entry.name} ({size} bytes)") from None
        except Exception as e:  # fastavro raises many kinds on corrupt input
            raise DecodeError(
                "undecodable", f"corrupt Avro body for {entry.name}: {type(e).__name__}: {str(e)[:200]}"
            ) from None
        if fo.tell() != size:
            raise DecodeError(
                "undecodable", f"{size - fo.tell()} trailing bytes after the Avro body of {entry.name}"
            )
    else:
        entry, record = _from_json(data, plan)
    if check and entry.check is not None:
        entry.check(record)
    return entry.name, record


def _from_json(data: Any, plan: _Plan) -> tuple[_Entry, dict]:
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
    return entry, record


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
