"""The Faust adapter: ``create_app(settings)`` declares the topics once and thin agents over one :class:`~streams.loop.Loop`.

* ``score`` (scales out by input partition): decode predictions, overrides and
  appeals, score them with the newest shadow model, and preselect: the policy
  gives each event its selection probability and the draw fixed by its id
  decides. An event not preselected gets its decision row here; only the
  preselected few go on to the owner of the budget: in process when this
  worker is the owner (:meth:`Runtime.admit_here`), else through
  ``labeling.candidates``.
* ``route`` (one owner, ``labeling.candidates`` has one partition): admission
  under the global hourly, daily and weekly caps of the candidates other
  workers send; admitted items become labeling tasks (see docs/scaling.md).
* ``learn`` (one owner): labels are joined to their tasks and learned; new
  model versions are published on ``models`` and picked up by every scorer.
* ``audit``: the labeling service's audit events, into ``audit_log``.

A router's tasks are delivered before the decisions naming them are buffered
(the agent that admitted them goes on while they are in flight; the commit waits for them);
rows go to ClickHouse in blocks, on a writer thread while the agents go on
(:meth:`Runtime.write_due`), and every buffered row is written before offsets
are committed (:class:`DurableConsumer`), so a committed offset never runs
ahead of what it stands for; a version is published once the rows of the
labels it learned are written. While ClickHouse is down the writes wait with
backoff, the commits and (once rows pile up) the agents with them: consumption
pauses and the worker keeps its group membership. The router and
the learner rebuild their state from the topics after a restart
(:mod:`streams.replay`), when their partitions are assigned, before the first
event. The learner publishes each version from a thread of its own (the kNN
rescaled, measured, pickled and signed there), so no agent waits for it.
Input that cannot be processed, and rows ClickHouse refuses, go to
``deadletter`` with the reason; the stream goes on.

Importing this module does nothing; ``feedbackloop worker`` builds the app
from its settings and runs it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from operator import itemgetter
from pathlib import Path

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver

from dashboards.sink import ClickHouseSink
from dashboards.migrate import migrate
from feedbackloop import keys
from dashboards.connection import connect_settings
from feedbackloop.settings import Settings
from schemas import codec
from schemas.candidate_columns import candidates_of, to_columns
from feedbackloop.datasets import load_gold
from streams.loop import Effects, Loop
from streams import model_feed
from streams.replay import rebuild_learner, rebuild_preselection, rebuild_router, recorded
from streams.labels.trainer import UnknownLabel

log = logging.getLogger("feedbackloop")

#: Largest number of candidates packed into one message on ``labeling.candidates``.
CANDIDATES_PER_MESSAGE = 500
#: Scorers take up to this many messages at a time, waiting at most WITHIN seconds.
BATCH, WITHIN = 1000, 0.01
#: Seconds between two looks at ``models`` for a version another worker's learner published.
FOLLOW_MODELS = 0.25
#: A wait of an agent (for its rows to be written) or of the whole worker (a garbage collection) at least
#: this long is recorded in ``agent_stats`` as agent ``wait:<what>``, its length in ``seconds``.
WAIT_RECORDED = 0.005
#: Blocks of rows (the sink's batch size) that may wait behind a running write before an agent waits for it.
ROWS_AHEAD = 2
#: The sink writes a table's rows once it buffers SINK_BLOCK of them, or once rows waited SINK_WAIT seconds,
#: and the commit (every 2.8 s) writes every row before it. An insert into the embedded engine costs 6 ms
#: before its first row, and 8-10 ms more for each materialized view on the table; each is a part the merges
#: merge again. So a draining worker writes once a second (about 10,000 events; it wrote every 5,000 rows,
#: twice a second) and at half that rate, where event-to-task latency is measured, the writes are as before:
#: rows waiting a second. Blocks that waited for the commit (50,000 rows or 3 s) cost less again in process,
#: but each write then took up to a second of the two cores, and event-to-task latency queued behind it
#: (docs/scaling.md, 2026-12-01).
SINK_BLOCK, SINK_WAIT = 20_000, 1.0
#: A due write takes the tables holding at least a tenth of a block (in a worker busy with its input, the
#: predictions and the decisions); the others (tasks, agent_stats, the standing timer's) are written by the
#: commit, or once SMALL_WAIT seconds passed since every table was written: each insert of a few rows cost
#: the engine 15-40 ms. In process, the worker's rows written once a second and at every commit: 22.7 ->
#: 17.8 µs of CPU an event (docs/scaling.md, 2026-12-01).
SMALL_WAIT = 3.0
#: Route batches whose tasks may be in flight (sent, not yet acknowledged) while the route agent takes the
#: next candidates; beyond it the agent waits for the oldest (the broker behind or away).
IN_FLIGHT = 16
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def now_ms() -> int:
    return int(time.time() * 1000)


def credentials(s: Settings):
    """Faust's broker credentials, read from the librdkafka configuration every
    other client uses (:meth:`~feedbackloop.settings.Settings.kafka_config`): one place."""
    conf = s.kafka_config()
    protocol = conf["security.protocol"]
    context = ssl.create_default_context(cafile=conf.get("ssl.ca.location"))
    if "sasl.mechanism" in conf:
        return faust.SASLCredentials(username=conf["sasl.username"], password=conf["sasl.password"],
                                     mechanism=conf["sasl.mechanism"],
                                     ssl_context=context if "SSL" in protocol else None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return None


def loop_options(s: Settings) -> dict:
    """The settings a :class:`~streams.loop.Loop` is built from."""
    return {"budget_fraction": s.budget_fraction, "budget_per_hour": s.budget_per_hour,
            "budget_per_day": s.budget_per_day, "budget_per_week": s.budget_per_week,
            "control_fraction": s.control_fraction, "min_control": s.min_control, "seed": s.seed,
            "model_name": s.model_name, "model_kind": s.model_kind, "publish_every": s.publish_every,
            "overlap": s.overlap, "max_annotators": s.max_annotators, "gold_items": load_gold(s.gold_path),
            "gold_rate": s.gold_rate, "gold_threshold": s.gold_threshold,
            "suspect_share": s.suspect_share,  # reviews of suspect labels (streams.labels.suspects)
            "multi_label": bool(s.multi_label),  # tasks take any subset (streams.selection.router)
            # the shadow's first versions sooner, and typical items first until then (docs/policy.md)
            "early_every": s.early_every, "policy_options": {"typical_first": s.typical_first},
            # when to retrain the production model (streams.evaluation.milestones)
            "milestones": {"every_labels": s.retrain_every_labels, "accuracy_gain": s.retrain_accuracy_gain,
                           "on_drift": bool(s.retrain_on_drift), "on_stop": bool(s.retrain_on_stop)}}


class Topics:
    """The app's topics, declared once."""

    def __init__(self, app: faust.App, s: Settings):
        self.inputs = app.topic(*(s.topic(t) for t in ("predictions", "overrides", "appeals")))
        self.candidates = app.topic(s.topic("labeling.candidates"))
        self.tasks = app.topic(s.topic("labeling.tasks"))
        self.models = app.topic(s.topic("models"))
        self.deadletter = app.topic(s.topic("deadletter"))
        self.joined = app.topic(s.topic("labeling.tasks"), s.topic("labels"))
        self.audit = app.topic(s.topic("audit"))
        self.retraining = app.topic(s.topic("retraining"))
        self.predictions = s.topic("predictions")
        self.internal = {s.topic("labeling.candidates"), s.topic("labeling.tasks")}
        self.accept = {
            s.topic("predictions"): ("Prediction", "PredictionBatch", "PredictionColumns"),
            s.topic("overrides"): ("Override",),
            s.topic("appeals"): ("Appeal",),
            s.topic("labeling.candidates"): ("CandidateColumns", "CandidateBatch"),
            s.topic("labeling.tasks"): ("LabelingTask",),
            s.topic("labels"): ("Label",),
            s.topic("audit"): ("AuditEvent",),
        }


