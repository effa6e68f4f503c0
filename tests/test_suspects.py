"""Suspect labels (streams/labels/suspects.py): the confident-learning rule against cleanlab's,
what it finds on a stream with flipped labels, and what a review corrects."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import numpy as np
import pytest

from feedbackloop import datasets
from streams.labels.suspects import SuspectLabels, confident_thresholds, correct_learner, find
from streams.learning.learner import Learner
from streams.learning.models import make


def noisy_probs(seed: int, n: int = 400, k: int = 3, noise: float = 0.2):
    """A small synthetic set: true classes, labels with ``noise`` of them flipped, and a
    model's probabilities that lean to the true class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), true] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, given, flip


@pytest.mark.parametrize("seed", range(6))
def test_the_rule_is_cleanlabs_confident_learning_on_labels_under_their_threshold(seed):
    """Our suspects are exactly cleanlab's confident-learning label issues whose own probability
    is under the class threshold; and those are most of cleanlab's issues."""
    filter_ = pytest.importorskip("cleanlab.filter")
    count = pytest.importorskip("cleanlab.count")
    probs, given, _ = noisy_probs(seed)
    theirs = filter_.find_label_issues(given, probs, filter_by="confident_learning")
    np.testing.assert_allclose(confident_thresholds(probs, given), count.get_confident_thresholds(given, probs))
    ours, suggested, score = find(probs, given)
    under = probs[np.arange(len(given)), given] < confident_thresholds(probs, given)[given] - 1e-6
    assert ours.sum() > 10
    np.testing.assert_array_equal(ours, theirs & under)
    assert ours.sum() >= 0.8 * theirs.sum()
    assert (suggested[ours] != given[ours]).all() and (score[ours] > 0).all()


def test_hand_computed_example():
    """Three classes, thresholds by hand: a = (0.7+0.6)/2, b = (0.8+0.1)/2, c = 0.5."""
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.7, 0.1, 0.2], [0.2, 0.3, 0.5]])
    given = np.array([0, 0, 1, 1, 2])
    np.testing.assert_allclose(confident_thresholds(probs, given), [0.65, 0.45, 0.5])
    mask, suggested, score = find(probs, given)
    assert mask.tolist() == [False, False, False, True, False]  # item 3: b at 0.1 < 0.45, a at 0.7 >= 0.65
    assert suggested[3] == 0 and score[3] == pytest.approx(0.6)
    support = np.array([np.nan, np.nan, np.nan, 0.3, np.nan])
    assert find(probs, given, support)[0][3]  # other annotators give it 0.3: still suspect
    support[3] = 0.8
    assert not find(probs, given, support)[0].any()  # they back it: not suspect


def stream_scores(seed: int, dataset: str, n: int = 600, flip: float = 0.2, every: int = 25, persist: int = 3):
    """Labels of a shuffled dataset arrive one at a time, 20% of them flipped; after every
    ``every`` labels the suspects are picked (no quota). Precision and recall of the flips."""
    rows = datasets.load(dataset).rows
    rng = random.Random(seed)
    rows = rng.sample(rows, n)
    classes = sorted({y for _, y in rows})
    suspects = SuspectLabels(lambda: make("knn", offline=True), share=1.0, min_labels=50, persist=persist)
    flipped, picked = set(), set()
    for i, (x, y) in enumerate(rows):
        label = y
        if rng.random() < flip:
            label = rng.choice([c for c in classes if c != y])
            flipped.add(f"t{i}")
        suspects.add(f"t{i}", f"i{i}", x, label, {"ann": label})
        if (i + 1) % every == 0:
            picked.update(s.task_id for s in suspects.pick())
    hits = len(picked & flipped)
    return hits / max(1, len(picked)), hits / len(flipped)


def test_most_flips_are_found_with_few_false_alarms():
    """ImageSegments (7 classes, the kNN about 0.95 accurate on clean labels), seeds 0-2."""
    scores = [stream_scores(seed, "imagesegments") for seed in range(3)]
    precision, recall = [p for p, _ in scores], [r for _, r in scores]
    print("imagesegments precision, recall by seed:", scores)
    assert statistics.median(precision) >= 0.6 and min(precision) >= 0.55, scores
    assert statistics.median(recall) >= 0.75 and min(recall) >= 0.65, scores


