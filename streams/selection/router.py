"""Routing: apply the policy to each candidate; its decision, and the labeling task of a selected one.

The :class:`Router` is the single owner of the global budget. Its random draw
for an event is derived from the event id and the seed, so a re-delivered
candidate gets the very same decision and the same task id; candidates it has
already decided are skipped.

>>> from streams.selection.budget import Budget
>>> from streams.selection.policy import Policy
>>> router = Router(Policy(Budget(fraction=0.5)), seed=0)
>>> cand = {"event_id": "e1", "item_id": "i1", "ts": 1, "kind": "override", "model_name": "prod",
...     "model_version": "3", "predicted_label": "a", "probabilities": {"a": 0.9, "b": 0.1},
...     "features": {}, "text": None, "context": {}, "shadow_label": None, "shadow_version": 0,
...     "signals": {"uncertainty": 0.2}, "user_label": "b", "note": None, "scored_ts": 1}
>>> decision, task = router.route(cand, now_ms=2)
>>> decision["selected"], task["reasons"], task["suggested_label"], task["label_set"]
(1, ['override'], 'b', ['a', 'b'])
>>> router.route(cand, now_ms=3)
(None, None)

After a restart, :meth:`Router.restore` takes the tasks already sent: the caps
count them again, and a re-delivered candidate gets the decision its task
records, without a second task.

>>> again = Router(Policy(Budget(fraction=0.5, per_hour=1)), seed=0)
>>> again.restore([task])
>>> again.policy.budget.spent_in_hour(2)
1
>>> decision, task = again.route(cand, now_ms=9)
>>> decision["selected"], decision["task_id"] == task_id_of("e1"), task
(1, True, None)
>>> again.sent_before("e1")["task_id"] == decision["task_id"], again.sent_before("e1")
(True, None)
"""

from __future__ import annotations

import hashlib
import uuid

from streams import events
from streams.events import Candidate, Decision, Task
from streams.learning.features import featurize
from streams.selection.policy import Policy
from streams.recent import Recent
from streams.selection.signals import top_label

_NAMESPACE = uuid.UUID("6f0e4a52-3c1b-4d8e-9a57-1f2b8c0d4e61")


def task_id_of(event_id: str) -> str:
    """The id of the task the router makes for ``event_id`` (one task per event)."""
    return str(uuid.uuid5(_NAMESPACE, event_id))


def stable_draw(event_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the event id and the seed.

    >>> stable_draw("e1", 0) == stable_draw("e1", 0) != stable_draw("e1", 1)
    True
    """
    digest = hashlib.blake2b(f"{seed}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Router:
    """Decides for each candidate, once, and builds the task of a selected one."""

    def __init__(self, policy: Policy, seed: int = 0, memory: int = 1_000_000):
        self.policy = policy
        self.seed = seed
        self.labels: set[str] = set()
        self._decided: Recent = Recent(memory)
        self._sent: Recent = Recent(memory)  # event id -> decision, for tasks sent before a restart

    def restore(self, tasks) -> None:
        """Take the tasks sent before a restart, oldest first: the caps count
        them, and their events keep the decision recorded in them. Gold tasks
        and later rounds of a task were not routed and are left out."""
        bought = []
        for task in tasks:
            if task.get("round") or task["task_id"] != task_id_of(task["event_id"]):
                continue
            bought.append(task["source_ts"])
            self.labels.update(task.get("label_set") or [])
            self._sent[task["event_id"]] = {k: v for k, v in task.items() if k not in ("features", "text", "context")}
        self.policy.budget.recount(bought)

    def decided(self, event_id: str) -> None:
        """Remember ``event_id`` as decided (its decision was recorded elsewhere)."""
        self._decided.add(event_id)

    def sent_before(self, event_id: str) -> dict | None:
        """The task sent for ``event_id`` before a restart (without the item's
        features), once: its row may not have reached ClickHouse."""
        return self._sent.pop(event_id, None)

    def route(self, c: Candidate, now_ms: int) -> tuple[Decision | None, Task | None]:
        """Return ``(decision_row, task)``; task is None when not selected,
        and both are None for a candidate already decided."""
        if not self._decided.add(c["event_id"]):
            return None, None
        sent = self._sent.get(c["event_id"])
        if sent is not None:  # decided and sent before a restart: the same decision, no second task
            return events.decision(event_id=c["event_id"], item_id=c["item_id"], ts=c["ts"], kind=c["kind"],
                                   signals=c["signals"], model_version=c["model_version"],
                                   shadow_version=c["shadow_version"], selected=1, reasons=list(sent["reasons"]),
                                   selection_probability=sent["selection_probability"], priority=sent["priority"],
                                   task_id=sent["task_id"], policy_version=sent["policy_version"],
                                   decided_at=sent["created_ts"]), None
        self.labels.update(c["probabilities"])
        for label in (c["user_label"], c["predicted_label"]):
            if label:
                self.labels.add(label)
        x = None
        if c["features"] or c["text"]:  # the scorer's model input; computed again after the Kafka hop
            x = c.get("x")
            if x is None:
                x = featurize(c["features"], c["text"])
        d = self.policy.decide(c["kind"], c["signals"], c["ts"], draw=stable_draw(c["event_id"], self.seed),
                               x=x, label=c["shadow_label"] or c["predicted_label"])
        task_id = task_id_of(c["event_id"]) if d.selected else None
        decision = events.decision(
            event_id=c["event_id"], item_id=c["item_id"], ts=c["ts"], kind=c["kind"], selected=int(d.selected),
            reasons=d.reasons, selection_probability=d.probability, priority=d.priority, signals=c["signals"],
            task_id=task_id, policy_version=self.policy.version, model_version=c["model_version"],
            shadow_version=c["shadow_version"], decided_at=now_ms)
        if not d.selected:
            return decision, None
        suggested = c["user_label"] or c["shadow_label"] or c["predicted_label"]
        probabilities = c["probabilities"]
        if c["kind"] == "prediction" and c["shadow_label"] is None:
            suggested = top_label(probabilities) or suggested
        task = events.task(
            task_id=task_id, event_id=c["event_id"], item_id=c["item_id"], created_ts=now_ms, source_ts=c["ts"],
            kind=c["kind"], reasons=d.reasons, signals=c["signals"], selection_probability=d.probability,
            priority=d.priority, suggested_label=suggested,
            confidence=probabilities.get(suggested, 0.0) if suggested else 0.0, label_set=sorted(self.labels),
            features=c["features"], text=c["text"], predicted_label=c["predicted_label"],
            user_label=c["user_label"], note=c["note"], model_name=c["model_name"],
            model_version=c["model_version"], shadow_version=c["shadow_version"],
            policy_version=self.policy.version, context=c["context"])
        return decision, task
