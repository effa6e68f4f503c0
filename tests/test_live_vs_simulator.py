"""The live loop learns as the simulator says.

One demo stream is played twice: through the live worker (real Kafka, the
worker process, the annotator pool, ClickHouse) and offline through the
worker's own :class:`~streams.loop.Loop` (:func:`feedbackloop.demo.rehearse`,
no broker), with the same settings, model, policy, annotators and seed. The
event ids fix the router's draws, the annotators' answers are fixed by the item,
the learner's model does not depend on the order labels arrive in, and the demo
keeps pace with the learner, so what is left to differ is what a live worker
must do differently: it reads its partitions in turn, admits a preselected item
a hop later, and learns a label a little after its task was routed. The control
accuracy of the last version both published must agree within 3 points.

Measured before the fixes this test pins (seed 1, 4,000 events): live 0.75,
offline 0.89. The worker's learner started late and scored the stream with no
shadow version, and River's kNN pipeline learned the same labels into a
different model in the worker's order than in the stream's.
"""

from __future__ import annotations

import pytest

from feedbackloop import datasets, demo

pytestmark = pytest.mark.kafka

#: 6,000 events: on 3,000 the last versions of the two runs differed by up to 6 points (seeds 1-3: 3.8, 0.8,
#: 4.5), since about one decision in ten differs and a few dozen policy labels still move a kNN; on 6,000
#: they differed by 0.7, 1.7, 0.5 and 2.4 points (seeds 1-4), in about 50 s.
SEED, EVENTS, RATE = 1, 6000, 300.0


def test_live_worker_and_offline_loop_end_at_the_same_control_accuracy(kafka, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the demo's worker keeps its local state
    # a larger control slice than the demo's 20%: a steadier yardstick on a short stream
    settings = kafka.replace(state_dir=str(tmp_path / "demo"), budget_fraction=0.1, control_fraction=0.4,
                             publish_every=25, overlap=1, gold_rate=0.0,
                             # reviews of suspect labels correct control labels as they come back, which
                             # moves the yardstick itself between the two runs; tests/test_suspects.py
                             # covers them
                             suspect_share=0.0)
    live = demo.play(settings, events=EVENTS, rate=RATE, seed=SEED, annotator_error=0.05, progress=False)

    traffic = demo.stream(datasets.load("bananas").rows, SEED, events=EVENTS, rate=RATE)
    offline = demo.rehearse(settings.replace(seed=SEED), traffic,
                            demo.team(traffic.truth.get, SEED, annotator_error=0.05))

    assert live["predictions"] == EVENTS and live["dead_letters"] == 0
    both = set(live["control_accuracy"]) & set(offline["control_accuracy"])
    last = max(both, key=int)
    assert int(last) >= max(len(live["control_accuracy"]), len(offline["control_accuracy"])) - 1, (live, offline)
    n_live, n_offline = live["control_labels"][last], offline["control_labels"][last]
    # the same control slice, within a few items: the draws are fixed by the event ids
    assert n_live >= 80 and abs(n_live - n_offline) <= 0.1 * n_offline, (n_live, n_offline)
    acc_live, acc_offline = live["control_accuracy"][last], offline["control_accuracy"][last]
    assert acc_offline > 0.7, offline["control_accuracy"]  # it learned: a coin scores about 0.5 here
    assert abs(acc_live - acc_offline) <= 0.03, (last, live["control_accuracy"], offline["control_accuracy"])