def test_flips_on_overlapping_classes():
    """Bananas (two overlapping classes: about one clean label in ten sits on the other class's
    side, so no detector can be much more precise than 0.7 here): still far above the 0.2 a
    random pick would have, and most flips found."""
    scores = [stream_scores(seed, "bananas") for seed in range(3)]
    precision, recall = [p for p, _ in scores], [r for _, r in scores]
    print("bananas precision, recall by seed:", scores)
    assert min(precision) >= 0.45 and min(recall) >= 0.6, scores


def test_quota_and_reviews():
    """Reviews stay within ``share`` of the labels bought; a review by the first annotator does not count."""
    rng = random.Random(3)
    suspects = SuspectLabels(lambda: make("knn", offline=True), share=0.02, min_labels=10, persist=1)
    for i in range(200):
        x = rng.random()
        label = ("b" if x < 0.5 else "a") if i % 10 == 0 else ("a" if x < 0.5 else "b")
        suspects.add(f"t{i}", f"i{i}", {"x": x}, label, {"ann-1": label})
    picked = suspects.pick()
    assert len(picked) == 4 and suspects.quota == 0 and suspects.pick() == []
    assert all(int(s.task_id[1:]) % 10 == 0 for s in picked)
    s = picked[0]
    assert "threshold" in s.reason and s.annotators == ["ann-1"]
    assert suspects.review(s.task_id, "ann-1", s.suggested) is None
    assert suspects.review(s.task_id, "ann-2", s.suggested) == "confirmed"
    assert suspects.settled(s.task_id, s.suggested) == "corrected"
    assert (suspects.found, suspects.confirmed, suspects.corrected) == (4, 1, 1)
    for _ in range(50):  # more labels bought: more reviews allowed
        suspects.add(f"u{_}", f"j{_}", {"x": 0.25}, "a", {"ann-1": "a"})
    assert suspects.quota == 1


@pytest.mark.parametrize("kind", ["knn", "linear"])
def test_a_corrected_label_is_corrected_in_the_learner(kind):
    """River's kNN is rebuilt without the wrong label; a model that cannot unlearn is outvoted."""
    learner = Learner("m", kind=kind)
    rng = random.Random(0)
    wrong = {"v": 0.9, "w": 0.9}  # deep in class b, labelled a
    for _ in range(60):
        v = {"v": rng.random(), "w": rng.random()}
        learner.learn(v, "a" if v["v"] + v["w"] < 1.0 else "b")
    learner.learn(wrong, "a")
    before = learner.model.predict_proba_one(wrong).get("b", 0.0)
    learner.learn(wrong, "b")  # the trainer learns the corrected consensus
    how = correct_learner(learner, wrong, "a", "b")
    assert how == ("rebuilt" if kind == "knn" else "outweighed")
    after = learner.model.predict_proba_one(wrong).get("b", 0.0)
    assert after > before
    if kind == "knn":
        assert [y for x, y in learner.learned if x is wrong] == ["b"] and after > 0.99


def test_suspect_rows_in_the_warehouse_and_the_panel(clickhouse_dsn):
    """Rows of every step land in ``suspect_labels`` (migration 0018) through the sink, a step
    sent twice is stored once, and the panel's query counts found against confirmed by version."""
    from dashboards import queries
    from dashboards.connection import connect
    from dashboards.migrate import migrate
    from dashboards.sink import ClickHouseSink

    client = connect(clickhouse_dsn)
    migrate(client)
    rng = random.Random(4)
    suspects = SuspectLabels(lambda: make("knn", offline=True), share=0.1, min_labels=10, persist=1)
    for i in range(100):
        x = rng.random()
        label = ("b" if x < 0.5 else "a") if i % 10 == 0 else ("a" if x < 0.5 else "b")
        suspects.add(f"t{i}", f"i{i}", {"x": x}, label, {"ann-1": label})
    picked = suspects.pick()
    sink = ClickHouseSink(client)
    for s in picked:
        sink.add("suspect_labels", suspects.row(s.task_id, "found", 1_700_000_000_000, version=2))
    first, second = picked[0], picked[1]
    suspects.review(first.task_id, "ann-2", first.suggested)
    suspects.review(second.task_id, "ann-2", second.label)
    suspects.settled(first.task_id, first.suggested)
    for task_id, status in ((first.task_id, "confirmed"), (second.task_id, "cleared"), (first.task_id, "corrected")):
        sink.add("suspect_labels", suspects.row(task_id, status, 1_700_000_001_000, version=3, reviewer="ann-2"))
    sink.flush()
    sink.add("suspect_labels", suspects.row(first.task_id, "found", 1_700_000_000_000, version=2))  # again
    sink.flush()
    stored = client.query("SELECT status, label, corrected_label FROM suspect_labels FINAL "
                          f"WHERE task_id = '{first.task_id}' ORDER BY status").result_rows
    assert stored == [("confirmed", first.label, None), ("corrected", first.label, first.suggested),
                      ("found", first.label, None)]
    query = next(q for q in queries.load() if q.name == "suspect_labels")
    result = queries.run(client, query)
    assert "error" not in result, result
    rows = [dict(zip(result["columns"], r)) for r in result["rows"]]
    counts = {r["status"]: r["labels"] for r in rows}
    assert counts == {"found": len(picked), "confirmed": 1, "cleared": 1, "corrected": 1}
    assert {r["version"] for r in rows} == {2}


