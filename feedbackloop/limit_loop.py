"""The columnar limit loop: the most one core of this machine does with the worker's work.

It is the benchmark's yardstick, not the product. On the same broker and
ClickHouse as the worker, pinned to one core, it consumes ``PredictionColumns``
(or ``PredictionBatch``) messages with confluent-kafka, decodes them with
fastavro, turns them into numpy columns, scores them (the production model's uncertainty and a trained
shadow :class:`~streams.learning.models.KNN`, vectorised), selects (a
probability per event, the draw fixed by the event id as the router's is),
encodes and produces the selected events' tasks, inserts one decision row per
event into ClickHouse in columns (Arrow), and commits. No dead letters, caps,
novelty sketch or restarts: whatever the worker does beyond this is its cost.

The pieces, on two events:

>>> import time
>>> now = int(time.time() * 1000)
>>> batch = [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": now, "model_name": "prod", "model_version": "1",
...           "predicted_label": "yes", "probabilities": {"yes": p, "no": 1 - p}, "features": {"f0": x},
...           "text": None, "context": {}} for i, (p, x) in enumerate([(0.5, -1.0), (0.99, 1.0)])]
>>> events = decode(codec.encode("PredictionBatch", {"events": batch}))
>>> cols = to_columns(events, ("no", "yes"), ("f0",))
>>> cols.proba.tolist(), cols.X.tolist()
([[0.5, 0.5], [0.010000000000000009, 0.99]], [[-1.0], [1.0]])
>>> shadow = KNN()
>>> for x, y in [(-1.0, "no"), (-0.9, "no"), (1.0, "yes"), (0.9, "yes")]:
...     shadow.learn_one({"f0": x}, y)
>>> s = score(cols, shadow, ("no", "yes"), ("f0",))
>>> s["uncertainty"].round(2).tolist(), s["disagreement"].round(2).tolist()
([1.0, 0.02], [0.5, 0.01])
>>> probability, selected = select(cols.event_id, s, fraction=0.5, seed=0)
>>> bool(probability[0] > probability[1]), selected.dtype.name
(True, 'bool')
>>> table = decisions(cols, s, probability, selected, now)
>>> table.num_rows, table.column("selected").to_pylist() == selected.astype(int).tolist()
(2, True)
"""

from __future__ import annotations

import gc
import os
import time
from io import BytesIO
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from fastavro import schemaless_reader

from schemas import codec
from streams import events as ev
from streams.learning.models import KNN
from streams.selection.router import stable_draw, task_id_of

SIGNALS = ("uncertainty", "margin", "entropy", "disagreement")
_BATCH = codec.schema("PredictionBatch")
_HEADER = codec.MARKER + codec.fingerprint("PredictionBatch")
_COLUMNS = codec.schema("PredictionColumns")
_COLUMNS_HEADER = codec.MARKER + codec.fingerprint("PredictionColumns")


class Columns(NamedTuple):
    """A batch of predictions as columns: ids, event times, probabilities (one column a class), features."""

    event_id: list
    item_id: list
    ts: np.ndarray
    proba: np.ndarray
    X: np.ndarray


def decode(value: bytes) -> list[dict]:
    """The predictions of one ``PredictionBatch`` message (fastavro, no checks)."""
    if value[:10] != _HEADER:
        raise ValueError("not a PredictionBatch message")
    return schemaless_reader(BytesIO(value[10:]), _BATCH, None)["events"]


def decode_columns(value: bytes) -> dict:
    """The record of one ``PredictionColumns`` message (fastavro, no checks)."""
    if value[:10] != _COLUMNS_HEADER:
        raise ValueError("not a PredictionColumns message")
    return schemaless_reader(BytesIO(value[10:]), _COLUMNS, None)


