"""The events the loop's stages pass each other: typed, each with one constructor.

========== ============================================ ======================================
type       from → to                                    its fields are
========== ============================================ ======================================
Candidate  scorer → owner (``labeling.candidates``)     ``schemas/candidate.avsc``
Task       router → annotators, learner (``tasks``)     ``schemas/labeling_task.avsc``
Label      annotators → learner (``labels``)            ``schemas/label.avsc``
Decision   router → ClickHouse                          the ``routing_decisions`` table
========== ============================================ ======================================

They are :class:`~typing.TypedDict`\\ s: plain dicts at run time, so the codec
encodes them and the sink writes them as they are, and a decoded message is one
already. Dataclasses would need a conversion at every boundary (``asdict`` is a
deep copy, a third of an event's budget) and a rewrite of every ``event["field"]``
for no check a type checker does not already make on a TypedDict.

Each type has ONE constructor here, :func:`candidate`, :func:`task`,
:func:`label` and :func:`decision`: keyword arguments named as the fields, a
default exactly where the schema has one (an empty map or list is a fresh one
each call). A new field touches its schema, its constructor here, the migration
and the UI. ``tests/test_events.py`` checks that each type, its constructor and
its schema name the same fields with the same types and defaults.

>>> t = task(task_id="t1", event_id="e1", item_id="i1", created_ts=2, source_ts=1, kind="prediction",
...          reasons=["uncertain"], signals={"margin": 0.1}, selection_probability=0.5, priority=0.9,
...          suggested_label="a", confidence=0.55, label_set=["a", "b"], features={"x": 1.0}, text=None,
...          predicted_label="a", user_label=None, note=None, model_name="prod", model_version="3",
...          shadow_version=0, policy_version="mix-2", context={})
>>> t["overlap"], t["exclude_annotators"], t["tier"], t["round"]
(1, [], 'annotator', 0)
>>> again = replace_task(t, overlap=1, exclude_annotators=["ann"], tier="reviewer", round=1)
>>> again["tier"], t["tier"]
('reviewer', 'annotator')
>>> replace_task(t, colour="red")
Traceback (most recent call last):
...
TypeError: a task has no field 'colour'
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

__all__ = ["IN_PROCESS", "Candidate", "Decision", "Label", "Task", "candidate", "decision", "label", "replace_task",
           "set_label", "task"]

#: Fields an event may carry within one process, never on the wire: a candidate's
#: model input ``x`` (:func:`~streams.learning.features.featurize` of its features and
#: text), computed once by the scorer; after the Kafka hop the router computes it again.
IN_PROCESS = {"Candidate": frozenset({"x"})}


class Candidate(TypedDict):
    """A scored input event; once preselected at its partition, on its way to the owner of the budget."""

    event_id: str
    item_id: str
    ts: int
    kind: str
    model_name: str
    model_version: str
    predicted_label: str | None
    probabilities: dict[str, float]
    features: dict[str, float]
    text: str | None
    context: dict[str, str]
    shadow_label: str | None
    shadow_version: int
    signals: dict[str, float]
    user_label: str | None
    note: str | None
    scored_ts: int
    selection_probability: float
    reasons: list[str]
    priority: float
    policy_version: str
    x: NotRequired[dict[str, float]]


def candidate(*, event_id: str, item_id: str, ts: int, kind: str, model_name: str = "", model_version: str = "",
              predicted_label: str | None = None, probabilities: dict[str, float] | None = None,
              features: dict[str, float] | None = None, text: str | None = None,
              context: dict[str, str] | None = None, shadow_label: str | None = None, shadow_version: int = 0,
              signals: dict[str, float] | None = None, user_label: str | None = None, note: str | None = None,
              scored_ts: int = 0, selection_probability: float = 0.0, reasons: list[str] | None = None,
              priority: float = 0.0, policy_version: str = "", x: dict[str, float] | None = None) -> Candidate:
    """A :class:`Candidate`; ``x``, the model input, if the caller computed it. The preselection
    (``selection_probability``, ``reasons``, ``priority``, ``policy_version``) is filled in by
    :meth:`~streams.selection.router.Router.preselect`."""
    c: Candidate = {
        "event_id": event_id, "item_id": item_id, "ts": ts, "kind": kind, "model_name": model_name,
        "model_version": model_version, "predicted_label": predicted_label,
        "probabilities": {} if probabilities is None else probabilities,
        "features": {} if features is None else features, "text": text,
        "context": {} if context is None else context, "shadow_label": shadow_label,
        "shadow_version": shadow_version, "signals": {} if signals is None else signals,
        "user_label": user_label, "note": note, "scored_ts": scored_ts,
        "selection_probability": selection_probability, "reasons": [] if reasons is None else reasons,
        "priority": priority, "policy_version": policy_version}
    if x is not None:
        c["x"] = x
    return c


class Task(TypedDict):
    """An item routed to human annotators, with why it was chosen."""

    task_id: str
    event_id: str
    item_id: str
    created_ts: int
    source_ts: int
    kind: str
    reasons: list[str]
    signals: dict[str, float]
    selection_probability: float
    priority: float
    suggested_label: str | None
    confidence: float
    label_set: list[str]
    features: dict[str, float]
    text: str | None
    predicted_label: str | None
    user_label: str | None
    note: str | None
    model_name: str
    model_version: str
    shadow_version: int
    policy_version: str
    context: dict[str, str]
    overlap: int
    exclude_annotators: list[str]
    tier: str
    round: int
    guideline_version: str
    multi_label: bool
    suggested_labels: list[str] | None


def task(*, task_id: str, event_id: str, item_id: str, created_ts: int, source_ts: int, kind: str,
         reasons: list[str], signals: dict[str, float], selection_probability: float, priority: float,
         confidence: float, label_set: list[str], model_name: str, model_version: str, shadow_version: int,
         policy_version: str, suggested_label: str | None = None, features: dict[str, float] | None = None,
         text: str | None = None, predicted_label: str | None = None, user_label: str | None = None,
         note: str | None = None, context: dict[str, str] | None = None, overlap: int = 1,
         exclude_annotators: list[str] | None = None, tier: str = "annotator", round: int = 0,
         guideline_version: str = "", multi_label: bool = False, suggested_labels: list[str] | None = None) -> Task:
    """A :class:`Task` (a new one asks ``overlap`` annotators; later rounds, see :func:`replace_task`)."""
    return {
        "task_id": task_id, "event_id": event_id, "item_id": item_id, "created_ts": created_ts,
        "source_ts": source_ts, "kind": kind, "reasons": reasons, "signals": signals,
        "selection_probability": selection_probability, "priority": priority, "suggested_label": suggested_label,
        "confidence": confidence, "label_set": label_set, "features": {} if features is None else features,
        "text": text, "predicted_label": predicted_label, "user_label": user_label, "note": note,
        "model_name": model_name, "model_version": model_version, "shadow_version": shadow_version,
        "policy_version": policy_version, "context": {} if context is None else context, "overlap": overlap,
        "exclude_annotators": [] if exclude_annotators is None else exclude_annotators, "tier": tier,
        "round": round, "guideline_version": guideline_version, "multi_label": multi_label,
        "suggested_labels": suggested_labels}


def replace_task(t: Task, **changes) -> Task:
    """A copy of task ``t`` with ``changes`` (each a :class:`Task` field): a gold
    task disguised as ``t``, or ``t`` asked again of further annotators."""
    unknown = changes.keys() - Task.__annotations__.keys()
    if unknown:
        raise TypeError(f"a task has no field {', '.join(map(repr, sorted(unknown)))}")
    return {**t, **changes}


class Label(TypedDict):
    """An annotator's answer to a labeling task."""

    event_id: str
    task_id: str
    item_id: str
    label: str
    annotator_id: str
    ts: int
    duration_ms: int
    note: str | None
    tier: str
    guideline_version: str
    labels: list[str] | None