def test_the_loop_reviews_suspects_and_corrects_them_everywhere():
    """The worker's own Loop on the demo's stream (bananas, annotators wrong 5%, 5% and 40% of the
    time): after versions, suspects go back as review tasks to another annotator; a review that
    overturns a label corrects the consensus, the learner (or the held-out control labels) and
    the agreement figures, and the rows keep both versions."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from consumers.annotators import AnnotatorPool
    from feedbackloop.demo import stream, team
    from feedbackloop.settings import Settings
    from streams.loop import Loop

    settings = Settings().replace(seed=1)
    traffic = stream(datasets.load("bananas").rows, 1, 3000, "bananas")
    annotators = team(traffic.truth.get, 1, 3, annotator_errors=[0.05, 0.05, 0.4])
    loop = Loop.build(model_kind="knn", budget_fraction=0.1, seed=1, suspect_share=0.2)
    pool = AnnotatorPool(settings, annotators)
    key = Ed25519PrivateKey.generate()
    first, reviews, rows = {}, [], []

    def label(tasks, now):
        while tasks:
            task = tasks.pop(0)
            loop.take("LabelingTask", task, now)
            if "suspect_label" in task["reasons"]:
                reviews.append(task)
            for annotator in pool.assign(task):
                answer = annotator.label(task, now)
                first.setdefault(task["task_id"], answer)
                effects = loop.take("Label", answer, now)
                rows.extend(effects.rows)
                tasks.extend(effects.tasks)
                if loop.due:
                    effects = loop.publish(now, key)
                    rows.extend(effects.rows)
                    tasks.extend(effects.tasks)

    for name, event in traffic.events:
        for candidate in loop.score(name, event, event["ts"]).candidates:
            label(list(loop.route(candidate, event["ts"]).tasks), event["ts"])

    suspects = loop.suspects
    found = [r for t, r in rows if t == "suspect_labels" and r["status"] == "found"]
    corrected = [r for t, r in rows if t == "suspect_labels" and r["status"] == "corrected"]
    assert len(found) == suspects.found == len(reviews) > 0
    assert suspects.found <= 0.2 * len(suspects.labels) + 1
    assert 0 < suspects.corrected <= suspects.confirmed <= suspects.found
    for task in reviews:  # to someone else than who gave the label
        assert first[task["task_id"]]["annotator_id"] in task["exclude_annotators"]
    truth = lambda row: traffic.truth[row["item_id"]]  # noqa: E731
    wrong_found = sum(first[r["task_id"]]["label"] != truth(r) for r in found)
    assert wrong_found >= 0.4 * len(found)  # wrong labels: about 1 in 6 of those bought, over 2 in 5 of those sent back
    assert sum(r["corrected_label"] == truth(r) for r in corrected) >= 0.8 * len(corrected)
    assert any("control" in loop.trainer.task(r["task_id"])["reasons"] for r in corrected)
    learner = loop.trainer.learner
    for r in corrected:  # both versions in the rows; the consensus and the learner hold the new one
        assert r["label"] != r["corrected_label"]
        assert loop.trainer.consensus.tasks[r["task_id"]]["settled"] == r["corrected_label"]
        task = loop.trainer.task(r["task_id"])
        x = {**task["features"]}
        store = learner.control if "control" in task["reasons"] else learner.learned  # held out, or learned
        held = [y for item, y in store if item == x]
        assert r["corrected_label"] in held and r["label"] not in held, held
        given = {a.annotator_id: a.label for a in loop.trainer.tracker.log if a.item_id == r["item_id"]}
        assert len(given) >= 2 and r["corrected_label"] in given.values()  # the reviewer's label counts


def test_the_labeling_queue_gives_a_review_to_someone_else(tmp_path):
    """The review task (same id, next round, the labeller excluded) reopens the task in the
    labeling service's queue, for anyone but the annotator whose label is suspect."""
    from consumers.labeling.store import Store
    from streams import events
    from streams.labels.consensus import Consensus
    from streams.labels.suspects import review_task

    task = events.task(task_id="t1", event_id="e1", item_id="i1", created_ts=1, source_ts=1, kind="prediction",
                       reasons=["uncertain"], signals={}, selection_probability=0.5, priority=0.5, confidence=0.6,
                       label_set=["a", "b"], model_name="prod", model_version="1", shadow_version=1,
                       policy_version="p")
    store = Store(tmp_path / "queue.sqlite3")
    store.add_tasks([task], {("labeling.tasks", 0): 0}, now_ms=10)
    assert store.lease("ann-1", now_ms=11)["task"]["task_id"] == "t1"
    store.label("t1", "ann-1", "a", None, now_ms=12)
    consensus = Consensus()
    consensus.open(task)
    consensus.add("t1", "ann-1", "a")
    review = review_task(task, consensus)
    store.add_tasks([review], {("labeling.tasks", 0): 1}, now_ms=20)
    assert store.lease("ann-1", now_ms=21) is None
    leased = store.lease("ann-2", now_ms=22)
    assert leased["task"]["task_id"] == "t1" and leased["task"]["reasons"] == ["suspect_label"]
    store.close()



