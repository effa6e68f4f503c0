"""The wire contract: Avro single-object encoding, JSON input, and what gets refused."""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import sys
import time
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from fastavro.schema import to_parsing_canonical_form

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project is not installed in the venv
    sys.path.insert(0, str(ROOT))

from schemas import codec  # noqa: E402
from schemas.codec import DecodeError, InvalidEvent  # noqa: E402

INPUTS = ("Prediction", "PredictionBatch")
#: An hour ago: the events' times fall in the window decode accepts around now.
T = int(time.time() * 1000) - 3_600_000

# --------------------------------------------------------------------------- realistic events
# name -> (record as a producer writes it, the defaults decoding must fill in)

PREDICTION = {
    "event_id": "pred-7f3a9c2e", "item_id": "txn-000482", "ts": T + 123,
    "model_name": "fraud-gbm", "model_version": "2024.11.3", "predicted_label": "legit",
    "probabilities": {"legit": 0.87, "fraud": 0.13},
    "features": {"amount": 182.5, "n_items": 3.0, "account_age_days": 412.0, "hour": 14.0,
                 "ip_risk": 0.12, "card_present": 0.0, "velocity_1h": 2.0, "avg_amount_30d": 96.4,
                 "country_mismatch": 1.0, "device_new": 0.0},
    "context": {"tenant": "acme", "surface": "checkout"},
}
PREDICTION_DEFAULTS = {"text": None}
CANDIDATE = {
    "event_id": "pred-7f3a9c2e", "item_id": "txn-000482", "ts": T + 123, "kind": "prediction",
    "model_name": "fraud-gbm", "model_version": "2024.11.3", "predicted_label": "legit",
    "probabilities": {"legit": 0.87, "fraud": 0.13}, "features": {"amount": 182.5, "hour": 14.0},
    "shadow_label": "fraud", "shadow_version": 12,
    "signals": {"entropy": 0.557, "margin": 0.74, "disagreement": 1.0}, "scored_ts": T + 150,
    "selection_probability": 0.25, "reasons": ["uncertain"], "priority": 0.7, "policy_version": "mix-2",
}
CANDIDATE_DEFAULTS = {"text": None, "context": {}, "user_label": None, "note": None}
OVERRIDE_CANDIDATE = {"event_id": "ovr-19", "item_id": "txn-000977", "ts": T + 100000, "kind": "override",
                      "user_label": "fraud"}
OVERRIDE_CANDIDATE_DEFAULTS = {
    "model_name": "", "model_version": "", "predicted_label": None, "probabilities": {}, "features": {},
    "text": None, "context": {}, "shadow_label": None, "shadow_version": 0, "signals": {}, "note": None,
    "scored_ts": 0, "selection_probability": 0.0, "reasons": [], "priority": 0.0, "policy_version": "",
}

