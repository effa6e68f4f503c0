"""The whole loop on a local stack: a real dataset replayed as production traffic.

A deliberately imperfect production model (trained on a small sample) predicts
every item; users override a share of its errors and appeal a few; the worker
scores and routes; simulated annotators label the tasks; the shadow model
learns and publishes versions. At the end the report is read back from
ClickHouse, so its figures are the ones analysts see.

Stopping: what the demo started (the stack's two JVMs unless ``keep``, the
worker, the labeling service) is stopped in reverse order when it ends, also
on Ctrl-C, SIGTERM or SIGHUP, all within :data:`STOP_SECONDS`. If the demo
itself is killed (SIGKILL), its worker stops by itself and a watcher process
stops the stack (:data:`ORPHAN_WATCH`).

The stream (:func:`stream`: events with ids fixed by the item, the truth) and
the annotators (:func:`team`: answers fixed by the seed, the annotator and the
item) are made once, so :func:`rehearse` replays the very same run through the
worker's :class:`~streams.loop.Loop` offline, with no Kafka, as the simulator
does: ``tests/test_live_vs_simulator.py`` checks that both end at the same
control accuracy. (They are not identical decision by decision: the worker reads
its partitions in turn and admits a preselected item a hop later, so about one
decision in ten differs, and the two runs differ as two live runs of one seed do.)

``feedbackloop demo`` (:func:`run`) calls :func:`play` and prints its :func:`summary`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from river import linear_model, multiclass, neighbors, preprocessing
from tqdm import tqdm

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.annotators import AnnotatorPool, SimulatedAnnotator
from dashboards.sink import optimize
from feedbackloop import datasets, stack, worker
from dashboards.connection import connect_settings
from feedbackloop.producer import Producer
from feedbackloop.settings import Settings
from streams import model_feed
from streams.evaluation.production import wilson
from streams.labels import set_agreement
from streams.learning import one_vs_rest
from streams.loop import Loop

#: Seconds from the start of the clean-up until every process the demo started is gone.
STOP_SECONDS = 9.5

#: Run by a watcher process the demo starts with its stack. The demo writes the
#: pid of each worker it spawns to the watcher's stdin, and kills the watcher
#: once it has stopped everything itself. If the demo dies first, even by
#: SIGKILL, the watcher's stdin ends: it gives the workers (which stop by
#: themselves then) up to ``argv[1]`` seconds, and stops the stack.
ORPHAN_WATCH = """
import os, sys, time
pids = [int(line) for line in sys.stdin]
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and any(alive(pid) for pid in pids):
    time.sleep(0.2)
from feedbackloop import stack
from feedbackloop.settings import Settings
stack.stop(Settings.from_env())
"""


@contextlib.contextmanager
def _uninterrupted():
    """Ignore Ctrl-C, SIGTERM and SIGHUP inside (a second Ctrl-C must not cut a
    clean-up short and leave orphans); only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Started(contextlib.ExitStack):
    """What a run started. Leaving it stops them in reverse order, uninterrupted,
    together within :data:`STOP_SECONDS`; a step takes at most :meth:`left`."""

    deadline = 0.0

    def left(self, reserve: float = 0.0) -> float:
        """Seconds the current step may take, keeping ``reserve`` for the steps after it."""
        return max(0.5, self.deadline - time.monotonic() - reserve)

    def __exit__(self, *exc) -> bool:
        with _uninterrupted():
            self.deadline = time.monotonic() + STOP_SECONDS
            return super().__exit__(*exc)


def _end(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    if process.stdin:
        process.stdin.close()


#: Tasks the annotators may take before the learner's first version (its cold start waits for
#: ``min_control`` control labels), when the replay keeps pace with the learner; raised by as many
#: each time the learner has published nothing after :data:`WARM_UP_STALL` seconds of waiting.
WARM_UP_TASKS = 40
WARM_UP_STALL = 5.0

#: The longest the replay waits for the learner at once, and the longest it waits for a learner
#: that publishes nothing new, in seconds.
MAX_STALL = 20.0
IDLE = 3.0


class LearnerWatch:
    """How far the worker's learner is behind the annotators: the ``labels_seen`` of the newest
    version it published on ``models`` (only that counter is read; the demo loads no model).

    A worker that learns late scores with an old version: its policy then picks by a model that has
    not seen the labels it already bought, and the run would measure the machine's load rather than
    the loop. :meth:`keep_pace` lets the replay wait for it.
    """

    def __init__(self, settings: Settings, behind: int = 50):
        self.consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-demo-watch",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(settings.topic("models"), 0, OFFSET_BEGINNING)])
        self.behind = behind
        self.warm_up = WARM_UP_TASKS
        self.slack = 0  # tasks that taught no new label (reviews, gold checks, adjudications)
        self.version = self.labels_seen = 0

    def poll(self) -> int:
        for _, record in model_feed.decoded(self.consumer.consume(100, timeout=0)):
            if record["version"] > self.version:
                self.version, self.labels_seen = record["version"], record["labels_seen"]
        return self.labels_seen

    def keep_pace(self, tasks) -> float:
        """Wait while the annotators have taken (``tasks()``) more than ``behind`` tasks the learner has
        not published yet (before its first version: ``warm_up``), and the learner is still catching
        up (a task that teaches no new label, such as a review or a gold check, is never caught up
        with: once the learner has published nothing new for :data:`IDLE` seconds, the gap left counts
        as such tasks from then on), at most :data:`MAX_STALL` seconds; return the seconds waited."""
        start = moved = time.monotonic()
        seen = self.poll()
        while (now := time.monotonic()) - start < MAX_STALL:
            allowed = self.behind if self.version else self.warm_up
            if tasks() - seen - self.slack <= allowed:
                break
            if not self.version and now - start > WARM_UP_STALL:  # its first version needs more labels
                self.warm_up += WARM_UP_TASKS
                break
            if self.version and now - moved > IDLE:
                self.slack = tasks() - seen - allowed
                break
            time.sleep(0.05)
            if self.poll() > seen:
                seen, moved = self.labels_seen, time.monotonic()
        return time.monotonic() - start

    def close(self) -> None:
        self.consumer.close()


#: The demo's production models (``--production``), each fitted on the same small random sample.
#: ``linear`` (the default): a logistic regression, one pass; on Bananas, a set no line separates, it is
#: about a coin (0.41-0.56 over seeds 0-12, below the 55% majority) and its probabilities hardly leave
#: 0.5 (median margin 0.014-0.066), so its doubt says nothing and the policy's early picks are nearly
#: uniform. ``knn``: five nearest neighbours, what a plausible production model looks like there (0.79-0.85,
#: its doubt near the classes' boundary); on this stream the policy then does worse than with ``linear``
#: (docs/policy.md, 2026-12-01: "A plausible production model").
PRODUCTION_MODELS = ("linear", "knn")


def production_model(rows, sample: float, seed: int, kind: str = "linear"):
    """A deliberately imperfect model fitted on a small random ``sample`` of ``rows`` (see
    :data:`PRODUCTION_MODELS`).

    >>> rows = [({"x": float(i % 40)}, "a" if 10 <= i % 40 < 30 else "b") for i in range(400)]
    >>> def accuracy(kind):
    ...     model = production_model(rows, 0.25, seed=0, kind=kind)
    ...     return sum(model.predict_one(x) == y for x, y in rows) / len(rows)
    >>> accuracy("linear") < 0.75 < accuracy("knn")
    True
    """
    if kind not in PRODUCTION_MODELS:
        raise ValueError(f"unknown production model {kind!r}: one of {', '.join(PRODUCTION_MODELS)}")
    rng = random.Random(seed)
    if kind == "knn":
        model = preprocessing.StandardScaler() | neighbors.KNNClassifier(n_neighbors=5)
    else:
        model = preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
    for x, y in rng.sample(rows, max(10, int(len(rows) * sample))):
        model.learn_one(x, y)
    return model


def production_sets(rows, sample: float, seed: int, classes: list[str]):
    """A weak multi-label model: one-vs-rest logistic regressions fitted on a small random sample."""
    rng = random.Random(seed)
    model = one_vs_rest.make("linear")
    for x, y in rng.sample(rows, max(10, int(len(rows) * sample))):
        one_vs_rest.learn(model, x, set_agreement.label_set(y), classes)
    return model


def _probabilities(model, x, classes) -> dict[str, float]:
    raw = model.predict_proba_one(x)
    p = {c: max(0.0, float(raw.get(c, 0.0))) for c in classes}
    total = sum(p.values())
    return {c: v / total for c, v in p.items()} if total > 0 else {c: 1.0 / len(classes) for c in classes}


@dataclass
class Stream:
    """The demo's traffic, made before anything runs: ``events`` as ``(schema name, record)`` in order,
    each with an event id fixed by its item (the router's draw is fixed by the event id, so a
    replay draws as the live run did), and the ``truth`` annotators answer from."""

    events: list[tuple[str, dict]] = field(default_factory=list)
    truth: dict[str, str] = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)