def label(*, event_id: str, task_id: str, item_id: str, label: str, annotator_id: str, ts: int,
          duration_ms: int = 0, note: str | None = None, tier: str = "annotator",
          guideline_version: str = "", labels: list[str] | None = None) -> Label:
    """A :class:`Label`; ``event_id`` is unique to this answer (a label sent twice counts once).
    On a multi-label task ``labels`` is the chosen set and ``label`` the set joined by ``|``
    (:func:`set_label`).

    >>> label(event_id="l1", task_id="t1", item_id="i1", label="a", annotator_id="ann", ts=5)["tier"]
    'annotator'
    """
    return {"event_id": event_id, "task_id": task_id, "item_id": item_id, "label": label,
            "annotator_id": annotator_id, "ts": ts, "duration_ms": duration_ms, "note": note, "tier": tier,
            "guideline_version": guideline_version, "labels": labels}


def set_label(classes) -> tuple[str, list[str]]:
    """A multi-label answer as a label's ``(label, labels)``: the classes sorted, and joined by ``|``
    (the empty set is ``""``, said explicitly by ``labels == []``).

    >>> set_label({"dog", "cat"}), set_label([])
    (('cat|dog', ['cat', 'dog']), ('', []))
    """
    labels = sorted(set(classes))
    return "|".join(labels), labels


class Decision(TypedDict):
    """The router's decision on one candidate: a ``routing_decisions`` row."""

    event_id: str
    item_id: str
    ts: int
    kind: str
    selected: int
    reasons: list[str]
    selection_probability: float
    priority: float
    signals: dict[str, float]
    task_id: str | None
    policy_version: str
    model_version: str
    shadow_version: int
    decided_at: int


def decision(*, event_id: str, item_id: str, ts: int, kind: str, selected: int, reasons: list[str],
             selection_probability: float, priority: float, signals: dict[str, float], task_id: str | None,
             policy_version: str, model_version: str, shadow_version: int, decided_at: int) -> Decision:
    """A :class:`Decision` (``task_id`` is None for an item not selected)."""
    return {"event_id": event_id, "item_id": item_id, "ts": ts, "kind": kind, "selected": selected,
            "reasons": reasons, "selection_probability": selection_probability, "priority": priority,
            "signals": signals, "task_id": task_id, "policy_version": policy_version,
            "model_version": model_version, "shadow_version": shadow_version, "decided_at": decided_at}