CASES = {
    "Prediction": (PREDICTION, PREDICTION_DEFAULTS),
    "PredictionBatch": (
        {"events": [PREDICTION, {**PREDICTION, "event_id": "pred-2", "text": "gift card x5",
                                 "probabilities": {"legit": 0.4, "fraud": 0.6}, "predicted_label": "fraud"}]},
        {},
    ),
    "Override": (
        {"event_id": "ovr-19", "item_id": "txn-000977", "ts": T + 100000,
         "predicted_label": "legit", "override_label": "fraud"},
        {"user_id": None, "context": {}},
    ),
    "Appeal": (
        {"event_id": "apl-3", "item_id": "post-5521", "ts": T + 200000, "predicted_label": "spam",
         "reason": "It is my own bakery's opening hours, not an ad.", "user_id": "u-88"},
        {"context": {}},
    ),
    "PredictionColumns": (
        {"event_id": ["pred-1", "pred-2"], "item_id": ["txn-1", "txn-2"], "ts": [T + 1, T + 2],
         "model_name": ["fraud-gbm"] * 2, "model_version": ["2024.11.3"] * 2, "predicted_label": ["legit", "fraud"],
         "classes": ["legit", "fraud"], "probabilities": [0.87, 0.13, 0.4, 0.6], "feature_names": ["amount"],
         "features": [182.5, 9.0], "text": [None, "gift card x5"], "context": [{"tenant": "acme"}, {}]},
        {},
    ),
    "Candidate": (CANDIDATE, CANDIDATE_DEFAULTS),
    "CandidateColumns": (
        {"event_id": ["pred-1", "ovr-19"], "item_id": ["txn-1", "txn-9"], "ts": [T + 1, T + 2],
         "kind": ["prediction", "override"], "model_name": ["fraud-gbm", ""], "model_version": ["2024.11.3", ""],
         "predicted_label": ["legit", None], "classes": ["legit", "fraud"], "probabilities": [0.87, 0.13, 0.4, 0.6],
         "feature_names": ["amount"], "features": [182.5, 9.0], "shadow_label": ["fraud", None],
         "shadow_version": [12, 0], "signal_names": ["margin"], "signals": [0.74, 0.2], "user_label": [None, "fraud"],
         "note": [None, None], "scored_ts": [T + 150, T + 151], "selection_probability": [0.25, 1.0],
         "reasons": [["uncertain"], ["override"]], "priority": [0.7, 1.0], "policy_version": ["mix-2", "mix-2"]},
        {"text": [], "context": []},
    ),
    "CandidateBatch": ({"candidates": [{**CANDIDATE, **CANDIDATE_DEFAULTS},
                                       {**OVERRIDE_CANDIDATE, **OVERRIDE_CANDIDATE_DEFAULTS}]}, {}),
    "LabelingTask": (
        {"task_id": "task-000031", "event_id": "pred-7f3a9c2e", "item_id": "txn-000482",
         "created_ts": T + 300, "source_ts": T + 123, "kind": "prediction",
         "reasons": ["uncertain", "disagreement"], "signals": {"entropy": 0.557, "margin": 0.74},
         "selection_probability": 0.25, "priority": 0.83, "suggested_label": "legit", "confidence": 0.87,
         "label_set": ["fraud", "legit"], "features": {"amount": 182.5}, "predicted_label": "legit",
         "model_name": "fraud-gbm", "model_version": "2024.11.3", "shadow_version": 12,
         "policy_version": "uncertainty+budget/1"},
        {"text": None, "user_label": None, "note": None, "context": {}, "overlap": 1, "exclude_annotators": [],
         "tier": "annotator", "round": 0, "guideline_version": "", "multi_label": False, "suggested_labels": None},
    ),
    "Label": (
        {"event_id": "lbl-000031-ann7", "task_id": "task-000031", "item_id": "txn-000482", "label": "fraud",
         "annotator_id": "ann-7", "ts": T + 90000, "duration_ms": 8400},
        {"note": None, "tier": "annotator", "guideline_version": "", "labels": None},
    ),
    "ModelVersion": (
        {"model_name": "shadow", "version": 12, "ts": T + 95000, "labels_seen": 300,
         "prequential_accuracy": 0.91, "classes": ["fraud", "legit"],
         "snapshot": b"\x80\x05\x95\x00\x01river.linear_model\x94", "signature": "ab" * 32},
        {"control_accuracy": None, "control_labels": 0},
    ),
    "AuditEvent": (
        {"event_id": "audit-1", "ts": T + 1000, "action": "label", "annotator_id": "ann-7",
         "client": "10.0.0.8", "task_id": "task-000031"},
        {"role": "", "detail": "", "service": ""},
    ),
    "Retraining": (
        {"event_id": "shadow-12", "ts": T + 96000, "model_name": "shadow", "dataset_version": 12,
         "reasons": ["labels", "drift"], "new_labels": 500},
        {"control_accuracy": None, "accuracy_gain": None},
    ),
    "DeadLetter": (
        {"event_id": "dl-1", "ts": T + 999, "topic": "predictions", "partition": 3, "offset": 80213,
         "payload": b"\xc3\x01\x00\x00garbage\xff", "reason": "unknown schema fingerprint 0000676172626167",
         "error": "unknown_schema"},
        {"key": None},
    ),
}


BATCH_EXPECTED = {  # defaults are filled inside batch items too
    "PredictionBatch": {"events": [{**PREDICTION_DEFAULTS, **e} for e in CASES["PredictionBatch"][0]["events"]]},
    "CandidateBatch": CASES["CandidateBatch"][0],
}


def expected(name):
    record, defaults = CASES[name]
    return BATCH_EXPECTED.get(name) or {**defaults, **record}


def to_json(value):
    """JSON text of a record; bytes as Avro's JSON encoding writes them (one char per byte)."""
    def plain(v):
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    return json.dumps(plain(value)).encode()


def pred(**changes):
    return {**PREDICTION, **changes}


# --------------------------------------------------------------------------- independent CRC-64-AVRO

EMPTY = 0xC15D213AA4D7A795