def stream(rows, seed: int, events: int = 5000, dataset: str = "bananas", rate: float = 250.0,
           override_rate: float = 0.05, appeal_rate: float = 0.02, production_sample: float = 0.02,
           drift_at: int | None = None, start_ms: int = 0, production: str = "linear") -> Stream:
    """The demo's stream from ``rows``: a seeded order, the ``production`` model's predictions
    (:func:`production_model`), users overriding a share of its errors and appealing a few; timestamps
    ``rate`` per second from ``start_ms``. With ``drift_at``, every true label moves to the next class from that event.
    Rows whose labels join classes with ``|`` (:func:`feedbackloop.datasets.label_sets`) make a
    multi-label stream: the production model gives each class's P(in the set) and predicts the set
    of those over 0.5 (joined by ``|``; one-vs-rest logistic regressions whatever ``production``);
    users override a wrong set with the true one (no drift).

    >>> sets = stream([({"x": float(i)}, "a|b" if i % 2 else "b") for i in range(100)], seed=1, events=50)
    >>> e = sets.events[0][1]
    >>> sorted(e["probabilities"]), set(e["predicted_label"].split("|")) <= {"a", "b", ""}
    (['a', 'b'], True)

    >>> rows = [({"x": float(i)}, "a" if i % 3 else "b") for i in range(300)]
    >>> s = stream(rows, seed=1, events=200, override_rate=0.5)
    >>> s.sent["predictions"], s.events[0][1]["event_id"], s.sent["overrides"] > 0
    (200, 'bananas-0', True)
    >>> [e for e in stream(rows, seed=1, events=200, override_rate=0.5).events] == s.events
    True
    """
    rng = random.Random(seed)
    rows = list(rows)
    rng.shuffle(rows)
    rows = (rows * (events // len(rows) + 1))[:events]
    multi = datasets.label_sets(datasets.Dataset(dataset, rows)) is not None
    if multi:
        classes = sorted(set().union(*(set_agreement.label_set(y) for _, y in rows)))
        model = production_sets(rows, production_sample, seed, classes)
    else:
        classes = sorted({y for _, y in rows})
        model = production_model(rows, production_sample, seed, production)
    out, correct = Stream(), 0
    for i, (x, y) in enumerate(rows):
        if drift_at is not None and i >= drift_at and not multi:
            y = classes[(classes.index(y) + 1) % len(classes)]
        item_id, ts = f"{dataset}-{i}", start_ms + int(i * 1000 / rate)
        if multi:
            y = one_vs_rest.joined(set_agreement.label_set(y))
            proba = one_vs_rest.proba(model, x, classes)
            predicted = one_vs_rest.joined(c for c in classes if proba[c] > 0.5)
        else:
            proba = _probabilities(model, x, classes)
            predicted = max(classes, key=proba.__getitem__)
        out.truth[item_id] = y
        correct += predicted == y
        out.events.append(("Prediction", {
            "event_id": item_id, "item_id": item_id, "ts": ts, "model_name": "production",
            "model_version": "weak-1", "predicted_label": predicted, "probabilities": proba, "features": x,
            "text": None, "context": {}}))
        out.sent["predictions"] += 1
        if predicted != y and y:
            if rng.random() < override_rate:
                out.events.append(("Override", {
                    "event_id": f"{item_id}:override", "item_id": item_id, "ts": ts, "predicted_label": predicted,
                    "override_label": y, "user_id": f"user-{rng.randrange(100)}", "context": {}}))
                out.sent["overrides"] += 1
            elif rng.random() < appeal_rate:
                out.events.append(("Appeal", {
                    "event_id": f"{item_id}:appeal", "item_id": item_id, "ts": ts, "predicted_label": predicted,
                    "reason": "this looks wrong to me", "user_id": None, "context": {}}))
                out.sent["appeals"] += 1
    out.sent["events"] = len(out.events)
    out.sent["production_accuracy"] = round(correct / max(1, len(rows)), 4)
    return out


#: With a careless annotator on the team (an error rate of CARELESS or more), the demo reviews more suspect
#: labels than a worker does by default (FEEDBACKLOOP_SUSPECT_SHARE): a review is what corrects the labels they
#: got wrong. With careful annotators it keeps the worker's share, so reviews do not eat the savings.
SUSPECT_SHARE = 0.3
CARELESS = 0.2


def team(truth, seed: int, annotators: int = 3, annotator_error: float = 0.05,
         annotator_errors: list[float] | None = None, reviewer: bool = False) -> list[SimulatedAnnotator]:
    """The simulated annotators: ``annotator_errors`` (default: ``annotator_error`` for all; with five or
    more, rising in steps and the last one careless at 40%), and a reviewer if asked for.

    >>> [(a.annotator_id, a.error_rate) for a in team({}.get, seed=0, annotators=5, annotator_error=0.05)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('annotator-1', 0.05), ('annotator-2', 0.05), ('annotator-3', 0.1), ('annotator-4', 0.1),
     ('annotator-5', 0.4)]
    """
    errors = list(annotator_errors or [annotator_error] * annotators)
    if annotator_errors is None and annotators >= 5:
        errors = [annotator_error * (1 + i // 2) for i in range(annotators - 1)] + [0.4]
    out = [SimulatedAnnotator(f"annotator-{i + 1}", truth, errors[i % len(errors)], seed + i)
           for i in range(annotators)]
    if reviewer:
        out.append(SimulatedAnnotator("reviewer-1", truth, min(errors) / 2, seed + 99, tier="reviewer"))
    return out


def rehearse(settings: Settings, traffic: Stream, annotators: list[SimulatedAnnotator], key=None) -> dict:
    """The demo's run offline: ``traffic`` through the worker's own :class:`~streams.loop.Loop`
    (built from the same settings, as the worker builds it), each task labeled at once by the
    annotators the live pool would ask, versions published as the worker publishes them. Returns what
    the live run's report holds of it: ``control_accuracy`` and ``control_labels`` per version, and the
    newest ``savings`` and ``lift`` rows; and ``versions``, each published ``ModelVersion`` record by its
    version (signed with ``key``), as the live run leaves them on its ``models`` topic.

    >>> rows = [({"x": float(i % 40), "y": float(i % 7)}, "a" if i % 40 < 20 else "b") for i in range(400)]
    >>> traffic = stream(rows, seed=0, events=400)
    >>> out = rehearse(Settings().replace(budget_fraction=0.3, min_control=5, publish_every=20, seed=0),
    ...                traffic, team(traffic.truth.get, seed=0, annotator_error=0.0))
    >>> len(out["control_accuracy"]) > 2, list(out["control_accuracy"].values())[-1] >= 0.9
    (True, True)
    """
    from streams.app import loop_options  # the worker's own options (importing the app loads Faust)

    if key is None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        key = Ed25519PrivateKey.generate()
    loop = Loop.build(**loop_options(settings))
    pool = AnnotatorPool(settings, annotators)
    out = {"control_accuracy": {}, "control_labels": {}, "savings": None, "lift": None, "versions": {}}

    def label(tasks, now):
        while tasks:
            task = tasks.pop(0)
            loop.take("LabelingTask", task, now)
            for annotator in pool.assign(task):
                answer = annotator.label(task, now)
                if answer is not None:
                    tasks.extend(loop.take("Label", answer, now).tasks)
                if loop.due:
                    done = loop.publish(now, key)
                    tasks.extend(done.tasks)  # reviews of suspect labels, labeled as the worker's are
                    record = done.models[0]
                    out["control_accuracy"][str(record["version"])] = record["control_accuracy"]
                    out["control_labels"][str(record["version"])] = record["control_labels"]
                    out["versions"][str(record["version"])] = record
                    rows = dict(done.rows)
                    out["savings"], out["lift"] = rows.get("label_savings"), rows.get("policy_lift")

    for name, record in traffic.events:
        for candidate in loop.score(name, record, record["ts"]).candidates:
            label(list(loop.route(candidate, record["ts"]).tasks), record["ts"])
    return out


def seed_list(text: str) -> list[int]:
    """Seeds from ``"3-12"``, ``"0,1,2"`` or a mix of both.

    >>> seed_list("0,1,2"), seed_list("3-5,9")
    ([0, 1, 2], [3, 4, 5, 9])
    """
    seeds = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def rehearse_seeds(settings: Settings, seeds: list[int], dataset: str = "bananas", label_column: str | None = None,
                   events: int = 5000, rate: float = 250.0, annotators: int = 3, annotator_error: float = 0.05,
                   annotator_errors: list[float] | None = None, override_rate: float = 0.05, appeal_rate: float = 0.02,
                   production: str = "linear", progress: bool = True) -> list[dict]:
    """:func:`rehearse` the demo once per seed (its stream, annotators and settings as ``demo`` makes them):
    per seed, the last version's control accuracy and the newest ``savings`` row. No stack is needed.

    >>> rows = rehearse_seeds(Settings().replace(budget_fraction=0.3, min_control=5, publish_every=20),
    ...                       [0], events=300, progress=False)
    >>> rows[0]["seed"], 0.0 <= rows[0]["control_accuracy"] <= 1.0, "ratio" in rows[0]["savings"]
    (0, True, True)
    """
    rows = datasets.load(dataset, label_column).rows
    if datasets.label_sets(datasets.Dataset(dataset, rows)) is not None:
        raise ValueError("the offline demo replays single-label datasets; run a multi-label one live")
    out = []
    for seed in tqdm(seeds, desc="demo offline", unit="seed", disable=not progress):
        traffic = stream(rows, seed, events, dataset, rate, override_rate=override_rate, appeal_rate=appeal_rate,
                         production=production)
        labelers = team(traffic.truth.get, seed, annotators, annotator_error, annotator_errors,
                        reviewer=settings.overlap != 1)
        run = rehearse(settings.replace(seed=seed), traffic, labelers)
        last = max(run["control_accuracy"], key=int, default=None)
        out.append({"seed": seed, "version": last, "control_accuracy": run["control_accuracy"].get(last),
                    "savings": {k: (run["savings"] or {}).get(k) for k in SAVINGS}})
    return out


def offline_summary(rows: list[dict]) -> str:
    """One line per seed, then the median and the worst of the control accuracy and the savings ratio.

    >>> print(offline_summary([{"seed": 0, "control_accuracy": 0.9, "savings": {"ratio": 0.8, "ci_low": 0.5,
    ...     "ci_high": 1.2}}, {"seed": 1, "control_accuracy": 0.8, "savings": {"ratio": None}}]))
    seed   control accuracy   savings ratio (95% CI)
       0              0.900   0.80 (0.50-1.20)
       1              0.800   n/a
    median            0.850   0.80, below 1 on 1 of 2 seeds
    worst             0.800   0.80
    """
    def ratio(s):
        return "n/a" if s.get("ratio") is None else f"{s['ratio']:.2f} ({s['ci_low']:.2f}-{s['ci_high']:.2f})"

    acc = sorted(r["control_accuracy"] for r in rows if r["control_accuracy"] is not None)
    ratios = sorted(r["savings"]["ratio"] for r in rows if r["savings"].get("ratio") is not None)

    def median(v):
        return statistics.median(v) if v else None

    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    return "\n".join([
        "seed   control accuracy   savings ratio (95% CI)",
        *(f"{r['seed']:>4}   {fmt(r['control_accuracy'], '>16.3f')}   {ratio(r['savings'])}" for r in rows),
        f"median {fmt(median(acc), '>16.3f')}   {fmt(median(ratios), '.2f')}, below 1 on "
        f"{sum(r < 1 for r in ratios)} of {len(rows)} seeds",
        f"worst  {fmt(acc[0] if acc else None, '>16.3f')}   {fmt(ratios[-1] if ratios else None, '.2f')}",
    ])


#: The report's ``savings``: the newest ``label_savings`` row (see :mod:`streams.evaluation.savings`).
SAVINGS = ("version", "policy_labels", "random_labels_needed", "ratio", "ci_low", "ci_high", "target_accuracy",
           "policy_labels_seen", "policy_accuracy", "random_labels_seen", "random_accuracy", "n_eval")


def savings_line(savings: dict | None) -> str:
    """The summary's savings line: the labels the policy needed against random sampling, in words,
    and plainly when it did no better or the data cannot say yet.

    >>> row = {"policy_labels": 60, "random_labels_needed": 120, "ratio": 0.5, "ci_low": 0.3, "ci_high": 0.9,
    ...        "target_accuracy": 0.84, "policy_accuracy": 0.9, "random_labels_seen": 130, "n_eval": 60}
    >>> line = savings_line(row)
    >>> line[:40]
    'savings              0.50   (95% CI 0.30'
    >>> "with 60 labels, random sampling needed 120" in line, "did not beat random sampling" in line
    (True, False)
    >>> worse = savings_line({**row, "ratio": 1.5, "policy_labels": 180, "ci_low": 0.9, "ci_high": 2.0})
    >>> worse.endswith("the policy did not beat random sampling on this run)")
    True
    >>> print(savings_line({"ratio": None, "n_eval": 12}))
    savings               n/a   (not enough data yet: 12 evaluation labels, and both learning curves are needed)
    """
    if not savings or savings.get("ratio") is None:
        n = savings.get("n_eval", 0) if savings else 0
        return (f"savings           {'n/a':>7}   (not enough data yet: {n} evaluation labels, "
                "and both learning curves are needed)")
    s = savings
    words = (f"the policy reached {s['target_accuracy']:.1%} with {s['policy_labels']} labels, "
             f"random sampling needed {s['random_labels_needed']}")
    if s["policy_accuracy"] is not None and s["target_accuracy"] < s["policy_accuracy"]:
        words += (f"; random sampling never reached the policy's {s['policy_accuracy']:.1%} "
                  f"with its {s['random_labels_seen']} labels")
    if s["ratio"] >= 1:
        words += "; the policy did not beat random sampling on this run"
    elif s["ci_high"] is not None and s["ci_high"] >= 1:
        words += "; the interval includes 1: not shown to beat random sampling yet"
    return f"savings           {s['ratio']:>7.2f}   (95% CI {s['ci_low']:.2f}-{s['ci_high']:.2f}: {words})"


def report_from_clickhouse(settings: Settings, sent: dict, seconds: float, run_dir: Path | None = None) -> dict:
    """The demo's summary, as ClickHouse holds it. With ``run_dir``, the labels
    are also exported there as ``labels.csv`` (for ``feedbackloop agreement``)."""
    client = connect_settings(settings)
    optimize(client)

    def scalar(sql):
        return client.query(sql).result_rows[0][0]

    by_reason = dict(client.query(
        "SELECT reason, count() FROM labeling_tasks ARRAY JOIN reasons AS reason GROUP BY reason ORDER BY reason"
    ).result_rows)
    versions = client.query(
        "SELECT version, control_accuracy, prequential_accuracy, labels_seen, control_labels FROM model_versions "
        "ORDER BY version").result_rows
    lift = client.query("SELECT version, lift, ci_low, ci_high, n_policy, n_control, policy_accuracy, "
                        "control_accuracy FROM policy_lift ORDER BY version DESC, ts DESC LIMIT 1").result_rows
    lift = dict(zip(("version", "lift", "ci_low", "ci_high", "n_policy", "n_control", "policy_accuracy",
                     "control_accuracy"), lift[0])) if lift else None
    savings = client.query(f"SELECT {', '.join(SAVINGS)} FROM label_savings "
                           "ORDER BY version DESC, ts DESC LIMIT 1").result_rows
    savings = dict(zip(SAVINGS, savings[0])) if savings else None
    drift = [{"ts": str(ts), "version": v, "detail": json.loads(d)} for ts, v, d in client.query(
        "SELECT ts, version, detail FROM drift_events ORDER BY ts").result_rows]
    agreement = {metric: value for metric, value in client.query(
        "SELECT metric, argMax(value, window_start) FROM annotator_agreement "
        "WHERE annotator_a = '*' AND window_seconds = 0 GROUP BY metric").result_rows}
    pairs = [{"a": a, "b": b, "kappa": k} for a, b, k in client.query(
        "SELECT annotator_a, annotator_b, argMax(value, window_start) FROM annotator_agreement "
        "WHERE metric = 'cohen_kappa' AND window_seconds = 0 GROUP BY annotator_a, annotator_b "
        "ORDER BY annotator_a, annotator_b").result_rows]
    annotators = {a: {"labels": n, "gold_checks": g, "gold_accuracy": acc, "flagged": bool(f)}
                  for a, n, g, acc, f in client.query(
                      "SELECT annotator_id, argMax(labels, ts), argMax(gold_checks, ts), argMax(gold_accuracy, ts), "
                      "argMax(flagged, ts) FROM annotator_quality GROUP BY annotator_id ORDER BY annotator_id"
                  ).result_rows}
    if run_dir is not None:
        rows = client.query("SELECT item_id, annotator_id, label, toUnixTimestamp64Milli(ts), duration_ms "
                            "FROM labels ORDER BY ts, event_id").result_rows
        with (run_dir / "labels.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["item_id", "annotator_id", "label", "ts", "duration_ms"])
            out.writerows(rows)
    tasks = scalar("SELECT count() FROM labeling_tasks")
    sets = multi_label_figures(client) if settings.multi_label else None
    stopping = {metric: {"version": v, "value": value, "recommendation": r} for metric, v, value, r in client.query(
        "SELECT metric, argMax(version, ts), argMax(value, ts), argMax(recommendation, ts) "
        "FROM stopping_signals GROUP BY metric ORDER BY metric").result_rows}
    return {
        "events": scalar("SELECT count() FROM routing_decisions"),
        "predictions": scalar("SELECT count() FROM predictions"),
        "overrides": sent["overrides"],
        "appeals": sent["appeals"],
        "tasks": tasks,
        "tasks_by_reason": by_reason,
        "labels": scalar("SELECT count() FROM labels"),
        "dead_letters": scalar("SELECT count() FROM dead_letters"),
        "model_versions": len(versions),
        "lift": lift,
        "savings": savings,
        "drift_events": drift,
        "stopping": stopping,
        "consensus_labels": scalar("SELECT uniqExact(task_id) FROM consensus_labels"),
        "adjudications": scalar("SELECT count() FROM adjudications"),
        "adjudicated_tasks": scalar("SELECT uniqExact(task_id) FROM adjudications"),
        "gold_tasks": scalar("SELECT count() FROM labeling_tasks WHERE kind = 'gold'"),
        # labels found suspect and sent back for review, what reviews confirmed and corrected (streams/labels/suspects.py)
        "suspect_labels": {status: scalar(f"SELECT uniqExact(task_id) FROM suspect_labels WHERE status = '{status}'")
                           for status in ("found", "confirmed", "corrected")},
        "agreement": {**agreement, "cohen_kappa": pairs},
        "multi_label": sets,
        "annotators": annotators,
        "flagged_annotators": sorted(a for a, row in annotators.items() if row["flagged"]),
        "labels_csv": str(run_dir / "labels.csv") if run_dir is not None else None,
        "control_accuracy": {str(v): acc for v, acc, *_ in versions},
        "control_labels": {str(v): n for v, *_, n in versions},
        "control_interval": {str(v): list(wilson(round(acc * n), n)) if acc is not None else [None, None]
                             for v, acc, *_, n in versions},
        "labels_seen": {str(v): seen for v, _, _, seen, _ in versions},
        "prequential_accuracy": {str(v): acc for v, _, acc, *_ in versions},
        "production_accuracy": sent["production_accuracy"],
        "budget_fraction": settings.budget_fraction,
        "label_share": round(tasks / max(1, sent["events"]), 4),
        "sent": sent,
        "clickhouse_dsn": settings.clickhouse_dsn,
        "topic_prefix": settings.topic_prefix,  # the run's own topics
        "seconds": round(seconds, 1),
    }


def multi_label_figures(client) -> dict:
    """A multi-label run's figures from ClickHouse: the sets settled (consensus rows of method
    ``set_vote``) and their mean size, and the annotators' agreement on the items labeled more than
    once (Krippendorff's alpha with the MASI distance, exact-set agreement;
    :func:`streams.labels.set_agreement.report`)."""
    settled, size = client.query(
        "SELECT uniqExact(task_id), avg(if(label = '', 0, length(splitByChar('|', label)))) "
        "FROM consensus_labels WHERE method = 'set_vote'").result_rows[0]
    answers = client.query("SELECT item_id, annotator_id, label FROM labels ORDER BY ts, event_id").result_rows
    quality = set_agreement.report(answers) if answers else {}
    return {"sets_settled": settled, "mean_set_size": None if size != size else round(size, 3),
            "classes": len(quality.get("classes", [])), "items_labeled_twice": quality.get("n_items_multi", 0),
            "krippendorff_alpha": quality.get("krippendorff_alpha"), "exact_agreement": quality.get("exact_agreement"),
            "control_metric": "micro_f1"}


def play(settings: Settings, dataset: str = "bananas", label_column: str | None = None, events: int = 5000,
         rate: float = 250.0, seed: int = 0, annotators: int = 3, annotator_error: float = 0.05,
         override_rate: float = 0.05, appeal_rate: float = 0.02, production_sample: float = 0.02,
         annotator_errors: list[float] | None = None, gold_size: int = 50, drift_at: int | None = None,
         keep: bool = False, serve: bool = False, labeling_port: int = 8000, dashboard_port: int = 8050,
         progress: bool = True, learner_lag: int = 50, production: str = "linear") -> dict:
    """Play the demo end to end and return its report.

    The traffic is :func:`stream`'s, the annotators :func:`team`'s. With
    ``settings.overlap != 1`` a reviewer joins for adjudications; with
    ``settings.gold_rate > 0``, ``gold_size`` items of the dataset form the
    gold set mixed into the queue. With ``serve``, once the replay is done the
    stack, the worker (serving the dashboard) and the labeling service keep
    running until Ctrl-C, so a person can label in a browser. With
    ``drift_at``, the concept changes at that event: every label moves to the
    next class, while the production model goes on as before. With
    ``learner_lag`` (labels; 0: never), the replay waits whenever the learner
    falls that far behind the annotators (:meth:`LearnerWatch.keep_pace`).
    """
    started = time.monotonic()
    rows = datasets.load(dataset, label_column).rows
    if datasets.label_sets(datasets.Dataset(dataset, rows)) is not None:  # labels joined by "|": sets
        settings = settings.replace(multi_label=1)
    traffic = stream(rows, seed, events, dataset, rate, override_rate, appeal_rate, production_sample, drift_at,
                     production=production)
    truth = dict(traffic.truth)

    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = Path(settings.state_dir).resolve() / "demo" / run_id
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}demo-{run_id}.",
                                app_id=f"feedbackloop-demo-{run_id}", seed=seed,
                                clickhouse_dsn="chdb://" + str(run_dir / "clickhouse"))
    if settings.gold_rate > 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        gold_path = run_dir / "gold.jsonl"
        with gold_path.open("w") as f:
            for j, (x, y) in enumerate(random.Random(seed + 1).sample(rows, min(gold_size, len(rows)))):
                truth[f"gold-{j}"] = y
                f.write(json.dumps({"item_id": f"gold-{j}", "label": y, "features": x}) + "\n")
        settings = settings.replace(gold_path=str(gold_path))
    labelers = team(truth.get, seed, annotators, annotator_error, annotator_errors,
                    reviewer=settings.overlap != 1)

    started_stack = not settings.kafka_bootstrap_servers and not stack.local_stack(settings).status()["running"]
    with Started() as children:
        watcher = None
        if started_stack and not keep:
            watcher = subprocess.Popen([sys.executable, "-c", ORPHAN_WATCH, str(settings.stop_grace + 2)],
                                       env=worker.environment(settings), stdin=subprocess.PIPE,
                                       start_new_session=True)
            children.callback(_end, watcher)
            local = stack.local_stack(settings)
            children.callback(lambda: local.down(timeout=children.left(reserve=1.0)))
        settings = stack.start(settings)
        if serve:
            settings = settings.replace(dashboard_port=dashboard_port)
        proc = worker.spawn(settings, run_dir / "worker.log")
        children.callback(lambda: worker.stop(proc, timeout=children.left(reserve=5.0 if watcher else 0.0)))
        if watcher is not None:
            watcher.stdin.write(f"{proc.pid}\n".encode())
            watcher.stdin.flush()
        if progress:
            print(f"worker starting (log: {run_dir / 'worker.log'})", flush=True)
        worker.wait_ready(settings, proc)
        pool = AnnotatorPool(settings, labelers).start()
        children.callback(pool.stop, 2.0)
        watch = LearnerWatch(settings, learner_lag)
        children.callback(watch.close)
        producer = Producer(settings, batch_size=20)
        bar = tqdm(total=events, desc="replaying", unit="ev", disable=not progress)
        t0, i, waited = time.monotonic(), 0, 0.0
        for name, record in traffic.events:
            if name == "Prediction":
                producer.prediction(record["item_id"], record["probabilities"], record["predicted_label"],
                                    features=record["features"], model_name=record["model_name"],
                                    model_version=record["model_version"], event_id=record["event_id"])
                i += 1
                bar.update(1)
            elif name == "Override":
                producer.override(record["item_id"], record["override_label"],
                                  predicted_label=record["predicted_label"], user_id=record["user_id"],
                                  event_id=record["event_id"])
                continue
            else:
                producer.appeal(record["item_id"], reason=record["reason"],
                                predicted_label=record["predicted_label"], event_id=record["event_id"])
                continue
            if i % 50 == 0:
                bar.set_postfix(tasks=pool.tasks, labels=pool.labels)
                if learner_lag > 0:
                    stalled = watch.keep_pace(lambda: pool.tasks)
                    waited, t0 = waited + stalled, t0 + stalled  # the replay's clock stops while it waits
                ahead = i / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {proc.returncode}; see {run_dir / 'worker.log'}")
        producer.flush()
        del producer
        bar.close()
        if progress:
            print("waiting for the loop to drain...", flush=True)
        drained = worker.wait_drained(
            settings, proc, timeout=180,
            extra=lambda: worker.lag(settings, group=pool.group, topics=("labeling.tasks",)) == 0)
        if not drained:
            raise RuntimeError(f"the loop did not drain in time; see {run_dir / 'worker.log'}")
        if serve:
            pool.stop()
            serve_until_interrupted(settings, labeling_port, dashboard_port, run_dir, children)
    if pool.error:
        raise RuntimeError(f"annotators failed: {pool.error}")
    sent = {**traffic.sent, "annotator_errors": {a.annotator_id: a.error_rate for a in labelers},
            "waited_for_learner_s": round(waited, 1)}
    return report_from_clickhouse(settings, sent, time.monotonic() - started, run_dir)


def serve_until_interrupted(settings: Settings, labeling_port: int, dashboard_port: int, run_dir: Path,
                            children: contextlib.ExitStack) -> None:
    """Serve the labeling UI (the worker serves the dashboard) until Ctrl-C;
    leaving ``children`` stops the service."""
    from consumers.labeling.service import LabelingService
    from consumers.labeling.tokens import Tokens

    tokens = Tokens()
    token = tokens.mint("you", "admin")
    service = LabelingService(settings, tokens, port=labeling_port, db=run_dir / "labeling.sqlite3").start()
    children.callback(service.stop)
    print(f"\nlabel in your browser:  {service.link(token)}\n  (token {token})\n"
          f"dashboard:              http://{settings.dashboard_host}:{dashboard_port}/\n"
          "Tasks come with the simulated annotators' labels already in; yours add to them.\n"
          "Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print()


def verdict(report: dict) -> str:
    """One plain sentence: did the policy beat random sampling on this run? From the savings
    (labels to the same accuracy on the control slice), and the lift when the
    savings cannot say yet.

    >>> verdict({"savings": {"ratio": 1.4, "policy_labels": 70, "random_labels_needed": 50, "ci_high": 3.0}})
    'the policy did NOT beat random sampling on this run: it needed 70 labels where random sampling needed 50'
    >>> verdict({"savings": {"ratio": 0.5, "policy_labels": 25, "random_labels_needed": 50, "ci_low": 0.3,
    ...                      "ci_high": 0.8}})
    'the policy beat random sampling: 25 labels where random sampling needed 50 (95% CI of the ratio 0.30-0.80)'
    >>> verdict({"savings": {"ratio": 0.8, "policy_labels": 40, "random_labels_needed": 50, "ci_low": 0.4,
    ...                      "ci_high": 1.6}})[:71]
    'not shown: the policy needed 40 labels where random sampling needed 50,'
    >>> verdict({"savings": None, "lift": None})
    'not enough data yet to say whether the policy beat random sampling'
    """
    s = report.get("savings") or {}
    if s.get("ratio") is None:
        return "not enough data yet to say whether the policy beat random sampling"
    needed = f"{s['policy_labels']} labels where random sampling needed {s['random_labels_needed']}"
    if s["ratio"] >= 1:
        return f"the policy did NOT beat random sampling on this run: it needed {needed}"
    if s.get("ci_high") is not None and s["ci_high"] < 1:
        return f"the policy beat random sampling: {needed} (95% CI of the ratio {s['ci_low']:.2f}-{s['ci_high']:.2f})"
    return (f"not shown: the policy needed {needed}, but the interval of the ratio "
            f"({s['ci_low']:.2f}-{s['ci_high']:.2f}) includes 1, so it may not beat random sampling")


#: Control labels a version's accuracy needs before the summary reads it: on fewer the interval spans most of
#: the scale (0 of 2 right reads 0.000), so the summary says how many such versions it left out instead.
READ_FROM = 20


def read_versions(report: dict) -> list[str]:
    """The versions whose control accuracy was measured on at least :data:`READ_FROM` control labels.

    >>> read_versions({"control_accuracy": {"1": 0.0, "2": 0.8, "3": None}, "control_labels": {"1": 2, "2": 25}})
    ['2']
    """
    n = report.get("control_labels", {})
    return [v for v, a in report["control_accuracy"].items() if a is not None and (n.get(v) or 0) >= READ_FROM]


def version_lines(report: dict, rows: int = 8) -> list[str]:
    """Control accuracy per model version with its 95% (Wilson) interval on the control labels it was
    measured on: every version read (:func:`read_versions`), or the first, the last and evenly spaced ones
    between; a line says how many earlier versions had too few control labels to be read.

    >>> report = {"control_accuracy": {"1": 0.0, "2": 0.6, "3": None, "4": 0.85},
    ...           "control_labels": {"1": 2, "2": 20, "3": 0, "4": 100}, "labels_seen": {"1": 5, "2": 25, "4": 75}}
    >>> print("\\n".join(version_lines(report)))
      version  labels  control accuracy (95% interval, control labels)
            2      25   60.0%  (38.7-78.1%, n 20)
            4      75   85.0%  (76.7-90.7%, n 100)
      2 versions measured on fewer than 20 control labels, not read
    """
    acc, n, seen = report["control_accuracy"], report.get("control_labels", {}), report.get("labels_seen", {})
    versions = read_versions(report)
    unread = len(acc) - len(versions)
    if len(versions) > rows:
        step = (len(versions) - 1) / (rows - 1)
        versions = [versions[round(i * step)] for i in range(rows)]
    out = ["  version  labels  control accuracy (95% interval, control labels)"]
    for v in versions:
        a, k = acc[v], n[v]
        low, high = wilson(round(a * k), k)
        out.append(f"  {v:>7}  {seen.get(v, ''):>6}  {a:>6.1%}  ({low:.1%}-{high:.1%}, n {k})".replace("%-", "-", 1))
    if unread:
        out.append(f"  {unread} version{'s' * (unread != 1)} measured on fewer than {READ_FROM} control labels, not read")
    return out


def summary(report: dict) -> str:
    """The report in a few readable lines: the verdict first, then control accuracy per version with
    its interval, the savings and the lift."""
    acc, read = report["control_accuracy"], read_versions(report)
    first, last = (acc[read[0]], acc[read[-1]]) if read else (None, None)
    fmt = lambda v: "n/a" if v is None else f"{v:.1%}"
    fmt2 = lambda v: "n/a" if v is None else f"{v:.2f}"
    reasons = ", ".join(f"{k} {v}" for k, v in report["tasks_by_reason"].items())
    return "\n".join([
        f"verdict           {verdict(report)}",
        f"events            {report['events']:>7}   ({report['predictions']} predictions, "
        f"{report['overrides']} overrides, {report['appeals']} appeals)",
        f"tasks             {report['tasks']:>7}   ({reasons})",
        f"labels            {report['labels']:>7}",
        f"model versions    {report['model_versions']:>7}",
        f"control accuracy  {fmt(first):>7} -> {fmt(last)}  (first -> last version with {READ_FROM} or more "
        "control labels)",
        *version_lines(report),
        f"production model  {fmt(report['production_accuracy']):>7}"
        + ("   (the exact set right)" if report.get("multi_label") else ""),
        f"dead letters      {report['dead_letters']:>7}",
        *([] if report.get("multi_label") else [savings_line(report.get("savings"))]),  # single-label only
        *([f"lift over control {report['lift']['lift']:>7.2f}   (95% CI {report['lift']['ci_low']:.2f}-"
           f"{report['lift']['ci_high']:.2f}: policy labels correct the model that many times as often)"]
          if report["lift"] and report["lift"]["lift"] is not None else []),
        *([f"drift events      {len(report['drift_events']):>7}   (after labels "
           f"{', '.join(str(e['detail']['labels']) for e in report['drift_events'])})"]
          if report["drift_events"] else []),
        *([f"stopping signal   {stop['kappa_average']['recommendation']:>7}   (successive versions agree with kappa "
           f"{fmt2(stop['kappa_average']['value'])}, control accuracy gain "
           f"{fmt2(stop.get('control_accuracy_gain', {}).get('value'))})"]
          if (stop := report.get("stopping")) and "kappa_average" in stop else []),
        *([f"adjudicated tasks {report['adjudicated_tasks']:>7}   ({report['adjudications']} rounds)"]
          if report["adjudications"] else []),
        *([f"suspect labels    {report['suspect_labels']['found']:>7}   (reviewed again: "
           f"{report['suspect_labels']['confirmed']} confirmed wrong, {report['suspect_labels']['corrected']} corrected)"]
          if report.get("suspect_labels", {}).get("found") else []),
        *([f"agreement           kappa {fmt2(report['agreement'].get('fleiss_kappa'))} (Fleiss), "
           f"alpha {fmt2(report['agreement'].get('krippendorff_alpha'))} (Krippendorff)"]
          if report["agreement"].get("fleiss_kappa") is not None else []),
        *([f"multi-label       {m['sets_settled']:>7}   sets settled (mean size {fmt2(m['mean_set_size'])} of "
           f"{m['classes']} classes); agreement alpha {fmt2(m['krippendorff_alpha'])} (Krippendorff, MASI) on "
           f"{m['items_labeled_twice']} items labeled more than once; control accuracy is the micro-F1 of the sets"]
          if (m := report.get("multi_label")) else []),
        *([f"flagged annotators {', '.join(report['flagged_annotators'])} (gold accuracy under threshold)"]
          if report["flagged_annotators"] else []),
        *([f"waited           {report['sent']['waited_for_learner_s']:>7}   (seconds the replay paused for the "
           "learner to catch up)"] if report["sent"].get("waited_for_learner_s") else []),
        f"seconds           {report['seconds']:>7}",
        f"clickhouse        {report['clickhouse_dsn']}",
    ])


def write_report(report: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


# -- feedbackloop demo -------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` command to an argparse ``subparsers``."""
    d = subparsers.add_parser(
        "demo", help="the whole loop on a local stack, with a real dataset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Brings up the local stack, starts a worker, replays a dataset as production traffic from "
                    "a deliberately weak model, lets simulated annotators label the routed tasks, then prints "
                    "what ClickHouse recorded.")
    d.add_argument("--dataset", default="bananas",
                   help="bananas, phishing, imagesegments, shuttle, or a CSV path (with --label-column)")
    d.add_argument("--label-column", help="label column of a CSV dataset; classes joined by '|' make the run "
                                           "multi-label (tasks take any subset, see the README)")
    d.add_argument("--events", type=int, default=5000, help="predictions to replay")
    d.add_argument("--rate", type=float, default=250.0, help="predictions per second")
    d.add_argument("--budget", type=float, default=0.1, help="share of predictions to label")
    d.add_argument("--publish-every", type=int, default=25, help="labels between model versions")
    d.add_argument("--seed", type=int, default=0,
                   help="fixes the replay order, the production model, the users and the annotators")
    d.add_argument("--annotators", type=int, default=3, help="simulated annotators")
    d.add_argument("--annotator-error", type=float, default=0.05,
                   help="each annotator's error rate (with 5 or more: rising, the last one careless at 0.4)")
    d.add_argument("--annotator-errors", metavar="E1,E2,...", help="error rate of each annotator, explicitly")
    d.add_argument("--overlap", type=int, default=1,
                   help="labels per task from different annotators (0: adaptive); disagreements are adjudicated")
    d.add_argument("--gold-rate", type=float, default=0.0,
                   help="share of tasks followed by a known-answer gold check")
    d.add_argument("--control", type=float, default=0.2, help="share of the budget spent on the random control slice")
    d.add_argument("--suspect-share", type=float,
                   help=f"reviews of suspect labels, as a share of the labels bought (0: none; default: "
                        f"{SUSPECT_SHARE} with an annotator whose error rate is {CARELESS} or more, "
                        f"else the worker's FEEDBACKLOOP_SUSPECT_SHARE)")
    d.add_argument("--production", choices=PRODUCTION_MODELS, default="linear",
                   help="the production model, fitted on 2%% of the stream: linear (about a coin on bananas) or "
                        "knn (five nearest neighbours, a plausible one)")
    d.add_argument("--early-every", type=int, metavar="LABELS",
                   help="until the shadow has learned 100 labels, a version every this many learned labels (0: the "
                        "usual cadence; default: the worker's FEEDBACKLOOP_EARLY_EVERY, 5 unless set; docs/policy.md, "
                        "2026-12-01 morning and midday)")
    d.add_argument("--typical-first", type=float, metavar="POWER",
                   help="before the shadow's first version, the diverse share prefers typical items (density to "
                        "this power; 0: the farthest items; default: the worker's FEEDBACKLOOP_TYPICAL_FIRST, 1 unless set)")
    d.add_argument("--override-rate", type=float, default=0.05, help="share of production errors users override")
    d.add_argument("--appeal-rate", type=float, default=0.02, help="share of the other errors users appeal")
    d.add_argument("--drift-at", type=int, metavar="N",
                   help="inject a concept drift at event N: every true label moves to the next class; "
                        "the summary shows the drift events the worker raised")
    d.add_argument("--learner-lag", type=int, default=50, metavar="LABELS",
                   help="pause the replay while the learner is this many labels behind the annotators "
                        "(0: replay at the rate regardless)")
    d.add_argument("--offline", metavar="SEEDS",
                   help="no stack: replay the demo through the worker's own loop for each seed (e.g. 3-12 or "
                        "0,1,2) and print each seed's last control accuracy and savings, with the median and "
                        "the worst")
    d.add_argument("--report", metavar="PATH", help="write the report as JSON")
    d.add_argument("--keep", action="store_true", help="leave the local stack running afterwards")
    d.add_argument("--serve", action="store_true",
                   help="afterwards, keep serving the labeling UI and the dashboard until Ctrl-C")
    d.add_argument("--labeling-port", type=int, default=8000, help="port of the labeling UI with --serve")
    d.add_argument("--dashboard-port", type=int, default=8050, help="port of the dashboard with --serve")
    d.set_defaults(func=run)
    return d


def run(args, settings: Settings) -> int:
    """``feedbackloop demo``: play the demo with the command line's choices, print and write the report."""
    settings = settings.replace(budget_fraction=args.budget, publish_every=args.publish_every,
                                control_fraction=args.control, overlap=args.overlap, gold_rate=args.gold_rate)
    if args.early_every is not None:  # the demo runs what a worker runs unless told otherwise
        settings = settings.replace(early_every=args.early_every)
    if args.typical_first is not None:
        settings = settings.replace(typical_first=args.typical_first)
    errors = [float(e) for e in args.annotator_errors.split(",")] if args.annotator_errors else None
    careless = max(errors or [args.annotator_error]) >= CARELESS or (errors is None and args.annotators >= 5)
    share = args.suspect_share if args.suspect_share is not None else (
        SUSPECT_SHARE if careless else settings.suspect_share)
    settings = settings.replace(suspect_share=share)  # reviews of suspect labels
    if args.offline:
        rows = rehearse_seeds(settings, seed_list(args.offline), dataset=args.dataset,
                              label_column=args.label_column, events=args.events, rate=args.rate,
                              annotators=args.annotators, annotator_error=args.annotator_error,
                              annotator_errors=errors, override_rate=args.override_rate,
                              appeal_rate=args.appeal_rate, production=args.production)
        print(offline_summary(rows))
        write_report({"offline": rows}, args.report)
        return 0
    report = play(settings, dataset=args.dataset, label_column=args.label_column, events=args.events,
                  rate=args.rate, seed=args.seed, annotators=args.annotators, annotator_error=args.annotator_error,
                  override_rate=args.override_rate, appeal_rate=args.appeal_rate, annotator_errors=errors,
                  drift_at=args.drift_at, keep=args.keep, serve=args.serve, labeling_port=args.labeling_port,
                  dashboard_port=args.dashboard_port, learner_lag=args.learner_lag, production=args.production)
    print(summary(report))
    write_report(report, args.report)
    return 0
