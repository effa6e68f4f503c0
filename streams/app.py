"""The Faust app: topics declared once, and three short agents over the core.

* ``score`` (scales out by input partition): decode predictions, overrides and
  appeals, score them with the newest shadow model, send candidates on.
* ``route`` (one owner, ``labeling.candidates`` has one partition): the policy
  and the global budget decide; selected items become labeling tasks.
* ``learn`` (one owner): labels are joined to their tasks and learned; new
  model versions are published on ``models`` and picked up by every scorer.

Every stage buffers its rows for ClickHouse; they are inserted in large blocks,
and always right before offsets are committed (:class:`FlushBeforeCommit`),
so a committed offset never runs ahead of the rows it stands for. Input that cannot be processed goes to ``deadletter`` with its reason.
Run it with ``feedbackloop worker``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import time
import uuid
from pathlib import Path

import faust

from consumers.clickhouse_sink import ClickHouseSink
from dashboards.migrate import migrate
from feedbackloop import keys
from feedbackloop.clickhouse import connect_settings
from feedbackloop.settings import Settings
from schemas import codec
from streams.budget import DAY_MS, HOUR_MS, WEEK_MS, Budget
from streams.learner import Learner, SnapshotRejected, load_version
from streams.lift import Lift
from streams.policy import Policy
from streams.router import Router
from streams.scorer import Scorer
from streams.stopping import StoppingSignal
from streams.consensus import Consensus, GoldChecks
from streams.gold import GoldMixer, load_gold
from streams.trainer import Trainer, UnknownLabel

log = logging.getLogger("feedbackloop")
settings = Settings.from_env()

#: Largest number of candidates packed into one message on ``labeling.candidates``.
CANDIDATES_PER_MESSAGE = 500
#: Control items whose predictions successive model versions are compared on (the stop set).
STOP_SET = 50
#: Scorers take up to this many messages at a time, waiting at most WITHIN seconds.
BATCH, WITHIN = 1000, 0.05


def _credentials(s: Settings):
    context = ssl.create_default_context(cafile=s.kafka_ssl_cafile or None)
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                     mechanism=s.kafka_sasl_mechanism,
                                     ssl_context=context if "SSL" in s.kafka_security_protocol else None)
    if s.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return None


DATADIR = Path(settings.state_dir).resolve() / "worker" / settings.app_id
DATADIR.parent.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in (settings.kafka_bootstrap_servers or "127.0.0.1:9092").split(",")],
    broker_credentials=_credentials(settings),
    value_serializer="raw",
    key_serializer="raw",
    store="memory://",
    datadir=str(DATADIR),
    web_enabled=False,
    topic_allow_declare=False,
    producer_max_request_size=4_000_000,
)

inputs = app.topic(*(settings.topic(t) for t in ("predictions", "overrides", "appeals")))
candidates_topic = app.topic(settings.topic("labeling.candidates"))
tasks_topic = app.topic(settings.topic("labeling.tasks"))
labels_topic = app.topic(settings.topic("labels"))
models_topic = app.topic(settings.topic("models"))
deadletter_topic = app.topic(settings.topic("deadletter"))
joined = app.topic(settings.topic("labeling.tasks"), settings.topic("labels"))

INTERNAL = {settings.topic("labeling.candidates"), settings.topic("labeling.tasks")}
PREDICTIONS = settings.topic("predictions")
WORKER = f"{socket.gethostname()}:{os.getpid()}"
ACCEPT = {
    settings.topic("predictions"): ("Prediction", "PredictionBatch"),
    settings.topic("overrides"): ("Override",),
    settings.topic("appeals"): ("Appeal",),
    settings.topic("labeling.candidates"): ("CandidateBatch",),
    settings.topic("labeling.tasks"): ("LabelingTask",),
    settings.topic("labels"): ("Label",),
}


class Runtime:
    """The core objects of one worker, created on first use."""

    def __init__(self, s: Settings):
        self.key = keys.signing_key(s)  # the learner signs, everyone verifies with its public half
        self.scorer = Scorer()
        budget = Budget(s.budget_fraction, s.budget_per_hour or None, s.budget_per_day or None,
                        s.budget_per_week or None)
        policy = Policy(budget, control_share=s.control_fraction, cold_start=s.min_control, seed=s.seed)
        self.router = Router(policy, seed=s.seed)
        gold = load_gold(s.gold_path)
        self.gold = GoldMixer(gold, s.gold_rate, seed=s.seed) if gold and s.gold_rate > 0 else None
        checks = GoldChecks(threshold=s.gold_threshold)
        self.trainer = Trainer(Learner(s.model_name, kind=s.model_kind, publish_every=s.publish_every,
                                       min_control=s.min_control),
                               Consensus(overlap=s.overlap, max_annotators=s.max_annotators, gold=checks),
                               gold={item: g["label"] for item, g in gold.items()})
        self.flagged: set[str] = set()
        self.labels_changed = False
        self.lift = Lift()
        self.stopping = StoppingSignal()
        if s.dashboard_port:  # the embedded engine has one owner: serve the page from it
            from feedbackloop import dashboard

            self.dashboard = dashboard.start(s, s.dashboard_host, s.dashboard_port)
            log.info("dashboard at %s", self.dashboard.url)
        last = latest_version(s)
        if last is not None:
            self.trainer.learner.resume(last, self.key)
            self.scorer.use(load_version(last, self.key))
            log.info("resumed %s at version %s", last["model_name"], last["version"])
        client = connect_settings(s)
        migrate(client)
        self.sink = ClickHouseSink(client)


_runtime: Runtime | None = None


def latest_version(s: Settings) -> dict | None:
    """The newest version of ``s.model_name`` on the ``models`` topic, if any."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**s.kafka_config(), "group.id": f"{s.app_id}-resume", "enable.auto.commit": False})
    try:
        tp = TopicPartition(s.topic("models"), 0)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        if high <= low:
            return None
        consumer.assign([TopicPartition(tp.topic, 0, low)])
        newest, offset = None, low
        while offset < high - 1:
            message = consumer.poll(5.0)
            if message is None:
                break
            offset = message.offset()
            if message.error():
                continue
            try:
                _, record = codec.decode(message.value(), ("ModelVersion",))
            except codec.DecodeError:
                continue
            if record["model_name"] == s.model_name and (newest is None or record["version"] > newest["version"]):
                newest = record
        return newest
    finally:
        consumer.close()


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime


def now_ms() -> int:
    return int(time.time() * 1000)


async def dead_letter(message, reason: str, error: str) -> None:
    """Keep unprocessable input whole, with the reason, on ``deadletter``."""
    where = f"{message.topic}/{message.partition}/{message.offset}"
    record = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, where)), "ts": now_ms(),
              "topic": message.topic, "partition": message.partition, "offset": message.offset,
              "key": message.key, "payload": message.value or b"", "reason": reason, "error": error}
    log.warning("dead letter %s: %s", where, reason)
    await deadletter_topic.send(key=message.key, value=codec.encode("DeadLetter", record))
    runtime().sink.add("dead_letters", record)


async def each(events, handle) -> None:
    """Run ``handle(name, record)`` on every event's decoded message; whatever
    fails goes to the dead-letter topic and the stream goes on."""
    for event in events:
        message = event.message
        try:
            name, record = codec.decode(message.value or b"", ACCEPT[message.topic],
                                        check=message.topic not in INTERNAL)
            await handle(name, record)
        except codec.DecodeError as exc:
            await dead_letter(message, exc.reason, exc.error)
        except UnknownLabel as exc:
            await dead_letter(message, str(exc), "unknown_label")
        except Exception as exc:  # a bug must not stop the stream or lose the event
            log.exception("failed on %s/%s/%s", message.topic, message.partition, message.offset)
            await dead_letter(message, f"{type(exc).__name__}: {exc}", "internal")


class FlushBeforeCommit(faust.Sensor):
    """Makes every buffered ClickHouse row durable right before offsets are
    committed, so a committed event always has its rows written. Agents only
    add rows; inserts happen in large blocks (by size, age, or at commit).
    While ClickHouse is unreachable the commit waits and retries."""

    def on_commit_initiated(self, consumer):
        if _runtime is not None:
            now = now_ms()
            if _runtime.labels_changed:
                _runtime.labels_changed = False
                label_quality_rows(_runtime, now)
            budget_row(_runtime, now)
            write_rows(_runtime.sink, force=True)
        return None


def budget_row(rt: "Runtime", now: int) -> None:
    """The budget against its caps, as this worker's router sees it (if it routes)."""
    b = rt.router.policy.budget
    if b.total_seen == 0:
        return
    rt.sink.add("budget_state", {
        "ts": now, "spent_hour": b.spent_in_hour(now), "spent_day": b.spent_in_day(now),
        "spent_week": b.spent_in_week(now), "cap_hour": b.caps[HOUR_MS], "cap_day": b.caps[DAY_MS],
        "cap_week": b.caps[WEEK_MS],
        "target_fraction": b.fraction, "realised_fraction": b.realised})


def agent_stats(rt: "Runtime", agent: str, events: int, started: float) -> None:
    """Throughput of one agent batch (lag is measured from outside, by `feedbackloop.worker.lag`)."""
    rt.sink.add("agent_stats", {"ts": now_ms(), "worker": WORKER, "agent": agent, "events": events,
                                "seconds": time.perf_counter() - started, "lag": -1})