def play(restart_after: int | None = None, model_lost: bool = False, events: int = 3000):
    """The demo's stream (bananas, a careless annotator) through the worker's Loop, as
    :func:`test_the_loop_reviews_suspects_and_corrects_them_everywhere` plays it; with
    ``restart_after``, the learner side is killed right after that many published versions,
    before the rows of that version were written (its ``found`` rows are lost), and rebuilt from
    what the topics and ClickHouse hold (:class:`streams.replay.LearnerReplay`), as a worker is.
    With ``model_lost`` the version itself did not reach the topic either (its review tasks did):
    the learner resumes from the version before, and the labels since come again, as the
    consumer group delivers them after its last commit. Returns ``(final loop, rows written,
    retraining events sent, tasks sent)``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from consumers.annotators import AnnotatorPool
    from feedbackloop.demo import stream, team
    from feedbackloop.settings import Settings
    from streams.loop import Loop
    from streams.replay import LearnerReplay

    options = {"model_kind": "knn", "budget_fraction": 0.1, "seed": 1, "suspect_share": 0.2,
               "milestones": {"every_labels": 60, "accuracy_gain": 0.02, "on_drift": True, "on_stop": False}}
    traffic = stream(datasets.load("bananas").rows, 1, events, "bananas")
    pool = AnnotatorPool(Settings().replace(seed=1), team(traffic.truth.get, 1, 3, annotator_errors=[0.05, 0.05, 0.4]))
    key = Ed25519PrivateKey.generate()
    state = {"loop": Loop.build(**options)}
    topic_tasks, topic_labels, rows, retraining, published = [], [], [], [], []

    def restart(now, queue):
        old, fresh = state["loop"], Loop.build(**options)
        fresh.scorer, fresh.router = old.scorer, old.router  # the scorer's side has its own rebuild
        fresh.resume(published[-2] if model_lost else published[-1], key)
        stored = lambda table: [r for t, r in rows if t == table]  # noqa: E731
        accuracies = [r["control_accuracy"] for r in stored("model_versions") if r["control_accuracy"] is not None]
        recorded = {"found": {r["task_id"]: r for r in stored("suspect_labels") if r["status"] == "found"},
                    "drift_versions": [r["version"] for r in stored("drift_events")], "stop": False,
                    "first_accuracy": accuracies[0] if accuracies else None}
        replay = LearnerReplay(fresh, recorded, list(retraining))
        for task in topic_tasks:
            replay.task(task)
        reflected = fresh.trainer.learner.label_offset
        again = range(reflected + 1, len(topic_labels)) if model_lost else ()  # committed up to the resumed version
        for offset, label in enumerate(topic_labels[:len(topic_labels) - len(again)]):
            replay.label(label, learn=offset > reflected)
        rows.extend(replay.finish(now))
        state["loop"] = fresh
        for offset in again:
            deliver(offset, now, queue)

    def deliver(offset, now, queue):
        """The label at ``offset`` through the learner, as the learn agent takes it."""
        loop = state["loop"]
        effects = loop.take("Label", topic_labels[offset], now, offset=offset)
        rows.extend(effects.rows)
        topic_tasks.extend(effects.tasks)
        queue.extend(effects.tasks)
        if loop.due:
            effects = loop.publish(now, key)
            published.append(effects.models[0])
            topic_tasks.extend(effects.tasks)
            queue.extend(effects.tasks)
            killed = len(published) == restart_after
            retraining.extend(() if killed and model_lost else effects.retraining)
            rows.extend(r for r in effects.rows if not (killed and r[0] == "suspect_labels"))
            if killed:
                restart(now, queue)

    def label(tasks, now):
        while tasks:
            task = tasks.pop(0)
            state["loop"].take("LabelingTask", task, now)
            for annotator in pool.assign(task):
                topic_labels.append(annotator.label(task, now))
                deliver(len(topic_labels) - 1, now, tasks)

    for name, event in traffic.events:
        loop = state["loop"]
        for candidate in loop.score(name, event, event["ts"]).candidates:
            routed = loop.route(candidate, event["ts"]).tasks
            topic_tasks.extend(routed)
            label(list(routed), event["ts"])
    return state["loop"], rows, retraining, topic_tasks


def steps(rows) -> list[tuple[str, str]]:
    return sorted((r["task_id"], r["status"]) for t, r in rows if t == "suspect_labels")


def test_a_restart_neither_reviews_a_suspect_twice_nor_forgets_one():
    """Killed right after a version that sent suspects for review, before that version's rows were
    written, and rebuilt from the topics: the run goes on as if nothing happened. The same labels are
    found, confirmed and corrected as in the run never killed, none is found twice, the lost
    ``found`` rows are written again, and the retraining events are the same (neither fired
    again nor delayed)."""
    whole, whole_rows, whole_events, _ = play()
    found_at = sorted(r["version"] for t, r in whole_rows if t == "suspect_labels" and r["status"] == "found")
    corrected_at = min(r["version"] for t, r in whole_rows if t == "suspect_labels" and r["status"] == "corrected")
    fired = {e["dataset_version"] for e in whole_events}
    # a version that found suspects after a correction, and fired no retraining event (so the
    # milestones have counts under way to lose)
    restart_after = next(v for v in found_at if found_at.count(v) >= 2 and v > corrected_at and v not in fired)
    loop, rows, events, _ = play(restart_after)
    learned = lambda loop: ([y for _, y in loop.trainer.learner.learned],  # noqa: E731
                            [y for _, y in loop.trainer.learner.control], loop.trainer.learner.labels_seen)
    assert learned(loop) == learned(whole)  # corrections before the kill are not made twice
    assert steps(rows) == steps(whole_rows)
    assert len(set(steps(rows))) == len(steps(rows))  # none twice
    assert (loop.suspects.found, loop.suspects.confirmed, loop.suspects.corrected, loop.suspects.reviews) == (
        whole.suspects.found, whole.suspects.confirmed, whole.suspects.corrected, whole.suspects.reviews)
    rewritten = [r for t, r in rows[::-1] if t == "suspect_labels" and r["status"] == "found"
                 and r["version"] == restart_after]
    assert len(rewritten) == found_at.count(restart_after)  # the kill lost them: written again
    assert [(e["dataset_version"], e["reasons"], e["new_labels"]) for e in events] == [
        (e["dataset_version"], e["reasons"], e["new_labels"]) for e in whole_events]
    assert len(events) >= 3


def test_reviews_sent_by_a_version_that_never_reached_the_topic_are_not_sent_again():
    """Killed after a version's review tasks reached ``labeling.tasks`` but the version itself did
    not: the learner resumes from the version before, the labels since come again, and a review
    already out is reopened when its label settles again instead of being picked a second time."""
    _, whole_rows, _, _ = play()
    found_at = sorted(r["version"] for t, r in whole_rows if t == "suspect_labels" and r["status"] == "found")
    restart_after = next(v for v in found_at if found_at.count(v) >= 2 and v > found_at[0])
    loop, rows, _, tasks = play(restart_after, model_lost=True)
    reviews = Counter(t["task_id"] for t in tasks if t["reasons"] == ["suspect_label"])
    assert reviews and max(reviews.values()) == 1  # none sent twice
    done = {(t, s) for t, s in steps(rows)}
    assert {t for t, s in done if s == "found"} == set(reviews)  # one found row per review, the lost ones again
    assert {t for t, s in done if s in ("confirmed", "cleared")} <= set(reviews)
    assert loop.suspects.found == len(reviews)
