"""The live loop learns as the simulator says.

One demo stream is played twice: through the live worker (real Kafka, the
worker process, the annotator pool, ClickHouse) and offline through the
worker's own :class:`~streams.loop.Loop` (:func:`feedbackloop.demo.rehearse`,
no broker), with the same settings, model, policy, annotators and seed. The
event ids fix the router's draws and the annotators' answers are fixed by the
item, so the two runs differ only where a live run must: the worker reads a
partitioned topic partition by partition, learns a label a little after its
task was routed, and meanwhile scores with the version it has. The offline
replay does as the live run did (:class:`feedbackloop.demo.Timing`, read back
from its ClickHouse: the order it scored the predictions in, the version it
scored each with, the version that learned each label), so what is left to
differ is the code: featurising, consensus, learning, publishing, measuring.
The control accuracy of the last version both published must agree within 3
points. (Without the live timing the two differ by up to 14 points: a worker
whose learner lags scores with an old version, and its policy picks by it.)
"""

from __future__ import annotations

import pytest

from dashboards.connection import connect
from feedbackloop import datasets, demo

pytestmark = pytest.mark.kafka

SEED, EVENTS, RATE = 1, 3000, 300.0


def test_live_worker_and_offline_loop_end_at_the_same_control_accuracy(kafka, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the demo's worker keeps its local state
    settings = kafka.replace(state_dir=str(tmp_path / "demo"), budget_fraction=0.1, control_fraction=0.2,
                             publish_every=25, overlap=1, gold_rate=0.0)
    live = demo.play(settings, events=EVENTS, rate=RATE, seed=SEED, annotator_error=0.05, progress=False)

    timing = demo.Timing.from_clickhouse(connect(live["clickhouse_dsn"]))
    assert len(timing.served) == len(timing.order) == EVENTS

    traffic = demo.stream(datasets.load("bananas").rows, SEED, events=EVENTS, rate=RATE)
    offline = demo.rehearse(settings.replace(seed=SEED), traffic,
                            demo.team(traffic.truth.get, SEED, annotator_error=0.05), timing=timing)

    assert live["predictions"] == EVENTS and live["dead_letters"] == 0
    last = max(set(live["control_accuracy"]) & set(offline["control_accuracy"]), key=int)
    assert int(last) >= len(live["control_accuracy"]) - 1, (live["control_accuracy"], offline["control_accuracy"])
    n_live, n_offline = live["control_labels"][last], offline["control_labels"][last]
    # the same control slice: the draws are fixed by the event ids
    assert n_live >= 50 and abs(n_live - n_offline) <= 0.1 * n_offline, (n_live, n_offline)
    acc_live, acc_offline = live["control_accuracy"][last], offline["control_accuracy"][last]
    assert acc_offline > 0.7, offline["control_accuracy"]  # it learned: a coin scores about 0.5 here
    assert abs(acc_live - acc_offline) <= 0.03, (live["control_accuracy"], offline["control_accuracy"])
