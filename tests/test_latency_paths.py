"""What the latency work relies on: a flush of only some tables (the learner's, before it publishes a
version), on the real embedded ClickHouse engine; and the bench's breakdown of an event's time by stage."""

from __future__ import annotations

import pytest

from dashboards.sink import ClickHouseSink, counts

T0 = 1_764_000_000_000


def label(i: int) -> dict:
    return {"event_id": f"l-{i}", "task_id": f"t-{i}", "item_id": f"i-{i}", "label": "a", "annotator_id": "ann",
            "ts": T0 + i}


def stats(i: int) -> dict:
    return {"ts": T0 + i, "worker": "w", "agent": "score", "events": 500, "seconds": 0.1, "lag": -1}


def test_a_flush_of_some_tables_writes_those_and_leaves_the_others_buffered(db):
    now = [0.0]
    sink = ClickHouseSink(db, batch_size=1000, flush_interval=1.0, clock=lambda: now[0])
    for i in range(3):
        sink.add("labels", label(i))
        sink.add("agent_stats", stats(i))
    now[0] = 2.0
    assert sink.flush({"labels", "no_such_table"}) == 3
    assert counts(db)["labels"] == 3 and counts(db)["agent_stats"] == 0
    assert sink.pending() == {"agent_stats": 3}
    assert sink.due(), "a flush of some tables leaves the age of the others' rows as it was"
    assert sink.flush(set()) == 0
    assert sink.flush() == 3
    assert counts(db)["agent_stats"] == 3 and not sink.due()


def test_the_stages_of_an_event_add_up_to_its_latency():
    from feedbackloop.bench import EVENT_STAGES, stage_times

    times = {f"e{i}": (1000, 1100 + 7 * i, 1101 + 8 * i) for i in range(200)}  # source, created, task sent
    scored = {f"e{i}": 1010 + 3 * i for i in range(200)}
    hop = {f"e{i}": 1050 + 5 * i for i in range(150)}  # the others' candidates were admitted in process
    del scored["e0"]  # a decision row not found: its task is left out
    out = stage_times(times, scored, hop)
    assert out["tasks"] == 199 and out["in_process"] == 50
    worst = max(sent - source for e, (source, created, sent) in times.items() if e in scored)
    assert sum(out["ms"][name]["slowest_1pct_mean"] for name in EVENT_STAGES) == pytest.approx(worst, abs=0.5)
    assert out["ms"]["produced -> scored"]["max"] == 10 + 3 * 199
    assert out["ms"]["candidates sent -> admitted"]["max"] == max(1100 + 7 * i - 1050 - 5 * i for i in range(150))


@pytest.mark.kafka
def test_the_latency_bench_says_where_the_time_went(kafka, tmp_path):
    from feedbackloop import bench

    settings = kafka.replace(state_dir=str(tmp_path / "state"))
    result = bench.measure(settings, labels=50, latency_rate=200, latency_seconds=2, label_rounds=2, only="latency")
    lat, serving = result["latency"], result["label_to_serving"]
    assert "worker" not in result and lat["rate"] == 200 and lat["ms"]["n"] > 0
    stages = lat["stages"]
    assert stages["tasks"] == lat["ms"]["n"], "every task's decision row was found"
    assert stages["in_process"] == stages["tasks"], (
        "one worker owns the budget: its scorer hands every candidate to the router in process, none through Kafka")
    assert all(stages["ms"][name]["max"] <= lat["ms"]["max"] for name in bench.EVENT_STAGES)
    assert stages["ms"]["produced -> scored"]["p50"] >= 0
    assert stages["agents"]["score"]["n"] > 0 and "route" not in stages["agents"], "the route agent had nothing to do"
    assert serving["ms"]["n"] > 0 and set(serving["stages_ms"]) == {"sent -> publish started",
                                                                     "publish started -> served everywhere"}
    assert serving["agents"]["wait:publish"]["n"] >= 1  # a publish takes more than WAIT_RECORDED
    assert "event-to-task by stage" in bench.summary(result)