def write_rows(sink, force: bool = False) -> None:
    """Write the buffered rows (all of them with ``force``, else when a block is
    full or old enough), retrying until ClickHouse takes them."""
    delay = 0.5
    while True:
        try:
            if force:
                sink.flush()
            else:
                sink.maybe_flush()
            return
        except Exception as exc:
            log.error("ClickHouse write failed, retrying in %.1f s: %s", delay, exc)
            time.sleep(delay)
            delay = min(30.0, delay * 2)


app.sensors.add(FlushBeforeCommit())


@app.agent(inputs)
async def score(stream):
    """Score every input event and pass it to the router."""
    rt = runtime()
    async for events in stream.take_events(BATCH, within=WITHIN):
        now, out, started = now_ms(), [], time.perf_counter()

        async def handle(name, record):
            if name == "PredictionBatch":
                out.extend(rt.scorer.prediction(p, now) for p in record["events"])
            elif name == "Prediction":
                out.append(rt.scorer.prediction(record, now))
            elif name == "Override":
                out.append(rt.scorer.override(record, now))
            else:
                out.append(rt.scorer.appeal(record, now))

        # predictions first: an override or appeal in the same batch then finds its item
        await each(sorted(events, key=lambda e: e.message.topic != PREDICTIONS), handle)
        for c in out:
            if c["kind"] == "prediction":
                rt.sink.add("predictions", {**c, "confidence": max(c["probabilities"].values()),
                                            "scored_at": c["scored_ts"]}, project=True)
        for i in range(0, len(out), CANDIDATES_PER_MESSAGE):
            batch = {"candidates": out[i:i + CANDIDATES_PER_MESSAGE]}
            await candidates_topic.send(value=codec.encode("CandidateBatch", batch, check=False))
        agent_stats(rt, "score", len(out), started)
        write_rows(rt.sink)


@app.agent(candidates_topic)
async def route(stream):
    """Decide for each candidate under the global budget; send the tasks."""
    rt = runtime()
    async for events in stream.take_events(100, within=0.01):
        started, seen = time.perf_counter(), 0

        async def handle(name, record):
            nonlocal seen
            seen += len(record["candidates"])
            for c in record["candidates"]:
                decision, task = rt.router.route(c, now_ms())
                if task is not None:
                    task["overlap"] = max(1, settings.overlap)
                if decision is not None:
                    rt.sink.add("routing_decisions", decision)
                if task is not None:
                    value = codec.encode("LabelingTask", task, check=False)  # built here from checked input
                    await tasks_topic.send(key=task["task_id"].encode(), value=value)
                    rt.sink.add("labeling_tasks", {**task, "created_at": task["created_ts"]}, project=True)
                    gold = rt.gold.follow(task) if rt.gold else None
                    if gold is not None:
                        await tasks_topic.send(key=gold["task_id"].encode(), value=codec.encode("LabelingTask", gold))
                        rt.sink.add("labeling_tasks", {**gold, "created_at": gold["created_ts"], "kind": "gold",
                                                       "reasons": ["gold"]}, project=True)

        await each(events, handle)
        agent_stats(rt, "route", seen, started)
        write_rows(rt.sink)


@app.agent(joined)
async def learn(stream):
    """Join labels to tasks, settle consensus, learn, publish model versions."""
    rt = runtime()
    async for events in stream.take_events(100, within=0.01):

        async def handle(name, record):
            result = rt.trainer.add_task(record) if name == "LabelingTask" else rt.trainer.add_label(record)
            for table in ("labels", "consensus", "adjudications"):
                for row in getattr(result, table):
                    rt.sink.add(TABLE_OF[table], row, project=True)
            rt.labels_changed = rt.labels_changed or bool(result.labels)
            for row in result.consensus:
                measure(rt, row)
            for task in result.tasks:
                await tasks_topic.send(key=task["task_id"].encode(), value=codec.encode("LabelingTask", task))
            if rt.trainer.learner.due:
                await publish(rt)

        await each(events, handle)
        write_rows(rt.sink)


TABLE_OF = {"labels": "labels", "consensus": "consensus_labels", "adjudications": "adjudications"}


