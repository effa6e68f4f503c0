"""``feedbackloop bench``: what one worker does on this machine, against the most it could.

One run, on fresh topics of one broker, with the shadow model of the configured
kind *trained* first (a worker learns a few hundred labels and publishes the
version every later worker resumes):

* **worker**: one Faust worker drains a backlog of predictions; events/s =
  events / (last decision - first score), read back from its ClickHouse; its
  CPU time gives events per CPU-second, its ``VmHWM`` the peak RSS;
* **limit loop**: :mod:`feedbackloop.limit_loop`, columnar, pinned to one
  core, drains the same backlog; the ratio worker / limit loop;
* **Loop without Faust** (``--bare``): the worker's own :class:`~streams.loop.Loop`
  in a plain confluent-kafka loop, which says what Faust and the agents add;
* **event-to-task latency** at half the worker's measured rate, from each
  task's ``created_ts - source_ts``;
* **label-to-serving latency**: labels are sent in bursts of ``publish_every``
  while probe predictions flow to every input partition; a label is served once
  every partition's scorer scores with a version that has learned it;
* **owner admission**: the cost per *input* event of the owner of the global
  budget (the preselected decoded from the candidates hop, then
  :meth:`~streams.loop.Loop.admit`), measured in-process in CPU and wall-clock
  time (median of 5), so the system's ceiling is known; with the worker's CPU
  cost per event, the owner's share of two cores;
* **memory**: the bounded state a worker keeps (recent items, decided ids,
  waiting tasks, the novelty sketch), grown in-process: bytes per event, per
  million events, and the bound;
* **second worker** (``--second-worker``): two workers split the partitions
  and drain a second backlog; the speed-up over one.

Predictions go in ``PredictionColumns`` messages (one array per field, as a
producer sends a batch of one model's predictions), or with ``--input batch``
in ``PredictionBatch`` messages (one map per event); the loops read the same.

``feedbackloop bench`` (:func:`run`) calls :func:`measure` and prints its
:func:`summary`; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from dashboards.connection import connect
from dashboards.migrate import migrate
from dashboards.sink import ClickHouseSink
from feedbackloop import keys, limit_loop, stack, worker
from feedbackloop.producer import as_columns
from feedbackloop.settings import Settings
from schemas import codec
from schemas.candidate_columns import candidates_of, to_columns
from streams import events as ev
from streams import model_feed
from streams.app import freeze_startup_heap, loop_options
from streams.loop import Effects, Loop
from streams.selection.router import task_id_of

CLASSES = ("no", "yes")
#: The topic the limit loop and the bare loop drain their copy of the backlog from.
BACKLOG = "bench.backlog"
#: Targets of issue 13, beside which the summary puts each figure.
TARGETS = {"worker_per_core": 20_000, "worker_vs_limit": 0.8, "p99_ms": 100, "label_p95_ms": 1000,
           "owner_events_per_second": 200_000}


def _events(n: int, seed: int, ts: int | None = None, prefix: str = "ev"):
    """Prediction events: ten gaussian features, a production model's probabilities."""
    rng = random.Random(seed)
    for i in range(n):
        p = rng.random()
        yield {"event_id": f"{prefix}-{seed}-{i}", "item_id": f"item-{seed}-{i}", "ts": ts or int(time.time() * 1000),
               "model_name": "prod", "model_version": "1", "predicted_label": "yes" if p >= 0.5 else "no",
               "probabilities": {"yes": p, "no": 1.0 - p},
               "features": {f"f{j}": rng.gauss(0.0, 1.0) for j in range(10)}, "text": None, "context": {}}


def truth(features: dict) -> str:
    """The label an annotator gives an event of :func:`_events` (a linear rule of two features).

    >>> truth({"f0": 1.0, "f1": -0.5}), truth({"f0": -1.0, "f1": 0.2})
    ('yes', 'no')
    """
    return "yes" if features["f0"] + features["f1"] > 0 else "no"


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"bench {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _percentiles(values: list[float]) -> dict:
    """p50/p95/p99 (and the worst) of ``values``.

    >>> p = _percentiles(list(range(1, 101)))
    >>> p["p50"] <= p["p95"] <= p["p99"] <= p["max"], p["n"]
    (True, 100)
    """
    if len(values) < 2:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": len(values)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1), "max": round(max(values), 1),
            "n": len(values)}


#: The forms a bench sends predictions in: one array per field, or one map per event.
INPUTS = ("columns", "batch")


def _message(events: list[dict], form: str = "columns") -> bytes:
    """One message of ``events``: ``PredictionColumns`` (``form="columns"``) or ``PredictionBatch``.

    >>> [codec.decode(_message(list(_events(3, seed=1)), f), ("PredictionColumns", "PredictionBatch"))[0]
    ...  for f in INPUTS]
    ['PredictionColumns', 'PredictionBatch']
    """
    if form == "columns":
        return codec.encode("PredictionColumns", as_columns(events), check=False)
    return codec.encode("PredictionBatch", {"events": events}, check=False)


def _encoded_batches(events, batch_size: int, form: str = "columns") -> list[bytes]:
    batch, out = [], []
    for event in events:
        batch.append(event)
        if len(batch) == batch_size:
            out.append(_message(batch, form))
            batch = []
    if batch:
        out.append(_message(batch, form))
    return out


def _produce(settings: Settings, topic: str, values: list[bytes], keyed=None) -> None:
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "compression.type": "lz4"})
    for i, value in enumerate(values):
        producer.produce(settings.topic(topic), value, key=keyed(i) if keyed else None)
        producer.poll(0)
    producer.flush(60)


def _backlog_topic(settings: Settings) -> str:
    """Create :data:`BACKLOG`, partitioned as ``predictions``: the loops drain their copy of the backlog
    there, while the worker's input stays free for its warm-up."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = settings.topic(BACKLOG)
    admin = AdminClient(settings.kafka_config())  # held until the topic exists
    for future in admin.create_topics([NewTopic(name, input_partitions(settings), 1)]).values():
        future.result(30)
    return BACKLOG


def _proc(pid: int) -> dict:
    """CPU seconds (user + system) and peak and current resident memory (MB) of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    mb = lambda name: round(int(status[name].split()[0]) / 1024, 1)  # noqa: E731
    return {"cpu_seconds": cpu, "peak_rss_mb": mb("VmHWM"), "rss_mb": mb("VmRSS")}