def _table():
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint of the Avro spec, bit for bit."""
    fp = EMPTY
    for b in data:
        fp = (fp >> 8) ^ TABLE[(fp ^ b) & 0xFF]
    return fp


RAW = {}
for _path in sorted((ROOT / "schemas").glob("*.avsc")):
    _raw = json.loads(_path.read_text())
    RAW[f"{_raw['namespace']}.{_raw['name']}"] = _raw


def inline(t, seen):
    """The schema with each named type written out at its first use (standalone schema)."""
    if isinstance(t, str):
        full = t if "." in t else f"feedbackloop.{t}"
        if full in RAW and full not in seen:
            return inline(RAW[full], seen)
        return t
    if isinstance(t, list):
        return [inline(b, seen) for b in t]
    t = dict(t)
    if t["type"] == "record":
        seen.add(t["name"] if "." in t["name"] else f"{t.get('namespace', '')}.{t['name']}")
        t["fields"] = [dict(f, type=inline(f["type"], seen)) for f in t["fields"]]
    elif t["type"] == "array":
        t["items"] = inline(t["items"], seen)
    elif t["type"] == "map":
        t["values"] = inline(t["values"], seen)
    return t


def standalone(name):
    return inline(RAW[f"feedbackloop.{name}"], set())


# --------------------------------------------------------------------------- the registry


def test_every_schema_is_loaded():
    assert set(codec.NAMES) == {"Prediction", "PredictionBatch", "Override", "Appeal", "Candidate",
                                "CandidateBatch", "LabelingTask", "Label", "ModelVersion", "DeadLetter",
                                "AuditEvent", "Retraining", "PredictionColumns", "CandidateColumns"}
    assert set(CASES) == set(codec.NAMES)
    assert len(list(codec.SCHEMA_DIR.glob("*.avsc"))) == len(codec.NAMES)
    assert codec.schema("Prediction")["name"] == "feedbackloop.Prediction"
    assert codec.schema("feedbackloop.Prediction") is codec.schema("Prediction")
    assert len({codec.fingerprint(n) for n in codec.NAMES}) == len(codec.NAMES)
    with pytest.raises(ValueError, match="unknown schema 'Nope'"):
        codec.encode("Nope", {})
    with pytest.raises(ValueError):
        codec.decode(b"{}", accept=("Nope",))


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_is_marker_and_independent_crc64_fingerprint(name):
    canonical = to_parsing_canonical_form(standalone(name))
    fp = crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert codec.fingerprint(name) == fp
    assert codec.encode(name, CASES[name][0])[:10] == b"\xc3\x01" + fp
    # the crc above is the spec's, not just fastavro's: both agree
    assert fastavro.schema.fingerprint(canonical, "CRC-64-AVRO") == fp.hex()


def test_batch_fingerprint_is_over_the_inlined_item_schema():
    canonical = to_parsing_canonical_form(standalone("PredictionBatch"))
    assert '"items":{"name":"feedbackloop.Prediction","type":"record"' in canonical
    assert crc64_avro(b"") == EMPTY


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    record, _ = CASES[name]
    before = copy.deepcopy(record)
    got_name, got = codec.decode(codec.encode(name, record), accept=(name,))
    assert got_name == name
    assert got == expected(name)
    assert record == before  # encode leaves its input alone


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_input_equals_avro_path(name):
    record, _ = CASES[name]
    from_avro = codec.decode(codec.encode(name, record), accept=(name,))
    assert codec.decode(to_json(record), accept=(name,)) == from_avro


@pytest.mark.parametrize("name", sorted(CASES))
def test_record_written_by_another_avro_tool(name):
    """Header and body built by hand from the .avsc files, without the codec."""
    record, _ = CASES[name]
    canonical = to_parsing_canonical_form(standalone(name))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(standalone(name)), record)
    data = b"\xc3\x01" + crc64_avro(canonical.encode()).to_bytes(8, "little") + body.getvalue()
    assert codec.decode(data, accept=(name,)) == (name, expected(name))


def test_json_coerces_integers_for_doubles_and_picks_the_schema():
    name, got = codec.decode(to_json(pred(probabilities={"legit": 1, "fraud": 0})), accept=INPUTS)
    assert name == "Prediction" and got["probabilities"] == {"legit": 1.0, "fraud": 0.0}
    assert all(type(v) is float for v in got["probabilities"].values())
    name, got = codec.decode(to_json(CASES["PredictionBatch"][0]), accept=INPUTS)
    assert name == "PredictionBatch" and len(got["events"]) == 2
    both = ("Override", "Appeal")
    assert codec.decode(to_json(CASES["Override"][0]), accept=both)[0] == "Override"
    assert codec.decode(to_json(CASES["Appeal"][0]), accept=both)[0] == "Appeal"
    assert codec.decode(to_json(CASES["Appeal"][0]), accept=both[::-1])[0] == "Appeal"


def test_bytes_like_inputs_and_fresh_defaults():
    data = codec.encode("Prediction", PREDICTION)
    for form in (bytearray(data), memoryview(data)):
        assert codec.decode(form, accept=INPUTS) == ("Prediction", expected("Prediction"))
    appeal = to_json({k: v for k, v in CASES["Appeal"][0].items()})
    a = codec.decode(appeal, accept=("Appeal",))[1]
    a["context"]["mutated"] = "yes"
    assert codec.decode(appeal, accept=("Appeal",))[1]["context"] == {}


# --------------------------------------------------------------------------- refused input


def avro_unchecked(name, record):
    """Bytes a careless producer could write: valid Avro, bad semantics."""
    return codec.encode(name, record, check=False)


def no(field):
    return to_json({k: v for k, v in PREDICTION.items() if k != field})


BAD = {
    "missing required field": (no("probabilities"), INPUTS, "invalid", "missing required field(s) 'probabilities'"),
    "missing required field in a batch": (
        to_json({"events": [PREDICTION, {k: v for k, v in PREDICTION.items() if k != "ts"}]}),
        INPUTS, "invalid", "'events[1].ts'"),
    "wrong type": (to_json(pred(ts="yesterday")), INPUTS, "invalid", "field 'ts': expected long, got string"),
    "wrong type in a map": (to_json(pred(features={"amount": "12"})), INPUTS, "invalid", "features['amount']"),
    "boolean for a long": (to_json(pred(ts=True)), INPUTS, "invalid", "'ts'"),
    "long out of range": (to_json(pred(ts=2**70)), INPUTS, "invalid", "out of range for long"),
    "unknown field": (to_json(pred(colour="red", size=3)), INPUTS, "invalid", "unknown field(s) 'colour', 'size'"),
    "NaN probability (JSON token)": (
        json.dumps(pred(probabilities={"a": 0.5, "b": float("nan")}, predicted_label="a")).encode(),
        INPUTS, "invalid", "probabilities contain NaN for class 'b'"),
    "NaN probability (Avro)": (
        avro_unchecked("Prediction", pred(probabilities={"a": 0.5, "b": float("nan")}, predicted_label="a")),
        INPUTS, "invalid", "probabilities contain NaN for class 'b'"),
    "NaN probability in a batch": (
        avro_unchecked("PredictionBatch", {"events": [PREDICTION, pred(probabilities={"legit": float("nan")})]}),
        INPUTS, "invalid", "events[1]: probabilities contain NaN for class 'legit'"),
    "infinite feature": (
        json.dumps(pred(features={"amount": float("inf")})).encode(), INPUTS, "invalid",
        "features contain inf for key 'amount'"),
    "probabilities not summing to 1": (
        to_json(pred(probabilities={"legit": 0.7, "fraud": 0.2})), INPUTS, "invalid", "probabilities sum to 0.9"),
    "probability above 1": (
        to_json(pred(probabilities={"legit": 1.5, "fraud": -0.5})), INPUTS, "invalid", "outside [0, 1]"),
    "empty probabilities": (to_json(pred(probabilities={})), INPUTS, "invalid", "probabilities are empty"),
    "predicted label not in probabilities": (
        to_json(pred(predicted_label="chargeback")), INPUTS, "invalid",
        "predicted_label 'chargeback' is not a class in probabilities"),
    "empty item_id": (avro_unchecked("Prediction", pred(item_id="")), INPUTS, "invalid", "item_id is empty"),
    "empty label": (
        to_json({**CASES["Label"][0], "label": ""}), ("Label",), "invalid", "label is empty"),
    "oversize": (b"{" + b" " * (2_000_000 - 2) + b"}", INPUTS, "too_large",
                 "payload of 2000000 bytes exceeds the 1048576-byte limit"),
    "random garbage": (bytes(random.Random(1).randrange(256) for _ in range(64)), INPUTS, "undecodable",
                       "not Avro single-object encoding nor a JSON object"),
    "JSON but not an object": (b"[1, 2, 3]", INPUTS, "undecodable", "nor a JSON object"),
    "broken JSON": (to_json(PREDICTION)[:-3], INPUTS, "undecodable", "nor a JSON object"),
    "not UTF-8": (b'{"event_id": "\xff\xfe"}', INPUTS, "undecodable", "nor a JSON object"),
    "empty payload": (b"", INPUTS, "undecodable", "empty payload"),
    "tombstone": (None, INPUTS, "undecodable", "NoneType"),
    "truncated Avro body": (codec.encode("Prediction", PREDICTION)[:-7], INPUTS, "undecodable",
                            "truncated Avro body for Prediction"),
    "truncated header": (codec.encode("Prediction", PREDICTION)[:6], INPUTS, "undecodable", "header"),
    "trailing bytes": (codec.encode("Prediction", PREDICTION) + b"\x00\x00", INPUTS, "undecodable",
                       "2 trailing bytes"),
    "unknown fingerprint": (b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x00", INPUTS, "unknown_schema",
                            "unknown schema fingerprint 0123456789abcdef"),
    "valid event of the wrong schema (Avro)": (
        codec.encode("Label", CASES["Label"][0]), INPUTS, "schema_mismatch",
        "got a Label, this topic accepts Prediction, PredictionBatch"),
    "valid event of the wrong schema (JSON)": (
        to_json(CASES["Label"][0]), INPUTS, "schema_mismatch", "has the fields of a Label"),
    "an appeal on the overrides topic": (
        to_json(CASES["Appeal"][0]), ("Override",), "schema_mismatch", "has the fields of a Appeal"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refused_with_code_and_reason(case):
    data, accept, error, words = BAD[case]
    with pytest.raises(DecodeError) as info:
        codec.decode(data, accept=accept)
    assert info.value.error == error, info.value.reason
    assert words in info.value.reason
    assert str(info.value) == f"{error}: {info.value.reason}"
    again = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert (type(again), again.error, again.reason) == (type(info.value), error, info.value.reason)


def test_max_bytes_is_an_argument():
    data = codec.encode("Prediction", PREDICTION)
    with pytest.raises(DecodeError, match=f"payload of {len(data)} bytes exceeds the 100-byte limit"):
        codec.decode(data, accept=INPUTS, max_bytes=100)
    assert codec.decode(data, accept=INPUTS, max_bytes=len(data))[0] == "Prediction"
    assert codec.MAX_BYTES == 1 << 20


def test_every_truncation_is_refused():
    for name in ("Prediction", "PredictionBatch", "LabelingTask"):
        data = codec.encode(name, CASES[name][0])
        for cut in range(len(data)):
            with pytest.raises(DecodeError) as info:
                codec.decode(data[:cut], accept=(name,))
            assert info.value.error == "undecodable", (cut, info.value.reason)


@pytest.mark.parametrize("change, words", [
    ({"ts": "now"}, "ts is <now>"),
    ({"probabilities": {"legit": "high"}}, "probabilities"),
    ({"shoe_size": 44}, "unknown field(s) 'shoe_size' in Prediction"),
    ({"probabilities": {"legit": float("nan")}}, "probabilities contain NaN for class 'legit'"),
    ({"event_id": ""}, "event_id is empty"),
])
def test_encode_validates_and_names_the_field(change, words):
    with pytest.raises(InvalidEvent) as info:
        codec.encode("Prediction", pred(**change))
    assert info.value.error == "invalid"
    assert words in info.value.reason


def test_encode_checks_batch_items_and_leaves_defaults_out():
    with pytest.raises(InvalidEvent, match=r"events\[1\]: unknown field\(s\) 'oops'"):
        codec.encode("PredictionBatch", {"events": [PREDICTION, pred(oops=1)]})
    with pytest.raises(InvalidEvent, match=r"selection_probability is 0.0, outside \(0, 1\]"):
        codec.encode("LabelingTask", {**CASES["LabelingTask"][0], "selection_probability": 0.0})
    with pytest.raises(InvalidEvent, match="kind 'click'"):
        codec.encode("Candidate", {**CANDIDATE, "kind": "click"})
    minimal = {k: PREDICTION[k] for k in ("event_id", "item_id", "ts", "model_name", "model_version",
                                          "predicted_label", "probabilities")}
    assert codec.decode(codec.encode("Prediction", minimal), accept=INPUTS)[1]["features"] == {}


# --------------------------------------------------------------------------- what cannot be stored

LONE = "\ud800"  # a lone surrogate: valid in a JSON text and a Python str, not in UTF-8


def _string_field(schema_type) -> bool:
    return schema_type == "string" or isinstance(schema_type, list) and "string" in schema_type


def string_spots(value, fields=None, path=""):
    """(path, copy of ``value`` with a lone surrogate in that one string) for every string in it:
    fields (optional ones too), map keys and values, array items, batch members."""
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if fields is not None and path else (k if fields is not None else f"{path}[{k!r}]")
            if fields is None:  # a map: its key, then its value
                yield f"{path} key", {**{x: y for x, y in value.items() if x != k}, LONE + k: v}
            kind = fields.get(k) if fields is not None else None
            if isinstance(v, str) or (v is None and kind is not None and _string_field(kind)):
                yield where, {**value, k: LONE if v is None else v + LONE}
            elif isinstance(v, (dict, list)):
                inner = ITEM_FIELDS.get(k) if isinstance(v, list) else None
                sub_fields = None if isinstance(v, dict) else inner
                for spot, changed in string_spots(v, sub_fields, where):
                    yield spot, {**value, k: changed}
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                yield f"{path}[{i}]", value[:i] + [LONE] + value[i + 1:]
            elif isinstance(v, dict):
                for spot, changed in string_spots(v, fields, f"{path}[{i}]"):
                    yield spot, value[:i] + [changed] + value[i + 1:]


def field_types(name):
    return {f["name"]: f["type"] for f in codec.schema(name)["fields"]}


ITEM_FIELDS = {"events": field_types("Prediction"), "candidates": field_types("Candidate")}


def test_a_lone_surrogate_is_refused_in_every_string_of_every_schema():
    tried = 0
    for name in sorted(CASES):
        for spot, record in string_spots(expected(name), field_types(name)):
            with pytest.raises(DecodeError) as info:
                codec.decode(to_json(record), accept=(name,))
            assert info.value.error == "unencodable", (name, spot, info.value.reason)
            field = spot.removesuffix(" key")
            assert info.value.reason.startswith(f"field {field!r}: "), (name, spot, info.value.reason)
            assert "lone surrogate '\\ud800'" in info.value.reason
            info.value.reason.encode("utf-8")  # the reason can be stored itself
            with pytest.raises(InvalidEvent) as encoded:  # and nothing can be encoded with it
                codec.encode(name, record, check=False)
            assert encoded.value.error == "unencodable" and field in encoded.value.reason
            tried += 1
    assert tried > 150  # e.g. 10 in a Prediction, every field and map entry of the batches too


def test_a_surrogate_pair_is_one_character_and_fine():
    name, record = codec.decode(to_json(pred(text="\U0001F600 fraud?")), accept=INPUTS)
    assert b"\\ud83d\\ude00" in to_json(pred(text="\U0001F600"))  # escaped as a pair in the JSON text
    assert record["text"] == "\U0001F600 fraud?"


@pytest.mark.parametrize("name, path", [
    ("Prediction", ["item_id"]), ("PredictionBatch", ["events", 1, "context", "surface"]),
    ("LabelingTask", ["reasons", 0]), ("Candidate", ["signals"]),
])
def test_invalid_utf8_in_avro_is_refused(name, path):
    """A producer writing raw bytes: the three bytes of an encoded surrogate in one string."""
    record = json.loads(json.dumps(CASES[name][0]))  # no shared maps between batch members
    *parents, last = path
    holder = record
    for step in parents:
        holder = holder[step]
    if isinstance(holder[last], dict):  # a map key
        holder[last] = {"QQQ": 1.0}
    else:
        holder[last] = "QQQ"
    data = codec.encode(name, record, check=False)
    assert data.count(b"QQQ") == 1
    with pytest.raises(DecodeError) as info:
        codec.decode(data.replace(b"QQQ", b"\xed\xa0\x80"), accept=(name,))
    assert info.value.error == "unencodable"
    assert f"Avro body of {name} is not valid UTF-8" in info.value.reason


NOW = T + 3_600_000
DAY = codec.DAY_MS


@pytest.mark.parametrize("name", ["Prediction", "Override", "Appeal"])
def test_times_of_input_events_fall_in_a_window_around_now(name):
    record = CASES[name][0]
    ok = lambda ts, **kw: codec.decode(to_json({**record, "ts": ts}), accept=(name,), now_ms=NOW, **kw)[0] == name
    assert ok(NOW - 365 * DAY) and ok(NOW + DAY)  # the edges are in
    for ts, side in ((NOW - 365 * DAY - 1, "365 days before"), (NOW + DAY + 1, "1 day after"), (0, "before"),
                     (-(2 ** 62), "before"), (2 ** 62, "after")):
        with pytest.raises(InvalidEvent) as info:
            ok(ts)
        assert info.value.error == "out_of_range"
        assert info.value.reason.startswith(f"field 'ts': {ts} (") and f"{side} now (" in info.value.reason
        with pytest.raises(InvalidEvent, match="out_of_range"):  # the Avro path too
            codec.decode(codec.encode(name, {**record, "ts": ts}), accept=(name,), now_ms=NOW)
    assert ok(NOW - 400 * DAY, limits=codec.Limits(past_ms=500 * DAY))
    with pytest.raises(InvalidEvent, match="1 hour after"):
        ok(NOW + 2 * 3_600_000, limits=codec.Limits(future_ms=3_600_000))
    assert codec.decode(to_json({**record, "ts": 0}), accept=(name,), check=False)[0] == name


COLUMNS = CASES["PredictionColumns"][0]


@pytest.mark.parametrize("change, words", [
    ({"item_id": ["txn-1"]}, "item_id has 1 entries, event_id 2"),
    ({"text": [None]}, "text has 1 entries, event_id 2 (or none)"),
    ({"classes": []}, "classes are empty"),
    ({"classes": ["legit", "legit"]}, "must not repeat a name"),
    ({"probabilities": [0.87, 0.13, 0.4]}, "probabilities has 3 entries, not events x classes = 2 x 2"),
    ({"features": [1.0]}, "features has 1 entries, not events x feature_names = 2 x 1"),
    ({"event_id": ["pred-1", ""]}, "event 1: event_id or item_id is empty"),
    ({"probabilities": [0.87, 0.13, float("nan"), 0.6]}, "event 1: probabilities of class 'legit' is NaN"),
    ({"probabilities": [0.87, 0.13, 0.4, 0.5]}, "event 1: probabilities sum to 0.9"),
    ({"predicted_label": ["legit", "chargeback"]}, "event 1: predicted_label 'chargeback' is not one of classes"),
    ({"features": [1.0, float("inf")]}, "event 1: features contain inf for key 'amount'"),
])
def test_columns_are_checked_whole(change, words):
    """A columnar batch is refused whole, naming the event, as a PredictionBatch is."""
    with pytest.raises(InvalidEvent) as info:
        codec.decode(avro_unchecked("PredictionColumns", {**COLUMNS, **change}), accept=("PredictionColumns",),
                     now_ms=NOW)
    assert info.value.error == "invalid" and words in info.value.reason


def test_the_times_of_columns_fall_in_the_window():
    stale = {**COLUMNS, "ts": [NOW, NOW - 366 * DAY]}
    with pytest.raises(InvalidEvent, match=r"field 'ts\[1\]': .* more than 365 days before now") as info:
        codec.decode(codec.encode("PredictionColumns", stale), accept=("PredictionColumns",), now_ms=NOW)
    assert info.value.error == "out_of_range"
    assert codec.decode(codec.encode("PredictionColumns", stale), accept=("PredictionColumns",), now_ms=NOW,
                        limits=codec.Limits(past_ms=400 * DAY))[0] == "PredictionColumns"


def test_candidates_written_before_they_carried_a_preselection_still_decode():
    """In flight across the upgrade: Avro resolution fills the preselection with its defaults."""
    old = fastavro.parse_schema(json.loads((codec.SCHEMA_DIR / "history" / "candidate_batch.1.avsc").read_text()))
    header = codec.MARKER + bytes.fromhex(fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(old), "CRC-64-AVRO"))
    before = {k: v for k, v in {**CANDIDATE, **CANDIDATE_DEFAULTS}.items()
              if k not in ("selection_probability", "reasons", "priority", "policy_version")}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, {"candidates": [before]})
    name, record = codec.decode(header + body.getvalue(), ("CandidateBatch",), check=False)
    assert header[2:] != codec.fingerprint("CandidateBatch")
    assert (name, record["candidates"]) == ("CandidateBatch", [
        {**before, "selection_probability": 0.0, "reasons": [], "priority": 0.0, "policy_version": ""}])


def _written_with(path: str, record: dict) -> bytes:
    """``record`` encoded as a producer with the earlier schema ``schemas/history/<path>`` wrote it."""
    old = fastavro.parse_schema(json.loads((codec.SCHEMA_DIR / "history" / path).read_text()))
    header = codec.MARKER + bytes.fromhex(fastavro.schema.fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, record)
    return header + body.getvalue()


@pytest.mark.parametrize("name, path, added", [
    ("Label", "label.2.avsc", {"labels": None}),
    ("LabelingTask", "labeling_task.2.avsc", {"multi_label": False, "suggested_labels": None}),
])
def test_single_label_events_written_before_multi_label_tasks_still_decode(name, path, added):
    """A label or task in flight across the upgrade decodes as single-label (the new fields' defaults)."""
    before = {**CASES[name][0], **{k: v for k, v in CASES[name][1].items() if k not in added}}
    data = _written_with(path, before)
    assert data[2:10] != codec.fingerprint(name)
    assert codec.decode(data, (name,)) == (name, {**before, **added})


@pytest.mark.parametrize("labels, label, ok", [
    (["cat", "dog"], "cat|dog", True),
    ([], "", True),  # the empty set, said explicitly
    (["dog", "cat"], "dog|cat", False),  # not sorted
    (["cat", "cat"], "cat|cat", False),
    (["cat"], "dog", False),  # label is not the set joined
    (["a|b"], "a|b", False),  # a class with the separator in it
    (None, "", False),  # a single label cannot be empty
])
def test_a_multi_label_answer_is_its_sorted_set_joined(labels, label, ok):
    record = {**CASES["Label"][0], "label": label, "labels": labels}
    data = avro_unchecked("Label", record)
    if ok:
        assert codec.decode(data, ("Label",))[1]["labels"] == labels
    else:
        with pytest.raises(InvalidEvent):
            codec.decode(data, ("Label",))


def test_an_empty_batch_has_nothing_to_refuse():
    assert codec.decode(codec.encode("PredictionBatch", {"events": []}), accept=INPUTS) == (
        "PredictionBatch", {"events": []})


def test_the_window_is_around_the_clock_by_default_and_in_batches():
    stale = {"events": [PREDICTION, pred(event_id="old", ts=int(time.time() * 1000) - 366 * DAY)]}
    with pytest.raises(InvalidEvent, match=r"field 'events\[1\]\.ts': .* more than 365 days before now"):
        codec.decode(codec.encode("PredictionBatch", stale), accept=INPUTS)
    assert codec.decode(codec.encode("PredictionBatch", stale), accept=INPUTS, limits=codec.Limits(past_ms=400 * DAY))


def test_times_the_system_writes_itself_are_not_windowed():
    """A model version, a label or a task may rightly be old: only input events are checked."""
    assert set(codec.TIMES) == {"Prediction", "Override", "Appeal", "PredictionColumns"}
    for name in ("Label", "ModelVersion", "LabelingTask", "Candidate", "DeadLetter"):
        record = {**CASES[name][0], **{f: 0 for f in ("ts", "created_ts", "source_ts") if f in CASES[name][0]}}
        assert codec.decode(codec.encode(name, record), accept=(name,))[0] == name


SMALL = codec.Limits(max_string=12, max_entries=3, max_items=2)
TINY = {  # records within SMALL
    "Prediction": {"event_id": "e1", "item_id": "i1", "ts": T, "model_name": "m", "model_version": "1",
                   "predicted_label": "a", "probabilities": {"a": 1.0}, "features": {"x": 1.0}, "context": {"k": "v"}},
    "LabelingTask": {"task_id": "t1", "event_id": "e1", "item_id": "i1", "created_ts": T, "source_ts": T,
                     "kind": "prediction", "reasons": ["u"], "signals": {"s": 0.5}, "selection_probability": 0.5,
                     "priority": 0.5, "confidence": 0.5, "label_set": ["a", "b"], "model_name": "m",
                     "model_version": "1", "shadow_version": 1, "policy_version": "p"},
}
TINY["PredictionBatch"] = {"events": [TINY["Prediction"], {**TINY["Prediction"], "event_id": "e2"}]}


@pytest.mark.parametrize("name, change, words", [
    ("Prediction", {"item_id": "x" * 13}, "field 'item_id': 13 characters exceed the limit of 12"),
    ("Prediction", {"text": "y" * 13}, "field 'text': 13 characters exceed the limit of 12"),
    ("Prediction", {"features": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}},
     "field 'features': 4 entries exceed the limit of 3"),
    ("Prediction", {"features": {"k" * 13: 1.0}}, "field 'features': key 'kkkkkkkkkkkk'... 13 characters"),
    ("Prediction", {"context": {"k": "v" * 13}}, "field \"context['k']\": 13 characters exceed the limit of 12"),
    ("LabelingTask", {"reasons": ["a", "b", "c"]}, "field 'reasons': 3 items exceed the limit of 2"),
    ("LabelingTask", {"reasons": ["r" * 13]}, "field 'reasons[0]': 13 characters exceed the limit of 12"),
    ("PredictionBatch", {"events": [TINY["Prediction"]] * 3}, "field 'events': 3 items exceed the limit of 2"),
    ("PredictionBatch", {"events": [TINY["Prediction"], {**TINY["Prediction"], "model_name": "m" * 13}]},
     "field 'events[1].model_name': 13 characters exceed the limit of 12"),
])
def test_lengths_and_counts_beyond_the_limits(name, change, words):
    base = TINY[name]
    assert codec.decode(codec.encode(name, base), accept=(name,), limits=SMALL)
    record = {**base, **change}
    for data in (codec.encode(name, record, check=False), to_json(record)):
        with pytest.raises(InvalidEvent) as info:
            codec.decode(data, accept=(name,), limits=SMALL)
        assert info.value.error == "too_large"
        assert words in info.value.reason