class Rows:
    """The events of ``PredictionColumns`` records, built one at a time as :func:`tasks` asks for them.

    >>> r = Rows([{"event_id": ["e1"], "item_id": ["i1"], "ts": [5], "model_name": ["m"], "model_version": ["1"],
    ...            "predicted_label": ["a"], "classes": ["a", "b"], "probabilities": [0.6, 0.4],
    ...            "feature_names": ["x"], "features": [2.0], "text": [], "context": []}])
    >>> r[0]["features"], r[0]["predicted_label"], len(r)
    ({'x': 2.0}, 'a', 1)
    """

    def __init__(self, records: list[dict]):
        self.at = [(r, i) for r in records for i in range(len(r["event_id"]))]

    def __len__(self) -> int:
        return len(self.at)

    def __getitem__(self, row: int) -> dict:
        r, i = self.at[row]
        f = len(r["feature_names"])
        return {**{k: r[k][i] for k in ("event_id", "item_id", "ts", "model_name", "model_version",
                                        "predicted_label")},
                "features": dict(zip(r["feature_names"], r["features"][i * f:i * f + f]))}


def columns_of(records: list[dict], classes: tuple, features: tuple) -> Columns:
    """``PredictionColumns`` records as one :class:`Columns` (classes and features in the given order),
    straight from their arrays.

    >>> rec = {"event_id": ["e1", "e2"], "item_id": ["i1", "i2"], "ts": [5, 6], "classes": ["yes", "no"],
    ...        "probabilities": [0.9, 0.1, 0.2, 0.8], "feature_names": ["b", "a"], "features": [1.0, 2.0, 3.0, 4.0]}
    >>> cols = columns_of([rec], ("no", "yes"), ("a", "b"))
    >>> cols.proba.tolist(), cols.X.tolist(), cols.ts.tolist()
    ([[0.1, 0.9], [0.8, 0.2]], [[2.0, 1.0], [4.0, 3.0]], [5, 6])
    """
    probas, xs = [], []
    for r in records:
        n = len(r["event_id"])
        p = np.asarray(r["probabilities"], float).reshape(n, len(r["classes"]))
        x = np.asarray(r["features"], float).reshape(n, len(r["feature_names"]))
        have, names = {c: j for j, c in enumerate(r["classes"])}, {f: j for j, f in enumerate(r["feature_names"])}
        probas.append(np.column_stack([p[:, have[c]] if c in have else np.zeros(n) for c in classes]))
        xs.append(np.column_stack([x[:, names[f]] if f in names else np.zeros(n) for f in features]))
    return Columns([e for r in records for e in r["event_id"]], [i for r in records for i in r["item_id"]],
                   np.fromiter((t for r in records for t in r["ts"]), np.int64), np.vstack(probas), np.vstack(xs))


def to_columns(events: list[dict], classes: tuple, features: tuple) -> Columns:
    """Decoded predictions as :class:`Columns` (classes and features in the given order)."""
    return Columns([e["event_id"] for e in events], [e["item_id"] for e in events],
                   np.fromiter((e["ts"] for e in events), np.int64, len(events)),
                   np.array([[e["probabilities"].get(c, 0.0) for c in classes] for e in events]),
                   np.array([[e["features"].get(f, 0.0) for f in features] for e in events]))


def score(cols: Columns, shadow: KNN, classes: tuple, features: tuple) -> dict[str, np.ndarray]:
    """The signals of every row at once: the production model's least confidence, margin and
    entropy (scaled as :mod:`streams.selection.signals` scales them), and the total variation
    between its probabilities and the shadow model's."""
    p = cols.proba
    k = max(p.shape[1], 2)
    top = np.sort(p, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1) / np.log(k)
    out = {"uncertainty": np.clip((1.0 - top[:, -1]) / (1.0 - 1.0 / k), 0.0, 1.0),
           "margin": top[:, -1] - (top[:, -2] if p.shape[1] > 1 else 0.0), "entropy": entropy,
           "disagreement": np.zeros(len(p))}
    X = np.zeros((len(p), shadow._X.shape[1]))  # the model's columns, in its order
    known = [(i, shadow.keys[f]) for i, f in enumerate(features) if f in shadow.keys]
    if known:
        X[:, [j for _, j in known]] = cols.X[:, [i for i, _ in known]]
    q = shadow.predict_proba_many(X)
    if q.shape[1]:
        aligned = np.zeros_like(p)
        for j, c in enumerate(shadow.classes):
            if c in classes:
                aligned[:, classes.index(c)] = q[:, j]
        out["disagreement"] = 0.5 * np.abs(p - aligned).sum(1)
    return out


