"""Guideline versions: the markdown read, versions recorded, tasks and labels carrying them.

The wire format first (labels and tasks written before the ``guideline_version``
field still decode), then the labeling service in process and against the real
broker: a task is shown with the guideline of its label set and the version,
the label inherits it, a changed file is a new version, and the versions reach
ClickHouse through the audit log.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import codec
from streams import events

ROOT = Path(__file__).resolve().parent.parent


def old_event(schema_file: str, record: dict) -> bytes:
    """``record`` as a writer of the schema before ``guideline_version`` encoded it."""
    parsed = parse_schema(json.loads((ROOT / "schemas" / "history" / schema_file).read_text()))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    out = io.BytesIO(codec.MARKER + fp)
    out.seek(0, io.SEEK_END)
    schemaless_writer(out, parsed, record)
    return out.getvalue()


def test_labels_and_tasks_written_before_guideline_versions_still_decode():
    label = events.label(event_id="l1", task_id="t1", item_id="i1", label="a", annotator_id="ann", ts=5)
    old = {k: v for k, v in label.items() if k != "guideline_version"}
    data = old_event("label.1.avsc", old)
    assert data[2:10] != codec.fingerprint("Label"), "an earlier writer schema"
    assert codec.decode(data, ("Label",)) == ("Label", {**old, "guideline_version": ""})
    task = events.task(task_id="t1", event_id="e1", item_id="i1", created_ts=1, source_ts=1, kind="prediction",
                       reasons=["uncertain"], signals={}, selection_probability=0.5, priority=0.5, confidence=0.5,
                       label_set=["a", "b"], model_name="m", model_version="1", shadow_version=0, policy_version="p")
    old = {k: v for k, v in task.items() if k != "guideline_version"}
    assert codec.decode(old_event("labeling_task.1.avsc", old), ("LabelingTask",))[1] == task
    # and the current writer carries the version
    shown = {**label, "guideline_version": "2-5f1c0e9a7b3d"}
    assert codec.decode(codec.encode("Label", shown), ("Label",))[1] == shown