def test_default_limits_hold_a_large_text_but_not_a_huge_one():
    assert codec.LIMITS == codec.Limits(365 * DAY, DAY, 65_536, 10_000, 10_000)
    assert codec.decode(to_json(pred(text="t" * 65_536)), accept=INPUTS)
    with pytest.raises(InvalidEvent, match="field 'text': 65537 characters exceed the limit of 65536"):
        codec.decode(to_json(pred(text="t" * 65_537)), accept=INPUTS)
    many = {f"f{i}": 0.0 for i in range(10_001)}
    with pytest.raises(InvalidEvent, match="field 'features': 10001 entries exceed the limit of 10000"):
        codec.decode(codec.encode("Prediction", pred(features=many)), accept=INPUTS)


def _oracle(event: dict, limits: codec.Limits, now: int) -> set[str]:
    """The codes an event must be refused with, worked out plainly."""
    strings = [event[k] for k in ("event_id", "item_id", "model_name", "model_version", "predicted_label")]
    strings += [event["text"]] if event["text"] is not None else []
    maps = [event["probabilities"], event["features"], event["context"]]
    strings += [k for m in maps for k in m] + list(event["context"].values())
    codes = set()
    if any(len(s) > limits.max_string for s in strings) or any(len(m) > limits.max_entries for m in maps):
        codes.add("too_large")
    if any(0xD800 <= ord(ch) <= 0xDFFF for s in strings for ch in s):
        codes.add("unencodable")
    if not now - limits.past_ms <= event["ts"] <= now + limits.future_ms:
        codes.add("out_of_range")
    return codes


