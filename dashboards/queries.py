"""The analyst queries: ``dashboards/*.sql``, each answering one question.

A query file starts with comment lines: the first is the question, the next
ones explain how to read the answer, and an optional ``-- plot:`` line says
how the dashboard page (and Grafana) draws it::

    -- plot: line x=labels_seen y=accuracy series=curve

``line`` joins the points of each series, ``stacked`` stacks bars of the
series at each x, ``bar`` draws one bar per x (a category); ``series`` is
optional. ``tiles`` shows the columns of a one-row answer as big numbers.
Queries without a plot are shown as tables.

>>> q = parse("learning_curve", '''-- How good is it?
... --
... -- Accuracy per version.
... -- plot: line x=labels_seen y=accuracy series=curve
... SELECT 1''')
>>> q.question, q.notes, q.plot
('How good is it?', 'Accuracy per version.', Plot(kind='line', x='labels_seen', y='accuracy', series='curve'))
>>> [query.name for query in load()][:3]
['overview', 'learning_curve', 'budget_burn']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

__all__ = ["QUERIES_DIR", "ORDER", "Plot", "Query", "load", "parse", "run", "jsonable"]

QUERIES_DIR = Path(__file__).resolve().parent

#: The order of the dashboard page; queries not named here follow by name.
ORDER = ("overview", "learning_curve", "budget_burn", "reasons_mix", "agreement_over_time", "annotators", "drift_events",
         "throughput", "agent_lag", "accuracy_over_time", "lift", "production_accuracy", "production_per_class",
         "rare_class_coverage", "labeling_demand", "labeling_demand_over_time", "time_to_label", "under_covered_classes",
         "dead_letters", "last_1000_labels", "cost_per_point", "annotator_pairs", "reasons_yield",
         "should_we_stop", "dead_letter_reasons")

KINDS = ("line", "stacked", "bar", "tiles")


@dataclass(frozen=True)
class Plot:
    kind: str
    x: str | None = None
    y: str | None = None
    series: str | None = None


@dataclass(frozen=True)
class Query:
    name: str
    question: str
    notes: str
    plot: Plot | None
    sql: str


def _plot(spec: str, where: str) -> Plot:
    kind, *pairs = spec.split()
    if kind not in KINDS:
        raise ValueError(f"{where}: plot kind {kind!r} is not one of {', '.join(KINDS)}")
    fields = dict(pair.split("=", 1) for pair in pairs)
    unknown = set(fields) - {"x", "y", "series"}
    if kind == "tiles":
        return Plot(kind)
    if unknown or not {"x", "y"} <= set(fields):
        raise ValueError(f"{where}: a plot names x=COLUMN y=COLUMN and optionally series=COLUMN")
    return Plot(kind, fields["x"], fields["y"], fields.get("series"))


def parse(name: str, text: str) -> Query:
    """A :class:`Query` from the text of its file."""
    lines = text.strip().splitlines()
    header = []
    while lines and lines[0].startswith("--"):
        header.append(lines.pop(0)[2:].strip())
    if not header or not header[0].endswith("?"):
        raise ValueError(f"{name}.sql: the first line is the question it answers, as a comment ending in '?'")
    plot, notes = None, []
    for line in header[1:]:
        if line.startswith("plot:"):
            plot = _plot(line[len("plot:"):], f"{name}.sql")
        else:
            notes.append(line)
    return Query(name, header[0], " ".join(n for n in notes if n), plot, "\n".join(lines).strip())


def load(directory: Path | str = QUERIES_DIR) -> list[Query]:
    """Every query of ``directory``, in the page's order."""
    queries = {p.stem: parse(p.stem, p.read_text(encoding="utf-8")) for p in Path(directory).glob("*.sql")}
    rank = {name: i for i, name in enumerate(ORDER)}
    return [queries[n] for n in sorted(queries, key=lambda n: (rank.get(n, len(rank)), n))]


def jsonable(value):
    """A query result value as JSON can carry it: times as epoch milliseconds,
    NaN and infinities as None, arrays and tuples as lists.

    >>> jsonable(datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc)), jsonable(float("nan")), jsonable((1, 2.5))
    (60000, None, [1, 2.5])
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return round(value.timestamp() * 1000)
    if isinstance(value, date):
        return round(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp() * 1000)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def run(client, query: Query) -> dict:
    """Run ``query``; its columns and rows, JSON-ready (``error`` instead if it failed)."""
    try:
        result = client.query(query.sql)
    except Exception as exc:  # one broken panel must not take the page down
        return {"columns": [], "types": [], "rows": [], "error": str(exc).strip().splitlines()[0][:500]}
    return {"columns": list(result.column_names), "types": [t.name for t in result.column_types],
            "rows": [[jsonable(v) for v in row] for row in result.result_rows]}
