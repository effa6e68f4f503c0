"""``feedbackloop bench``: throughput and event-to-task latency on a real broker.

Three measurements, in one run, on the same events and the same core objects:

* **bare loop**: a plain confluent-kafka loop (consume, decode, score, route,
  produce tasks, write ClickHouse, commit), the ceiling for this machine;
* **worker throughput**: a backlog of predictions is written first, then one
  Faust worker drains it; events/s = events / (last decision - first score),
  read back from ClickHouse;
* **latency**: with the worker running, events are produced at a steady rate,
  and each task's ``created_ts - source_ts`` gives event-to-task latency.

``feedbackloop bench`` (:func:`run`) calls :func:`measure` and prints its :func:`summary`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from dashboards.sink import ClickHouseSink
from dashboards.migrate import migrate
from feedbackloop import stack, worker
from dashboards.connection import connect
from feedbackloop.settings import Settings
from schemas import codec
from streams.app import loop_options
from streams.loop import Effects, Loop


def _events(n: int, seed: int, ts: int | None = None):
    rng = random.Random(seed)
    for i in range(n):
        p = rng.random()
        yield {"event_id": f"ev-{seed}-{i}", "item_id": f"item-{i}", "ts": ts or int(time.time() * 1000),
               "model_name": "prod", "model_version": "1", "predicted_label": "yes" if p >= 0.5 else "no",
               "probabilities": {"yes": p, "no": 1.0 - p},
               "features": {f"f{j}": rng.gauss(0.0, 1.0) for j in range(10)}, "text": None, "context": {}}


def _produce_backlog(settings: Settings, n: int, batch_size: int, seed: int) -> None:
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "compression.type": "lz4"})
    topic, batch = settings.topic("predictions"), []
    for event in _events(n, seed):
        batch.append(event)
        if len(batch) == batch_size:
            producer.produce(topic, codec.encode("PredictionBatch", {"events": batch}, check=False))
            producer.poll(0)
            batch = []
    if batch:
        producer.produce(topic, codec.encode("PredictionBatch", {"events": batch}, check=False))
    producer.flush(60)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1), "n": len(values)}


def bare_loop(settings: Settings, n: int, run_dir: Path) -> dict:
    """The same work as the worker, on the same :class:`~streams.loop.Loop`, in a plain consume loop."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-bare",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    client = connect("chdb://" + str(run_dir / "bare-clickhouse"))
    migrate(client)
    sink = ClickHouseSink(client)
    loop = Loop.build(**loop_options(settings))
    consumer.subscribe([settings.topic("predictions")])
    tasks_topic, done, started = settings.topic("bench-bare-tasks"), 0, None
    try:
        while done < n:
            messages = consumer.consume(1000, timeout=1.0)
            if not messages:
                continue
            started = started or time.perf_counter()
            now = int(time.time() * 1000)
            for message in messages:
                name, record = codec.decode(message.value(), ("Prediction", "PredictionBatch"))
                scored = loop.score(name, record, now)
                effects = Effects(rows=scored.rows)
                for c in scored.candidates:
                    effects.extend(loop.route(c, now))
                for task in effects.tasks:
                    producer.produce(tasks_topic, codec.encode("LabelingTask", task, check=False))
                for table, row in effects.rows:
                    sink.add(table, row, project=True)
                done += len(scored.candidates)
            producer.poll(0)
            sink.flush()
            producer.flush(30)
            consumer.commit(asynchronous=False)
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
        client.close()
    return {"events": done, "seconds": round(seconds, 2), "events_per_second": round(done / seconds)}


def worker_throughput(settings: Settings, n: int, run_dir: Path) -> dict:
    process = worker.spawn(settings, run_dir / "worker.log")
    try:
        worker.wait_ready(settings, process)
        if not worker.wait_drained(settings, process, timeout=600, settle=0.5):
            raise RuntimeError("the worker did not drain the backlog in 10 minutes")
    finally:
        worker.stop(process)
    client = connect(settings.clickhouse_dsn)
    try:
        count, first, last = client.query(
            "SELECT count(), toUnixTimestamp64Milli(min(scored_at)), toUnixTimestamp64Milli(max(decided_at)) "
            "FROM predictions FINAL INNER JOIN routing_decisions FINAL USING event_id").result_rows[0]
    finally:
        client.close()
    seconds = (last - first) / 1000
    return {"events": count, "seconds": round(seconds, 2), "events_per_second": round(count / max(seconds, 1e-3))}