def test_a_batch_in_flight_with_a_failed_send_keeps_its_rows_out_and_is_raised():
    """The route agent's tasks in flight (streams.app.InFlight): a batch's rows are buffered only once every
    send of it is acknowledged; a failed send is raised by the next batch's check and by the commit's wait,
    and its rows never reach the sink. (A send refused by Kafka is a fault the broker cannot be made to
    cause on demand here, so the futures stand in for the producer's.)"""
    import asyncio

    from streams.app import InFlight

    async def run():
        buffered = []
        sends = InFlight(buffered.extend)
        loop = asyncio.get_running_loop()
        delivered, refused, waiting = loop.create_future(), loop.create_future(), loop.create_future()
        sends.add([delivered, refused], [("routing_decisions", "a")])
        sends.add([waiting], [("routing_decisions", "b")])
        delivered.set_result("acknowledged")
        refused.set_exception(RuntimeError("the broker refused the task"))
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="refused"):
            sends.raise_failed()
        with pytest.raises(RuntimeError, match="refused"):
            await sends.wait()
        assert buffered == [] and len(sends) == 2
        waiting.set_result("acknowledged")
        for _ in range(3):
            await asyncio.sleep(0)
        assert buffered == [("routing_decisions", "b")] and len(sends) == 1

    asyncio.run(run())


@pytest.mark.parametrize("seed", [1, 2])
def test_candidates_admitted_in_process_make_the_tasks_and_rows_of_the_kafka_hop(seed):
    """The owner's own scorer hands its preselected to the router in process (streams.app.Runtime.admit_here)
    instead of sending them through ``labeling.candidates``: the same tasks, byte for byte on the wire, and
    the same decision and task rows as candidates encoded, sent and decoded, with the hourly cap refusing
    some."""
    from feedbackloop import bench
    from feedbackloop.producer import as_columns
    from schemas import codec
    from schemas.candidate_columns import candidates_of, to_columns
    from streams.loop import Effects, Loop

    def owner():
        return Loop.build(seed=seed, budget_fraction=0.3, budget_per_hour=120, model_kind="linear")

    here, hop = owner(), owner()
    out = {"here": Effects(), "hop": Effects()}
    for i in range(4):
        message = as_columns(list(bench._events(200, seed=seed * 100 + i, prefix=f"s{seed}-{i}-")))
        for name, loop in (("here", here), ("hop", hop)):
            chosen = loop.preselect_many(loop.score("PredictionColumns", message, T0, columns=True).candidates,
                                         T0, columns=True).candidates
            if name == "hop":
                wire = [codec.encode("CandidateColumns", r, check=False) for r in to_columns(chosen)]
                chosen = [c for value in wire for c in candidates_of(codec.decode(value, ("CandidateColumns",))[1])]
            for c in chosen:
                out[name].extend(loop.admit(c, T0 + 1))
    tasks = {name: [codec.encode("LabelingTask", t, check=False) for t in e.tasks] for name, e in out.items()}
    assert 0 < len(tasks["here"]) == 120 < sum(table == "routing_decisions" for table, _ in out["here"].rows)
    assert tasks["here"] == tasks["hop"]
    assert out["here"].rows == out["hop"].rows


def test_a_worker_that_loses_the_budget_rebuilds_its_caps_if_it_owns_them_again():
    """Revoking ``labeling.candidates`` ends admission in process and marks the caps stale (another owner
    sends tasks they never count), so owning it again rebuilds them from ``labeling.tasks``
    (streams.app.Runtime.ready_router); another partition's revocation changes neither."""
    from types import SimpleNamespace

    from feedbackloop.settings import Settings
    from streams.app import Runtime

    settings = Settings.from_env({})
    rt = Runtime.__new__(Runtime)  # the state revocation touches, without a broker or an app
    rt.settings, rt.candidates_owned, rt.router_ready = settings, True, True
    rt.revoked([SimpleNamespace(topic=settings.topic("predictions"), partition=0)])
    assert rt.candidates_owned and rt.router_ready
    rt.revoked([SimpleNamespace(topic=settings.topic("labeling.candidates"), partition=0)])
    assert not rt.candidates_owned and not rt.router_ready
