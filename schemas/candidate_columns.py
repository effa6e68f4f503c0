"""Candidates as columns on the internal hop (``CandidateColumns``), and back.

The owner of the global budget decodes every preselected candidate. As a
``CandidateBatch`` each candidate is a record of three maps whose keys
(classes, feature names, signal names) repeat in every candidate: most of the
decoding. ``CandidateColumns`` holds one array per field and names the keys
once per message, so it decodes in about a third of the time.
:func:`to_columns` packs candidates into as few such records as keep their
order (a new record wherever the keys change); :func:`candidates_of` gives the
candidates of either form.

>>> c = {"event_id": "e1", "item_id": "i1", "ts": 5, "kind": "prediction", "model_name": "m",
...      "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4},
...      "features": {"x": 1.0}, "text": None, "context": {}, "shadow_label": "b", "shadow_version": 3,
...      "signals": {"margin": 0.2}, "user_label": None, "note": None, "scored_ts": 6,
...      "selection_probability": 0.5, "reasons": ["uncertain"], "priority": 0.7, "policy_version": "mix-2",
...      "x": {"x": 1.0}}
>>> other = {**c, "event_id": "e2", "features": {"y": 2.0}, "text": "hi", "x": None}
>>> records = to_columns([c, {**c, "event_id": "e3"}, other])
>>> [r["event_id"] for r in records], records[0]["feature_names"], records[0]["features"], records[0]["text"]
([['e1', 'e3'], ['e2']], ['x'], [1.0, 1.0], [])
>>> back = [b for r in records for b in candidates_of(r)]
>>> [b["event_id"] for b in back], back[2]["text"], back[0] == {k: v for k, v in c.items() if k != "x"}
(['e1', 'e3', 'e2'], 'hi', True)
>>> candidates_of({"candidates": [c]})[0] is c
True
"""

from __future__ import annotations

__all__ = ["candidates_of", "to_columns"]

#: The fields of ``Candidate`` that are one value per candidate (not a map).
SCALARS = ("event_id", "item_id", "ts", "kind", "model_name", "model_version", "predicted_label", "shadow_label",
           "shadow_version", "user_label", "note", "scored_ts", "selection_probability", "reasons", "priority",
           "policy_version")
#: Each map of ``Candidate`` -> the column naming its keys.
MAPS = {"probabilities": "classes", "features": "feature_names", "signals": "signal_names"}


def _keys(c: dict) -> tuple:
    return tuple(c[m].keys() for m in MAPS)


def to_columns(candidates: list[dict]) -> list[dict]:
    """``CandidateColumns`` records of ``candidates`` (``Candidate`` records, extra keys
    ignored), in order: a new record wherever a map's keys change."""
    records, start = [], 0
    for i in range(1, len(candidates) + 1):
        if i == len(candidates) or _keys(candidates[i]) != _keys(candidates[start]):
            records.append(_record(candidates[start:i]))
            start = i
    return records


def _record(run: list[dict]) -> dict:
    record = {field: [c[field] for c in run] for field in SCALARS}
    for field, names in MAPS.items():
        keys = list(run[0][field])
        record[names] = keys
        record[field] = [c[field][k] for c in run for k in keys]
    texts = [c["text"] for c in run]
    contexts = [c["context"] or {} for c in run]
    record["text"] = texts if any(t is not None for t in texts) else []
    record["context"] = contexts if any(contexts) else []
    return record


def candidates_of(record: dict) -> list[dict]:
    """The candidates of a ``CandidateBatch`` or a ``CandidateColumns`` record."""
    if "candidates" in record:
        return record["candidates"]
    n = len(record["event_id"])
    classes, names, signal_names = record["classes"], record["feature_names"], record["signal_names"]
    k, f, s = len(classes), len(names), len(signal_names)
    p, x, g = record["probabilities"], record["features"], record["signals"]
    texts = record["text"] or [None] * n
    contexts = record["context"] or [{}] * n
    return [{"event_id": event_id, "item_id": item_id, "ts": ts, "kind": kind, "model_name": model_name,
             "model_version": model_version, "predicted_label": predicted,
             "probabilities": dict(zip(classes, p[i * k:i * k + k])), "features": dict(zip(names, x[i * f:i * f + f])),
             "text": text, "context": dict(context), "shadow_label": shadow_label, "shadow_version": shadow_version,
             "signals": dict(zip(signal_names, g[i * s:i * s + s])), "user_label": user_label, "note": note,
             "scored_ts": scored_ts, "selection_probability": probability, "reasons": reasons, "priority": priority,
             "policy_version": policy_version}
            for i, (event_id, item_id, ts, kind, model_name, model_version, predicted, text, context, shadow_label,
                    shadow_version, user_label, note, scored_ts, probability, reasons, priority, policy_version)
            in enumerate(zip(record["event_id"], record["item_id"], record["ts"], record["kind"],
                             record["model_name"], record["model_version"], record["predicted_label"], texts,
                             contexts, record["shadow_label"], record["shadow_version"], record["user_label"],
                             record["note"], record["scored_ts"], record["selection_probability"],
                             record["reasons"], record["priority"], record["policy_version"]))]
