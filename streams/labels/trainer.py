"""Training: join labels to their tasks, settle a consensus, and feed the learner.

Tasks and labels arrive on two topics; a label whose task has not been seen
yet waits (bounded) until it has. A label event seen before is ignored, so a
label sent twice counts once; a new label from the same annotator for the same
task is a correction. Each task's labels go to :class:`~streams.labels.consensus.Consensus`;
when it settles, the learner learns the consensus label weighted by its
confidence, and when it asks for more labels the trainer re-issues the task to
further annotators (or a reviewer). Labels on gold items (known answers) are
scored against the answer and never learned. Every label also feeds the
:class:`~streams.labels.agreement.AgreementTracker`.

>>> from streams.learning.learner import Learner
>>> trainer = Trainer(Learner("m", kind="linear", publish_every=1))
>>> _ = trainer.add_task({"task_id": "t1", "item_id": "i1", "features": {"x": 1.0}, "text": None,
...                       "reasons": ["uncertain"], "label_set": ["a", "b"]})
>>> out = trainer.add_label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a",
...                          "annotator_id": "ann", "ts": 5, "duration_ms": 900, "note": None})
>>> out.labels[0]["label"], out.consensus[0]["label"], trainer.learner.labels_seen
('a', 'a', 1)
>>> trainer.add_label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a",
...                    "annotator_id": "ann", "ts": 5, "duration_ms": 900, "note": None}).labels
[]

After a restart the trainer is rebuilt from the topics: labels the resumed model
already reflects are replayed with ``learn=False`` (consensus and agreement see
them, the model does not learn them twice).

>>> again = Trainer(Learner("m", kind="linear"))
>>> _ = again.add_task({"task_id": "t1", "item_id": "i1", "features": {"x": 1.0}, "text": None,
...                     "reasons": ["uncertain"], "label_set": ["a", "b"]})
>>> out = again.add_label({"event_id": "l1", "task_id": "t1", "item_id": "i1", "label": "a",
...                        "annotator_id": "ann", "ts": 5, "duration_ms": 900, "note": None}, learn=False)
>>> out.consensus[0]["label"], again.learner.labels_seen
('a', 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams import events
from streams.labels.agreement import AgreementTracker
from streams.labels.consensus import Consensus
from streams.labels.set_agreement import label_set
from streams.labels.set_consensus import set_consensus
from streams.learning.features import featurize
from streams.learning.learner import Learner
from streams.recent import Recent
from streams.selection.signals import top_label


class UnknownLabel(ValueError):
    """A label outside the task's label set."""


@dataclass
class Result:
    """Rows to write and tasks to send, after a task or a label."""

    labels: list[dict] = field(default_factory=list)
    consensus: list[dict] = field(default_factory=list)
    adjudications: list[dict] = field(default_factory=list)
    tasks: list[events.Task] = field(default_factory=list)

    def extend(self, other: "Result") -> "Result":
        for name in ("labels", "consensus", "adjudications", "tasks"):
            getattr(self, name).extend(getattr(other, name))
        return self