class Runtime:
    """One worker's loop and its connections: decodes, drives the loop, sends and writes.

    The loop, the ClickHouse sink and the newest model version are opened on
    first use (:meth:`start`), off the event loop.
    """

    def __init__(self, settings: Settings, topics: Topics):
        self.settings = settings
        self.topics = topics
        self.key = keys.signing_key(settings)  # the learner signs, everyone verifies with its public half
        self.loop = Loop.build(**loop_options(settings))
        self.sink: ClickHouseSink | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")  # one insert at a time
        self.publisher = ThreadPoolExecutor(1, thread_name_prefix="publish")  # model versions, off the event loop
        self.router_ready = self.trainer_ready = False
        self.candidates_owned = False  # this worker is assigned labeling.candidates (owns_budget)
        self._frozen = False  # the heap built at start is out of the collector's scans (freeze_startup_heap)
        self._rebuilding = asyncio.Lock()
        self.follower = self.task_follower = None
        self._started = asyncio.Lock()
        self.waits: list[tuple[int, str, float]] = []  # (ts, what, seconds), into agent_stats at the next batch
        self._learned_tables: set[str] = set()  # tables the learner buffered rows in since its last publish
        self._writing: asyncio.Future | None = None  # the write write_due started (write_rows retries in it)
        self.in_flight = InFlight(self.add_rows)  # the admitting agents' tasks not yet acknowledged, with their rows
        self._sending = asyncio.Lock()  # sends made one batch after another, in the order deliver was called
        self._all_written = time.monotonic()  # when a write of every table last started

    # -- start --------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume the newest model version and open ClickHouse (waiting for it), once."""
        async with self._started:
            if self.sink is None:
                self.sink = await asyncio.get_running_loop().run_in_executor(None, self._open)

    def _open(self) -> ClickHouseSink:
        s = self.settings
        last = model_feed.latest_version(s, self.key)
        if last is not None:
            self.loop.resume(last, self.key)
            log.info("resumed %s at version %s", last["model_name"], last["version"])
        sink = ClickHouseSink(wait_for_clickhouse(s), batch_size=SINK_BLOCK, flush_interval=SINK_WAIT,
                              fault_path=s.sink_fault_path or None)
        sink.remember_recent()  # rows written just before a restart are not written twice
        # before the first event is decided: the tasks sent (the caps; their events keep their
        # decision) and the candidates preselected before a restart (not decided again)
        rebuild_router(self.loop.router, s, now_ms())
        rebuild_preselection(self.loop.router, s, now_ms())
        return sink

    async def assigned(self, partitions) -> None:
        """At partition assignment, before this worker takes an event: open what :meth:`start`
        opens, and rebuild the state of the owner of each single-partition stage it was given (the
        caps if it owns ``labeling.candidates``, the label-task join and the learner if it owns
        ``labels``), so the learner learns from the first label that comes in, not a rebuild later."""
        await self.start()
        topics = {tp.topic for tp in partitions}
        # the assignment is the whole of it (not an increment): not assigned now is not owned
        self.candidates_owned = self.settings.topic("labeling.candidates") in topics
        try:
            if self.settings.topic("labeling.candidates") in topics:
                await self.ready_router()
            if self.settings.topic("labels") in topics:
                await self.ready_trainer()
        except Exception:  # the agent tries again before its first event: a failed rebuild must not stop the worker
            log.exception("rebuilding the state at partition assignment failed")
        if not self._frozen:
            freeze_startup_heap()
            self._frozen = True
        log.info("state ready for %d partitions", len(partitions))

    def revoked(self, partitions) -> None:
        """At revocation: a worker losing ``labeling.candidates`` stops admitting in process at once (its
        scorer sends its candidates through Kafka again, :meth:`owns_budget`), and its caps are rebuilt
        from ``labeling.tasks`` if it owns them again (:meth:`ready_router`): meanwhile another owner sent
        tasks its caps never counted (a scorer follows them for novelty only)."""
        if self.settings.topic("labeling.candidates") in {tp.topic for tp in partitions}:
            self.candidates_owned = self.router_ready = False

    async def ready_router(self) -> None:
        """The caps rebuilt from ``labeling.tasks`` once this worker owns them (again: tasks another
        owner sent since it started), once; at assignment, else before the first candidates."""
        async with self._rebuilding:
            if not self.router_ready:
                await asyncio.get_running_loop().run_in_executor(None, rebuild_router, self.loop.router,
                                                                 self.settings, now_ms())
                self.router_ready = True

    async def ready_trainer(self) -> None:
        """The label-task join and the learner rebuilt from the topics, once; at assignment, else
        before the first label."""
        async with self._rebuilding:
            if not self.trainer_ready:  # the trainer, suspect labels, releases and milestones (streams.replay)
                run = asyncio.get_running_loop().run_in_executor
                held = await run(self.writer, recorded, self.sink.client, self.settings.model_name)  # between writes
                rows = await run(None, rebuild_learner, self.loop, self.settings, held)
                self._learned_tables.update(table for table, _ in rows)
                self.add_rows(rows)
                self.trainer_ready = True

    # -- the agents' work -----------------------------------------------------------------
    async def score(self, events) -> None:
        now, out, sources, decisions, started, scored = now_ms(), [], [], [], time.perf_counter(), 0

        async def handle(name, record, message):
            nonlocal scored
            # a message's rows go to the sink as columns (no dict a row); its candidates stay columns (a
            # dict each only for those preselected)
            effects = self.loop.score(name, record, now, columns=True)
            scored += len(effects.candidates)
            self.add_columns(effects.columns)
            # preselected here; the rest have their decision row at once (none for those written before a restart)
            recorded = self.sink.remembered("routing_decisions")
            chosen = self.loop.preselect_many(effects.candidates, now, recorded=recorded, columns=True)
            decisions.extend(chosen.columns)
            out.extend(chosen.candidates)
            sources.extend([message] * len(chosen.candidates))

        # predictions first: an override or appeal in the same batch then finds its item
        await self.each(sorted(events, key=lambda e: e.message.topic != self.topics.predictions), handle)
        if out and self.owns_budget():
            await self.admit_here(out)
        else:
            for i in range(0, len(out), CANDIDATES_PER_MESSAGE):
                part = slice(i, i + CANDIDATES_PER_MESSAGE)
                for value in await self.encode_candidates(out[part], sources[part]):
                    await self.topics.candidates.send(value=value)
        self.add_columns(decisions)
        self.agent_stats("score", scored, started)
        await self.write_due()

    async def route(self, events) -> None:
        if not self.router_ready:
            await self.ready_router()
        started, seen, done = time.perf_counter(), 0, Effects()

        async def handle(name, record, message):
            nonlocal seen
            candidates = candidates_of(record)  # CandidateColumns, or CandidateBatch from an older scorer
            seen += len(candidates)
            self.admit(candidates, done)

        await self.each(events, handle)
        # in flight while the agent takes the next candidates: the decisions naming the tasks are buffered once
        # Kafka has the tasks, and the commit waits for that (InFlight)
        await self.deliver(done, wait=False)
        self.agent_stats("route", seen, started)
        # its rows are written with the scorer's next block, the standing timer's or the commit's: a route
        # batch that waited for a write held up every candidate behind it (docs/scaling.md)

    def admit(self, candidates, done: Effects) -> None:
        """Admit preselected ``candidates`` under the global caps, their effects into ``done``; a candidate
        whose decision was written before a restart is not decided again (:meth:`Loop.admit`)."""
        remembers = self.sink.remembered("routing_decisions")
        for c in candidates:
            done.extend(self.loop.admit(c, now_ms(), recorded=remembers(c["event_id"])))

    def owns_budget(self) -> bool:
        """True while this worker owns ``labeling.candidates`` (the global budget) and no rebalance is
        under way: its scorer then hands its preselected to the router in process (:meth:`admit_here`).
        Faust marks a rebalance at its very start, before an agent's batch ends, so a worker about to
        lose the partition sends its candidates through Kafka to whichever worker owns it next."""
        return self.candidates_owned and not self.topics.candidates.app.rebalancing

    async def admit_here(self, candidates: list) -> None:
        """This worker owns the budget: admit its scorer's preselected ``candidates`` in process, as the
        route agent admits those other workers send, instead of encoding them, sending them through
        ``labeling.candidates`` and decoding them again (a Kafka round trip, the route agent's window and
        its turn on the event loop: 60-70 ms of a kept-up event's ~150; docs/scaling.md). Their tasks are in
        flight as the route agent's are (:meth:`deliver`), so the commit of the score agent's offsets waits
        for them and their rows. After a restart nothing of them is on ``labeling.candidates``: a task sent
        comes back to the router from ``labeling.tasks`` (:func:`~streams.replay.rebuild_router`, the event
        then keeps its decision), a decision written from the sink's remembered keys, and an event with
        neither is decided afresh."""
        if not self.router_ready:
            await self.ready_router()
        done = Effects()
        self.admit(candidates, done)
        await self.deliver(done, wait=False)

    async def learn(self, events) -> None:
        if not self.trainer_ready:
            await self.ready_trainer()
        done = Effects()

        async def handle(name, record, message):
            done.extend(self.loop.take(name, record, now_ms(), offset=message.offset if name == "Label" else None))

        for event in events:
            await self.each([event], handle)
            if self.loop.due:  # made and served only once the rows of the labels it learned are written
                await self.deliver_learned(done)
                done = Effects()
                # only the tables the learner wrote to since its last version, not every agent's rows (a
                # flush inserts each table it holds rows of, 5-15 ms each in the embedded engine)
                tables, self._learned_tables = self._learned_tables, set()
                await self.write_rows("learned", tables)
                try:  # rescaled, measured, pickled and signed on its own thread: the other agents go on
                    started = time.perf_counter()
                    published = await asyncio.get_running_loop().run_in_executor(
                        self.publisher, self.loop.publish, now_ms(), self.key)
                    self.waited("publish", time.perf_counter() - started)
                    await self.deliver(published)
                except Exception:  # a version that cannot be published must not stop the learner
                    log.exception("publishing version %s failed", self.loop.trainer.learner.version)
        await self.deliver_learned(done)  # written before the next version, or with the next block or commit

    async def deliver_learned(self, effects: Effects) -> None:
        """:meth:`deliver` the learner's effects, and note the tables of their rows: the next version is
        published once those are written."""
        self._learned_tables.update(table for table, _ in effects.rows)
        await self.deliver(effects)

    async def audit(self, events) -> None:
        async def handle(name, record, message):
            self.sink.add("audit_log", record)

        await self.each(events, handle)
        await self.write_due()

    async def standing(self) -> None:
        if self.sink is not None:
            self.add_rows(self.loop.standing(now_ms()).rows)
            await self.write_due()  # rows no offset stands for (a commit may not come to write them), once due

    async def stop(self) -> None:
        """The worker stops (its consumer stopped, its offsets committed): the standing as of the last
        label, and every row still buffered, written; else a stop soon after the last labels left
        ClickHouse's standing a tick behind, and rows no offset stands for waited in memory."""
        if self.sink is not None:
            try:
                await self.in_flight.wait()
            except Exception:  # that batch's offsets were not committed: it is routed again after the restart
                log.exception("a task sent before the stop failed; its decisions are not written")
            self.add_rows(self.loop.standing(now_ms()).rows)
            await self.write_rows("stop")

    async def follow_models(self) -> None:
        """Serve model versions published by the learner of another worker (read, verified and
        unpickled off the event loop)."""
        found = await asyncio.get_running_loop().run_in_executor(self.publisher, self._newest_model)
        if found is not None:
            self.loop.follow(found[1])

    def _newest_model(self):
        if self.follower is None:
            from confluent_kafka import Consumer, TopicPartition

            s = self.settings
            self.follower = Consumer({**s.kafka_config(), "group.id": f"{s.app_id}-models-{uuid.uuid4()}",
                                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
            self.follower.assign([TopicPartition(s.topic("models"), 0)])
        return model_feed.newest(model_feed.decoded(self.follower.consume(100, timeout=0)),
                                 self.settings.model_name, self.key, above=self.loop.scorer.model.version)

    def follow_tasks(self) -> None:
        """Follow the tasks the owner of the budget sends (from the newest on), so this
        scorer's novelty centers are every item chosen, not only those it preselected."""
        if self.task_follower is None:
            from confluent_kafka import OFFSET_END, Consumer, TopicPartition

            s = self.settings
            self.task_follower = Consumer({**s.kafka_config(), "group.id": f"{s.app_id}-tasks-{uuid.uuid4()}",
                                           "enable.auto.commit": False})
            self.task_follower.assign([TopicPartition(s.topic("labeling.tasks"), 0, OFFSET_END)])
        for message in self.task_follower.consume(500, timeout=0):
            if message.error():
                continue
            event_id = codec.leading_string(message.value(), "LabelingTask", 1)
            if event_id is not None and self.loop.router.preselected(event_id):
                continue  # preselected here: a novelty center already, not worth decoding
            try:
                _, task = codec.decode(message.value(), ("LabelingTask",), check=False)
            except codec.DecodeError:
                continue
            self.loop.follow_task(task)

    # -- decoding, sending, writing ---------------------------------------------------------
    async def each(self, events, handle) -> None:
        """Run ``handle(name, record, message)`` on every event's decoded message;
        whatever fails goes to the dead-letter topic and the stream goes on."""
        for event in events:
            message = event.message
            try:
                name, record = codec.decode(message.value or b"", self.topics.accept[message.topic],
                                            check=message.topic not in self.topics.internal,
                                            multi_label=bool(self.settings.multi_label))
                await handle(name, record, message)
            except codec.DecodeError as exc:
                await self.dead_letter(message, exc.reason, exc.error)
            except UnknownLabel as exc:
                await self.dead_letter(message, str(exc), "unknown_label")
            except Exception as exc:  # a bug must not stop the stream or lose the event
                log.exception("failed on %s/%s/%s", message.topic, message.partition, message.offset)
                await self.dead_letter(message, f"{type(exc).__name__}: {exc}", "internal")

    async def deliver(self, effects: Effects, wait: bool = True) -> None:
        """Send the effects' records; their rows are buffered once Kafka has every one of them, so a
        decision row never names a task that was lost. With ``wait`` (the learner) this waits for Kafka;
        without (the agents that admit: the score agent of the owner, the route agent) the sends are made
        and stay in flight while the agent goes on, and their rows are buffered when the last is
        acknowledged: the route agent waited a round trip to the broker (and every agent batch on the event
        loop in between) before it took its next candidates, and the producer makes a send wait while the
        batch before it to the same partition is not yet sent (16 KiB, about 40 tasks), which the score
        agent would wait through before scoring its next messages. The commit waits for every send in
        flight first (:class:`InFlight`), so a committed offset never runs ahead of its tasks or their rows:
        a batch is in flight from this call on, its sends made in the order of the calls; a failed send is
        raised by the next :meth:`deliver` or the commit, as it was by this one, and its offsets are not
        committed."""
        self.in_flight.raise_failed()
        if len(self.in_flight) >= IN_FLIGHT:  # the broker behind or away: wait for the oldest batch
            started = time.perf_counter()
            await self.in_flight.oldest()
            self.waited("in_flight", time.perf_counter() - started)
        if not (effects.tasks or effects.models or effects.retraining):
            self.add_rows(effects.rows)
        elif wait:
            await self.send(effects)
            self.add_rows(effects.rows)
        else:
            self.in_flight.add([asyncio.ensure_future(self.send(effects))], effects.rows)

    async def send(self, effects: Effects) -> list:
        """Send the effects' records, in the order :meth:`deliver` was called, and wait until Kafka has them all."""
        # built here by the router, from decoded input: fastavro's validation (about two thirds of the
        # encoding, most of it building errors for union branches it rules out) is skipped; a task goes
        # straight to the producer Faust's topics send with (its futures, sensors and callbacks cost
        # more than the encoding, once per task)
        async with self._sending:
            tasks = self.topics.tasks
            send, name = tasks.app.producer.send, tasks.get_topic_name()
            sent = [await send(name, t["task_id"].encode(), codec.encode("LabelingTask", t, check=False),
                               partition=None, timestamp=None, headers=None)
                    for t in effects.tasks]
            sent += [await self.topics.models.send(key=m["model_name"].encode(),
                                                   value=codec.encode("ModelVersion", m)) for m in effects.models]
            sent += [await self.topics.retraining.send(key=r["model_name"].encode(),
                                                       value=codec.encode("Retraining", r))
                     for r in effects.retraining]
        return await asyncio.gather(*sent)

    def add_rows(self, rows) -> None:
        """Buffer ``(table, row)`` pairs in the sink, each run of one table's rows in one
        :meth:`~dashboards.sink.ClickHouseSink.add_many` (a scorer's message: two runs)."""
        for table, run in groupby(rows, key=itemgetter(0)):
            self.sink.add_many(table, map(itemgetter(1), run), project=True)

    def add_columns(self, blocks) -> None:
        """Buffer ``(table, columns)`` blocks of rows in the sink
        (:meth:`~dashboards.sink.ClickHouseSink.add_columns`)."""
        for table, columns in blocks:
            self.sink.add_columns(table, columns, project=True)

    async def encode_candidates(self, candidates: list[dict], sources: list) -> list[bytes]:
        """``CandidateColumns`` messages for ``candidates``; should one fail to encode,
        the input message it came from is dead-lettered and the others go on."""
        try:
            return [codec.encode("CandidateColumns", r, check=False) for r in to_columns(candidates)]
        except Exception:
            bad = set()
            for c, message in zip(candidates, sources):
                try:
                    codec.encode("CandidateBatch", {"candidates": [c]}, check=False)
                except Exception as exc:
                    if id(message) not in bad:
                        bad.add(id(message))
                        await self.dead_letter(message, f"cannot encode its candidate: {type(exc).__name__}: {exc}",
                                               "unencodable")
            kept = [c for c, message in zip(candidates, sources) if id(message) not in bad]
            return [codec.encode("CandidateColumns", r, check=False) for r in to_columns(kept)]

    async def dead_letter(self, message, reason: str, error: str) -> None:
        """Keep unprocessable input whole, with the reason, on ``deadletter``."""
        where = f"{message.topic}/{message.partition}/{message.offset}"
        record = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, where)), "ts": now_ms(),
                  "topic": message.topic, "partition": message.partition, "offset": message.offset,
                  "key": message.key, "payload": message.value or b"", "reason": reason, "error": error}
        log.warning("dead letter %s: %s", where, reason)
        await self.topics.deadletter.send(key=message.key, value=codec.encode("DeadLetter", record))
        self.sink.add("dead_letters", record)

    async def dead_letter_row(self, table: str, row: dict, error: str) -> None:
        """A row ClickHouse refused (already in ``dead_letters``): on the ``deadletter`` topic too."""
        payload = json.dumps(row, default=str, ensure_ascii=True).encode()
        key = str(row.get("event_id") or row.get("task_id") or "").encode("utf-8", "backslashreplace")
        record = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"row/{table}/{payload!r}")), "ts": now_ms(),
                  "topic": f"clickhouse:{table}", "partition": -1, "offset": -1, "key": key, "payload": payload,
                  "reason": f"ClickHouse refused a {table} row: {error}"[:1000], "error": "unstorable_row"}
        log.warning("dead letter: a %s row ClickHouse refused: %s", table, error)
        await self.topics.deadletter.send(key=key, value=codec.encode("DeadLetter", record, check=False))

    async def write_due(self) -> None:
        """Start writing the buffered rows (of the tables :meth:`due_tables` names) if a block is full or old
        enough, on the writer thread, and go on: one write at a time runs while the agents carry on, and the
        next block waits for it. An agent
        that waited for its write held up every event behind it for the whole insert (0.2-0.6 s, the tail
        of event-to-task latency; docs/scaling.md). Once :data:`ROWS_AHEAD` blocks wait behind a running
        write (ClickHouse down or behind) the agent waits for it, so consumption pauses while
        :meth:`write_rows` retries. Every row is written before the offsets it stands for are committed
        (:class:`DurableConsumer`)."""
        if self._writing is not None and not self._writing.done():
            if len(self.sink) >= ROWS_AHEAD * self.sink.batch_size:
                await asyncio.shield(self._writing)
            return
        if self.sink.due():
            self._writing = asyncio.ensure_future(self.write_rows("due", self.due_tables(), restart=True))

    def due_tables(self) -> set[str] | None:
        """The tables a due write takes: every table (None) once :data:`SMALL_WAIT` seconds passed since
        they were all written, else those holding at least a tenth of a block; the others wait for the
        commit, which writes every row (:data:`SMALL_WAIT`)."""
        if time.monotonic() - self._all_written >= SMALL_WAIT:
            return None
        return {table for table, rows in self.sink.pending().items() if rows >= self.sink.batch_size // 10}

    async def write_rows(self, why: str = "rows", tables: set[str] | None = None, restart: bool = False) -> None:
        """Make the buffered rows (of ``tables``, else all) durable, on the writer thread, never on the event loop.
        With ``restart``, the rows left buffered wait another interval before the sink is due again.

        While ClickHouse cannot take them the calling agent waits here with
        backoff: its batch stays unacknowledged, so consumption pauses, nothing is
        lost, and the worker keeps its group membership. Rows ClickHouse refuses
        for what they hold are set aside by the sink and go to ``deadletter``."""
        loop = asyncio.get_running_loop()
        delay, down, started = 0.5, None, time.perf_counter()
        if tables is None:
            self._all_written = time.monotonic()
        while True:
            try:
                await loop.run_in_executor(self.writer, self.sink.flush, tables, restart)
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
            self.sink.add("agent_stats", {"ts": now_ms(), "worker": WORKER, "agent": "clickhouse_outage",
                                          "events": 0, "seconds": outage, "lag": -1})
        self.waited(f"write:{why}", time.perf_counter() - started)
        for table, row, error in self.sink.take_rejected():
            await self.dead_letter_row(table, row, error)

    def waited(self, what: str, seconds: float) -> None:
        """Remember a wait of ``seconds`` if it is at least :data:`WAIT_RECORDED` (safe from any thread, and
        from the garbage collector's callbacks: only a list append); :meth:`agent_stats` writes it."""
        if seconds >= WAIT_RECORDED:
            self.waits.append((now_ms(), what, seconds))

    def agent_stats(self, agent: str, events: int, started: float) -> None:
        """Throughput of one agent batch (lag is measured from outside, by `feedbackloop.worker.lag`), and
        the waits recorded since the last batch (:meth:`waited`)."""
        self.sink.add("agent_stats", {"ts": now_ms(), "worker": WORKER, "agent": agent, "events": events,
                                      "seconds": time.perf_counter() - started, "lag": -1})
        while self.waits:
            ts, what, seconds = self.waits.pop(0)
            self.sink.add("agent_stats", {"ts": ts, "worker": WORKER, "agent": f"wait:{what}", "events": 0,
                                          "seconds": seconds, "lag": -1})

    def time_collections(self) -> None:
        """Record every garbage collection of this process that pauses it :data:`WAIT_RECORDED` or more
        (``wait:gc<generation>``)."""
        started = []

        def timed(phase, info):
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                self.waited(f"gc{info['generation']}", time.perf_counter() - started[0])

        gc.callbacks.append(timed)


class InFlight:
    """Batches of sends Kafka has not acknowledged yet, each with the rows to buffer (``buffer(rows)``) once
    it has every record of the batch; a batch with a failed send keeps its rows out and is raised by
    :meth:`raise_failed` or :meth:`wait`. Only futures: nothing here sends.

    >>> import asyncio
    >>> async def two_batches():
    ...     buffered = []
    ...     sends = InFlight(buffered.extend)
    ...     loop = asyncio.get_running_loop()
    ...     first, second = loop.create_future(), loop.create_future()
    ...     sends.add([first], [("labeling_tasks", 1)])
    ...     sends.add([second], [("labeling_tasks", 2)])
    ...     second.set_result("acknowledged")
    ...     await asyncio.sleep(0); await asyncio.sleep(0)  # the gather's callback, then the batch's
    ...     early = list(buffered)
    ...     first.set_result("acknowledged")
    ...     await sends.wait()
    ...     return early, buffered, len(sends)
    >>> asyncio.run(two_batches())
    ([('labeling_tasks', 2)], [('labeling_tasks', 2), ('labeling_tasks', 1)], 0)
    """

    def __init__(self, buffer):
        self.buffer = buffer
        self.batches: list[tuple[asyncio.Future, list]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def add(self, sent: list, rows: list) -> None:
        """A batch of send futures, and the rows to buffer once every one of them is acknowledged."""
        acked = asyncio.gather(*sent)
        self.batches.append((acked, rows))
        acked.add_done_callback(self.settle)

    def settle(self, _=None) -> None:
        """Buffer the rows of every batch Kafka has acknowledged, and forget the batch."""
        waiting = []
        for acked, rows in self.batches:
            if acked.done() and not acked.cancelled() and acked.exception() is None:
                self.buffer(rows)
            else:
                waiting.append((acked, rows))
        self.batches = waiting

    def raise_failed(self) -> None:
        """Raise the error of a batch whose send failed (its rows are never buffered)."""
        for acked, _ in self.batches:
            if acked.done():
                acked.result()

    async def oldest(self) -> None:
        """Wait until the oldest batch is acknowledged (raise if its send failed)."""
        await self.batches[0][0]
        self.settle()

    async def wait(self) -> None:
        """Wait until every batch in flight now is acknowledged and its rows buffered; raise a failed send."""
        if self.batches:
            await asyncio.gather(*(acked for acked, _ in self.batches))
            self.settle()


def freeze_startup_heap() -> None:
    """Collect once, then leave every object alive now (modules, the model, the state rebuilt at
    start) out of the garbage collector's scans. A full collection scanned them all again: in the
    worker of a latency run (600 events/s, a trained kNN) the two or three full collections each
    paused it 130-340 ms; after the freeze they paused it 30-40 ms. The youngest generation is
    collected every 50,000 allocations instead of 700, as the limit loop does: a scored message
    allocates tens of thousands of short-lived dicts, nearly all freed by reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


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


class DurableConsumer(aiokafka_driver.Consumer):
    """Faust's Kafka consumer, waiting for the route agent's tasks in flight and then writing every
    buffered ClickHouse row before it commits offsets: a committed offset never runs ahead of the tasks
    and rows it stands for, and rows go to ClickHouse in blocks, not one insert per batch."""

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        runtime = getattr(self.app, "runtime", None)
        if runtime is not None and runtime.sink is not None:
            await runtime.in_flight.wait()  # a failed send raises here: nothing is committed
            await runtime.write_rows("commit")
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)


class IdempotentProducer(aiokafka_driver.Producer):
    """Faust's Kafka producer with idempotence on (Faust enables it only inside transactions)."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def create_app(settings: Settings) -> faust.App:
    """The Faust app of one worker: its topics, and the agents over one loop."""
    datadir = Path(settings.state_dir).resolve() / "worker" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}"
                for server in (settings.kafka_bootstrap_servers or "127.0.0.1:9092").split(",")],
        broker_credentials=credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        producer_max_request_size=4_000_000,
        producer_acks=-1,
        # static group membership (KIP-345): a restarted worker takes its partitions back at once
        consumer_group_instance_id=settings.worker_id or None,
    )
    # an idempotent producer: a send retried across a broker bounce is written once
    app.transport.Producer = IdempotentProducer
    app.transport.Consumer = DurableConsumer
    topics = Topics(app, settings)
    rt = Runtime(settings, topics)
    rt.time_collections()
    app.runtime = rt

    @app.agent(topics.inputs)
    async def score(stream):
        """Score every input event and preselect; pass the preselected to the owner of the budget."""
        await rt.start()
        async for events in stream.take_events(BATCH, within=WITHIN):
            await rt.score(events)

    @app.agent(topics.candidates)
    async def route(stream):
        """Admit the preselected under the global caps; send the tasks."""
        await rt.start()
        async for events in stream.take_events(100, within=0.01):
            await rt.route(events)

    @app.agent(topics.joined)
    async def learn(stream):
        """Join labels to tasks, settle consensus, learn, publish model versions."""
        await rt.start()
        async for events in stream.take_events(100, within=0.01):
            await rt.learn(events)

    @app.agent(topics.audit)
    async def audit(stream):
        """Write the labeling service's audit events to ``audit_log``, each once."""
        await rt.start()
        async for events in stream.take_events(100, within=0.5):
            await rt.audit(events)

    @app.timer(2.0)
    async def standing():
        """Agreement, annotators' standing and the budget; and whatever rows wait."""
        await rt.standing()

    @app.timer(1.0)
    async def follow_tasks():
        """Every item chosen is a novelty center for this scorer too."""
        if rt.sink is not None:
            rt.follow_tasks()

    @app.timer(FOLLOW_MODELS)
    async def follow_models():
        """Pick up model versions published by the learner of another worker."""
        if rt.sink is not None:
            await rt.follow_models()

    @app.on_before_shutdown.connect
    async def on_before_shutdown(sender, **kwargs):
        """Everything buffered written before the worker ends (:meth:`Runtime.stop`)."""
        await rt.stop()

    @app.on_partitions_revoked.connect
    async def on_partitions_revoked(sender, revoked, **kwargs):
        """No more admissions in process once ``labeling.candidates`` is revoked (:meth:`Runtime.revoked`)."""
        rt.revoked(revoked)

    @app.on_partitions_assigned.connect
    async def on_partitions_assigned(sender, assigned, **kwargs):
        """The owners' state rebuilt before the first event of the new assignment (:meth:`Runtime.assigned`)."""
        await rt.assigned(assigned)

    return app