_plain = st.text(max_size=8)  # no surrogates: Hypothesis leaves them out unless asked
_text = st.one_of(_plain, _plain, _plain, _plain, _plain, _plain,
                  st.sampled_from([LONE, "ok" + "\udfff", "\u00e9t\u00e9", "\U0001F600"]))
_events = st.fixed_dictionaries({
    "event_id": _plain.map(lambda s: "e" + s), "item_id": _text.map(lambda s: "i" + s),
    "ts": st.integers(NOW - DAY, NOW) | st.integers(NOW - 400 * DAY, NOW + 2 * DAY),
    "model_name": _text, "model_version": _plain,
    "predicted_label": st.just("a"), "probabilities": st.just({"a": 1.0}),
    "features": st.dictionaries(_text, st.floats(-1e6, 1e6), max_size=6),
    "text": st.none() | _text, "context": st.dictionaries(_plain, _text, max_size=4),
})
_limits = st.builds(codec.Limits, st.just(365 * DAY) | st.integers(0, 365 * DAY), st.just(DAY) | st.integers(0, 2 * DAY),
                    st.just(64) | st.integers(0, 9), st.just(64) | st.integers(0, 5), st.just(64) | st.integers(1, 6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_events, min_size=1, max_size=5), limits=_limits)
def test_refused_exactly_when_something_cannot_be_stored(events, limits):
    """Against a plain oracle, on the batch (the fast path) and on each event, from Avro and from JSON."""
    expected_codes = [_oracle(e, limits, NOW) for e in events]
    batch = {"events": events}
    if len(events) > limits.max_items:
        expected_codes.append({"too_large"})
    datas = [to_json(batch)]
    if not any("unencodable" in c for c in expected_codes):  # no Avro writer can write a lone surrogate
        datas.append(codec.encode("PredictionBatch", batch, check=False))
    for data in datas:
        bad = set().union(*expected_codes)
        try:
            codec.decode(data, accept=INPUTS, limits=limits, now_ms=NOW)
        except DecodeError as e:
            assert e.error in bad, (e.reason, bad)
        else:
            assert not bad
    for event, codes in zip(events, expected_codes):
        try:
            codec.decode(to_json(event), accept=INPUTS, limits=limits, now_ms=NOW)
        except DecodeError as e:
            assert e.error in codes, (e.reason, codes)
        else:
            assert not codes


