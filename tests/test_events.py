"""The typed events (streams/events.py) say what their schemas say.

For each of ``Candidate``, ``Task``, ``Label`` (against ``schemas/*.avsc``) and
``Decision`` (against the ``routing_decisions`` table of the migrations), the
TypedDict, its one constructor and the schema name the same fields, with the
same types; the constructor has a default exactly where the schema has one, and
it is the schema's. What the loop builds with them encodes as is.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from schemas import codec
from streams import events
from streams.loop import Loop

MIGRATIONS = Path(__file__).resolve().parent.parent / "dashboards" / "migrations"

#: event type -> (constructor, Avro schema name)
AVRO = {
    "Candidate": (events.candidate, "Candidate"),
    "Task": (events.task, "LabelingTask"),
    "Label": (events.label, "Label"),
}


def _avro_type(t) -> str:
    """An Avro field type as the Python annotation the events module writes for it."""
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        assert len(rest) == 1, t
        return f"{_avro_type(rest[0])} | None" if "null" in t else _avro_type(rest[0])
    if isinstance(t, dict):
        if t["type"] == "map":
            return f"dict[str, {_avro_type(t['values'])}]"
        if t["type"] == "array":
            return f"list[{_avro_type(t['items'])}]"
        return _avro_type(t["type"])
    return {"string": "str", "long": "int", "int": "int", "double": "float", "float": "float",
            "boolean": "bool", "bytes": "bytes"}[t]


def _sql_type(t: str) -> str:
    """A ClickHouse column type as the Python type a row carries for it (times as epoch millis)."""
    t = t.strip()
    for wrapper in ("LowCardinality", "Nullable"):
        if t.startswith(wrapper + "("):
            inner = _sql_type(t[len(wrapper) + 1:-1])
            return f"{inner} | None" if wrapper == "Nullable" else inner
    if t.startswith("Array("):
        return f"list[{_sql_type(t[6:-1])}]"
    if t.startswith("Map("):
        key, value = t[4:-1].split(",", 1)
        return f"dict[{_sql_type(key)}, {_sql_type(value)}]"
    if t.startswith("DateTime64"):
        return "int"
    return {"String": "str", "Float64": "float", "UInt8": "int", "UInt32": "int", "UInt64": "int",
            "Int64": "int"}[t]


def _table_columns(table: str) -> dict[str, str]:
    """Columns of ``table`` a row must carry (those with no DEFAULT), by the migrations, in order."""
    columns: dict[str, str] = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        sql = re.sub(r"--[^\n]*", "", path.read_text())
        create = re.search(rf"CREATE TABLE IF NOT EXISTS {table}\s*\((.*?)\)\s*ENGINE", sql, re.S)
        if create:
            for line in create.group(1).split(",\n"):
                name, kind = line.split(None, 1)
                columns[name] = re.split(r"\s+(?:DEFAULT|COMMENT|CODEC)\b", kind.strip())[0]
        for name, kind in re.findall(rf"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS (\w+) ([^\n;]+)", sql):
            if " DEFAULT " not in f" {kind} ":
                columns[name] = kind
    return columns


def _annotations(typed) -> dict[str, str]:
    """The wire fields of a TypedDict and their types, as written (``"str | None"``)."""
    wire = events.IN_PROCESS.get(typed.__name__, frozenset())
    return {name: getattr(kind, "__forward_arg__", kind) for name, kind in typed.__annotations__.items()
            if name not in wire}


def _parameters(constructor) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(constructor).parameters)


@pytest.mark.parametrize("name", sorted(AVRO))
def test_each_event_type_and_its_constructor_match_its_avro_schema(name):
    typed = getattr(events, name)
    constructor, schema_name = AVRO[name]
    fields = codec.schema(schema_name)["fields"]
    schema = {f["name"]: _avro_type(f["type"]) for f in fields}
    assert _annotations(typed) == schema, f"{name} and schemas/{schema_name}: fields or types differ"
    assert list(_annotations(typed)) == list(schema), f"{name}: fields in another order than the schema"
    parameters = _parameters(constructor)
    extra = events.IN_PROCESS.get(name, frozenset())
    assert set(parameters) - extra == set(schema), f"{constructor.__name__}() parameters differ from the fields"
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
    for f in fields:
        default = parameters[f["name"]].default
        if "default" not in f:
            assert default is inspect.Parameter.empty, f"{name}.{f['name']} has no default in the schema"
        elif f["default"] in ({}, []):
            assert default is None, f"{name}.{f['name']}: None stands for a fresh empty map or list"
        else:
            assert default == f["default"], f"{name}.{f['name']}: default {default!r}, schema {f['default']!r}"
    built = constructor(**{n: p.default if p.default is not p.empty else _example(schema[n])
                           for n, p in parameters.items() if n in schema})
    assert list(built) == list(schema)
    assert {f["name"]: built[f["name"]] for f in fields if "default" in f} == \
        {f["name"]: f["default"] for f in fields if "default" in f}
    # the wire format carries it whole (values are placeholders: encoded without the semantic checks)
    assert codec.decode(codec.encode(schema_name, built, check=False), (schema_name,), check=False)[1] == built


def test_a_decision_is_a_routing_decisions_row():
    columns = _table_columns("routing_decisions")
    assert "inserted_at" not in columns and len(columns) == 14
    assert _annotations(events.Decision) == {name: _sql_type(kind) for name, kind in columns.items()}
    assert list(events.Decision.__annotations__) == list(columns)
    parameters = _parameters(events.decision)
    assert list(parameters) == list(columns)
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in parameters.values())


def _example(kind: str):
    return {"str": "s", "int": 1, "float": 0.5, "list[str]": ["a"], "dict[str, float]": {"k": 1.0},
            "dict[str, str]": {"k": "v"}, "str | None": "s"}[kind]


def test_the_loop_builds_its_events_with_the_constructors():
    """What the scorer and router make has exactly the fields of its type, and encodes with every check."""
    loop = Loop.build(budget_fraction=1.0, model_kind="linear", min_control=0)
    prediction = {"event_id": "e1", "item_id": "i1", "ts": 5, "model_name": "prod", "model_version": "3",
                  "predicted_label": "a", "probabilities": {"a": 0.5, "b": 0.5}, "features": {"x": 1.0},
                  "text": "a good dog", "context": {}}
    [c] = loop.score("Prediction", prediction, now_ms=6).candidates
    assert set(c) == set(events.Candidate.__annotations__)
    assert c["x"] == {"x": 1.0, "w:a": 1.0, "w:good": 1.0, "w:dog": 1.0}  # the model input, computed once
    wire = {k: v for k, v in c.items() if k not in events.IN_PROCESS["Candidate"]}
    assert codec.decode(codec.encode("CandidateBatch", {"candidates": [c]}, check=False), ("CandidateBatch",),
                        check=False)[1]["candidates"] == [wire]  # x never travels
    routed = loop.route(c, now_ms=7)
    [(_, decision)] = [(t, r) for t, r in routed.rows if t == "routing_decisions"]
    assert list(decision) == list(events.Decision.__annotations__)
    [task] = routed.tasks
    assert set(task) == set(events.Task.__annotations__)
    codec.encode("LabelingTask", task)
    label = events.label(event_id="l1", task_id=task["task_id"], item_id="i1", label="a", annotator_id="ann", ts=8)
    codec.encode("Label", label)
    loop.take("LabelingTask", task, now_ms=8)
    assert [t for t, _ in loop.take("Label", label, now_ms=9).rows] == ["labels", "consensus_labels"]


def test_a_task_is_copied_only_with_its_own_fields():
    base = {"task_id": "t1", "reasons": ["uncertain"]}
    assert events.replace_task(base, round=2) == {"task_id": "t1", "reasons": ["uncertain"], "round": 2}
    with pytest.raises(TypeError, match="'rounds'"):
        events.replace_task(base, rounds=2)
