"""``feedbackloop agreement``: annotator agreement metrics from a label export.

Reads a CSV (with a header) or JSONL export, one label per row, with the
columns ``item_id``, ``annotator_id`` and ``label``, and optionally ``ts``
(epoch milliseconds or ISO 8601; naive times are UTC), ``duration_ms`` and a
gold answer column (``gold``). Prints the metrics of :mod:`streams.labels.agreement`
and writes them as JSON with ``--out``. A malformed file is refused with a
``ValueError`` naming the file and line.

>>> rows, gold = parse_export("item_id,annotator_id,label,gold\\ni1,ann,cat,cat\\ni1,bob,dog,\\n", "x.csv")
>>> [r.label for r in rows], gold
(['cat', 'dog'], {'i1': 'cat'})
>>> parse_export('{"item_id": "i1", "annotator_id": "ann", "label": "cat"}\\n{"item_id": "i2"', "x.jsonl")
Traceback (most recent call last):
...
ValueError: x.jsonl:2: bad JSON at column 17: Expecting ',' delimiter
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from streams.labels import set_agreement
from streams.labels.agreement import Annotation, report

REQUIRED = ("item_id", "annotator_id", "label")

DESCRIPTION = """\
How far do the annotators agree, and whom can you trust? Reads a CSV or JSONL
export with one label per row: item_id, annotator_id, label, and optionally
ts (epoch ms or ISO 8601), duration_ms and a gold answer column. Prints:

  overall      percent agreement, Fleiss' kappa, Krippendorff's alpha (nominal),
               multi-rater Cohen's kappa (items labeled at least twice)
  annotators   labels, agreement with the majority of the others, accuracy on
               gold items, drift of their label mix (first vs second half of
               their labels), time to label p50/p90, labels per hour
  pairs        the annotator pairs with the lowest Cohen's kappa
  classes      per majority class, the share of items with any disagreement

Undefined coefficients (a single class, nothing labeled twice) print as n/a
and are null in the JSON. With a ts on every row, rows are taken in time order.

With --multi-label the label (and gold) column holds a set of classes joined
by '|' ("cat|dog"), and the report is about sets instead:

  overall      Krippendorff's alpha with the MASI distance (and with Jaccard),
               share of annotator pairs giving the very same set
  classes      per class: how often it is chosen, percent agreement, Fleiss'
               kappa and Cohen's kappa (averaged over annotator pairs) on
               "is this class in the set?"
  annotators   labels, mean set size, mean MASI agreement with the others,
               exact and MASI agreement with gold
"""


def _text(value, column: str, where: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError(f"{where}: empty {column}")
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise ValueError(f"{where}: {column} must be a string or a number, got {json.dumps(value)[:40]}")


def _ts(value, where: str) -> int | None:
    text = _text(value, "ts", where, required=False)
    if text is None:
        return None
    try:
        return round(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: bad ts {text!r} (epoch milliseconds or ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * 1000)


def _duration(value, where: str) -> float | None:
    text = _text(value, "duration_ms", where, required=False)
    if text is None:
        return None
    try:
        duration = float(text)
    except ValueError:
        duration = -1.0
    if not 0.0 <= duration < float("inf"):
        raise ValueError(f"{where}: bad duration_ms {text!r} (milliseconds, >= 0)")
    return duration


def _records(text: str, name: str) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a CSV or JSONL text, by its first character."""
    if text.lstrip().startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:{n}: bad JSON at column {exc.colno}: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{name}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                raise ValueError(f"{name}:{n}: missing column {missing[0]!r}")
            yield n, row
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{name}:{reader.line_num}: missing column {missing[0]!r} (header: {', '.join(header)})")
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ValueError(f"{name}:{reader.line_num}: expected {len(header)} fields, got {len(fields)}")
        yield reader.line_num, dict(zip(header, fields))


def _label_set(value, column: str, where: str, required: bool = True) -> str | None:
    """A multi-label answer as its classes sorted and joined by ``|``: from a
    ``|``-joined string, or in JSONL a list of classes (``[]`` is the empty set). An
    empty answer (a blank CSV field) is the empty set where an answer is required.

    >>> _label_set("b|a", "label", "x:2"), _label_set(" ", "label", "x:2"), _label_set("", "gold", "x:2", False)
    ('a|b', '', None)
    """
    if isinstance(value, list):
        return set_agreement.SEPARATOR.join(sorted(_text(v, column, where) for v in value))
    if required and isinstance(value, str) and not value.strip():
        return ""
    text = _text(value, column, where, required)
    return None if text is None else set_agreement.SEPARATOR.join(sorted(set_agreement.label_set(text)))


