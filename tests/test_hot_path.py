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
