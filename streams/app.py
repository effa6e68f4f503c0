"""The Faust app: topics declared once, and three short agents over the core.

* ``score`` (scales out by input partition): decode predictions, overrides and
  appeals, score them with the newest shadow model, send candidates on.
* ``route`` (one owner, ``labeling.candidates`` has one partition): the policy
  and the global budget decide; selected items become labeling tasks.
* ``learn`` (one owner): labels are joined to their tasks and learned; new
  model versions are published on ``models`` and picked up by every scorer.

Each agent makes its batch durable before the batch is acknowledged: the
messages it sent are delivered and its ClickHouse rows written (off the event
loop, :func:`write_rows`), so a committed offset never runs ahead of what it
stands for. While ClickHouse is down the agents wait there, consumption
pauses and the worker keeps its group membership. The router and the learner
rebuild their state from the topics after a restart (:mod:`streams.replay`).
Input that cannot be processed, and rows ClickHouse refuses, go to
``deadletter`` with the reason; the stream goes on.
Run it with ``feedbackloop worker``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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
from streams.replay import latest_version, rebuild_router, rebuild_trainer
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
    # static group membership (KIP-345): a restarted worker takes its partitions back at once
    consumer_group_instance_id=settings.worker_id or None,
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
        last = latest_version(s, self.key)
        if last is not None:
            self.trainer.learner.resume(last, self.key)
            self.scorer.use(load_version(last, self.key))
            log.info("resumed %s at version %s", last["model_name"], last["version"])
        self.sink = ClickHouseSink(wait_for_clickhouse(s), fault_path=s.sink_fault_path or None)
        self.sink.remember_recent()  # rows written just before a restart are not written twice
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")  # one insert at a time
        self.router_ready = self.trainer_ready = False


_runtime: Runtime | None = None


def wait_for_clickhouse(s: Settings):
    """A migrated ClickHouse client; waits (and says so) while the server is not up."""
    delay = 1.0
    while True:
        try:
            client = connect_settings(s)
            migrate(client)
            return client
        except Exception as exc:
            log.error("waiting for ClickHouse, retrying in %.0f s: %s", delay, exc)
            time.sleep(delay)
            delay = min(15.0, delay * 2)


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
    """Run ``handle(name, record, message)`` on every event's decoded message;
    whatever fails goes to the dead-letter topic and the stream goes on."""
    for event in events:
        message = event.message
        try:
            name, record = codec.decode(message.value or b"", ACCEPT[message.topic],
                                        check=message.topic not in INTERNAL)
            await handle(name, record, message)
        except codec.DecodeError as exc:
            await dead_letter(message, exc.reason, exc.error)
        except UnknownLabel as exc:
            await dead_letter(message, str(exc), "unknown_label")
        except Exception as exc:  # a bug must not stop the stream or lose the event
            log.exception("failed on %s/%s/%s", message.topic, message.partition, message.offset)
            await dead_letter(message, f"{type(exc).__name__}: {exc}", "internal")


@app.timer(2.0)
async def standing():
    """Every two seconds: agreement and annotators' standing (when labels came
    in), the budget against its caps, and whatever rows wait."""
    if _runtime is None:
        return
    now = now_ms()
    if _runtime.labels_changed:
        _runtime.labels_changed = False
        label_quality_rows(_runtime, now)
    budget_row(_runtime, now)
    await write_rows(_runtime)


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


async def write_rows(rt: "Runtime") -> None:
    """Make the buffered rows durable, on the writer thread, never on the event loop.

    While ClickHouse cannot take them the calling agent waits here with
    backoff: its batch stays unacknowledged, so consumption pauses, nothing is
    lost, and the worker keeps its group membership. Rows ClickHouse refuses
    for what they hold are set aside by the sink and go to ``deadletter``."""
    loop = asyncio.get_running_loop()
    delay, down = 0.5, None
    while True:
        try:
            await loop.run_in_executor(rt.writer, rt.sink.flush)
            break
        except Exception as exc:
            down = down or time.monotonic()
            log.error("ClickHouse unavailable for %.0f s: consumption paused, retrying in %.1f s: %s",
                      time.monotonic() - down, delay, exc)
            await asyncio.sleep(delay)
            delay = min(15.0, delay * 2)
    if down is not None:
        outage = time.monotonic() - down
        log.warning("ClickHouse back after %.0f s: consumption resumed", outage)
        rt.sink.add("agent_stats", {"ts": now_ms(), "worker": WORKER, "agent": "clickhouse_outage", "events": 0,
                                    "seconds": outage, "lag": -1})
    for table, row, error in rt.sink.take_rejected():
        await dead_letter_row(table, row, error)


async def dead_letter_row(table: str, row: dict, error: str) -> None:
    """A row ClickHouse refused (already in ``dead_letters``): on the ``deadletter`` topic too."""
    payload = json.dumps(row, default=str, ensure_ascii=True).encode()
    key = str(row.get("event_id") or row.get("task_id") or "").encode("utf-8", "backslashreplace")
    record = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"row/{table}/{payload!r}")), "ts": now_ms(),
              "topic": f"clickhouse:{table}", "partition": -1, "offset": -1, "key": key, "payload": payload,
              "reason": f"ClickHouse refused a {table} row: {error}"[:1000], "error": "unstorable_row"}
    log.warning("dead letter: a %s row ClickHouse refused: %s", table, error)
    await deadletter_topic.send(key=key, value=codec.encode("DeadLetter", record, check=False))


@app.agent(inputs)
async def score(stream):
    """Score every input event and pass it to the router."""
    rt = runtime()
    async for events in stream.take_events(BATCH, within=WITHIN):
        now, out, sources, started = now_ms(), [], [], time.perf_counter()

        async def handle(name, record, message):
            if name == "PredictionBatch":
                scored = [rt.scorer.prediction(p, now) for p in record["events"]]
            elif name == "Prediction":
                scored = [rt.scorer.prediction(record, now)]
            elif name == "Override":
                scored = [rt.scorer.override(record, now)]
            else:
                scored = [rt.scorer.appeal(record, now)]
            for c in scored:
                if c["kind"] == "prediction":
                    rt.sink.add("predictions", {**c, "confidence": max(c["probabilities"].values()),
                                                "scored_at": c["scored_ts"]}, project=True)
            out.extend(scored)
            sources.extend([message] * len(scored))

        # predictions first: an override or appeal in the same batch then finds its item
        await each(sorted(events, key=lambda e: e.message.topic != PREDICTIONS), handle)
        for i in range(0, len(out), CANDIDATES_PER_MESSAGE):
            for value in await encode_candidates(out[i:i + CANDIDATES_PER_MESSAGE], sources[i:i + CANDIDATES_PER_MESSAGE]):
                await candidates_topic.send(value=value)
        agent_stats(rt, "score", len(out), started)
        await write_rows(rt)


async def encode_candidates(candidates: list[dict], sources: list) -> list[bytes]:
    """``CandidateBatch`` messages for ``candidates``; should one fail to encode,
    the input message it came from is dead-lettered and the others go on."""
    try:
        return [codec.encode("CandidateBatch", {"candidates": candidates}, check=False)]
    except Exception:
        bad = set()
        for c, message in zip(candidates, sources):
            try:
                codec.encode("CandidateBatch", {"candidates": [c]}, check=False)
            except Exception as exc:
                if id(message) not in bad:
                    bad.add(id(message))
                    await dead_letter(message, f"cannot encode its candidate: {type(exc).__name__}: {exc}",
                                      "unencodable")
        kept = [c for c, message in zip(candidates, sources) if id(message) not in bad]
        return [codec.encode("CandidateBatch", {"candidates": kept}, check=False)] if kept else []


@app.agent(candidates_topic)
async def route(stream):
    """Decide for each candidate under the global budget; send the tasks."""
    rt = runtime()
    async for events in stream.take_events(100, within=0.01):
        if not rt.router_ready:
            await asyncio.get_running_loop().run_in_executor(None, rebuild_router, rt.router, settings, now_ms())
            rt.router_ready = True
        started, seen, rows, sent = time.perf_counter(), 0, [], []

        async def handle(name, record, message):
            nonlocal seen
            seen += len(record["candidates"])
            for c in record["candidates"]:
                if rt.sink.remembers("routing_decisions", c["event_id"]):
                    continue  # decided and recorded before a restart
                decision, task = rt.router.route(c, now_ms())
                if decision is not None:
                    rows.append(("routing_decisions", decision))
                if task is None:
                    continue
                task["overlap"] = max(1, settings.overlap)
                value = codec.encode("LabelingTask", task, check=False)  # built here from checked input
                sent.append(await tasks_topic.send(key=task["task_id"].encode(), value=value))
                rows.append(("labeling_tasks", {**task, "created_at": task["created_ts"]}))
                gold = rt.gold.follow(task) if rt.gold else None
                if gold is not None:
                    sent.append(await tasks_topic.send(key=gold["task_id"].encode(),
                                                       value=codec.encode("LabelingTask", gold)))
                    rows.append(("labeling_tasks", {**gold, "created_at": gold["created_ts"], "kind": "gold",
                                                    "reasons": ["gold"]}))

        await each(events, handle)
        await asyncio.gather(*sent)  # the tasks are delivered before the decisions that name them are written
        for table, row in rows:
            rt.sink.add(table, row, project=True)
        agent_stats(rt, "route", seen, started)
        await write_rows(rt)


@app.agent(joined)
async def learn(stream):
    """Join labels to tasks, settle consensus, learn, publish model versions."""
    rt = runtime()
    learner = rt.trainer.learner
    async for events in stream.take_events(100, within=0.01):
        if not rt.trainer_ready:
            await asyncio.get_running_loop().run_in_executor(None, rebuild_trainer, rt.trainer, settings)
            rt.trainer_ready = True
        sent = []

        async def handle(name, record, message):
            if name == "LabelingTask":
                result = rt.trainer.add_task(record)
            else:
                result = rt.trainer.add_label(record)
                learner.label_offset = max(learner.label_offset, message.offset)
            for table in ("labels", "consensus", "adjudications"):
                for row in getattr(result, table):
                    rt.sink.add(TABLE_OF[table], row, project=True)
            rt.labels_changed = rt.labels_changed or bool(result.labels)
            for row in result.consensus:
                measure(rt, row)
            for task in result.tasks:
                sent.append(await tasks_topic.send(key=task["task_id"].encode(),
                                                   value=codec.encode("LabelingTask", task)))

        for event in events:
            await each([event], handle)
            if learner.due:  # published only once the labels it learned are recorded
                await asyncio.gather(*sent)
                sent.clear()
                await write_rows(rt)
                try:
                    await publish(rt)
                except Exception:  # a version that cannot be published must not stop the learner
                    log.exception("publishing %s version %s failed", learner.name, learner.version)
        await asyncio.gather(*sent)
        await write_rows(rt)


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
    await (await models_topic.send(key=record["model_name"].encode(), value=codec.encode("ModelVersion", record)))
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


# --------------------------------------------------------------------------- the labeling service's audit log

audit_topic = app.topic(settings.topic("audit"))
ACCEPT[settings.topic("audit")] = ("AuditEvent",)


@app.agent(audit_topic)
async def audit(stream):
    """Write the labeling service's audit events to ``audit_log``, each once, as they come."""
    rt = runtime()
    async for events in stream.take_events(100, within=0.5):
        async def handle(name, record, message):
            rt.sink.add("audit_log", record)

        await each(events, handle)
        await write_rows(rt)