def latency(settings: Settings, rate: float, seconds: float, batch_size: int, run_dir: Path) -> dict:
    process = worker.spawn(settings, run_dir / "worker-latency.log")
    try:
        worker.wait_ready(settings, process)
        producer = Producer({**settings.kafka_config(), "linger.ms": 1})
        topic, n = settings.topic("predictions"), int(rate * seconds)
        started, batch = time.monotonic(), []
        for i, event in enumerate(_events(n, seed=7)):
            event["ts"] = int(time.time() * 1000)
            batch.append(event)
            if len(batch) == batch_size:
                producer.produce(topic, codec.encode("PredictionBatch", {"events": batch}, check=False))
                producer.poll(0)
                batch = []
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(30)
        worker.wait_drained(settings, process, timeout=120, settle=0.5)
    finally:
        worker.stop(process)
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-latency",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("labeling.tasks")])
    values, idle = [], 0
    try:
        while idle < 3:
            messages = consumer.consume(1000, timeout=1.0)
            idle = 0 if messages else idle + 1
            for message in messages:
                if not message.error():
                    _, task = codec.decode(message.value(), ("LabelingTask",))
                    if task["event_id"].startswith("ev-7-"):
                        values.append(task["created_ts"] - task["source_ts"])
    finally:
        consumer.close()
    return {"rate": rate, "batch_size": batch_size, "ms": _percentiles(values)}


def measure(settings: Settings, events: int = 100_000, batch_size: int = 500, model_kind: str = "linear",
            latency_rate: float = 1000.0, latency_seconds: float = 10.0) -> dict:
    """Run all three measurements on a fresh set of topics; return the figures."""
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = Path(settings.state_dir).resolve() / "bench" / run_id
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}bench-{run_id}.", app_id=f"bench-{run_id}",
                                clickhouse_dsn="chdb://" + str(run_dir / "clickhouse"), model_kind=model_kind,
                                budget_per_hour=10**9, budget_per_day=10**9)
    started_stack = not settings.kafka_bootstrap_servers and not stack.local_stack(settings).status()["running"]
    settings = stack.start(settings)
    try:
        _produce_backlog(settings, events, batch_size, seed=1)
        bare = bare_loop(settings, events, run_dir)
        faust = worker_throughput(settings, events, run_dir)
        lat = latency(settings, latency_rate, latency_seconds, batch_size=max(1, int(latency_rate / 100)),
                      run_dir=run_dir)
    finally:
        if started_stack:
            stack.stop(settings)
    return {
        "events": events, "batch_size": batch_size, "model": model_kind,
        "bare_loop": bare, "worker": faust,
        "worker_vs_bare": round(faust["events_per_second"] / bare["events_per_second"], 2),
        "latency": lat,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def summary(result: dict) -> str:
    lat = result["latency"]["ms"]
    return "\n".join([
        f"events {result['events']:,} in batches of {result['batch_size']}, shadow model {result['model']}",
        f"bare loop        {result['bare_loop']['events_per_second']:>9,} events/s",
        f"faust worker     {result['worker']['events_per_second']:>9,} events/s "
        f"({result['worker_vs_bare']:.2f} of the bare loop)",
        f"event-to-task    p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms "
        f"({lat['n']} tasks at {result['latency']['rate']:.0f} events/s)",
    ])


# -- feedbackloop bench ------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` command to an argparse ``subparsers``."""
    b = subparsers.add_parser(
        "bench", help="measure throughput and event-to-task latency on the local stack",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Measures, in one run on fresh topics, the bare loop and the Faust worker draining the "
                    "same backlog, then event-to-task latency at a steady rate.")
    b.add_argument("--events", type=int, default=100_000, help="predictions in the backlog both loops drain")
    b.add_argument("--batch-size", type=int, default=500, help="predictions per Kafka message")
    b.add_argument("--model", default="linear", choices=["knn", "linear", "tree"], help="shadow model kind")
    b.add_argument("--rate", type=float, default=1000.0, help="events/s while latency is measured")
    b.add_argument("--seconds", type=float, default=10.0, help="how long latency is measured")
    b.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    b.set_defaults(func=run)
    return b


def run(args, settings: Settings) -> int:
    """``feedbackloop bench``: measure, print the summary, write the figures with ``--json``."""
    result = measure(settings, events=args.events, batch_size=args.batch_size, model_kind=args.model,
                     latency_rate=args.rate, latency_seconds=args.seconds)
    print(summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0
