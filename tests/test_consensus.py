"""Overlap, adjudication, consensus, gold checks and corrections, without Kafka."""

from __future__ import annotations

import random

import pytest

from consumers.annotators import AnnotatorPool, SimulatedAnnotator
from feedbackloop.settings import Settings
from streams.labels.agreement import report
from streams.labels.consensus import Consensus, GoldChecks, weighted_vote
from feedbackloop.datasets import load_gold
from streams.labels.gold import GoldMixer
from streams.learning.learner import Learner
from streams.labels.trainer import Trainer, UnknownLabel


def task(task_id="t1", item_id="i1", suggested="a", confidence=0.6, reasons=("uncertain",)):
    return {"task_id": task_id, "event_id": f"e-{task_id}", "item_id": item_id, "features": {"x": 1.0},
            "text": None, "reasons": list(reasons), "label_set": ["a", "b", "c"], "suggested_label": suggested,
            "confidence": confidence, "created_ts": 0}


def label(task_id, annotator, value, event_id=None, tier="annotator", item_id="i1"):
    return {"event_id": event_id or f"{task_id}-{annotator}-{value}", "task_id": task_id, "item_id": item_id,
            "label": value, "annotator_id": annotator, "ts": 1, "duration_ms": 1000, "note": None, "tier": tier}


def test_fixed_overlap_waits_for_k_labels_then_settles_on_the_majority():
    c = Consensus(overlap=3)
    c.open(task())
    assert c.add("t1", "x", "a").action == "wait"
    assert c.add("t1", "y", "a").action == "wait"
    out = c.add("t1", "z", "b")
    assert (out.action, out.label, out.method) == ("done", "a", "weighted_vote")
    assert 0.75 <= out.confidence < 1.0


def test_disagreement_goes_to_an_annotator_outside_the_set_then_to_a_reviewer():
    c = Consensus(overlap=2, max_annotators=3)
    c.open(task())
    c.add("t1", "x", "a")
    first = c.add("t1", "y", "b")
    assert first.action == "request" and first.tier == "annotator" and first.exclude == ["x", "y"]
    second = c.add("t1", "z", "c")  # three different answers: still no majority
    assert second.action == "request" and second.tier == "reviewer" and second.exclude == ["x", "y", "z"]
    assert second.round == 2
    final = c.add("t1", "boss", "b", tier="reviewer")
    assert (final.action, final.label, final.method) == ("done", "b", "reviewer")


def test_adaptive_overlap_trusts_one_label_only_when_it_agrees_with_a_confident_model():
    c = Consensus(overlap=0, confident=0.9)
    c.open(task("sure", suggested="a", confidence=0.95))
    assert c.add("sure", "x", "a").action == "done"
    c.open(task("unsure", suggested="a", confidence=0.55))
    assert c.add("unsure", "x", "a").action == "request"
    c.open(task("contested", suggested="a", confidence=0.95))
    out = c.add("contested", "x", "b")
    assert out.action == "request" and out.exclude == ["x"]
    assert c.add("contested", "y", "b").label == "b"


def test_accurate_annotators_outvote_inaccurate_ones():
    gold = GoldChecks()
    for _ in range(20):
        gold.add("expert", True)
        gold.add("novice-1", False)
        gold.add("novice-2", False)
    c = Consensus(overlap=3, agree=0.5, gold=gold)
    c.open(task())
    c.add("t1", "expert", "a")
    c.add("t1", "novice-1", "b")
    out = c.add("t1", "novice-2", "b")
    assert out.label == "a"


def test_weighted_vote_is_a_proper_posterior():
    p = weighted_vote({"x": "a", "y": "b", "z": "a"}, ["a", "b", "c"], lambda a: 0.7)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p["a"] > p["b"] > p["c"]


def test_gold_checks_flag_only_after_enough_checks():
    g = GoldChecks(threshold=0.7, min_checks=5)
    for _ in range(4):
        g.add("weak", False)
    assert g.flagged() == []
    g.add("weak", False)
    assert g.flagged() == ["weak"]
    assert g.estimate("new") == pytest.approx(0.8)


