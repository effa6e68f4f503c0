"""Routing: selection at the partitions, admission at the owner of the global budget.

Selection scales out with the input partitions; only the hard caps are global.
So a :class:`Router` decides in two steps:

* :meth:`Router.preselect`, at the scorer that saw the event: the policy gives
  its selection probability and the draw decides, the draw derived from the
  event id and the seed (so a re-delivered event draws the same number). An
  event not preselected has its decision row at once; a preselected one goes on
  to the owner with its probability, reasons and priority.
* :meth:`Router.admit`, at the one owner of the caps: a preselected candidate
  becomes a task if the hourly, daily and weekly caps (``caps``, counted in
  event time) have room, and is refused otherwise (its probability is then 0,
  as the policy logged for an item over the caps before). Candidates it has
  already admitted or refused are skipped.

:meth:`Router.route` does both in one process (the simulator, the benchmark's
bare loop). Without ``caps`` the policy's own budget holds the caps. A scorer
follows the tasks the owner sends (:meth:`Router.follow`), so its novelty
centers are every item chosen, not only those it preselected.

>>> from streams.selection.budget import Budget
>>> from streams.selection.policy import Policy
>>> router = Router(Policy(Budget(fraction=0.5)), seed=0, caps=Budget(fraction=0.5, per_hour=10))
>>> cand = {"event_id": "e1", "item_id": "i1", "ts": 1, "kind": "override", "model_name": "prod",
...     "model_version": "3", "predicted_label": "a", "probabilities": {"a": 0.9, "b": 0.1},
...     "features": {}, "text": None, "context": {}, "shadow_label": None, "shadow_version": 0,
...     "signals": {"uncertainty": 0.2}, "user_label": "b", "note": None, "scored_ts": 1}
>>> row, chosen = router.preselect(cand, now_ms=2)
>>> row, chosen["selection_probability"], chosen["reasons"]
(None, 1.0, ['override'])
>>> decision, task = router.admit(chosen, now_ms=2)
>>> decision["selected"], task["reasons"], task["suggested_label"], task["label_set"]
(1, ['override'], 'b', ['a', 'b'])
>>> router.admit(chosen, now_ms=3)
(None, None)

After a restart, :meth:`Router.restore` takes the tasks already sent: the caps
count them again, and a re-delivered candidate gets the decision its task
records, without a second task.

>>> again = Router(Policy(Budget(fraction=0.5)), seed=0, caps=Budget(fraction=0.5, per_hour=1))
>>> again.restore([task])
>>> again.caps.spent_in_hour(2)
1
>>> decision, task = again.route(cand, now_ms=9)
>>> decision["selected"], decision["task_id"] == task_id_of("e1"), task
(1, True, None)
>>> again.sent_before("e1")["task_id"] == decision["task_id"], again.sent_before("e1")
(True, None)

The caps are the owner's: over them, a preselected candidate is refused, and
its decision says so (probability 0, as the policy logs an item over its caps).

>>> full = Router(Policy(Budget(fraction=0.5)), seed=0, caps=Budget(fraction=0.5, per_hour=0))
>>> decision, task = full.route(cand, now_ms=2)
>>> decision["selected"], decision["selection_probability"], task
(0, 0.0, None)
"""

from __future__ import annotations

import hashlib
import uuid
from operator import itemgetter

from streams import events
from streams.events import Candidate, Decision, Task
from streams.learning.features import featurize
from streams.selection.budget import Budget
from streams.selection.policy import Decision as PolicyDecision, Decisions, Policy
from streams.recent import Recent
from streams.selection.signals import top_label
from streams.labels.set_agreement import label_set

_NAMESPACE = uuid.UUID("6f0e4a52-3c1b-4d8e-9a57-1f2b8c0d4e61")
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits of a UUID
_VERSION_5 = (0x5000 << 64) | (0x8000 << 48)  # version 5, RFC 4122 variant


def task_id_of(event_id: str) -> str:
    """The id of the task the router makes for ``event_id`` (one task per event): the name-based
    UUID (version 5) of ``event_id``, formatted without a ``uuid.UUID`` object (twice as fast).

    >>> task_id_of("e1") == str(uuid.uuid5(_NAMESPACE, "e1"))
    True
    """
    bits = int.from_bytes(hashlib.sha1(_NAMESPACE.bytes + event_id.encode()).digest()[:16], "big")
    h = f"{bits & _CLEAR | _VERSION_5:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: The fields of a decision row (:func:`streams.events.decision`), in its order.