def parse_export(text: str, name: str = "<export>", gold_column: str | None = None, multi_label: bool = False
                 ) -> tuple[list[Annotation], dict[str, str]]:
    """The annotations and gold answers ``{item_id: label}`` of an export's text.

    ``gold_column`` defaults to ``gold`` where present; named explicitly, it
    must exist. Ids and labels are strings (JSON numbers are written as JSON).
    With ``multi_label`` a label is a set of classes, written back sorted and
    joined by ``|`` (so ``b|a`` is ``a|b``); JSONL may give it as a list.

    >>> rows, gold = parse_export('{"item_id": 1, "annotator_id": "x", "label": ["b", "a"], "gold": "b|a"}',
    ...                           "x.jsonl", multi_label=True)
    >>> [r.label for r in rows], gold
    (['a|b'], {'1': 'a|b'})
    """
    label_of = _label_set if multi_label else _text
    if not text.strip():
        raise ValueError(f"{name}:1: empty file")
    rows: list[Annotation] = []
    gold: dict[str, str] = {}
    gold_line: dict[str, int] = {}
    column = gold_column or "gold"
    seen_gold = False
    for n, row in _records(text, name):
        where = f"{name}:{n}"
        item, annotator = (_text(row[c], c, where) for c in REQUIRED[:2])
        label = label_of(row["label"], "label", where)
        rows.append(Annotation(item, annotator, label, _ts(row.get("ts"), where),
                               _duration(row.get("duration_ms"), where)))
        seen_gold = seen_gold or column in row
        answer = label_of(row.get(column), column, where, required=False)
        if answer is not None:
            if gold.setdefault(item, answer) != answer:
                raise ValueError(f"{where}: gold for item {item!r} is {answer!r} here but "
                                 f"{gold[item]!r} on line {gold_line[item]}")
            gold_line.setdefault(item, n)
    if not rows:
        raise ValueError(f"{name}: no annotations (only a header)")
    if gold_column and not seen_gold:
        raise ValueError(f"{name}: no column {gold_column!r}")
    if all(r.ts_ms is not None for r in rows):
        rows.sort(key=lambda r: r.ts_ms)
    return rows, gold


