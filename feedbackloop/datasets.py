"""Labeled datasets to replay as production traffic: River's bundled ones, or a CSV.

>>> rows = load("phishing")
>>> len(rows), sorted({y for _, y in rows})
(1250, ['False', 'True'])
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from river import datasets

BUNDLED = {
    "bananas": datasets.Bananas,
    "phishing": datasets.Phishing,
    "imagesegments": datasets.ImageSegments,
    "shuttle": datasets.Shuttle,
}


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load(name: str, label_column: str | None = None) -> list[tuple[dict[str, float], str]]:
    """Rows of ``(features, label)``, labels as strings.

    ``name`` is a bundled dataset (``bananas``, ``phishing``, ``imagesegments``,
    ``shuttle``) or the path of a CSV file whose ``label_column`` holds the
    label and whose numeric columns are the features.
    """
    key = name.lower()
    if key in BUNDLED:
        return [({k: float(v) for k, v in x.items()}, str(y)) for x, y in BUNDLED[key]()]
    path = Path(name)
    if not path.exists():
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(BUNDLED)} or a CSV path")
    if not label_column:
        raise ValueError(f"{path}: say which column holds the label with --label-column")
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if label_column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no column {label_column!r} (columns: {', '.join(reader.fieldnames or [])})")
        for line, record in enumerate(reader, start=2):
            label = record.pop(label_column)
            if label in (None, ""):
                raise ValueError(f"{path}:{line}: empty label")
            features = {k: n for k, v in record.items() if (n := _number(v)) is not None}
            rows.append((features, str(label)))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