def _threads(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (name, CPU seconds) of each thread of process ``pid`` (the main thread's id is ``pid``).

    >>> me = _threads(os.getpid())
    >>> os.getpid() in me and all(cpu >= 0 for _, cpu in me.values())
    True
    """
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (stat[stat.index("(") + 1:stat.rindex(")")],
                         (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def _thread_cost(pid: int, before: dict, after: dict, events: int) -> dict[str, float]:
    """CPU µs per event of each kind of thread between two :func:`_threads` readings: the main thread
    (the event loop), the other Python threads, and each name the embedded engine or librdkafka gives."""
    cost: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        kind = "main" if tid == pid else name
        cost[kind] = cost.get(kind, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return {k: round(1e6 * v / max(events, 1), 1) for k, v in sorted(cost.items(), key=lambda kv: -kv[1]) if v > 0}


#: Stages of the worker's main thread: a py-spy sample counts under the first whose frames all appear in
#: its stack. Waiting (the event loop's select, a socket write that wakes the broker) is left out.
STAGES = (
    ("score: decode the input", ("Runtime.score", "decode (schemas/codec.py")),
    ("score: Loop.score (features, shadow model, signals, candidates)", ("Runtime.score", "Loop.score")),
    ("score: Policy.decide", ("Runtime.score", "Policy.decide")),
    ("score: the router's glue (labels, draw, decision rows)", ("Runtime.score", "preselect")),
    ("score: rows into the sink", ("Runtime.score", "add_rows")),
    ("score: the candidates hop", ("Runtime.score", "encode_candidates")),
    ("score: the candidates hop", ("Runtime.score", "Topic.send")),
    ("score: the rest", ("Runtime.score",)),
    ("route: encode tasks", ("Runtime.route", "encode (schemas/codec.py")),
    ("route: send tasks", ("Runtime.route", "deliver")),
    ("route: decode the hop and admit", ("Runtime.route",)),
    ("learn agent", ("Runtime.learn",)),
    ("timers (follow tasks and models, standing)", ("follow_tasks",)),
    ("timers (follow tasks and models, standing)", ("follow_models",)),
    ("timers (follow tasks and models, standing)", ("standing",)),
    ("aiokafka's producer", ("aiokafka/producer",)),
    ("Faust and aiokafka consuming", ("faust/",)),
    ("Faust and aiokafka consuming", ("aiokafka/",)),
    ("asyncio and mode", ("",)),
)


def stages(stacks: str, thread: int, cpu_us: float) -> dict[str, float]:
    """CPU µs per event of each of :data:`STAGES` in ``thread``, from py-spy's raw ``stacks`` (one
    ``frames count`` line a stack, ``--threads``): the thread's ``cpu_us`` per event shared out by samples.

    >>> raw = ("thread (7): MainThread;run (streams/app.py:1);Runtime.score (a.py:2);Policy.decide (p.py:3) 3\\n"
    ...        "thread (7): MainThread;Runtime.route (streams/app.py:4) 1\\n"
    ...        "thread (7): MainThread;EpollSelector.select (selectors.py:468) 5\\n"
    ...        "thread (8): clickhouse_0;flush (dashboards/sink.py:1) 9\\n")
    >>> stages(raw, 7, 100.0)
    {'score: Policy.decide': 75.0, 'route: decode the hop and admit': 25.0}
    """
    counts: dict[str, int] = {}
    for line in stacks.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack.startswith(f"thread ({thread})") or "EpollSelector.select" in stack or \
                stack.endswith("_SelectorSocketTransport.write (asyncio/selector_events.py:1057)"):
            continue
        name = next(name for name, frames in STAGES if all(f in stack for f in frames))
        counts[name] = counts.get(name, 0) + int(n)
    total = sum(counts.values()) or 1
    return {k: round(cpu_us * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _query(dsn: str, sql: str) -> list:
    client = connect(dsn)
    try:
        return client.query(sql).result_rows
    finally:
        client.close()


# -- training -------------------------------------------------------------------------


def training_set(n: int, min_control: int, seed: int = 5) -> list[tuple[dict, dict]]:
    """``n`` (task, label) pairs, as the router and an annotator would make them; the first
    ``min_control`` tasks and every tenth are control tasks (a first version needs them).

    >>> pairs = training_set(30, min_control=20)
    >>> sum("control" in t["reasons"] for t, _ in pairs), pairs[0][1]["task_id"] == pairs[0][0]["task_id"]
    (21, True)
    """
    now = int(time.time() * 1000)
    pairs = []
    for i, e in enumerate(_events(n, seed, prefix="train")):
        control = i < min_control or i % 10 == 0
        task = ev.task(task_id=task_id_of(e["event_id"]), event_id=e["event_id"], item_id=e["item_id"],
                       created_ts=now, source_ts=e["ts"], kind="prediction",
                       reasons=["control"] if control else ["uncertain"], signals={}, selection_probability=0.1,
                       priority=0.0, confidence=0.5, label_set=list(CLASSES), model_name="prod", model_version="1",
                       shadow_version=0, policy_version="bench", features=e["features"],
                       predicted_label=e["predicted_label"])
        label = {"event_id": f"label-{e['event_id']}", "task_id": task["task_id"], "item_id": e["item_id"],
                 "label": truth(e["features"]), "annotator_id": "bench", "ts": now}
        pairs.append((task, label))
    return pairs


def _send_tasks(settings: Settings, tasks: list[dict]) -> None:
    _produce(settings, "labeling.tasks", [codec.encode("LabelingTask", t) for t in tasks],
             keyed=lambda i: tasks[i]["task_id"].encode())


def train(settings: Settings, n: int, run_dir: Path) -> dict:
    """A worker learns ``n`` labels (rounded up to a whole number of versions) and publishes them; the
    newest version, which every later worker resumes."""
    n = -(-n // settings.publish_every) * settings.publish_every
    pairs = training_set(n, settings.min_control)
    # n is a multiple of publish_every: a version that has seen n comes, early versions or not (Learner.due)
    process = worker.spawn(settings.replace(clickhouse_dsn="chdb://" + str(run_dir / "ch-train")),
                           run_dir / "worker-train.log")
    key = keys.verify_key(settings)
    try:
        worker.wait_ready(settings, process)
        _send_tasks(settings, [t for t, _ in pairs])
        _produce(settings, "labels", [codec.encode("Label", label) for _, label in pairs])
        deadline = time.monotonic() + 300
        record = None
        while time.monotonic() < deadline:
            record = model_feed.latest_version(settings, key)
            if record is not None and record["labels_seen"] >= n:
                break
            time.sleep(1.0)
        else:
            raise RuntimeError(f"the worker did not publish a version with {n} labels in 5 minutes")
        worker.wait_drained(settings, process, timeout=60, settle=0.5)
    finally:
        worker.stop(process)
    return {"kind": settings.model_kind, "labels": record["labels_seen"], "version": record["version"],
            "control_accuracy": record["control_accuracy"], "record": record}


# -- the loops ----------------------------------------------------------------------------


def bare_message(loop: Loop, name: str, record: dict, now: int) -> Effects:
    """One input message through the worker's path, in one process: scored and preselected with its rows
    as columns (as the score agent, :meth:`Loop.score` and :meth:`Loop.preselect_many` with ``columns``),
    the preselected admitted (as the route agent, :meth:`Loop.admit`; no hop between them). The
    decisions and tasks :meth:`Loop.route` gives each candidate (``tests/test_bare_loop.py``)."""
    scored = loop.score(name, record, now, columns=True)
    chosen = loop.preselect_many(scored.candidates, now, columns=True)
    out = Effects(columns=scored.columns + chosen.columns)
    for c in chosen.candidates:
        out.extend(loop.admit(c, now))
    return out


def bare_loop(settings: Settings, n: int, run_dir: Path, model: dict | None = None) -> dict:
    """The worker's own :class:`~streams.loop.Loop` (serving ``model``) in a plain confluent-kafka loop, each
    message taking the worker's path (:func:`bare_message`)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-bare",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    client = connect("chdb://" + str(run_dir / "ch-bare"))
    migrate(client)
    sink = ClickHouseSink(client)
    loop = Loop.build(**loop_options(settings))
    if model is not None:
        loop.resume(model, keys.verify_key(settings))
    consumer.subscribe([settings.topic(BACKLOG)])
    tasks_topic, done, started = settings.topic("bench-bare-tasks"), 0, None
    try:
        while done < n:
            messages = consumer.consume(1000, timeout=1.0)
            if not messages:
                continue
            started = started or time.perf_counter()
            now = int(time.time() * 1000)
            for message in messages:
                name, record = codec.decode(message.value(), ("Prediction", "PredictionBatch", "PredictionColumns"))
                effects = bare_message(loop, name, record, now)
                for task in effects.tasks:
                    producer.produce(tasks_topic, codec.encode("LabelingTask", task, check=False))
                for table, block in effects.columns:
                    sink.add_columns(table, block, project=True)
                for table, row in effects.rows:
                    sink.add(table, row, project=True)
                done += (len(record["events"]) if name == "PredictionBatch" else
                         len(record["event_id"]) if name == "PredictionColumns" else 1)
            producer.poll(0)
            sink.flush()
            producer.flush(30)
            consumer.commit(asynchronous=False)
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
        client.close()
    return {"events": done, "seconds": round(seconds, 2), "events_per_second": round(done / seconds)}


def _warm_up(settings: Settings, processes, n: int = 200) -> None:
    """Send a few predictions and wait until the workers have committed them: a fresh worker migrates its
    ClickHouse and rebuilds its state from the topics before its first batch, which is not throughput."""
    _produce(settings, "predictions", _encoded_batches(_events(n, seed=0, prefix="warm"), 50))
    for process in processes:
        if not worker.wait_drained(settings, process, timeout=300, settle=0.5):
            raise RuntimeError("the worker did not take its first events in 5 minutes")


def worker_throughput(settings: Settings, backlog: list[bytes], run_dir: Path, prefix: str = "ev-1-",
                      profile: str | None = None) -> dict:
    """One worker, warmed up, drains the backlog: events/s, events per CPU-second, peak RSS, the
    shadow version served, and the CPU per event of each kind of thread. With ``profile``, py-spy
    (if installed) samples the worker while it drains, into that file (raw stacks, 200 a second)."""
    import shutil
    import subprocess

    dsn = "chdb://" + str(run_dir / "ch-worker")
    process = worker.spawn(settings.replace(clickhouse_dsn=dsn), run_dir / "worker.log")
    spy = None
    try:
        worker.wait_ready(settings, process)
        _warm_up(settings, [process])
        spy_path = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if profile and spy_path:
            spy = subprocess.Popen([spy_path, "record", "--pid", str(process.pid), "--rate", "200", "--format",
                                    "raw", "--threads", "--nonblocking", "-o", profile],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        elif profile:
            progress("py-spy is not installed: no profile")
        ready, threads, wall = _proc(process.pid), _threads(process.pid), time.monotonic()
        _produce(settings, "predictions", backlog)
        if not worker.wait_drained(settings, process, timeout=900, settle=0.5):
            raise RuntimeError("the worker did not drain the backlog in 15 minutes")
        drained, threads_after = _proc(process.pid), _threads(process.pid)
        wall = time.monotonic() - wall
    finally:
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait(60)
        worker.stop(process)
    count, first, last, shadow = _query(dsn, (
        "SELECT count(), toUnixTimestamp64Milli(min(scored_at)), toUnixTimestamp64Milli(max(decided_at)), "
        "min(p.shadow_version) FROM predictions AS p FINAL INNER JOIN routing_decisions AS d FINAL USING event_id "
        f"WHERE startsWith(event_id, '{prefix}')"))[0]
    seconds = max((last - first) / 1000, 1e-3)
    cpu = drained["cpu_seconds"] - ready["cpu_seconds"]
    out = {"events": count, "seconds": round(seconds, 2), "events_per_second": round(count / seconds),
           "cpu_seconds": round(cpu, 2), "cores_used": round(cpu / wall, 2),
           "events_per_cpu_second": round(count / max(cpu, 1e-3)), "us_per_event": round(1e6 * cpu / max(count, 1), 1),
           "peak_rss_mb": drained["peak_rss_mb"], "shadow_version": shadow,
           "threads_us_per_event": _thread_cost(process.pid, threads, threads_after, count)}
    if spy is not None and Path(profile).exists():
        out["main_thread_stages"] = stages(Path(profile).read_text(), process.pid, out["threads_us_per_event"]["main"])
    return out


def _read_back(settings: Settings, topic: str, group: str, accept: tuple[str, ...]):
    """``(message, record)`` of every message on ``topic`` that decodes as one of ``accept``, read from
    the start by a group of its own until the topic has been quiet for 3 s; others are not this run's."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-{group}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic(topic)])
    idle = 0
    try:
        while idle < 3:
            messages = consumer.consume(1000, timeout=1.0)
            idle = 0 if messages else idle + 1
            for message in messages:
                try:
                    _, record = codec.decode(message.value(), accept, check=False)
                except codec.DecodeError:
                    continue
                yield message, record
    finally:
        consumer.close()


def latency(settings: Settings, rate: float, seconds: float, batch_size: int, process, form: str = "columns") -> dict:
    """Event-to-task latency at a steady ``rate`` through the running worker ``process``."""
    producer = Producer({**settings.kafka_config(), "linger.ms": 1})
    topic, n = settings.topic("predictions"), int(rate * seconds)
    started, batch, first = time.monotonic(), [], int(time.time() * 1000)
    for i, event in enumerate(_events(n, seed=7, prefix="lat")):
        event["ts"] = int(time.time() * 1000)
        batch.append(event)
        if len(batch) == batch_size:
            producer.produce(topic, _message(batch, form))
            producer.poll(0)
            batch = []
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(30)
    window = (first, int(time.time() * 1000))
    worker.wait_drained(settings, process, timeout=120, settle=0.5)
    values, times = [], {}
    for message, task in _read_back(settings, "labeling.tasks", "latency", ("LabelingTask",)):
        if task["event_id"].startswith("lat-7-"):
            values.append(task["created_ts"] - task["source_ts"])
            times[task["event_id"]] = (task["source_ts"], task["created_ts"], message.timestamp()[1])
    return {"rate": round(rate), "batch_size": batch_size, "ms": _percentiles(values), "window_ms": window,
            "_times": times}


#: The stages of an event on its way to a task, each from the time the one before ends.
EVENT_STAGES = ("produced -> scored", "scored -> candidates sent", "candidates sent -> admitted",
                "admitted -> task sent")


def event_to_task_stages(settings: Settings, dsn: str, times: dict, window: tuple[int, int]) -> dict:
    """Where an event's time to its task goes, from what the run recorded (read once the worker has
    stopped): its producer's timestamp (``source_ts``), the score agent's batch start (``scored_at`` in
    ``predictions``), the candidates message's timestamp on ``labeling.candidates`` (its send), the
    task's ``created_ts`` (the router admitting it) and the task message's timestamp; a task whose
    candidate the owner's own scorer handed over in process has no candidates message, and its hop is
    its admission (``candidates sent -> admitted`` 0). Per stage of
    :data:`EVENT_STAGES`: p50/p95/p99 over the tasks and the mean over the slowest 1%; and the waits the
    worker recorded in ``agent_stats`` during ``window`` (``wait:*``: rows written, collections,
    publishes) beside its agents' batches: count, total and longest seconds."""
    scored = dict(_query(dsn, "SELECT event_id, toUnixTimestamp64Milli(scored_at) FROM predictions FINAL "
                              "WHERE startsWith(event_id, 'lat-7-')"))
    hop = {c["event_id"]: message.timestamp()[1]
           for message, record in _read_back(settings, "labeling.candidates", "stages",
                                             ("CandidateColumns", "CandidateBatch"))
           for c in candidates_of(record) if c["event_id"].startswith("lat-7-")}
    return {**stage_times(times, scored, hop), "agents": agent_waits(dsn, window)}


def stage_times(times: dict, scored: dict, hop: dict) -> dict:
    """Per stage of :data:`EVENT_STAGES`, p50/p95/p99/max and the mean over the slowest 1% of the tasks,
    from each task's ``times`` (event id -> source, created, task sent), ``scored`` and ``hop`` (event id ->
    epoch ms; a task without a candidates message was admitted in process, its hop at its admission);
    the stages of a task add up to its latency.

    >>> out = stage_times({"a": (1000, 1090, 1091), "b": (1000, 1300, 1310)}, {"a": 1040, "b": 1200},
    ...                   {"a": 1060})
    >>> out["tasks"], out["ms"]["produced -> scored"]["max"], out["ms"]["admitted -> task sent"]["slowest_1pct_mean"]
    (2, 200, 10)
    >>> out["ms"]["scored -> candidates sent"]["max"], out["ms"]["candidates sent -> admitted"]["max"], out["in_process"]
    (100, 30, 1)
    """
    rows, in_process = [], 0
    for event_id, (source, created, sent) in times.items():
        if event_id in scored:
            in_process += event_id not in hop
            marks = (source, scored[event_id], hop.get(event_id, created), created, sent)
            rows.append([b - a for a, b in zip(marks, marks[1:])])
    slowest = sorted(rows, key=sum)[-max(1, len(rows) // 100):] if rows else []
    return {"tasks": len(rows), "in_process": in_process, "ms": {
        name: {**_percentiles([r[i] for r in rows]),
               "slowest_1pct_mean": round(statistics.mean(r[i] for r in slowest), 1) if slowest else None}
        for i, name in enumerate(EVENT_STAGES)}}


def agent_waits(dsn: str, window: tuple[int, int]) -> dict:
    """Per agent of ``agent_stats`` (its batches, and the waits ``wait:*``) in ``window`` (epoch ms):
    rows, events, total and longest seconds."""
    rows = _query(dsn, "SELECT agent, count(), sum(events), sum(seconds), max(seconds) FROM agent_stats FINAL "
                       f"WHERE ts >= fromUnixTimestamp64Milli({int(window[0])}) "
                       f"AND ts <= fromUnixTimestamp64Milli({int(window[1])}) GROUP BY agent ORDER BY agent")
    return {agent: {"n": n, "events": events, "seconds": round(total, 3), "max_ms": round(1000 * longest, 1)}
            for agent, n, events, total, longest in rows}


def label_to_serving(settings: Settings, process, dsn: str, rounds: int, base: int,
                     probe_rate: float = 200.0, gap: float = 2.0) -> dict:
    """Labels sent in ``rounds`` bursts of ``publish_every``, ``gap`` seconds apart, while probe predictions
    flow to every input partition at ``probe_rate``; each label's time until every partition is scored
    by a version that has learned it (``base``: labels the served version had learned before)."""
    partitions = input_partitions(settings)
    pairs = training_set(rounds * settings.publish_every, 0, seed=11)
    for task, _ in pairs:
        task["reasons"] = ["uncertain"]  # learned, not held out
    _send_tasks(settings, [t for t, _ in pairs])
    stop = threading.Event()

    def probe():
        producer = Producer({**settings.kafka_config(), "linger.ms": 0})
        i, started = 0, time.monotonic()
        while not stop.is_set():
            e = next(_events(1, seed=i, prefix="probe"))
            e["event_id"] = f"probe-{i % partitions}-{i}"
            producer.produce(settings.topic("predictions"), codec.encode("Prediction", e, check=False),
                             partition=i % partitions)
            producer.poll(0)
            i += 1
            time.sleep(max(0.0, i / probe_rate - (time.monotonic() - started)))
        producer.flush(10)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    producer = Producer({**settings.kafka_config(), "linger.ms": 0})
    sent = []
    try:
        time.sleep(1.0)
        size = settings.publish_every
        for r in range(rounds):
            for _, label in pairs[r * size:(r + 1) * size]:
                label["ts"] = int(time.time() * 1000)
                producer.produce(settings.topic("labels"), codec.encode("Label", label))
                sent.append(label["ts"])
            producer.flush(10)
            time.sleep(gap)
        key, deadline = keys.verify_key(settings), time.monotonic() + 120
        while time.monotonic() < deadline:  # probe on until the last label's version is out, and a little more
            record = model_feed.latest_version(settings, key)
            if record is not None and record["labels_seen"] >= base + len(sent):
                break
            time.sleep(0.5)
        time.sleep(gap)
    finally:
        stop.set()
        thread.join()
    worker.wait_drained(settings, process, timeout=120, settle=0.5)
    worker.stop(process)
    versions = _query(dsn, "SELECT version, labels_seen, toUnixTimestamp64Milli(ts) FROM model_versions FINAL "
                           "ORDER BY version")
    published = {v: ts for v, _, ts in versions}
    probes = _query(dsn, "SELECT splitByChar('-', event_id)[2], shadow_version, toUnixTimestamp64Milli(scored_at) "
                         "FROM predictions FINAL WHERE startsWith(event_id, 'probe-')")
    values, missing, stages_ = [], 0, []
    for j, sent_ms in enumerate(sent):
        version = next((v for v, seen, _ in versions if seen >= base + j + 1), None)
        served = {}
        for part, shadow, ts in probes:
            if version is not None and shadow >= version:
                served[part] = min(served.get(part, ts), ts)
        if version is None or len(served) < partitions:
            missing += 1
            continue
        values.append(max(served.values()) - sent_ms)
        stages_.append((published[version] - sent_ms, max(served.values()) - published[version]))
    window = (sent[0], sent[-1] + (max(values) if values else 0)) if sent else (0, 0)
    return {"labels": len(sent), "publish_every": settings.publish_every, "partitions": partitions,
            "probe_interval_ms": round(1000 * partitions / probe_rate, 1), "not_served": missing,
            "ms": _percentiles(values),
            # sent -> the publish starting (the label learned, the rows written), -> every scorer serving it
            "stages_ms": {"sent -> publish started": _percentiles([a for a, _ in stages_]),
                          "publish started -> served everywhere": _percentiles([b for _, b in stages_])},
            "agents": agent_waits(dsn, window)}


def input_partitions(settings: Settings) -> int:
    """Partitions of the ``predictions`` topic."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "bench-meta"})
    try:
        return len(consumer.list_topics(settings.topic("predictions"), timeout=10)
                   .topics[settings.topic("predictions")].partitions)
    finally:
        consumer.close()


def second_worker(settings: Settings, n: int, batch_size: int, run_dir: Path, seed: int = 2,
                  form: str = "columns") -> dict:
    """Two workers split the partitions and drain a backlog produced once both are ready."""
    dsns = ["chdb://" + str(run_dir / f"ch-two-{i}") for i in (1, 2)]
    processes = [worker.spawn(settings.replace(clickhouse_dsn=dsn), run_dir / f"worker-two-{i}.log")
                 for i, dsn in enumerate(dsns, 1)]
    try:
        for process in processes:
            worker.wait_ready(settings, process)
        _wait_members(settings, 2)
        _warm_up(settings, processes)
        _produce(settings, "predictions", _encoded_batches(_events(n, seed=seed), batch_size, form))
        for process in processes:
            if not worker.wait_drained(settings, process, timeout=900, settle=0.5):
                raise RuntimeError("two workers did not drain the backlog in 15 minutes")
        peaks = [_proc(p.pid)["peak_rss_mb"] for p in processes]
    finally:
        for process in processes:
            worker.stop(process)
    first, decided, last = [], 0, []
    for dsn in dsns:
        (lo,), = _query(dsn, "SELECT toUnixTimestamp64Milli(min(scored_at)) FROM predictions "
                             f"WHERE startsWith(event_id, 'ev-{seed}-')")
        count, hi = _query(dsn, "SELECT count(), toUnixTimestamp64Milli(max(decided_at)) FROM routing_decisions "
                                f"FINAL WHERE startsWith(event_id, 'ev-{seed}-')")[0]
        first += [lo] if lo else []
        decided += count
        last += [hi] if count else []
    seconds = max((max(last) - min(first)) / 1000, 1e-3)
    return {"events": decided, "seconds": round(seconds, 2), "events_per_second": round(decided / seconds),
            "peak_rss_mb": peaks}


def _wait_members(settings: Settings, n: int, timeout: float = 90) -> None:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin, deadline = AdminClient(settings.kafka_config()), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10)
            if group.state == ConsumerGroupState.STABLE and len(group.members) >= n:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the worker group did not settle with {n} members")


# -- in-process: the owner of the budget, and the state's memory -------------------------------


def owner_admission(settings: Settings, n: int, model: dict | None = None, repeats: int = 5) -> dict:
    """What the owner of the global budget costs per *input* event: of ``n`` scored events, the candidates
    it receives (those preselected at the partitions, where the loop preselects; otherwise every one),
    decoded from the hop (``CandidateColumns``) and admitted (:meth:`Loop.admit`, else :meth:`Loop.route`).
    Timed ``repeats`` times, each by a fresh owner, in wall-clock and CPU time, with the garbage collector
    set as in a worker (:func:`~streams.app.freeze_startup_heap`); the run of the median total of each is
    reported (on a shared machine the CPU time is the owner's own cost)."""
    scorer = Loop.build(**loop_options(settings))
    if model is not None:
        scorer.resume(model, keys.verify_key(settings))
    split = hasattr(scorer, "preselect") and hasattr(scorer, "admit")
    now, candidates = int(time.time() * 1000), []
    for i in range(0, n, 500):
        for c in scorer.score("PredictionBatch", {"events": list(_events(min(500, n - i), seed=9 + i))},
                              now).candidates:
            candidates += scorer.preselect(c, now).candidates if split else [c]
    hop = [codec.encode("CandidateColumns", r, check=False)  # as a scorer sends them (streams.app)
           for i in range(0, len(candidates), 500) for r in to_columns(candidates[i:i + 500])]
    runs, threshold = [], gc.get_threshold()
    for _ in range(max(1, repeats)):
        owner = Loop.build(**loop_options(settings))
        admit = owner.admit if split else owner.route
        freeze_startup_heap()  # the collector as the worker runs it (its heap frozen at start), not this process's
        started = (time.perf_counter(), time.process_time())
        received = [c for value in hop for c in
                    candidates_of(codec.decode(value, ("CandidateColumns", "CandidateBatch"), check=False)[1])]
        decoded = (time.perf_counter(), time.process_time())
        selected = 0
        for c in received:
            selected += len(admit(c, now).tasks)
        admitted = (time.perf_counter(), time.process_time())
        gc.unfreeze()
        gc.set_threshold(*threshold)
        runs.append([(1e6 * (decoded[k] - started[k]) / n, 1e6 * (admitted[k] - decoded[k]) / n) for k in (0, 1)])
    wall = sorted((r[0] for r in runs), key=sum)[len(runs) // 2]
    cpu = sorted((r[1] for r in runs), key=sum)[len(runs) // 2]
    cost, cpu_cost = max(sum(wall), 1e-3), max(sum(cpu), 1e-3)
    return {"input_events": n, "candidates": len(candidates), "selected": selected, "repeats": len(runs),
            "admission": "Loop.admit" if split else "Loop.route",
            "decode_us_per_input_event": round(wall[0], 2), "admit_us_per_input_event": round(wall[1], 2),
            "us_per_input_event": round(cost, 2), "events_per_second": round(1e6 / cost),
            "cpu_decode_us_per_input_event": round(cpu[0], 2), "cpu_admit_us_per_input_event": round(cpu[1], 2),
            "cpu_us_per_input_event": round(cpu_cost, 2), "events_per_cpu_second": round(1e6 / cpu_cost)}


def trained_in_process(settings: Settings, labels: int = 300) -> tuple[dict, object]:
    """A version of the settings' model kind that learned ``labels`` labels of :func:`training_set`
    in-process (no stack), signed with a throwaway key pair; ``(record, verify key)``."""
    signing, verify = keys.generate()
    local = settings.replace(model_signing_key=signing, model_verify_key=verify)
    loop, now, record = Loop.build(**loop_options(local)), int(time.time() * 1000), None
    for task, label in training_set(labels, local.min_control):
        loop.take("LabelingTask", task, now)
        loop.take("Label", label, now)
        if loop.due:
            record = loop.publish(now, keys.signing_key(local)).models[0]
    return record, keys.verify_key(local)


def scoring_cost(settings: Settings, n: int = 5000, labels: int = 300, warm: int = 20_000, seed: int = 1) -> dict:
    """CPU µs per event of a scorer's own work, in-process: :meth:`Loop.score` (features, the batch
    kNN or other shadow model trained on ``labels`` labels, signals) and :meth:`Loop.preselect` (the
    policy, the novelty sketch and distance, the router), on ``n`` events in messages of 500, after
    ``warm`` events that fill the novelty ring. ``python -c 'from feedbackloop import bench;
    from feedbackloop.settings import Settings; print(bench.scoring_cost(Settings(), seed=1))'``"""
    record, key = trained_in_process(settings, labels)
    loop = Loop.build(**loop_options(settings))
    if record is not None:
        loop.resume(record, key)
    now = int(time.time() * 1000)

    def message(i: int, prefix: str) -> dict:
        return {"events": list(_events(500, seed=seed * 100_000 + i, prefix=f"{prefix}{seed}-{i}-"))}

    for i in range(warm // 500):
        for c in loop.score("PredictionBatch", message(i, "warm"), now).candidates:
            loop.preselect(c, now)
    score = preselect = 0.0
    for i in range(n // 500):
        msg = message(i, "cost")
        started = time.process_time()
        candidates = loop.score("PredictionBatch", msg, now).candidates
        scored = time.process_time()
        for c in candidates:
            loop.preselect(c, now)
        preselect += time.process_time() - scored
        score += scored - started
    done = n // 500 * 500
    return {"events": done, "labels": labels, "model": settings.model_kind,
            "centers": len(loop.router.policy.novelty),
            "score_us_per_event": round(1e6 * score / done, 2), "preselect_us_per_event": round(1e6 * preselect / done, 2)}


def deep_size(obj, seen: set | None = None) -> int:
    """Bytes held by ``obj`` and everything it refers to (each object counted once).

    >>> deep_size([]) < deep_size(["a" * 1000]) < deep_size({"k": ["a" * 1000, "b" * 1000]})
    True
    """
    import numpy as np

    seen = set() if seen is None else seen
    stack_, total = [obj], 0
    while stack_:
        o = stack_.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, np.ndarray):
            continue  # getsizeof counts the data an array owns
        if isinstance(o, dict):
            stack_.extend(o.keys())
            stack_.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)) or type(o).__name__ == "deque":
            stack_.extend(o)
        if hasattr(o, "__dict__"):
            stack_.append(vars(o))
        for name in getattr(type(o), "__slots__", ()):
            if hasattr(o, name):
                stack_.append(getattr(o, name))
    return total


def state_memory(settings: Settings, n: int) -> dict:
    """The worker's bounded state, grown in-process by ``n`` events (scored, routed, their tasks joined):
    per structure, entries per event, bytes per entry, MB per million events and MB at its bound."""
    loop = Loop.build(**loop_options(settings))
    parts = {
        "recent items": lambda: [loop.scorer._recent],
        "decided ids": lambda: [loop.router._decided],
        "waiting tasks": lambda: [loop.trainer._tasks, loop.trainer.consensus.tasks],
        "novelty sketch": lambda: [loop.router.policy.novelty],
    }
    limits = {"recent items": loop.scorer._recent.limit, "decided ids": loop.router._decided.limit,
              "waiting tasks": loop.trainer._tasks.limit, "novelty sketch": None}
    sizes, entries = [], []

    def grow(seed: int, count: int) -> None:
        now = int(time.time() * 1000)
        for i in range(0, count, 500):
            scored = loop.score("PredictionBatch", {"events": list(_events(min(500, count - i), seed=seed + i,
                                                                           prefix="mem"))}, now)
            for c in scored.candidates:
                for task in loop.route(c, now).tasks:
                    loop.take("LabelingTask", task, now)

    def sample() -> None:
        sizes.append({k: sum(deep_size(o, seen) for seen in [set()] for o in f()) for k, f in parts.items()})
        entries.append({k: len(f()[0]) if k != "novelty sketch" else len(loop.router.policy.novelty)
                        for k, f in parts.items()})

    half = n // 2
    grow(100, half)
    sample()
    grow(10_000_000, half)
    sample()
    out = {}
    for k in parts:
        per_event = (sizes[1][k] - sizes[0][k]) / half
        per_entry_event = (entries[1][k] - entries[0][k]) / half
        per_entry = per_event / per_entry_event if per_entry_event else None
        bound = None
        if limits[k] is not None and per_entry is not None:
            bound = sizes[1][k] + per_entry * (limits[k] - entries[1][k])
        elif limits[k] is None:
            bound = sizes[1][k]  # fixed size, full after its first few thousand items
        per_million = sizes[0][k] + per_event * (1_000_000 - half)
        if bound is not None:
            per_million = min(per_million, bound)
        out[k] = {"entries_per_event": round(per_entry_event, 3), "limit": limits[k],
                  "bytes_per_entry": round(per_entry) if per_entry else None,
                  "mb_per_million_events": round(per_million / 1e6, 1),
                  "mb_bound": round(bound / 1e6, 1) if bound is not None else None}
    out["total"] = {"mb_per_million_events": round(sum(v["mb_per_million_events"] for v in out.values()), 1),
                    "mb_bound": round(sum(v["mb_bound"] or 0 for v in out.values()), 1)}
    return {"events_grown": 2 * half, "structures": out}


# -- the run ----------------------------------------------------------------------------------


def measure(settings: Settings, events: int = 100_000, batch_size: int = 500, model_kind: str | None = None,
            latency_rate: float | None = None, latency_seconds: float = 10.0, labels: int = 300,
            label_rounds: int = 10, owner_events: int = 20_000, memory_events: int = 20_000, bare: bool = True,
            second: bool = False, core: int | None = None, seed: int = 1, form: str = "columns",
            profile: str | None = None, only: str | None = None) -> dict:
    """Every measurement of the module's description, on fresh topics; return the figures. With
    ``only="latency"``: the trained model and the two latencies alone, at ``latency_rate`` (required);
    ``only="worker"``: the trained model and the worker's drain alone."""
    if only == "latency" and not latency_rate:
        raise ValueError("--only latency needs --rate (half the rate a full run measured)")
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = Path(settings.state_dir).resolve() / "bench" / run_id
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}bench-{run_id}.", app_id=f"bench-{run_id}",
                                clickhouse_dsn="chdb://" + str(run_dir / "clickhouse"),
                                model_kind=model_kind or settings.model_kind,
                                budget_per_hour=10**9, budget_per_day=10**9)
    started_stack = not settings.kafka_bootstrap_servers and not stack.local_stack(settings).status()["running"]
    progress(f"run {run_id}: starting the stack" if started_stack else f"run {run_id}")
    settings = stack.start(settings)
    result = {"events": events, "batch_size": batch_size, "input": form, "model": settings.model_kind, "seed": seed}
    try:
        progress(f"training the {settings.model_kind} shadow model on {labels} labels")
        trained = train(settings, labels, run_dir)
        model = trained.pop("record")
        result["trained"] = trained
        if only == "latency":
            return _latencies(settings, result, run_dir, latency_rate, latency_seconds, form, label_rounds,
                              trained["labels"])
        progress(f"backlog of {events:,} predictions in {form} messages of {batch_size}")
        backlog = _encoded_batches(_events(events, seed=seed), batch_size, form)
        if only == "worker":
            progress("worker draining the backlog")
            result["worker"] = worker_throughput(settings, backlog, run_dir, prefix=f"ev-{seed}-", profile=profile)
            return result
        _produce(settings, _backlog_topic(settings), backlog)  # the loops' copy; the worker's comes later
        progress("columnar limit loop, one core")
        pairs = [(t["features"], label["label"]) for t, label in training_set(trained["labels"], settings.min_control)
                 if "control" not in t["reasons"]]  # what the worker's learner learned: it holds control out
        result["limit_loop"] = limit_loop.measure(
            settings.kafka_config(), settings.topic(BACKLOG), settings.topic("bench-limit-tasks"),
            "chdb://" + str(run_dir / "ch-limit"), events, pairs, settings.budget_fraction,
            settings.seed, core)
        if bare:
            progress("the worker's Loop without Faust")
            result["bare_loop"] = bare_loop(settings, events, run_dir, model)
        progress("worker draining the backlog")
        result["worker"] = w = worker_throughput(settings, backlog, run_dir, prefix=f"ev-{seed}-", profile=profile)
        limit = result["limit_loop"]
        result["worker_vs_limit"] = round(w["events_per_second"] / limit["events_per_second"], 3)
        # per CPU-second: less swayed by whatever else runs on the machine
        result["worker_vs_limit_cpu"] = round(w["events_per_cpu_second"] / limit["events_per_cpu_second"], 3)
        rate = latency_rate or max(10.0, w["events_per_second"] / 2)
        _latencies(settings, result, run_dir, rate, latency_seconds, form, label_rounds, trained["labels"])
        progress(f"owner admission on {owner_events:,} events, in-process")
        result["owner"] = o = owner_admission(settings, owner_events, model)
        us = w["us_per_event"]
        o["worker_us_per_event"] = us
        o["share_of_worker_cost"] = round(o["cpu_us_per_input_event"] / us, 3)  # both CPU µs per event
        o["two_cores_events_per_second"] = round(min(2e6 / us, o["events_per_cpu_second"]))
        progress(f"bounded state grown by {memory_events:,} events, in-process")
        result["memory"] = state_memory(settings, memory_events)
        result["memory"]["worker_peak_rss_mb"] = w["peak_rss_mb"]
        if second:
            progress(f"two workers draining {events:,} more")
            result["two_workers"] = t = second_worker(settings, events, batch_size, run_dir, seed + 1000, form)
            t["speedup"] = round(t["events_per_second"] / w["events_per_second"], 2)
    finally:
        if started_stack:
            stack.stop(settings)
        result["machine"] = {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                             "python": platform.python_version(), "platform": platform.platform()}
        progress("done")
    return result


def _latencies(settings: Settings, result: dict, run_dir: Path, rate: float, seconds: float, form: str,
               label_rounds: int, base: int) -> dict:
    """Event-to-task latency at ``rate`` and label-to-serving latency through one fresh worker, each with
    where its time went (:func:`event_to_task_stages`, ``label_to_serving``'s stages), into ``result``."""
    progress(f"event-to-task latency at {rate:,.0f} events/s for {seconds:g} s")
    dsn = "chdb://" + str(run_dir / "ch-latency")
    process = worker.spawn(settings.replace(clickhouse_dsn=dsn), run_dir / "worker-latency.log")
    try:
        worker.wait_ready(settings, process)
        _warm_up(settings, [process])
        result["latency"] = latency(settings, rate, seconds, max(1, int(rate / 100)), process, form)
        progress(f"label-to-serving latency, {label_rounds} bursts of {settings.publish_every} labels")
        result["label_to_serving"] = label_to_serving(settings, process, dsn, label_rounds, base)
    finally:
        worker.stop(process)
    lat = result["latency"]
    lat["stages"] = event_to_task_stages(settings, dsn, lat.pop("_times"), lat["window_ms"])
    return result


def _check(value, target, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value >= target if higher else value < target) else "NO"


def summary(result: dict) -> str:
    """The figures as a table, each beside the issue's target where it has one."""
    if "worker" not in result:  # --only latency
        return latency_summary(result)
    if "latency" not in result:  # --only worker
        w = result["worker"]
        return (f"worker: {w['events_per_second']:,} events/s, {w['events_per_cpu_second']:,} per CPU-second "
                f"({w['us_per_event']} µs/event; by thread {w['threads_us_per_event']}); load "
                f"{result['machine']['load_average'][0]}")
    w, limit, lat = result["worker"], result["limit_loop"], result["latency"]["ms"]
    serve, owner, mem = result["label_to_serving"]["ms"], result["owner"], result["memory"]["structures"]
    t = result["trained"]
    rows = [
        ("worker", f"{w['events_per_second']:,} events/s", "", ""),
        ("worker per CPU-second", f"{w['events_per_cpu_second']:,} events ({w['us_per_event']} µs/event, "
         f"{w['cores_used']} cores)", f">= {TARGETS['worker_per_core']:,}",
         _check(w["events_per_cpu_second"], TARGETS["worker_per_core"])),
        ("limit loop (1 core)", f"{limit['events_per_second']:,} events/s "
         f"({limit['events_per_cpu_second']:,} per CPU-second)", "", ""),
        ("worker / limit loop", f"{result['worker_vs_limit']:.3f} (per CPU-second {result['worker_vs_limit_cpu']:.3f})",
         f">= {TARGETS['worker_vs_limit']}", _check(result["worker_vs_limit"], TARGETS["worker_vs_limit"])),
    ]
    if "bare_loop" in result:
        rows.append(("Loop without Faust", f"{result['bare_loop']['events_per_second']:,} events/s", "", ""))
    rows += [
        (f"event-to-task at {result['latency']['rate']:,}/s", f"p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} ms "
         f"({lat['n']} tasks)", f"p99 < {TARGETS['p99_ms']}", _check(lat["p99"], TARGETS["p99_ms"], higher=False)),
        ("label to serving", f"p50 {serve['p50']} p95 {serve['p95']} ms ({serve['n']} labels)",
         f"p95 < {TARGETS['label_p95_ms']:,}", _check(serve["p95"], TARGETS["label_p95_ms"], higher=False)),
        ("owner admission", f"{owner['events_per_cpu_second']:,} events per CPU-second "
         f"({owner['cpu_us_per_input_event']} µs/input event); wall {owner['events_per_second']:,}/s",
         f">= {TARGETS['owner_events_per_second']:,}",
         _check(owner["events_per_cpu_second"], TARGETS["owner_events_per_second"])),
        ("owner's share, 2 cores", f"{100 * owner['share_of_worker_cost']:.1f}% of the work; "
         f"~{owner['two_cores_events_per_second']:,} events/s", "", ""),
    ]
    if "two_workers" in result:
        two = result["two_workers"]
        rows.append(("two workers", f"{two['events_per_second']:,} events/s (x{two['speedup']})", "", ""))
    if w.get("threads_us_per_event"):
        rows.append(("worker CPU by thread", ", ".join(f"{k} {v} µs" for k, v in
                                                      list(w["threads_us_per_event"].items())[:3]), "", ""))
    rows += [
        ("worker peak RSS", f"{w['peak_rss_mb']:,} MB", "", ""),
        ("state per million events", f"{mem['total']['mb_per_million_events']} MB (bound "
         f"{mem['total']['mb_bound']} MB)", "", ""),
    ]
    width = max(len(r[0]) for r in rows)
    value = max(len(r[1]) for r in rows)
    lines = [f"{result['events']:,} events in {result.get('input', 'batch')} messages of {result['batch_size']}; "
             f"shadow model {t['kind']} "
             f"trained on {t['labels']} labels (version {t['version']}); {result['machine']['cpus']} cores, "
             f"load {result['machine']['load_average'][0]}",
             f"{'figure':<{width}}  {'measured':<{value}}  {'target':<14} met"]
    lines += [f"{a:<{width}}  {b:<{value}}  {c:<14} {d}".rstrip() for a, b, c, d in rows]
    return "\n".join(lines + [latency_summary(result, head=False)])


def latency_summary(result: dict, head: bool = True) -> str:
    """The two latencies and where their time went (the stages and the worker's waits)."""
    lat, serve = result["latency"], result["label_to_serving"]
    lines = [f"shadow model {result['trained']['kind']} trained on {result['trained']['labels']} labels; "
             f"load {result['machine']['load_average'][0]}",
             f"event-to-task at {lat['rate']:,}/s: p50 {lat['ms']['p50']} p95 {lat['ms']['p95']} p99 "
             f"{lat['ms']['p99']} ms ({lat['ms']['n']} tasks; target p99 < {TARGETS['p99_ms']})",
             f"label to serving: p50 {serve['ms']['p50']} p95 {serve['ms']['p95']} ms ({serve['ms']['n']} labels; "
             f"target p95 < {TARGETS['label_p95_ms']:,})"] if head else []
    stages = lat.get("stages", {})
    lines.append("event-to-task by stage (ms): p50 / p95 / p99 / mean of the slowest 1%"
                 + (f"; {stages['in_process']} of {stages['tasks']} tasks admitted in process"
                    if "in_process" in stages else ""))
    for name, p in lat.get("stages", {}).get("ms", {}).items():
        lines.append(f"  {name:<30} {p['p50']} / {p['p95']} / {p['p99']} / {p['slowest_1pct_mean']}")
    lines.append("label to serving by stage (ms): p50 / p95")
    for name, p in serve.get("stages_ms", {}).items():
        lines.append(f"  {name:<36} {p['p50']} / {p['p95']}")
    for what, agents in (("event-to-task", lat.get("stages", {}).get("agents", {})),
                         ("label-to-serving", serve.get("agents", {}))):
        lines.append(f"worker's batches and waits during {what}: agent n, total s, longest ms")
        lines += [f"  {a:<22} {v['n']:>6} {v['seconds']:>8} {v['max_ms']:>8}" for a, v in agents.items()]
    return "\n".join(lines)


# -- feedbackloop bench ------------------------------------------------------------


HELP = """\
figures:
  worker               events/s of one Faust worker draining the backlog (first score to last decision,
                       read from its ClickHouse), with the trained shadow model
  worker per CPU-second events per second of the worker's own CPU time (user + system), i.e. per core used
  limit loop           events/s of feedbackloop/limit_loop.py on one pinned core: consume, fastavro decode,
                       numpy score (trained kNN) and select, produce tasks, Arrow insert of one decision
                       row per event, commit; the most this machine does per core with this work
  worker / limit loop  the ratio of the two (target >= 0.8), and of their events per CPU-second, which
                       what else runs on the machine sways less
  Loop without Faust   (--bare) the worker's Loop in a plain confluent-kafka loop
  event-to-task        task created_ts - event ts, p50/p95/p99, at half the worker's measured rate
  label to serving     a label sent until every input partition's scorer serves a version that learned it
                       (labels in bursts of publish_every; resolution: the probe interval)
  owner admission      input events per CPU-second the owner of the global budget admits (the preselected
                       decoded from the CandidateColumns hop + Loop.admit, in-process, median of 5; the
                       wall-clock rate beside it), and its share of the worker's CPU cost per event
  two workers          (--second-worker) events/s of two workers splitting the partitions
  worker CPU by thread CPU µs per event of the worker's main thread (the event loop) and of its busiest
                       other threads (the ClickHouse writer, the embedded engine's pools)
  worker peak RSS      VmHWM of the worker process
  state per million    the bounded state (recent items, decided ids, waiting tasks, novelty sketch) grown
                       in-process: MB after a million events, and at its bound

The machine's load changes every figure: run it on a quiet machine, and compare runs on the same one.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog as written; an option's default shown only when it has one."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` command to an argparse ``subparsers``."""
    b = subparsers.add_parser(
        "bench", help="measure the worker against a columnar limit loop, latencies, the owner and memory",
        formatter_class=_Formatter, epilog=HELP,
        description="Measures, in one run on fresh topics with a trained shadow model: the Faust worker "
                    "and the columnar limit loop draining the same backlog, event-to-task latency at half the "
                    "worker's rate, label-to-serving latency, the budget owner's admission rate, peak RSS and "
                    "the bounded state per million events. Progress goes to stderr, the table to stdout.")
    b.add_argument("--events", type=int, default=100_000, help="predictions in the backlog the loops drain")
    b.add_argument("--batch-size", type=int, default=500, help="predictions per Kafka message")
    b.add_argument("--input", choices=INPUTS, default="columns",
                   help="the form of the messages: PredictionColumns (one array per field) or PredictionBatch "
                        "(one map per event)")
    b.add_argument("--model", choices=["knn", "linear", "tree"],
                   help="shadow model kind (default: the worker's, FEEDBACKLOOP_MODEL_KIND)")
    b.add_argument("--labels", type=int, default=300, help="labels the shadow model learns before the measurement")
    b.add_argument("--rate", type=float, help="events/s while latency is measured (default: half the worker's)")
    b.add_argument("--seconds", type=float, default=10.0, help="how long event-to-task latency is measured")
    b.add_argument("--label-rounds", type=int, default=10, help="bursts of labels for label-to-serving latency")
    b.add_argument("--owner-events", type=int, default=20_000, help="input events the owner admission is timed on")
    b.add_argument("--memory-events", type=int, default=20_000, help="events the in-process state is grown by")
    b.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the worker's Loop without Faust")
    b.add_argument("--second-worker", action="store_true", help="also drain a backlog with two workers")
    b.add_argument("--core", type=int, help="CPU the limit loop is pinned to (default: the last one)")
    b.add_argument("--seed", type=int, default=1, help="seed of the backlog's events")
    b.add_argument("--out", "--json", dest="out", metavar="PATH", help="write the figures as JSON")
    b.add_argument("--only", choices=["latency", "worker"],
                   help="measure only this (after training the model): the two latencies, at --rate, with where "
                        "their time went; or the worker draining the backlog")
    b.add_argument("--profile", metavar="PATH", help="sample the worker with py-spy while it drains the backlog "
                                                     "(raw stacks into PATH; docs/scaling.md reads them)")
    b.set_defaults(func=run)
    return b


def run(args, settings: Settings) -> int:
    """``feedbackloop bench``: measure, print the summary, write the figures with ``--out``."""
    result = measure(settings, events=args.events, batch_size=args.batch_size, model_kind=args.model,
                     latency_rate=args.rate, latency_seconds=args.seconds, labels=args.labels,
                     label_rounds=args.label_rounds, owner_events=args.owner_events,
                     memory_events=args.memory_events, bare=args.bare, second=args.second_worker, core=args.core,
                     seed=args.seed, form=args.input, profile=args.profile, only=args.only)
    print(summary(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0