# --------------------------------------------------------------------------- fuzz


def test_fuzz_only_decode_errors():
    rng = random.Random(20241127)
    valid = [codec.encode(n, CASES[n][0]) for n in sorted(CASES)]
    texts = [to_json(CASES[n][0]) for n in sorted(CASES)]
    accepts = [INPUTS, ("Override",), ("Appeal", "Override"), tuple(codec.NAMES)]
    headers = [b"\xc3\x01" + codec.fingerprint(n) for n in codec.NAMES]
    outcomes = {"ok": 0, "error": 0}

    def mutate(data: bytes) -> bytes:
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(b) + 1)
            if op < 0.5 and b:
                b[min(i, len(b) - 1)] = rng.randrange(256)
            elif op < 0.75:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del b[i:i + rng.randint(1, 8)]
        return bytes(b)

    for i in range(6000):
        kind = i % 4
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        elif kind == 1:
            data = rng.choice(headers) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        elif kind == 2:
            data = mutate(rng.choice(valid))
        else:
            data = mutate(rng.choice(texts))
        accept = rng.choice(accepts)
        try:
            name, record = codec.decode(data, accept=accept)
        except DecodeError as e:
            assert e.error in {"undecodable", "unknown_schema", "schema_mismatch", "invalid", "too_large",
                               "unencodable", "out_of_range"}
            assert e.reason
            outcomes["error"] += 1
        else:
            assert name in accept and isinstance(record, dict)
            outcomes["ok"] += 1
    assert outcomes["error"] > 5000 and outcomes["ok"] > 0
