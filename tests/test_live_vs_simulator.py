"""The live loop learns as the simulator says.

One demo stream is played twice: through the live worker (real Kafka, the
worker process, the annotator pool, ClickHouse) and offline through the
worker's own :class:`~streams.loop.Loop` (:func:`feedbackloop.demo.rehearse`,
no broker), with the same settings, model, policy, annotators and seed. The
event ids fix the router's draws, the annotators' answers are fixed by the item,
the learner's model does not depend on the order labels arrive in, and the demo
keeps pace with the learner, so what is left to differ is what a live worker
must do differently: it reads its partitions in turn, admits a preselected item
a hop later, and learns a label a little after its task was routed.

The last version both runs published is scored on the same yardstick: every
row of the dataset that neither version learned (about 4,500 items, with their
true labels). Its accuracy must agree within 3 points. Each run's own control
accuracy (what the worker reports) is checked too, more loosely: a control
slice of a few hundred items scatters by about 2 points around the models'
difference. Measured (6,000 events, this test's settings, a quiet machine),
live minus offline: on the unseen rows +0.9, +0.4, +0.9 and +0.8 points (seeds
2-5; reported control accuracies -0.2, +2.8, +3.5, +2.6 on 469-491 control
items); on all 5,300 rows -0.7, +0.5, +0.2 and 0.0 (seeds 1-4; reported 0.0,
+1.4, +0.2, +3.7 on 464-516 items). At a 10% budget and 40% control (about
230 control items) the models differed by up to 1.9 points and the reported
figures by up to 5.2 (-4.0 in one CI run), which is why this test buys more
labels than the demo does.

Measured before the fixes this test pins (seed 1, 4,000 events): live 0.75,
offline 0.89 control accuracy. The worker's learner started late and scored the
stream with no shadow version, and River's kNN pipeline learned the same labels
into a different model in the worker's order than in the stream's.
"""

from __future__ import annotations

import pytest

from feedbackloop import datasets, demo, keys
from streams.learning import snapshot
from streams.replay import Reader

pytestmark = pytest.mark.kafka

#: 6,000 events at 300/s: the live run takes about 35 s.
SEED, EVENTS, RATE = 1, 6000, 300.0


def versions_on_topic(settings) -> dict[int, dict]:
    """The ``ModelVersion`` records a run left on its ``models`` topic, by version."""
    with Reader(settings) as reader:
        low, high = reader.watermarks("models")
        return {r["version"]: r for _, r in reader.read("models", ("ModelVersion",), low, high)
                if r["model_name"] == settings.model_name}


def key_of(x: dict) -> tuple:
    return tuple(sorted(x.items()))


def test_live_worker_and_offline_loop_end_at_the_same_accuracy(kafka, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the demo's worker keeps its local state
    # twice the demo's budget and a larger control slice: models that have settled, a steadier yardstick
    settings = kafka.replace(state_dir=str(tmp_path / "demo"), budget_fraction=0.2, control_fraction=0.5,
                             publish_every=25, overlap=1, gold_rate=0.0,
                             # reviews of suspect labels correct control labels as they come back, which
                             # moves the yardstick itself between the two runs; tests/test_suspects.py
                             # covers them
                             suspect_share=0.0)
    live = demo.play(settings, events=EVENTS, rate=RATE, seed=SEED, annotator_error=0.05, progress=False)

    rows = datasets.load("bananas").rows
    traffic = demo.stream(rows, SEED, events=EVENTS, rate=RATE)
    offline = demo.rehearse(settings.replace(seed=SEED), traffic,
                            demo.team(traffic.truth.get, SEED, annotator_error=0.05))

    assert live["predictions"] == EVENTS and live["dead_letters"] == 0
    both = set(live["control_accuracy"]) & set(offline["control_accuracy"])
    last = max(both, key=int)
    assert int(last) >= max(len(live["control_accuracy"]), len(offline["control_accuracy"])) - 1, (live, offline)
    n_live, n_offline = live["control_labels"][last], offline["control_labels"][last]
    # the same control slice, within a few items: the draws are fixed by the event ids
    assert n_live >= 200 and abs(n_live - n_offline) <= 0.12 * n_offline, (n_live, n_offline)

    # the two last versions, as signed on each run's models topic, scored on the rows neither learned
    live_record = versions_on_topic(settings.replace(topic_prefix=live["topic_prefix"]))[int(last)]
    states = [snapshot.open_snapshot(live_record, keys.verify_key(settings)),
              snapshot.loads(offline["versions"][last]["snapshot"])]
    learned = {key_of(x) for state in states for x, _ in state["state"]["learned"]}
    unseen = [(x, y) for x, y in rows if key_of(x) not in learned]
    assert 3000 <= len(unseen) <= len(rows) - len(learned) // 2, (len(unseen), len(learned))
    acc_live, acc_offline = (sum(s["model"].predict_one(x) == y for x, y in unseen) / len(unseen) for s in states)
    reported = live["control_accuracy"][last], offline["control_accuracy"][last]
    assert acc_offline > 0.8, (acc_offline, offline["control_accuracy"])  # it learned: a coin scores 0.5 here
    assert abs(acc_live - acc_offline) <= 0.03, (last, acc_live, acc_offline, reported)
    assert abs(reported[0] - reported[1]) <= 0.06, (last, reported, acc_live, acc_offline)