class Trainer:
    """Joins labels to tasks, settles consensus and teaches the :class:`~streams.learning.learner.Learner`.

    Parameters
    ----------
    learner
        The online model's owner.
    consensus
        How many labels a task needs and how they combine (default: one label).
    gold
        Known answers by item id; labels on these items are gold checks.
    """

    def __init__(self, learner: Learner, consensus: Consensus | None = None,
                 gold: dict[str, str] | None = None, memory: int = 200_000):
        self.learner = learner
        self.consensus = consensus or Consensus(overlap=1)
        self.gold = dict(gold or {})
        self.tracker = AgreementTracker(self.gold)
        self._tasks: Recent = Recent(memory)
        self._waiting: Recent = Recent(memory)  # labels that came before their task
        self._labels_seen: Recent = Recent(memory)

    def add_task(self, task: events.Task) -> Result:
        """Remember a task; settle labels that were waiting for it."""
        if task["task_id"] not in self._tasks:
            self._tasks[task["task_id"]] = {
                "task": task, "x": featurize(task["features"], task.get("text")),
                "reasons": list(task["reasons"]), "label_set": list(task.get("label_set") or []),
            }
            self.consensus.open(task)
        result = Result()
        for label in self._waiting.pop(task["task_id"], []):
            result.extend(self._take(label))
        return result

    def add_label(self, label: events.Label, learn: bool = True) -> Result:
        """Take one label; rows for ClickHouse and any task to re-issue. With
        ``learn=False`` (a replay of a label the model already reflects) the
        consensus settles but the learner is not taught."""
        if not self._labels_seen.add(label["event_id"]):
            return Result()
        if label["task_id"] not in self._tasks:
            self._waiting[label["task_id"]] = self._waiting.get(label["task_id"], []) + [label]
            return Result()
        return self._take(label, learn)

    def _take(self, label: events.Label, learn: bool = True) -> Result:
        entry = self._tasks[label["task_id"]]
        if entry["task"].get("multi_label"):
            return self._take_set(entry, label, learn)
        if entry["label_set"] and label["label"] not in entry["label_set"]:
            raise UnknownLabel(f"label {label['label']!r} is not in the task's label set {entry['label_set']}")
        item, annotator = label["item_id"], label["annotator_id"]
        self.tracker.add(item, annotator, label["label"], ts_ms=label.get("ts"), duration_ms=label.get("duration_ms"),
                         model_label=None if item in self.gold else entry["task"].get("suggested_label"),
                         guideline_version=label.get("guideline_version") or None)
        control = "control" in entry["reasons"]
        row = {**label, "learned_by_version": self.learner.version, "shadow_prediction": None,
               "reasons": entry["reasons"], "control": int(control)}
        result = Result(labels=[row])
        if item in self.gold:
            self.consensus.gold.add(annotator, label["label"] == self.gold[item])
            row["reasons"] = ["gold"]
            return result
        outcome = self.consensus.add(label["task_id"], annotator, label["label"], label.get("tier") or "annotator")
        if outcome.action == "request":
            task = entry["task"]
            result.tasks.append(events.replace_task(task, overlap=1, exclude_annotators=outcome.exclude,
                                                    tier=outcome.tier, round=outcome.round))
            result.adjudications.append({
                "task_id": task["task_id"], "item_id": item, "round": outcome.round, "tier": outcome.tier,
                "reason": outcome.reason, "annotators": outcome.exclude, "ts": label["ts"]})
        elif outcome.action == "done" and outcome.changed:
            votes = self.consensus.votes(label["task_id"])
            proba = {}
            if learn:
                proba = self.learner.learn(entry["x"], outcome.label, control=control, weight=outcome.confidence)
            row["shadow_prediction"] = top_label(proba)
            result.consensus.append({
                "task_id": label["task_id"], "item_id": item, "label": outcome.label,
                "confidence": outcome.confidence, "method": outcome.method, "annotators": sorted(votes),
                "n_labels": len(votes), "round": outcome.round, "ts": label["ts"],
                "learned_by_version": self.learner.version, "shadow_prediction": row["shadow_prediction"],
                "shadow_confidence": proba.get(row["shadow_prediction"])})
        return result

    def _take_set(self, entry: dict, label: events.Label, learn: bool = True) -> Result:
        """A label of a ``multi_label`` task: its set (``labels``, else ``label`` split on ``|``)
        must lie in the label set; once the task has the labels it wants, it settles class by
        class (:func:`~streams.labels.set_consensus.set_consensus`, annotators weighed by their
        gold accuracy), again whenever a correction changes the set. A multi-label learner
        learns the settled set (:meth:`~streams.learning.learner.Learner.learn_set`; a control
        label held out), weighed by the mean confidence of its class decisions: the set's own
        confidence, a product over the classes, would shrink with their number (one vote on 14
        classes at the prior accuracy of 0.8 gives 0.04); a single-label learner does not learn it.

        >>> from streams.learning.learner import Learner
        >>> trainer = Trainer(Learner("m", kind="linear", multi_label=True), Consensus(overlap=2))
        >>> _ = trainer.add_task({"task_id": "t1", "item_id": "i1", "features": {}, "text": None, "multi_label": True,
        ...                       "reasons": ["uncertain"], "label_set": ["cat", "dog", "fox"]})
        >>> def answer(who, labels):
        ...     return trainer.add_label({"event_id": who, "task_id": "t1", "item_id": "i1", "label": "|".join(labels),
        ...                               "labels": labels, "annotator_id": who, "ts": 5, "duration_ms": 9})
        >>> answer("ann", ["cat", "fox"]).consensus
        []
        >>> c = answer("bob", ["cat"]).consensus[0]
        >>> c["label"], round(c["confidence"], 3), c["method"]  # fox is a tie: out
        ('cat', 0.443, 'set_vote')
        >>> trainer.learner.labels_seen, sorted(trainer.learner.classes)
        (1, ['cat', 'dog', 'fox'])
        """
        chosen = label_set(label["labels"] if label.get("labels") is not None else label["label"])
        unknown = chosen - set(entry["label_set"])
        if entry["label_set"] and unknown:
            raise UnknownLabel(f"labels {sorted(unknown)} are not in the task's label set {entry['label_set']}")
        item, annotator = label["item_id"], label["annotator_id"]
        row = {**label, "learned_by_version": self.learner.version, "shadow_prediction": None,
               "reasons": entry["reasons"], "control": int("control" in entry["reasons"])}
        result = Result(labels=[row])
        if item in self.gold:
            self.consensus.gold.add(annotator, chosen == label_set(self.gold[item]))
            row["reasons"] = ["gold"]
            return result
        votes = entry.setdefault("set_votes", {})
        votes[annotator] = chosen  # a later label from the same annotator is a correction
        if len(votes) < max(1, self.consensus.overlap):
            return result
        settled = set_consensus(votes, classes=entry["label_set"] or None, accuracy=self.consensus.gold.estimate)
        joined = "|".join(sorted(settled.labels))
        if entry.get("settled_set") != joined:
            entry["settled_set"] = joined
            if learn and self.learner.multi_label:  # weighed by the mean confidence of its class decisions
                weight = sum(map(settled.class_confidence, settled.per_class)) / max(1, len(settled.per_class))
                self.learner.learn_set(entry["x"], settled.labels, control="control" in entry["reasons"],
                                       weight=weight or 1.0, classes=entry["label_set"])
            result.consensus.append({
                "task_id": label["task_id"], "item_id": item, "label": joined, "confidence": settled.confidence,
                "method": "set_vote", "annotators": sorted(votes), "n_labels": len(votes), "round": 0,
                "ts": label["ts"], "learned_by_version": self.learner.version, "shadow_prediction": None,
                "shadow_confidence": None})
        return result

    def task(self, task_id: str) -> events.Task | None:
        """The task as it was routed, if it is still remembered."""
        entry = self._tasks.get(task_id)
        return entry["task"] if entry else None

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiting.values())
