"""The worker's hot path shortcuts keep behaviour: a task skipped undecoded by the task follower is
one :meth:`Router.follow` would have ignored, and tasks encoded without validation decode the same."""

from __future__ import annotations

import time

from feedbackloop import bench
from schemas import codec
from streams.loop import Loop


def test_the_follower_skips_exactly_the_tasks_follow_ignores():
    here, there = Loop.build(budget_fraction=0.2, seed=1), Loop.build(budget_fraction=0.2, seed=2)
    now, tasks = int(time.time() * 1000), []
    for loop, seed in ((here, 1), (there, 2)):
        for c in loop.score("PredictionBatch", {"events": list(bench._events(500, seed=seed))}, now).candidates:
            tasks += [(loop, t) for t in loop.route(c, now).tasks]
    assert {loop for loop, _ in tasks} == {here, there}
    for loop, task in tasks:
        data = codec.encode("LabelingTask", task, check=False)
        assert codec.decode(data, ("LabelingTask",))[1] == codec.decode(codec.encode("LabelingTask", task),
                                                                        ("LabelingTask",))[1]
        event_id = codec.leading_string(data, "LabelingTask", 1)
        assert event_id == task["event_id"]
        skipped = here.router.preselected(event_id)
        assert skipped == (loop is here)
        followed = here.follow_task(codec.decode(data, ("LabelingTask",), check=False)[1])
        assert not (skipped and followed)  # skipped only where follow would add nothing
        assert followed == (loop is there)


def test_columns_score_as_the_same_events_one_map_each():
    from feedbackloop.producer import as_columns
    from feedbackloop.settings import Settings

    record, key = bench.trained_in_process(Settings(), 100)
    by_maps, by_columns = Loop.build(), Loop.build()
    for loop in (by_maps, by_columns):
        loop.resume(record, key)
    events = list(bench._events(300, seed=12))
    a = by_maps.score("PredictionBatch", {"events": events}, 7).candidates
    b = by_columns.score("PredictionColumns", as_columns(events), 7).candidates
    assert by_columns.scorer._batch[1] is not None and len(a) == len(b) == 300
    for x, y in zip(a, b):
        assert x["event_id"] == y["event_id"] and x["shadow_label"] == y["shadow_label"]
        assert x["signals"].keys() == y["signals"].keys()
        assert max(abs(x["signals"][k] - y["signals"][k]) for k in x["signals"]) < 1e-9