DECISION_FIELDS = ("event_id", "item_id", "ts", "kind", "selected", "reasons", "selection_probability", "priority",
                   "signals", "task_id", "policy_version", "model_version", "shadow_version", "decided_at")


def _columns(candidates):
    """A function of a field's name giving it for every candidate: a scored message's own columns
    (:meth:`~streams.selection.scorer.Scored.column`), or read from each candidate."""
    column = getattr(candidates, "column", None)
    return column if column is not None else (lambda name: [c[name] for c in candidates])


def stable_draw(event_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the event id and the seed.

    >>> stable_draw("e1", 0) == stable_draw("e1", 0) != stable_draw("e1", 1)
    True
    """
    return stable_draws([event_id], seed)[0]


def stable_draws(event_ids, seed: int) -> list[float]:
    """:func:`stable_draw` of each of ``event_ids``: the 8-byte BLAKE2b digest of ``"{seed}:{event_id}"``
    over 2**64, the seed's part hashed once and copied for each event (the same digests).

    >>> stable_draws(["e1", "e2"], 3) == [stable_draw("e1", 3), stable_draw("e2", 3)]
    True
    """
    seeded, out = hashlib.blake2b(f"{seed}:".encode(), digest_size=8), []
    for event_id in event_ids:
        h = seeded.copy()
        h.update(event_id.encode())
        out.append(int.from_bytes(h.digest(), "big") / 2**64)
    return out


class Router:
    """Preselects at a partition, admits at the owner, and builds the task of an admitted event.

    Parameters
    ----------
    policy
        The selection policy (its budget paces the spend of this router's share of the stream).
    seed
        Seed of the draws (with the event id).
    memory
        Event ids remembered as preselected, and as decided.
    caps
        The global hard caps, enforced at admission; None: the policy's budget holds them.
    multi_label
        The label set is multi-label: tasks ask for any subset (``multi_label``), suggest a
        set (``suggested_labels``), and a label joined by ``|`` names several classes.
    """

    def __init__(self, policy: Policy, seed: int = 0, memory: int = 1_000_000, caps: Budget | None = None,
                 multi_label: bool = False):
        self.policy = policy
        self.seed = seed
        self.caps = caps
        self.multi_label = multi_label
        self.labels: set[str] = set()
        self._preselected: Recent = Recent(memory)  # at the partition: events sent on to the owner
        self._decided: Recent = Recent(memory)  # at the owner: events admitted or refused
        self._sent: Recent = Recent(memory)  # event id -> decision, for tasks sent before a restart

    @property
    def budget(self) -> Budget:
        """The budget that counts labels against the caps."""
        return self.policy.budget if self.caps is None else self.caps

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
        self.budget.recount(bought)

    def restore_preselected(self, event_ids) -> None:
        """Remember events preselected before a restart (their candidates are on the
        internal topic): a re-delivered one is not decided again."""
        for event_id in event_ids:
            self._preselected.add(event_id)

    def follow(self, task: Task) -> bool:
        """A task the owner sent, seen on ``labeling.tasks`` by a scorer: its item becomes
        one of this scorer's novelty centers, unless the scorer preselected it itself
        (it is one already), so every scorer measures novelty against every item chosen.
        Gold tasks and later rounds are left out. True if the item was added.

        >>> router = Router(Policy(Budget(fraction=0.5)))
        >>> task = {"task_id": task_id_of("e9"), "event_id": "e9", "features": {"x": 1.0}, "text": None, "round": 0}
        >>> router.follow(task), len(router.policy.novelty), router.follow({**task, "task_id": "gold-1"})
        (True, 1, False)
        """
        if task.get("round") or task["task_id"] != task_id_of(task["event_id"]) or \
                task["event_id"] in self._preselected or not (task.get("features") or task.get("text")):
            return False
        self.policy.novelty.add(featurize(task.get("features") or {}, task.get("text")))
        return True

    def preselected(self, event_id: str) -> bool:
        """True if this router preselected ``event_id`` (or knows it decided): its task, followed,
        would add nothing (:meth:`follow`), so a follower may skip it undecoded."""
        return event_id in self._preselected

    def decided(self, event_id: str) -> None:
        """Remember ``event_id`` as decided (its decision was recorded elsewhere)."""
        self._decided.add(event_id)
        self._preselected.add(event_id)

    def sent_before(self, event_id: str) -> dict | None:
        """The task sent for ``event_id`` before a restart (without the item's
        features), once: its row may not have reached ClickHouse."""
        return self._sent.pop(event_id, None)

    def _learn_labels(self, c: Candidate) -> None:
        self.labels.update(c["probabilities"])
        for label in (c["user_label"], c["predicted_label"]):
            if label and self.multi_label:
                self.labels.update(label_set(label))
            elif label:
                self.labels.add(label)

    def _decide(self, c: Candidate) -> PolicyDecision:
        x = None
        if c["features"] or c["text"]:  # the scorer's model input; computed again after a Kafka hop
            x = c.get("x")
            if x is None:
                x = featurize(c["features"], c["text"])
        return self.policy.decide(c["kind"], c["signals"], c["ts"], draw=stable_draw(c["event_id"], self.seed),
                                  x=x, label=c["shadow_label"] or c["predicted_label"])

    def _row(self, c: Candidate, now_ms: int, selected: bool, reasons: list[str], probability: float,
             priority: float, task_id: str | None, policy_version: str) -> Decision:
        return events.decision(
            event_id=c["event_id"], item_id=c["item_id"], ts=c["ts"], kind=c["kind"], selected=int(selected),
            reasons=reasons, selection_probability=probability, priority=priority, signals=c["signals"],
            task_id=task_id, policy_version=policy_version, model_version=c["model_version"],
            shadow_version=c["shadow_version"], decided_at=now_ms)

    def preselect(self, c: Candidate, now_ms: int) -> tuple[Decision | None, Candidate | None]:
        """At the partition: ``(decision row, None)`` for an event not preselected,
        ``(None, candidate)`` with its preselection filled in for one to send to
        the owner, ``(None, None)`` for an event preselected already. An event whose
        task was sent before a restart goes to the owner again, which keeps its decision."""
        event_id = c["event_id"]
        if event_id in self._preselected:
            return None, None
        sent = self._sent.get(event_id)
        if sent is not None:
            self._preselected.add(event_id)
            return None, {**c, "selection_probability": sent["selection_probability"],
                          "reasons": list(sent["reasons"]), "priority": sent["priority"],
                          "policy_version": sent["policy_version"]}
        self._learn_labels(c)
        d = self._decide(c)
        if not d.selected:
            return self._row(c, now_ms, False, d.reasons, d.probability, d.priority, None, self.policy.version), None
        self._preselected.add(event_id)
        return None, {**c, "selection_probability": d.probability, "reasons": d.reasons, "priority": d.priority,
                      "policy_version": self.policy.version}

    def preselect_many(self, candidates: list[Candidate], now_ms: int) -> list[tuple[Decision | None,
                                                                                 Candidate | None]]:
        """:meth:`preselect` of each of ``candidates`` in order, the policy deciding them in one
        :meth:`~streams.selection.policy.Policy.decide_many` (a scorer's message at a time).

        >>> from streams.selection.budget import Budget
        >>> cands = [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": 1, "kind": "prediction", "model_name": "m",
        ...     "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4},
        ...     "features": {"x": float(i % 5)}, "text": None, "context": {}, "shadow_label": None,
        ...     "shadow_version": 0, "signals": {"uncertainty": i / 40}, "user_label": None, "note": None,
        ...     "scored_ts": 1} for i in range(40)]
        >>> one, many = Router(Policy(Budget(fraction=0.3))), Router(Policy(Budget(fraction=0.3)))
        >>> [one.preselect(c, 2) for c in cands] == many.preselect_many(cands, 2)
        True
        """
        out, todo, decisions = self._message(candidates, now_ms)
        version = self.policy.version
        for i, d in zip(todo, decisions):
            c = candidates[i]
            if not d.selected:
                out[i] = self._row(c, now_ms, False, d.reasons, d.probability, d.priority, None, version), None
                continue
            self._preselected.add(c["event_id"])
            out[i] = None, {**c, "selection_probability": d.probability, "reasons": d.reasons,
                            "priority": d.priority, "policy_version": version}
        return out

    def preselect_columns(self, candidates, now_ms: int) -> tuple[dict[str, list], list[Candidate]]:
        """:meth:`preselect_many` of a message, its decision rows as one block of columns (in order,
        the fields of :func:`~streams.events.decision`) and the preselected candidates: the same rows
        and candidates. From a :class:`~streams.selection.scorer.Scored` message it reads columns, and
        makes a candidate's dict only for those preselected.

        >>> from streams.selection.budget import Budget
        >>> cands = [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": 1, "kind": "prediction", "model_name": "m",
        ...     "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4},
        ...     "features": {"x": float(i % 5)}, "text": None, "context": {}, "shadow_label": None,
        ...     "shadow_version": 0, "signals": {"uncertainty": i / 40}, "user_label": None, "note": None,
        ...     "scored_ts": 1} for i in range(40)]
        >>> one, many = Router(Policy(Budget(fraction=0.3))), Router(Policy(Budget(fraction=0.3)))
        >>> pairs = one.preselect_many(cands, 2)
        >>> rows, chosen = many.preselect_columns(cands, 2)
        >>> [dict(zip(rows, r)) for r in zip(*rows.values())] == [r for r, _ in pairs if r is not None]
        True
        >>> chosen == [c for _, c in pairs if c is not None]
        True
        """
        out, todo, decisions = self._message(candidates, now_ms)
        rows = {name: [] for name in DECISION_FIELDS}
        chosen = []  # (place in the message, candidate)
        for i, pair in enumerate(out):  # events preselected before, or twice in the message: one at a time
            if pair is not None:
                row, c = pair
                if row is not None:  # (only when every event went one at a time: the rows stay in order)
                    for name, values in rows.items():
                        values.append(row[name])
                if c is not None:
                    chosen.append((i, c))
        if not todo:
            return rows, [c for _, c in chosen]
        version, column, before = self.policy.version, _columns(candidates), bool(chosen)
        selected = decisions.selected  # the decisions' columns: a Decision made only for those selected
        kept = [i for i, s in zip(todo, selected) if not s]
        for j, i in enumerate(todo):
            if selected[j]:
                c, d = candidates[i], decisions[j]
                self._preselected.add(c["event_id"])
                chosen.append((i, {**c, "selection_probability": d.probability, "reasons": d.reasons,
                                   "priority": d.priority, "policy_version": version}))
        if before:  # in the message's order, as preselect_many gives them
            chosen.sort(key=itemgetter(0))
        chosen = [c for _, c in chosen]
        every = len(kept) == len(candidates)
        for name in ("event_id", "item_id", "ts", "kind"):
            values = column(name)
            rows[name] += values if every else [values[i] for i in kept]
        rows["selected"] += [0] * len(kept)
        rows["reasons"] += [[] for _ in kept]  # an item not selected has no reasons and priority 0 (Decisions)
        rows["selection_probability"] += [p for p, s in zip(decisions.probability, selected) if not s]
        rows["priority"] += [0.0] * len(kept)
        signals = column("signals")
        rows["signals"] += signals if every else [signals[i] for i in kept]
        rows["task_id"] += [None] * len(kept)
        rows["policy_version"] += [version] * len(kept)
        for name in ("model_version", "shadow_version"):
            values = column(name)
            rows[name] += values if every else [values[i] for i in kept]
        rows["decided_at"] += [now_ms] * len(kept)
        return rows, chosen

    def _message(self, candidates, now_ms: int) -> tuple[list, list[int], Decisions]:
        """The body of :meth:`preselect_many` and :meth:`preselect_columns`: ``(out, todo, decisions)``,
        ``out[i]`` the :meth:`preselect` of a candidate decided before (or of every candidate, when an
        event is twice in the message: the second sees the first's decision), ``decisions`` the
        policy's for the candidates at ``todo``, decided in one
        :meth:`~streams.selection.policy.Policy.decide_many`, their labels learned."""
        column = _columns(candidates)
        ids = column("event_id")
        if len(set(ids)) < len(ids):
            return [self.preselect(c, now_ms) for c in candidates], [], []
        out: list = [None] * len(ids)
        preselected, sent, todo = self._preselected, self._sent, []
        for i, event_id in enumerate(ids):
            if event_id in preselected or event_id in sent:
                out[i] = self.preselect(candidates[i], now_ms)
            else:
                todo.append(i)
        every = len(todo) == len(ids)
        if hasattr(candidates, "column"):  # a scored message's columns (predictions, no user label)
            if todo:
                self.labels.update(candidates.record["classes"])
                predicted = column("predicted_label")
                for label in set(predicted if every else [predicted[i] for i in todo]):
                    if label and self.multi_label:
                        self.labels.update(label_set(label))
                    elif label:
                        self.labels.add(label)
            xs = column("x")
        else:
            for i in todo:
                self._learn_labels(candidates[i])
            xs = [None if not (c["features"] or c["text"]) else c.get("x") or featurize(c["features"], c["text"])
                  for c in candidates]
        pick = (lambda values: values) if every else (lambda values: [values[i] for i in todo])
        shadow, predicted, seed = column("shadow_label"), column("predicted_label"), self.seed
        decisions = self.policy.decide_many(
            pick(column("kind")), pick(column("signals")), pick(column("ts")),
            stable_draws(pick(ids), seed), pick(xs),
            pick([s or p for s, p in zip(shadow, predicted)]))
        return out, todo, decisions

    def admit(self, c: Candidate, now_ms: int) -> tuple[Decision | None, Task | None]:
        """At the owner: ``(decision_row, task)`` for a preselected candidate; task
        is None when the caps refuse it, and both are None for a candidate already
        decided. A candidate without a preselection (from a scorer that did not
        preselect) is preselected here first."""
        if not self._decided.add(c["event_id"]):
            return None, None
        sent = self._sent.get(c["event_id"])
        if sent is not None:  # decided and sent before a restart: the same decision, no second task
            return self._row(c, sent["created_ts"], True, list(sent["reasons"]), sent["selection_probability"],
                             sent["priority"], sent["task_id"], sent["policy_version"]), None
        if not c.get("reasons"):
            self._preselected.pop(c["event_id"], None)
            decision, c = self.preselect(c, now_ms)
            if c is None:
                return decision, None
        else:
            self._learn_labels(c)
        if self.caps is not None and not self.caps.has_room(c["ts"]):  # the caps refuse it: never selected
            return self._row(c, now_ms, False, [], 0.0, 0.0, None, c["policy_version"]), None
        if self.caps is not None:
            self.caps.spend(c["ts"])
        task_id = task_id_of(c["event_id"])
        decision = self._row(c, now_ms, True, c["reasons"], c["selection_probability"], c["priority"], task_id,
                             c["policy_version"])
        suggested = c["user_label"] or c["shadow_label"] or c["predicted_label"]
        probabilities = c["probabilities"]
        if c["kind"] == "prediction" and c["shadow_label"] is None:
            suggested = top_label(probabilities) or suggested
        task = events.task(
            task_id=task_id, event_id=c["event_id"], item_id=c["item_id"], created_ts=now_ms, source_ts=c["ts"],
            kind=c["kind"], reasons=c["reasons"], signals=c["signals"],
            selection_probability=c["selection_probability"], priority=c["priority"], suggested_label=suggested,
            confidence=probabilities.get(suggested, 0.0) if suggested else 0.0, label_set=sorted(self.labels),
            features=c["features"], text=c["text"], predicted_label=c["predicted_label"],
            user_label=c["user_label"], note=c["note"], model_name=c["model_name"],
            model_version=c["model_version"], shadow_version=c["shadow_version"],
            policy_version=c["policy_version"], context=c["context"])
        if self.multi_label:  # any subset of the label set; the suggestion is a set too
            suggested = c["user_label"] or c["shadow_label"] or c["predicted_label"] or ""
            task.update(multi_label=True, suggested_label=suggested, suggested_labels=sorted(label_set(suggested)),
                        confidence=0.0)
        return decision, task

    def route(self, c: Candidate, now_ms: int) -> tuple[Decision | None, Task | None]:
        """Preselect and admit in one process: ``(decision_row, task)``; task is None
        when not selected, and both are None for a candidate already decided."""
        if c["event_id"] in self._decided:
            return None, None
        row, chosen = self.preselect(c, now_ms)
        if chosen is None:
            if row is not None:
                self._decided.add(c["event_id"])
            return row, None
        return self.admit(chosen, now_ms)