def select(event_ids: list, signals: dict[str, np.ndarray], fraction: float, seed: int):
    """Each event's selection probability (``fraction`` on average, more for the unsure and the
    disputed) and whether it is selected (its draw, fixed by the event id, below that probability)."""
    priority = signals["uncertainty"] + signals["disagreement"] + 1e-3
    probability = np.clip(fraction * priority / priority.mean(), 0.0, 1.0)
    draws = np.fromiter((stable_draw(e, seed) for e in event_ids), float, len(event_ids))
    return probability, draws < probability


def tasks(cols: Columns, events: list[dict], signals, probability, selected, classes, now_ms: int) -> list[bytes]:
    """The encoded ``LabelingTask`` of every selected event."""
    out = []
    for i in np.flatnonzero(selected):
        e = events[i]
        out.append(codec.encode("LabelingTask", ev.task(
            task_id=task_id_of(e["event_id"]), event_id=e["event_id"], item_id=e["item_id"], created_ts=now_ms,
            source_ts=e["ts"], kind="prediction", reasons=["uncertain"],
            signals={s: float(signals[s][i]) for s in SIGNALS}, selection_probability=float(probability[i]),
            priority=float(signals["uncertainty"][i]), suggested_label=e["predicted_label"],
            confidence=float(cols.proba[i].max()), label_set=list(classes), features=e["features"],
            predicted_label=e["predicted_label"], model_name=e["model_name"], model_version=e["model_version"],
            shadow_version=1, policy_version="limit"), check=False))
    return out


def decisions(cols: Columns, signals, probability, selected, now_ms: int) -> pa.Table:
    """One ``routing_decisions`` row per event, built as Arrow columns."""
    n = len(cols.event_id)
    chosen = selected.astype(np.uint8)
    stamp = pa.timestamp("ms", tz="UTC")
    return pa.table({
        "event_id": pa.array(cols.event_id, pa.string()), "item_id": pa.array(cols.item_id, pa.string()),
        "ts": pa.array(cols.ts, stamp), "kind": pa.array(["prediction"] * n, pa.string()),
        "selected": pa.array(chosen),
        "reasons": pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(chosen)]).astype(np.int32)),
                                            pa.array(["uncertain"] * int(chosen.sum()), pa.string())),
        "selection_probability": pa.array(probability), "priority": pa.array(signals["uncertainty"]),
        "signals": pa.MapArray.from_arrays(pa.array(np.arange(0, len(SIGNALS) * n + 1, len(SIGNALS), np.int32)),
                                           pa.array(list(SIGNALS) * n, pa.string()),
                                           pa.array(np.column_stack([signals[s] for s in SIGNALS]).ravel())),
        "task_id": pa.array([task_id_of(e) if s else None for e, s in zip(cols.event_id, selected)], pa.string()),
        "policy_version": pa.array(["limit"] * n, pa.string()),
        "model_version": pa.array(["1"] * n, pa.string()),
        "shadow_version": pa.array(np.ones(n, np.uint32)),
        "decided_at": pa.array(np.full(n, now_ms, np.int64), stamp),
    })


