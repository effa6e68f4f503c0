"""Annotator gating: calibration on gold items, and a pause below a gold accuracy.

A new annotator's first ``tasks`` tasks are gold items (known answers, read
by :func:`feedbackloop.datasets.load_gold`), each disguised as the real task
they would have been given next (:meth:`streams.labels.gold.GoldMixer.disguise`),
so nothing tells them apart. Their answers, and every later answer on a gold
item (the worker mixes some in too), are gold checks. Once an annotator has
``tasks`` checks or more and their accuracy is under ``threshold``, they are
**paused**: the queue leases them nothing, and their open leases go back to it,
until a reviewer re-admits them (``POST /api/review/annotators/{id}/readmit`` or
``feedbackloop readmit``). A re-admitted annotator is calibrated again from a
clean record. Pauses and re-admissions go to the audit log (actions ``pause``
and ``readmit``, the figures as JSON in ``detail``), and from there into the
``annotator_gating`` table; their ``annotator_id`` is whom the event
concerns, and ``detail.by`` who decided (``gate`` for a pause by the figures).

>>> from consumers.labeling.store import Store
>>> store = Store(":memory:")
>>> _ = store.add_tasks([{"task_id": "t1", "event_id": "e1", "item_id": "i1", "priority": 0.5,
...                       "label_set": ["a", "b"]}], {})
>>> gold = {"g1": {"item_id": "g1", "label": "a", "features": {}, "text": None}}
>>> gate = Gate(store, gold, tasks=1, threshold=0.7, seed=0)
>>> gate.prepare("ann")                                   # a disguised gold task for the newcomer
>>> leased = store.lease("ann")["task"]
>>> leased["item_id"]
'g1'
>>> record, _ = store.label(leased["task_id"], "ann", "b", note=None)
>>> gate.judge(record, client="test")["action"]            # wrong on 1 of 1: paused
'pause'
>>> store.lease("ann") is None
True
>>> gate.readmit("ann", by="rev", role="reviewer", client="test")["action"]
'readmit'
"""

from __future__ import annotations

import json
import random
import uuid

from consumers.labeling import audit
from consumers.labeling.store import Store
from streams.labels.gold import GoldMixer
from streams.labels.set_agreement import label_set

__all__ = ["Gate", "readmit"]


class Gate:
    """Calibrates and pauses annotators of ``store`` on ``gold`` (items by id).

    Without gold items it does nothing: every annotator stays active.
    """

    def __init__(self, store: Store, gold: dict[str, dict] | None, tasks: int = 5, threshold: float = 0.7,
                 seed: int | None = None):
        self.store = store
        self.gold = dict(gold or {})
        self.tasks = tasks
        self.threshold = threshold
        self.mixer = GoldMixer(self.gold, rate=0.0, seed=random.randrange(2**32) if seed is None else seed)

    def paused(self, annotator_id: str) -> bool:
        return self.store.gate(annotator_id)["state"] == "paused"

    def prepare(self, annotator_id: str, reviewer: bool = False) -> None:
        """Queue a calibration task for ``annotator_id`` if they still owe gold
        checks, none waits for them, and a real task is there to disguise it as."""
        if not self.gold or self.tasks <= 0 or self.paused(annotator_id):
            return
        checks, _ = self.store.gold_record(annotator_id)
        if checks >= self.tasks or self.store.calibration_open(annotator_id):
            return
        template = self.store.peek(annotator_id, reviewer)
        if template is None:  # nothing real to hide it among
            return
        seen = self.store.gold_seen(annotator_id)
        fresh = [i for i in self.gold if i not in seen] or list(self.gold)
        item = self.gold[fresh[self.mixer.rng.randrange(len(fresh))]]
        self.store.add_calibration(annotator_id, self.mixer.disguise(template, item, str(uuid.uuid4())))

    def judge(self, label: dict, client: str) -> dict | None:
        """Score ``label`` if it is on a gold item; pause its annotator if their
        record falls under the threshold. Returns the audit event of a pause."""
        item = self.gold.get(label["item_id"])
        if item is None:
            return None
        who = label["annotator_id"]
        self.store.gold_check(label["task_id"], who, label["item_id"], same_answer(label, item["label"]), label["ts"])
        checks, right = self.store.gold_record(who)
        if checks < max(1, self.tasks) or right / checks >= self.threshold or self.paused(who):
            return None
        figures = {"gold_accuracy": round(right / checks, 4), "gold_checks": checks, "threshold": self.threshold}
        released = self.store.pause(who, by="gate", reason=json.dumps(figures), now_ms=label["ts"])
        event = audit.event("pause", who, "annotator", client, None,
                            json.dumps({**figures, "by": "gate", "released": released}))
        self.store.audit(event)
        return event

    def pause(self, annotator_id: str, by: str, role: str, client: str, reason: str = "") -> dict:
        """A reviewer's pause of ``annotator_id`` (their leases go back to the queue);
        returns the audit event."""
        checks, right = self.store.gold_record(annotator_id)
        figures = {"gold_accuracy": round(right / checks, 4) if checks else None, "gold_checks": checks,
                   "threshold": self.threshold}
        released = self.store.pause(annotator_id, by, reason or json.dumps(figures))
        event = audit.event("pause", annotator_id, role, client, None,
                            json.dumps({**figures, "by": by, "released": released, "note": reason}))
        self.store.audit(event)
        return event

    def readmit(self, annotator_id: str, by: str, role: str, client: str) -> dict:
        """Let a paused annotator lease again (:class:`~consumers.labeling.store.TaskError`
        409 if not paused); returns the audit event."""
        checks, right = self.store.gold_record(annotator_id)
        self.store.readmit(annotator_id, by)
        event = audit.event("readmit", annotator_id, role, client, None, json.dumps({
            "gold_accuracy": round(right / checks, 4) if checks else None, "gold_checks": checks,
            "threshold": self.threshold, "by": by, "released": []}))
        self.store.audit(event)
        return event


def same_answer(label: dict, gold: str) -> bool:
    """Whether ``label`` gives the ``gold`` answer, compared as label sets: a multi-label answer
    (its ``labels``, or ``label`` joined by ``|``) is right in any order.

    >>> same_answer({"label": "dog|cat", "labels": ["dog", "cat"]}, "cat|dog"), same_answer({"label": "cat"}, "cat|dog")
    (True, False)
    """
    return label_set(label["labels"] if label.get("labels") is not None else label["label"]) == label_set(gold)


def readmit(store: Store, annotator_id: str, by: str, threshold: float = 0.7) -> dict:
    """Re-admit from the command line (the store's file, beside a running service,
    which ships the audit event); raises :class:`~consumers.labeling.store.TaskError`
    if not paused."""
    with store.transaction():
        return Gate(store, None, threshold=threshold).readmit(annotator_id, by, "reviewer", "cli")

