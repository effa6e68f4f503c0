"""``feedbackloop export``: a dataset version for retraining the production model, as Parquet.

A dataset version is the labeled set as of a published model version ``N``: every
task whose consensus label was settled before version ``N`` was published (the
labels ``N`` learned, and the control labels it was measured on), each with its
consensus label as it stood then. Without ``--version`` the export takes every
label there is now (recorded as version 0).

One row per labeled item (task), ordered by task id:

====================== ====================================================================
column                 what it holds
====================== ====================================================================
item_id, task_id,      the item, its task and the input event that caused it
event_id, kind
label, confidence,     the consensus label, its posterior under the weighted vote, how it
consensus_method       was settled
annotator_labels       every annotator's label: a list of (annotator_id, label, tier)
reasons, control       why the item was selected; True for the random control slice
selection_probability  the probability it was selected with: weight a prediction row by its
                       inverse (``weight``) and those rows stand for the stream of predictions,
                       unbiased (override and appeal rows are events of their own)
model_name,            the production model, its version and its answer for the item
model_version,
predicted_label
features, text         the item as its task carried it
guideline_version      the labeling guideline's version the task was shown with (NULL
                       where it was not recorded)
learned_by_version     the shadow model version current when the label settled
====================== ====================================================================

An export with multi-label tasks (settled class by class, consensus method
``set_vote``; see the README's multi-label section) has two more columns, at
the end (:data:`SET_SCHEMA`), so a single-label export keeps its bytes:

====================== ====================================================================
labels                 the consensus set, its classes sorted (``label`` is them joined by
                       ``|``); NULL on a single-label row
annotator_label_sets   every annotator's set: a list of (annotator_id, labels, tier)
====================== ====================================================================

The same version exported again gives the same bytes: the rows are read with
``FINAL`` and ordered, the schema is fixed, and the Parquet writer's options
are fixed, with no time in its metadata. Each export is recorded in the
``dataset_versions`` table with the SHA-256 of the file, so a training run can
be traced to the labels it saw and an earlier version restored byte for byte.

>>> table = to_arrow([])
>>> table.num_rows, table.schema.field("selection_probability").type
(0, DataType(double))
>>> content_hash(parquet_bytes(table, {"version": "0"})) == content_hash(parquet_bytes(table, {"version": "0"}))
True
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dashboards.connection import connect_settings
from dashboards.migrate import migrate
from feedbackloop.settings import Settings

__all__ = ["SCHEMA", "WRITER", "add_parser", "content_hash", "export", "parquet_bytes", "read_rows", "run",
           "to_arrow"]

#: The columns of a dataset version, in order.
SCHEMA = pa.schema([
    ("item_id", pa.string()), ("task_id", pa.string()), ("event_id", pa.string()), ("kind", pa.string()),
    ("label", pa.string()), ("confidence", pa.float64()), ("consensus_method", pa.string()),
    ("annotator_labels", pa.list_(pa.struct([("annotator_id", pa.string()), ("label", pa.string()),
                                             ("tier", pa.string())]))),
    ("reasons", pa.list_(pa.string())), ("control", pa.bool_()),
    ("selection_probability", pa.float64()), ("weight", pa.float64()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("predicted_label", pa.string()),
    ("features", pa.map_(pa.string(), pa.float64())), ("text", pa.string()),
    ("guideline_version", pa.string()), ("learned_by_version", pa.int64()),
])

#: The columns of a dataset version with multi-label tasks: :data:`SCHEMA` and the sets.
SET_SCHEMA = pa.schema([*SCHEMA, ("labels", pa.list_(pa.string())),
                        ("annotator_label_sets", pa.list_(pa.struct([
                            ("annotator_id", pa.string()), ("labels", pa.list_(pa.string())),
                            ("tier", pa.string())])))])

#: The Parquet writer's options: fixed, so the same rows give the same bytes.
WRITER = {"compression": "zstd", "compression_level": 3, "use_dictionary": True, "write_statistics": True,
          "version": "2.6", "data_page_version": "1.0", "row_group_size": 1 << 20, "store_schema": True}


def format_name() -> str:
    """The writer and its options, as ``dataset_versions.format`` records them."""
    return f"parquet/pyarrow-{pa.__version__}/{WRITER['compression']}-{WRITER['compression_level']}"


def _columns(client, table: str) -> set[str]:
    return {r[0] for r in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                                       "AND table = {t:String}", parameters={"t": table}).result_rows}


def read_rows(client, version: int | None = None) -> list[dict]:
    """The labeled set as of model ``version`` (None: every label now), one dict per task, by task id.

    Gold tasks are left out (their answers are known; they check annotators).
    """
    cutoff = "" if version is None else f"WHERE learned_by_version < {int(version)}"
    consensus = client.query(f"""
        SELECT task_id, argMax(tuple(item_id, label, confidence, method, learned_by_version),
                               tuple(ts, learned_by_version, label)) AS settled
        FROM consensus_labels FINAL {cutoff}
        GROUP BY task_id ORDER BY task_id""").result_rows
    if not consensus:
        return []
    # the tasks of the set, as a subquery: the server filters by it, however many they are
    ids = f"(SELECT task_id FROM consensus_labels {cutoff})"
    task_columns = _columns(client, "labeling_tasks")
    label_columns = _columns(client, "labels")
    # the guideline version, where tasks or labels record one (an empty one is not known: NULL)
    guideline = "nullIf(toString(guideline_version), '')" if "guideline_version" in task_columns else "NULL"
    features = "features" if "features" in task_columns else "map()"
    text = "text" if "text" in task_columns else "NULL"
    tasks = {r[0]: r[1:] for r in client.query(f"""
        SELECT task_id, event_id, kind, reasons, selection_probability, model_version, predicted_label,
               {features}, {text}, {guideline}
        FROM labeling_tasks FINAL WHERE task_id IN {ids} AND kind != 'gold'""").result_rows}
    label_guideline = "nullIf(toString(guideline_version), '')" if "guideline_version" in label_columns else "NULL"
    label_cutoff = "" if version is None else f"AND learned_by_version < {int(version)}"
    votes: dict[str, list[tuple]] = defaultdict(list)
    label_guidelines: dict[str, str] = {}
    for task_id, annotator, label, tier, guideline_version in client.query(f"""
            SELECT task_id, annotator_id, label, tier, {label_guideline}
            FROM labels FINAL WHERE task_id IN {ids} {label_cutoff}
            ORDER BY task_id, annotator_id, ts, event_id""").result_rows:
        votes[task_id].append({"annotator_id": annotator, "label": label, "tier": tier})
        if guideline_version is not None:
            label_guidelines.setdefault(task_id, guideline_version)
    model_names = dict(client.query(  # the table is ordered by event id: a lookup, not a scan
        f"SELECT event_id, min(model_name) FROM predictions WHERE event_id IN "
        f"(SELECT event_id FROM labeling_tasks WHERE task_id IN {ids}) GROUP BY event_id").result_rows)
    rows = []
    for task_id, (item_id, label, confidence, method, learned_by) in consensus:
        task = tasks.get(task_id)
        if task is None:  # a gold task, or a task whose row never reached ClickHouse
            continue
        event_id, kind, reasons, p, model_version, predicted, feats, txt, guide = task
        rows.append({
            "item_id": item_id, "task_id": task_id, "event_id": event_id, "kind": kind, "label": label,
            "confidence": float(confidence), "consensus_method": method, "annotator_labels": votes.get(task_id, []),
            "reasons": list(reasons), "control": "control" in reasons, "selection_probability": float(p),
            "weight": 1.0 / p if p > 0 else None, "model_name": model_names.get(event_id),
            "model_version": model_version, "predicted_label": predicted,
            "features": sorted((str(k), float(v)) for k, v in (feats or {}).items()), "text": txt,
            "guideline_version": guide if guide is not None else label_guidelines.get(task_id),
            "learned_by_version": int(learned_by)})
        if method == SET_METHOD:  # a multi-label task: the sets as lists too
            rows[-1].update(labels=_classes(label), annotator_label_sets=[
                {"annotator_id": v["annotator_id"], "labels": _classes(v["label"]), "tier": v["tier"]}
                for v in rows[-1]["annotator_labels"]])
    return rows


#: The consensus method of a multi-label task (streams.labels.set_consensus, via the trainer).
SET_METHOD = "set_vote"


def _classes(label: str) -> list[str]:
    """A set joined by ``|`` as its sorted classes (``""`` is the empty set).

    >>> _classes("b|a"), _classes("")
    (['a', 'b'], [])
    """
    return sorted(c for c in label.split("|") if c)


def to_arrow(rows: list[dict]) -> pa.Table:
    """The rows as an Arrow table of :data:`SCHEMA`, or :data:`SET_SCHEMA` when a row is multi-label.

    >>> row = dict.fromkeys(SCHEMA.names)
    >>> to_arrow([row]).num_columns, to_arrow([{**row, "labels": ["a"], "annotator_label_sets": []}]).num_columns
    (19, 21)
    """
    sets = any("labels" in r for r in rows)
    return pa.Table.from_pylist(rows, schema=SET_SCHEMA if sets else SCHEMA)


def parquet_bytes(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """The table as Parquet bytes, written with :data:`WRITER`'s options; ``metadata``
    (no times in it) goes in the file's key-value metadata."""
    if metadata:
        table = table.replace_schema_metadata({f"feedbackloop.{k}": str(v) for k, v in sorted(metadata.items())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **WRITER)
    return buffer.getvalue()


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def summary(rows: list[dict]) -> dict:
    """Counts of the consensus labels, and each label's share of the prediction stream: the
    prediction rows weighted by 1 / selection_probability (an override or an appeal is an
    event of its own, outside that population).

    >>> s = summary([{"label": "a", "selection_probability": 0.5, "control": True, "kind": "prediction"},
    ...              {"label": "b", "selection_probability": 1.0, "control": False, "kind": "prediction"},
    ...              {"label": "b", "selection_probability": 1.0, "control": False, "kind": "override"}])
    >>> s["label_counts"], s["weighted_label_shares"]["a"]
    ({'a': 1, 'b': 2}, 0.6666666666666666)
    """
    counts = Counter(r["label"] for r in rows)
    weights = Counter()
    for r in rows:
        if r["kind"] == "prediction" and r["selection_probability"] > 0:
            weights[r["label"]] += 1.0 / r["selection_probability"]
    total = sum(weights.values())
    return {"rows": len(rows), "control_rows": sum(bool(r["control"]) for r in rows),
            "label_counts": dict(sorted(counts.items())),
            "weighted_label_shares": {k: v / total for k, v in sorted(weights.items())} if total else {}}


def export(client, out: str | Path, version: int | None = None, model_name: str = "shadow") -> dict:
    """Write the dataset version to ``out`` (atomically) and record it in ``dataset_versions``.

    Raises ``ValueError`` if ``version`` was never published. Returns the
    recorded row (with ``content_hash``) and whether it was recorded before.
    """
    if version is not None:
        published = client.query("SELECT count() FROM model_versions WHERE model_name = {m:String} "
                                 "AND version = {v:UInt32}", parameters={"m": model_name, "v": version}).result_rows
        if not published[0][0]:
            raise ValueError(f"model {model_name!r} has no published version {version}")
    rows = read_rows(client, version)
    data = parquet_bytes(to_arrow(rows), {"dataset_version": version or 0, "model_name": model_name,
                                          "rows": len(rows)})
    digest = content_hash(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    record = {"version": version or 0, "content_hash": digest, "model_name": model_name, **summary(rows),
              "format": format_name(), "path": str(out.resolve())}
    before = client.query("SELECT min(ts) FROM dataset_versions WHERE version = {v:UInt32} "
                          "AND content_hash = {h:String} HAVING count() > 0",
                          parameters={"v": record["version"], "h": digest}).result_rows
    if before:
        return {**record, "ts": before[0][0].isoformat(), "recorded_before": True}
    ts = datetime.now(timezone.utc)
    row = {**record, "ts": ts}
    client.insert("dataset_versions", [list(row.values())], column_names=list(row))
    return {**record, "ts": ts.isoformat(), "recorded_before": False}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="write a dataset version (the labeled set as of a model version) to Parquet",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--version", type=int, metavar="N",
                   help="the model version whose labeled set to export (default: every label now)")
    p.add_argument("--out", required=True, metavar="FILE", help="the Parquet file to write")
    p.add_argument("--model-name", help="the shadow model whose versions name the datasets "
                                        "(default: FEEDBACKLOOP_MODEL_NAME)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = connect_settings(settings)
    try:
        migrate(client)
        record = export(client, args.out, args.version, args.model_name or settings.model_name)
    finally:
        client.close()
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0