def test_trainer_learns_the_consensus_once_and_reissues_disagreements():
    trainer = Trainer(Learner("m", kind="linear", min_control=0), Consensus(overlap=2))
    trainer.add_task(task())
    assert trainer.add_label(label("t1", "x", "a")).consensus == []
    out = trainer.add_label(label("t1", "y", "b"))
    assert [t["exclude_annotators"] for t in out.tasks] == [["x", "y"]]
    assert out.tasks[0]["task_id"] == "t1" and out.tasks[0]["overlap"] == 1
    assert out.adjudications[0]["round"] == 1
    assert trainer.learner.labels_seen == 0
    out = trainer.add_label(label("t1", "z", "a"))
    assert out.consensus[0]["label"] == "a" and out.consensus[0]["n_labels"] == 3
    assert trainer.learner.labels_seen == 1
    assert trainer.add_task(task()).labels == []  # the re-issued task is not a new one


def test_a_correction_replaces_the_label_and_reaches_the_learner():
    trainer = Trainer(Learner("m", kind="linear", min_control=0))
    trainer.add_task(task())
    assert trainer.add_label(label("t1", "x", "a", event_id="v1")).consensus[0]["label"] == "a"
    fixed = trainer.add_label({**label("t1", "x", "b", event_id="v2"), "note": "misclick"})
    assert fixed.consensus[0]["label"] == "b"
    assert trainer.learner.labels_seen == 2
    assert trainer.tracker.report()["per_annotator"]["x"]["n_labels"] == 1  # the later label replaces


def test_gold_labels_score_the_annotator_and_are_not_learned():
    trainer = Trainer(Learner("m", kind="linear", min_control=0), gold={"g1": "c"})
    trainer.add_task(task("tg", item_id="g1"))
    out = trainer.add_label(label("tg", "x", "a", item_id="g1"))
    assert out.labels[0]["reasons"] == ["gold"] and out.consensus == []
    assert trainer.consensus.gold.accuracy("x") == 0.0
    assert trainer.learner.labels_seen == 0


def test_unknown_label_is_refused():
    trainer = Trainer(Learner("m", kind="linear"))
    trainer.add_task(task())
    with pytest.raises(UnknownLabel, match="'z'"):
        trainer.add_label(label("t1", "x", "z"))


def test_tracker_agrees_with_the_batch_report_on_the_same_labels():
    rng = random.Random(3)
    trainer = Trainer(Learner("m", kind="linear", min_control=0), Consensus(overlap=3))
    triples = []
    for i in range(40):
        trainer.add_task(task(f"t{i}", item_id=f"i{i}"))
        for annotator in rng.sample(["p", "q", "r", "s"], 3):
            value = rng.choice("abc")
            trainer.add_label(label(f"t{i}", annotator, value, item_id=f"i{i}"))
            triples.append((f"i{i}", annotator, value))
    ours, batch = trainer.tracker.report(), report(triples)
    for key in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha"):
        assert ours[key] == pytest.approx(batch[key])


def test_pool_gives_a_task_to_k_different_annotators_and_never_twice():
    team = [SimulatedAnnotator(f"a{i}", {"i1": "a"}.get) for i in range(4)]
    team.append(SimulatedAnnotator("rev", {"i1": "a"}.get, tier="reviewer"))
    pool = AnnotatorPool(Settings(), team)
    first = pool.assign({**task(), "overlap": 3})
    assert len({a.annotator_id for a in first}) == 3 and all(a.tier == "annotator" for a in first)
    again = pool.assign({**task(), "overlap": 1, "exclude_annotators": [a.annotator_id for a in first]})
    assert len(again) == 1 and again[0].annotator_id not in {a.annotator_id for a in first}
    assert pool.assign({**task(), "overlap": 1, "tier": "reviewer"})[0].annotator_id == "rev"
    assert pool.assign({**task(), "overlap": 1}) == []  # everyone has labeled it


def test_gold_mixer_disguises_gold_tasks(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text('{"item_id": "g1", "label": "b", "features": {"x": 3}}\n\n')
    gold = load_gold(path)
    mixer = GoldMixer(gold, rate=1.0, seed=1)
    g = mixer.follow(task())
    assert g["item_id"] == "g1" and g["reasons"] == ["uncertain"] and g["features"] == {"x": 3.0}
    assert set(g) == set(task()) | {"predicted_label", "user_label", "note"}
    assert GoldMixer(gold, rate=0.0).follow(task()) is None
    path.write_text('{"item_id": "g1"}\n')
    with pytest.raises(ValueError, match="gold.jsonl:1"):
        load_gold(path)