def label_quality_rows(rt: "Runtime", now: int) -> None:
    """Agreement and each annotator's standing, cumulative as of ``now``."""
    report = rt.trainer.tracker.report()
    overall = {"percent_agreement": report["percent_agreement"], "fleiss_kappa": report["fleiss_kappa"],
               "krippendorff_alpha": report["krippendorff_alpha"]}
    n_items = report["n_items_multi"]
    for metric, value in overall.items():
        rt.sink.add("annotator_agreement", {"window_start": now, "window_seconds": 0, "annotator_a": "*",
                                            "annotator_b": "*", "metric": metric, "value": value, "n": n_items})
    for pair in report["cohen_kappa"]:
        rt.sink.add("annotator_agreement", {"window_start": now, "window_seconds": 0, "annotator_a": pair["a"],
                                            "annotator_b": pair["b"], "metric": "cohen_kappa",
                                            "value": pair["kappa"], "n": pair.get("n", 0)})
    checks = rt.trainer.consensus.gold
    flagged = set(checks.flagged())
    for annotator, row in report["per_annotator"].items():
        rt.sink.add("annotator_quality", {
            **row, "ts": now, "annotator_id": annotator, "labels": row["n_labels"],
            "gold_checks": checks.checks.get(annotator, 0), "gold_accuracy": checks.accuracy(annotator),
            "label_drift": row["drift"], "flagged": int(annotator in flagged)}, project=True)
    for annotator in flagged - rt.flagged:
        log.warning("annotator %s flagged: gold accuracy %.0f%% on %d checks", annotator,
                    100 * checks.accuracy(annotator), checks.checks[annotator])
    rt.flagged = flagged


def measure(rt: "Runtime", row: dict) -> None:
    """A settled label: was the shadow model wrong on it? Feeds the live lift of
    the policy over the control slice, and drift detection on the shadow
    model's surprise (its error beyond what its confidence expected; every
    label counts, see :mod:`streams.drift`)."""
    task = rt.trainer.task(row["task_id"])
    predicted = row.get("shadow_prediction")
    if task is None or predicted is None:
        return
    rt.lift.add(task["reasons"], task["selection_probability"], error=predicted != row["label"])
    event = rt.router.policy.observe_label(row["label"], predicted, ts=row["ts"],
                                           confidence=row.get("shadow_confidence"))
    if event is not None:
        log.warning("drift detected after %s labels: shadow error %.2f -> %.2f", event["labels"],
                    event["error_before"], event["error_after"])
        rt.sink.add("drift_events", {"ts": now_ms(), "model_name": settings.model_name,
                                     "version": rt.trainer.learner.version,
                                     "detector": "page_hinkley:shadow_surprise", "detail": json.dumps(event)})


def lift_row(rt: "Runtime", version: int, ts: int) -> None:
    e = rt.lift.estimate()
    accuracy = lambda rate: None if rate is None else 1.0 - rate
    rt.sink.add("policy_lift", {"ts": ts, "version": version, "policy_accuracy": accuracy(e["policy_error_rate"]),
                                "control_accuracy": accuracy(e["control_error_rate"]), "lift": e["lift"],
                                "ci_low": e["low"], "ci_high": e["high"], "n_policy": e["policy_labels"],
                                "n_control": e["control_labels"]})


def stopping_rows(rt: "Runtime", record: dict) -> None:
    """Should labeling stop? Successive versions' agreement on a fixed stop set
    (the first control items: a uniform sample whose labels are never learned)
    and the control accuracy's plateau, see :mod:`streams.stopping`."""
    learner = rt.trainer.learner
    stop_set = [x for x, _ in list(learner.control)[:STOP_SET]]
    predictions = [learner.model.predict_one(x) for x in stop_set] if len(stop_set) == STOP_SET else []
    row = rt.stopping.update(record["version"], predictions, record["control_accuracy"], record["labels_seen"])
    recommendation = "stop" if row["stop"] else "continue"
    for metric, value in (("kappa_average", row["kappa_average"]), ("control_accuracy_gain", row["accuracy_gain"])):
        rt.sink.add("stopping_signals", {"ts": record["ts"], "version": record["version"], "metric": metric,
                                         "value": value, "recommendation": recommendation})


async def publish(rt: "Runtime") -> None:
    record = rt.trainer.learner.publish(now_ms(), rt.key)
    await models_topic.send(key=record["model_name"].encode(), value=codec.encode("ModelVersion", record))
    rt.sink.add("model_versions", record, project=True)
    lift_row(rt, record["version"], record["ts"])
    stopping_rows(rt, record)
    rt.scorer.use(load_version(record, rt.key))
    log.info("published %s version %s (labels %s, control accuracy %s)", record["model_name"],
             record["version"], record["labels_seen"], record["control_accuracy"])


@app.timer(1.0)
async def follow_models():
    """Pick up model versions published by the learner of another worker."""
    rt = runtime()
    follower = getattr(rt, "follower", None)
    if follower is None:
        from confluent_kafka import Consumer, TopicPartition
        follower = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-models-{uuid.uuid4()}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        follower.assign([TopicPartition(settings.topic("models"), 0)])
        rt.follower = follower
    for message in follower.consume(100, timeout=0):
        if message.error():
            continue
        try:
            _, record = codec.decode(message.value(), ("ModelVersion",))
            rt.scorer.use(load_version(record, rt.key))
        except (codec.DecodeError, SnapshotRejected) as exc:
            log.error("refused model version at offset %s: %s", message.offset(), exc)