def read_export(path: str, gold_column: str | None = None, multi_label: bool = False
                ) -> tuple[list[Annotation], dict[str, str]]:
    """:func:`parse_export` of a file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    return parse_export(text, path, gold_column, multi_label)


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary(rep: dict, pairs: int = 5) -> str:
    """The report as a few short tables.

    >>> print(summary(report([("i1", "x", 1), ("i1", "y", 1)])).splitlines()[1])
    percent agreement      1.000
    """
    lines = [
        f"{rep['n_annotations']} labels, {rep['n_items']} items ({rep['n_items_multi']} labeled at least twice), "
        f"{rep['n_annotators']} annotators, {len(rep['classes'])} classes",
        f"percent agreement   {_fmt(rep['percent_agreement']):>8}",
        f"Fleiss' kappa       {_fmt(rep['fleiss_kappa']):>8}",
        f"Krippendorff alpha  {_fmt(rep['krippendorff_alpha']):>8}   (nominal)",
        f"multi-rater kappa   {_fmt(rep['multi_kappa']):>8}   (Davies-Fleiss)",
        "",
    ]
    per = rep["per_annotator"]
    width = max([len("annotator")] + [len(str(a)) for a in per])
    lines.append(f"{'annotator':<{width}}  labels  majority  gold   drift  p50 s  p90 s  labels/h")
    for a, row in per.items():
        p50, p90 = (None if v is None else v / 1000 for v in (row["time_to_label_p50_ms"], row["time_to_label_p90_ms"]))
        lines.append(f"{str(a):<{width}}  {row['n_labels']:>6}  {_fmt(row['agreement_with_majority']):>8}  "
                     f"{_fmt(row['gold_accuracy'], '.2f'):>4}  {_fmt(row['drift'], '.2f'):>6}  {_fmt(p50, '.1f'):>5}  "
                     f"{_fmt(p90, '.1f'):>5}  {_fmt(row['labels_per_hour'], '.1f'):>8}")
    worst = sorted((p for p in rep["cohen_kappa"] if p["kappa"] is not None), key=lambda p: p["kappa"])[:pairs]
    if worst:
        w = max(len(str(p[k])) for p in worst for k in ("a", "b"))
        lines += ["", f"{'worst pairs':<{2 * w + 2}}  items  agree   kappa"]
        lines += [f"{str(p['a']):<{w}}  {str(p['b']):<{w}}  {p['n']:>5}  {p['agreement']:.3f}  {p['kappa']:>6.3f}"
                  for p in worst]
    if rep["disagreement_by_class"]:
        w = max(len("majority class"), *(len(str(c)) for c in rep["disagreement_by_class"]))
        lines += ["", f"{'majority class':<{w}}  items  disagreement"]
        lines += [f"{str(c):<{w}}  {s['items']:>5}  {s['disagreement_rate']:>12.1%}"
                  for c, s in rep["disagreement_by_class"].items()]
    return "\n".join(lines)


def multi_label_summary(rep: dict) -> str:
    """The multi-label report (:func:`streams.labels.set_agreement.report`) as short tables.

    >>> rep = set_agreement.report([("i1", "x", "a|b"), ("i1", "y", "a")])
    >>> print(multi_label_summary(rep).splitlines()[1])
    Krippendorff alpha     0.000   (MASI distance)
    """
    lines = [
        f"{rep['n_annotations']} labels, {rep['n_items']} items ({rep['n_items_multi']} labeled at least twice), "
        f"{rep['n_annotators']} annotators, {len(rep['classes'])} classes, "
        f"{_fmt(rep['mean_set_size'], '.2f')} classes per answer",
        f"Krippendorff alpha  {_fmt(rep['krippendorff_alpha']):>8}   (MASI distance)",
        f"Krippendorff alpha  {_fmt(rep['krippendorff_alpha_jaccard']):>8}   (Jaccard distance)",
        f"exact set agreement {_fmt(rep['exact_agreement']):>8}",
        "",
    ]
    w = max([len("class")] + [len(str(c)) for c in rep["per_class"]])
    lines.append(f"{'class':<{w}}  chosen  agree  Fleiss  Cohen")
    lines += [f"{str(c):<{w}}  {_fmt(k['prevalence'], '.1%'):>6}  {_fmt(k['percent_agreement']):>5}  "
              f"{_fmt(k['fleiss_kappa']):>6}  {_fmt(k['cohen_kappa']):>5}" for c, k in rep["per_class"].items()]
    per = rep["per_annotator"]
    w = max([len("annotator")] + [len(str(a)) for a in per])
    lines += ["", f"{'annotator':<{w}}  labels  size  MASI agree  gold exact  gold MASI"]
    lines += [f"{str(a):<{w}}  {r['n_labels']:>6}  {_fmt(r['mean_set_size'], '.2f'):>4}  "
              f"{_fmt(r['masi_agreement']):>10}  {_fmt(r['gold_exact'], '.2f'):>10}  {_fmt(r['gold_masi'], '.2f'):>9}"
              for a, r in per.items()]
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``agreement`` subcommand on an ``add_subparsers()`` object."""
    p = subparsers.add_parser("agreement", help="annotator agreement metrics from a label export",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="CSV (with a header) or JSONL export, one label per row")
    p.add_argument("--out", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--gold-column", metavar="NAME", default=None,
                   help="column holding gold answers (default: 'gold', when the export has it)")
    p.add_argument("--pairs", type=int, default=5, metavar="N", help="worst annotator pairs to show (default 5)")
    p.add_argument("--multi-label", action="store_true",
                   help="each label is a set of classes joined by '|': MASI alpha and per-class kappa")
    p.set_defaults(func=run, uses_settings=False)
    return p


def run(args, settings=None) -> int:
    """``feedbackloop agreement``: read ``args.file``, print the summary, write ``args.out`` if given
    (no settings needed: it reads a file)."""
    multi_label = getattr(args, "multi_label", False)
    rows, gold = read_export(args.file, args.gold_column, multi_label)
    if multi_label:
        rep = set_agreement.report(rows, gold=gold)
        print(multi_label_summary(rep))
    else:
        rep = report(rows, gold=gold)
        print(summary(rep, pairs=args.pairs))
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=2) + "\n")
    return 0