def run(kafka: dict, topic: str, tasks_topic: str, dsn: str, events: int, training: list, fraction: float = 0.1,
        seed: int = 0, core: int | None = None, messages_per_poll: int = 20) -> dict:
    """Drain ``events`` predictions from ``topic`` on one core (``core``, by default the last this
    process may use); return events/s and µs/event per stage. ``training`` is ``[(features, label)]``
    for the shadow model. Meant to run in a process of its own (the pinning and chDB are per process)."""
    from confluent_kafka import Consumer, Producer

    from dashboards.connection import connect
    from dashboards.migrate import migrate

    core = max(os.sched_getaffinity(0)) if core is None else core
    os.sched_setaffinity(0, {core})  # the threads librdkafka and chDB start from here on inherit it
    shadow = KNN()
    for x, y in training:
        shadow.learn_one(x, y)
    client = connect(dsn)
    migrate(client)
    consumer = Consumer({**kafka, "group.id": f"limit-{os.getpid()}-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({**kafka, "linger.ms": 5})
    consumer.subscribe([topic])
    gc.freeze()  # set-up objects leave the collector's generations; a high threshold collects less often
    gc.set_threshold(50_000, 20, 20)
    stages = dict.fromkeys(("consume", "decode", "columns", "score", "tasks", "insert", "commit"), 0.0)
    classes = features = cpu = None
    done = selected_total = 0
    started = None
    try:
        while done < events:
            t = time.perf_counter()
            messages = [m for m in consumer.consume(messages_per_poll, timeout=1.0) if not m.error()]
            if not messages:
                continue
            t1 = time.perf_counter()
            if started is None:  # the clocks start with the first messages, not with the wait for them
                started, t, cpu = t1, t1, time.process_time()
            columnar = messages[0].value()[:10] == _COLUMNS_HEADER  # a backlog is all of one form
            if columnar:
                records = [decode_columns(m.value()) for m in messages]
                batch = Rows(records)
            else:
                batch = [e for m in messages for e in decode(m.value())]
            t2 = time.perf_counter()
            if classes is None:
                classes = tuple(sorted(records[0]["classes"] if columnar else batch[0]["probabilities"]))
                features = tuple(sorted(records[0]["feature_names"] if columnar else batch[0]["features"]))
            cols = columns_of(records, classes, features) if columnar else to_columns(batch, classes, features)
            t3 = time.perf_counter()
            signals = score(cols, shadow, classes, features)
            probability, selected = select(cols.event_id, signals, fraction, seed)
            t4 = time.perf_counter()
            now = int(time.time() * 1000)
            for value in tasks(cols, batch, signals, probability, selected, classes, now):
                producer.produce(tasks_topic, value)
            producer.poll(0)
            t5 = time.perf_counter()
            client.insert_arrow("routing_decisions", decisions(cols, signals, probability, selected, now))
            t6 = time.perf_counter()
            producer.flush(30)  # tasks delivered and rows written before the offsets commit
            consumer.commit(asynchronous=False)
            t7 = time.perf_counter()
            for name, a, b in (("consume", t, t1), ("decode", t1, t2), ("columns", t2, t3), ("score", t3, t4),
                               ("tasks", t4, t5), ("insert", t5, t6), ("commit", t6, t7)):
                stages[name] += b - a
            done += len(batch)
            selected_total += int(selected.sum())
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        stored = client.query("SELECT count() FROM routing_decisions").result_rows[0][0]
    finally:
        gc.unfreeze()
        consumer.close()
        client.close()
    return {"events": done, "seconds": round(seconds, 3), "events_per_second": round(done / seconds),
            "cpu_seconds": round(cpu, 3), "events_per_cpu_second": round(done / cpu),
            "selected": selected_total, "decision_rows": stored, "core": core,
            "us_per_event": {k: round(1e6 * v / done, 2) for k, v in stages.items()}}


#: A loop on one core runs BLAS on one thread: more would only take turns on that core (3-5x slower here).
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def measure(*args, **kwargs) -> dict:
    """:func:`run` in a fresh process (its own core pinning, its own embedded ClickHouse, BLAS on one thread)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # read by the child as it starts
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(run, *args, **kwargs).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
