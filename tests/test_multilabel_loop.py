"""Multi-label tasks through the worker's own Loop, with no Kafka: a label set marked
multi-label routes tasks that take any subset, the set signals drive the uncertainty,
the settled sets teach a one-vs-rest learner, and its versions publish."""

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.labels.set_agreement import label_set
from streams.loop import Loop

CLASSES = ["a", "b", "c"]


def truth(x: dict) -> frozenset:
    """Class a when x > 0, b when y > 0, c when both: learnable by a linear model per class."""
    return frozenset(c for c, on in (("a", x["x"] > 0), ("b", x["y"] > 0), ("c", x["x"] > 0 and x["y"] > 0)) if on)


def test_a_multi_label_loop_routes_sets_learns_them_and_publishes():
    rng = random.Random(3)
    loop = Loop.build(budget_fraction=0.4, control_fraction=0.3, model_kind="linear", publish_every=20,
                      min_control=10, seed=3, multi_label=True)
    key = Ed25519PrivateKey.generate()
    tasks, published = [], []
    for i in range(1500):
        x = {"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)}
        proba = {c: rng.random() for c in CLASSES}  # a useless production model, per class
        event = {"event_id": f"e{i}", "item_id": f"i{i}", "ts": i * 10, "model_name": "prod", "model_version": "1",
                 "predicted_label": "|".join(c for c in CLASSES if proba[c] > 0.5), "probabilities": proba,
                 "features": x, "text": None, "context": {}}
        scored = loop.score("Prediction", event, i * 10)
        assert {"entropy", "max_entropy", "uncertainty"} <= set(scored.candidates[0]["signals"])
        for task in loop.route(scored.candidates[0], i * 10).tasks:
            tasks.append(task)
            loop.take("LabelingTask", task, i * 10)
            chosen = sorted(truth(x))
            out = loop.take("Label", {"event_id": f"l{i}", "task_id": task["task_id"], "item_id": task["item_id"],
                                      "label": "|".join(chosen), "labels": chosen, "annotator_id": "ann",
                                      "ts": i * 10}, i * 10)
            assert [r["label"] for t, r in out.rows if t == "consensus_labels"] == ["|".join(chosen)]
        if loop.due:
            published.append(loop.publish(i * 10, key).models[0])
    assert tasks and all(t["multi_label"] and t["label_set"] == CLASSES for t in tasks)
    assert all(label_set(t["suggested_label"] or "") == set(t["suggested_labels"]) for t in tasks)
    learner = loop.trainer.learner
    assert learner.multi_label and learner.labels_seen == len(tasks) and sorted(learner.classes) == CLASSES
    assert len(published) >= 5
    # the control accuracy is the micro-F1 of the held-out sets: it rises as the sets are learned
    first, last = published[0]["control_accuracy"], published[-1]["control_accuracy"]
    assert last > 0.85 and last > first
    # later tasks suggest the shadow model's set, which is right more often than the production model's
    late = tasks[-100:]
    shadow_right = sum(label_set(t["suggested_label"]) == truth(t["features"]) for t in late)
    production_right = sum(label_set(t["predicted_label"]) == truth(t["features"]) for t in late)
    assert shadow_right > production_right + 20


def test_the_codec_takes_a_multi_label_models_predictions_only_when_told():
    import pytest

    import time

    from schemas import codec

    event = {"event_id": "e", "item_id": "i", "ts": int(time.time() * 1000), "model_name": "m", "model_version": "1",
             "predicted_label": "a|c", "probabilities": {"a": 0.9, "b": 0.2, "c": 0.7}}
    data = codec.encode("Prediction", event, multi_label=True)
    assert codec.decode(data, ("Prediction",), multi_label=True)[1]["predicted_label"] == "a|c"
    with pytest.raises(codec.DecodeError, match="sum to 1.8"):  # a single-label worker refuses it
        codec.decode(data, ("Prediction",))
    batch = codec.encode("PredictionBatch", {"events": [event, {**event, "event_id": "f", "predicted_label": ""}]},
                         multi_label=True)
    assert len(codec.decode(batch, ("PredictionBatch",), multi_label=True)[1]["events"]) == 2
    with pytest.raises(codec.InvalidEvent, match="'d', not a class"):
        codec.encode("Prediction", {**event, "predicted_label": "a|d"}, multi_label=True)
    with pytest.raises(codec.InvalidEvent, match="outside"):
        codec.encode("Prediction", {**event, "probabilities": {"a": 1.2, "c": 0.1}}, multi_label=True)
    from feedbackloop.producer import as_columns

    full = {**event, "features": {"x": 1.0}, "text": None, "context": {}}
    columns = as_columns([full, {**full, "event_id": "f", "predicted_label": "b"}])
    assert codec.decode(codec.encode("PredictionColumns", columns, multi_label=True), ("PredictionColumns",),
                        multi_label=True)[1]["predicted_label"] == ["a|c", "b"]
    with pytest.raises(codec.InvalidEvent, match="'z', not a class"):
        codec.encode("PredictionColumns", {**columns, "predicted_label": ["a|c", "z"]}, multi_label=True)
