"""The loop: the feedback loop's core state, and the one path every event takes through it.

A :class:`Loop` owns the stages: the :class:`~streams.selection.scorer.Scorer` (shadow
model and signals), the :class:`~streams.selection.router.Router` (policy and global
budget), the :class:`~streams.labels.trainer.Trainer` (label ⇄ task join, consensus,
learner), the live :class:`~streams.evaluation.lift.Lift`, the
:class:`~streams.evaluation.stopping.StoppingSignal` and drift detection. Its methods take
decoded events and return :class:`Effects`: records to send and rows to write.
It does no I/O. The Faust worker (:mod:`streams.app`) and the benchmark's bare
loop (:mod:`feedbackloop.bench`) drive this same object, so they do the same
work; every call from one stage into another happens here, in plain sight.

>>> loop = Loop.build(budget_fraction=0.5, model_kind="linear", publish_every=1, min_control=1)
>>> prediction = {"event_id": "e1", "item_id": "i1", "ts": 5, "model_name": "prod", "model_version": "3",
...     "predicted_label": "a", "probabilities": {"a": 0.5, "b": 0.5}, "features": {"x": 1.0},
...     "text": None, "context": {}}
>>> scored = loop.score("Prediction", prediction, now_ms=6)
>>> [table for table, _ in scored.rows], len(scored.candidates)
(['predictions'], 1)
>>> routed = loop.route(scored.candidates[0], now_ms=7)
>>> [t["reasons"] for t in routed.tasks], [table for table, _ in routed.rows]
([['uncertain']], ['routing_decisions', 'labeling_tasks'])
>>> task = routed.tasks[0]
>>> _ = loop.take("LabelingTask", task, now_ms=8)
>>> learned = loop.take("Label", {"event_id": "l1", "task_id": task["task_id"], "item_id": "i1", "label": "a",
...     "annotator_id": "ann", "ts": 8}, now_ms=9, offset=0)
>>> [table for table, _ in learned.rows], loop.trainer.learner.label_offset
(['labels', 'consensus_labels'], 0)
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.events import Candidate, Task
from streams.selection.budget import DAY_MS, HOUR_MS, WEEK_MS, Budget
from streams.labels.agreement import agreement_rows
from streams.labels.consensus import Consensus, GoldChecks
from streams.labels.gold import GoldMixer
from streams.labels.suspects import SuspectLabels, review_task
from streams.learning.learner import Learner, ShadowModel, load_version
from streams.learning.models import KNN
from streams.evaluation.lift import Lift
from streams.evaluation.milestones import Milestones
from streams.evaluation.production import ProductionAccuracy
from streams.evaluation.savings import Savings
from streams.learning.features import featurize
from streams.selection.policy import Policy
from streams.selection.router import Router
from streams.selection.scorer import Scorer
from streams.evaluation.stopping import StoppingSignal
from streams.labels.trainer import Trainer

log = logging.getLogger("feedbackloop")

#: Control items whose predictions successive model versions are compared on (the stop set).
STOP_SET = 50


@dataclass
class Effects:
    """What an event leads to: records to send (by topic) and ClickHouse rows to write.

    An adapter sends the tasks and waits for their delivery before it writes
    the rows that name them.
    """

    candidates: Sequence[Candidate] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    rows: list[tuple[str, dict]] = field(default_factory=list)
    retraining: list[dict] = field(default_factory=list)  # Retraining events, see _release_effects
    columns: list[tuple[str, dict[str, list]]] = field(default_factory=list)  # rows as (table, column -> values)

    def extend(self, other: "Effects") -> "Effects":
        if type(self.candidates) is not list:  # a scored message's (streams.selection.scorer.Scored): now dicts
            self.candidates = list(self.candidates)
        for name in ("candidates", "tasks", "models", "rows", "retraining", "columns"):
            getattr(self, name).extend(getattr(other, name))
        return self


class Loop:
    """The core objects of one worker, and the calls between them.

    Parameters
    ----------
    scorer, router, trainer
        The stages; see :meth:`build` for the usual way to make them.
    gold
        Mixes gold items (known answers) in after routed tasks, if given.
    overlap
        Labels each routed task asks for.
    """

    def __init__(self, scorer: Scorer, router: Router, trainer: Trainer, gold: GoldMixer | None = None,
                 overlap: int = 1, milestones: Milestones | None = None):
        self.scorer = scorer
        self.router = router
        self.trainer = trainer
        self.gold = gold
        self.overlap = max(1, overlap)
        self.lift = Lift()
        self.savings = Savings(copy.deepcopy(trainer.learner.model), kind=trainer.learner.kind)
        self.stopping = StoppingSignal()
        self.flagged: set[str] = set()
        self.labels_changed = False
        self.production = ProductionAccuracy()  # the production model's releases, judged by the labels
        self.milestones = milestones  # when to retrain the production model; None: never say
        self.suspects: SuspectLabels | None = None  # labels sent back for review, see watch_suspects

    @classmethod
    def build(cls, budget_fraction: float = 0.1, budget_per_hour: int = 0, budget_per_day: int = 0,
              budget_per_week: int = 0, control_fraction: float | None = 0.1, min_control: int = 20, seed: int = 0,
              model_name: str = "shadow", model_kind: str = "knn", publish_every: int = 25, overlap: int = 1,
              max_annotators: int = 5, gold_items: dict | None = None, gold_rate: float = 0.0,
              gold_threshold: float = 0.7, model=None, hold_out_control: bool = True, live_scoring: bool = False,
              prequential: bool = True, n_classes: int | None = None, label_set=None,
              policy_options: dict | None = None, milestones: dict | None = None,
              suspect_share: float = 0.0, multi_label: bool = False, early_every: int = 0) -> "Loop":
        """A loop from plain options (named as the settings are; a cap of 0 is no cap).

        An offline replay (:mod:`feedbackloop.simulate`) gives its own ``model``,
        learns control labels too (``hold_out_control=False``: it has a test
        set of its own), scores with the learner's live model in the production
        model's place (``live_scoring``, over ``n_classes`` classes; it never
        publishes; without it, and with ``prequential=False``, it predicts
        nothing at all), names every class up front (``label_set``), and passes its
        strategy (``mix``, ``uncertainty``, ...) as ``policy_options``;
        ``control_fraction=None`` keeps the mix's own control share. With ``multi_label`` the label
        set is multi-label: tasks take any subset, the learner is one-vs-rest and the set signals
        drive uncertainty; no savings estimate or suspect-label reviews (both single-label).

        >>> from streams.learning.models import make
        >>> replay = Loop.build(model=make("nb", offline=True), hold_out_control=False, live_scoring=True,
        ...                     label_set=["a", "b"], control_fraction=None, policy_options={"mix": {"control": 1.0}})
        >>> replay.scorer.model.model is replay.trainer.learner.model, replay.router.policy.mix["control"]
        (True, 1.0)
        """
        budget = Budget(budget_fraction)  # the share of the stream: paced wherever the policy decides
        caps = Budget(budget_fraction, budget_per_hour or None, budget_per_day or None, budget_per_week or None)
        policy = Policy(budget, control_share=control_fraction, cold_start=min_control, seed=seed,
                        **(policy_options or {}))
        gold_items = gold_items or {}
        learner = Learner(model_name, kind=model_kind, publish_every=publish_every, min_control=min_control,
                          model=model, hold_out_control=hold_out_control, prequential=prequential,
                          multi_label=multi_label, early_every=early_every)  # early versions: see Learner
        trainer = Trainer(learner, Consensus(overlap=overlap, max_annotators=max_annotators,
                                             gold=GoldChecks(threshold=gold_threshold)),
                          gold={item: g["label"] for item, g in gold_items.items()})
        gold = GoldMixer(gold_items, gold_rate, seed=seed) if gold_items and gold_rate > 0 else None
        scorer = Scorer(n_classes=n_classes, multi_label=multi_label)
        if live_scoring:  # a view on the learner's model and classes: it scores what was just learned
            scorer = Scorer(ShadowModel(model_name, 0, learner.model, learner.classes), live=True,
                            n_classes=n_classes, multi_label=multi_label)
        # the caps are global: enforced at admission
        router = Router(policy, seed=seed, caps=caps, multi_label=multi_label)
        router.labels.update(label_set or ())
        loop = cls(scorer, router, trainer, gold=gold, overlap=overlap,
                   milestones=None if milestones is None else Milestones(**milestones))
        loop.watch_suspects(0.0 if multi_label else suspect_share)
        if multi_label:
            loop.savings = None
        return loop

    # -- scoring ------------------------------------------------------------------------
    def score(self, name: str, record: dict, now_ms: int, columns: bool = False) -> Effects:
        """Candidates for an input event (``Prediction``, ``PredictionBatch``,
        ``PredictionColumns``, ``Override`` or ``Appeal``), and the prediction rows; with ``columns``
        the rows as one block of columns (in ``columns``: the same rows, no dict a row).

        >>> loop = Loop.build(budget_fraction=0.5, model_kind="linear")
        >>> event = {"event_id": "e1", "item_id": "i1", "ts": 5, "model_name": "m", "model_version": "1",
        ...     "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4}, "features": {"x": 1.0}, "text": None,
        ...     "context": {}}
        >>> [(table, dict(zip(block, values))) for table, block in loop.score("Prediction", event, 6, columns=True)
        ...  .columns for values in zip(*block.values())] == loop.score("Prediction", event, 6).rows
        True
        """
        if name == "PredictionColumns":
            candidates = self.scorer.columns(record, now_ms)
        elif name == "PredictionBatch":
            candidates = self.scorer.predictions(record["events"], now_ms)
        elif name == "Prediction":
            candidates = [self.scorer.prediction(record, now_ms)]
        elif name == "Override":
            candidates = [self.scorer.override(record, now_ms)]
        else:
            candidates = [self.scorer.appeal(record, now_ms)]
        if columns:
            return Effects(candidates=candidates, columns=[("predictions", _prediction_columns(candidates))])
        rows = [("predictions", _prediction_row(c)) for c in candidates if c["kind"] == "prediction"]
        return Effects(candidates=candidates, rows=rows)

    # -- routing ------------------------------------------------------------------------
    def preselect(self, candidate: Candidate, now_ms: int, recorded: bool = False) -> Effects:
        """At the partition that scored it: the decision row of an event not
        preselected, or the preselected candidate (in ``candidates``) for the
        owner of the budget to :meth:`admit`. Nothing for an event whose
        decision is ``recorded`` already (before a restart)."""
        return Effects() if recorded else self.preselect_many([candidate], now_ms)

    def preselect_many(self, candidates: Sequence[Candidate], now_ms: int, recorded=None,
                       columns: bool = False) -> Effects:
        """:meth:`preselect` of each of ``candidates`` (those ``recorded(event_id)`` says were
        decided before a restart left out), in one :class:`Effects`: a scorer's message at a time;
        with ``columns`` the decision rows as one block of columns (``Effects.columns``, see
        :meth:`Router.preselect_columns <streams.selection.router.Router.preselect_columns>`).

        >>> loop = Loop.build(budget_fraction=0.5, model_kind="linear")
        >>> scored = loop.score("PredictionBatch", {"events": [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": 5,
        ...     "model_name": "m", "model_version": "1", "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4},
        ...     "features": {"x": float(i)}, "text": None, "context": {}} for i in range(40)]}, now_ms=6)
        >>> out = loop.preselect_many(scored.candidates, 7, recorded=lambda event_id: event_id == "e0")
        >>> len(out.rows) + len(out.candidates)
        39
        """
        out = Effects()
        rows, chosen = out.rows, out.candidates
        if recorded is not None:
            ids = candidates.column("event_id") if hasattr(candidates, "column") else \
                [c["event_id"] for c in candidates]
            if any(map(recorded, ids)):  # (after a restart) a message of the others, one dict each
                candidates = [c for c in candidates if not recorded(c["event_id"])]
        if columns:
            block, out.candidates = self.router.preselect_columns(candidates, now_ms)
            if block["event_id"]:
                out.columns.append(("routing_decisions", block))
            return out
        for decision, candidate in self.router.preselect_many(candidates, now_ms):
            if decision is not None:
                rows.append(("routing_decisions", decision))
            if candidate is not None:
                chosen.append(candidate)
        return out

    def admit(self, candidate: Candidate, now_ms: int, recorded: bool = False) -> Effects:
        """At the owner of the global budget: the decision for one preselected
        candidate; its task (and a gold task after it) if the caps admit it. A
        candidate whose decision is ``recorded`` already (before a restart) is
        not decided again."""
        out = Effects()
        if recorded:
            self.router.decided(candidate["event_id"])
            sent = self.router.sent_before(candidate["event_id"])
            if sent is not None:  # its row may not have been written with the decision's
                out.rows.append(("labeling_tasks", {**sent, "created_at": sent["created_ts"]}))
            return out
        decision, task = self.router.admit(candidate, now_ms)
        return self._routed(out, candidate, decision, task)

    def route(self, candidate: Candidate, now_ms: int, recorded: bool = False) -> Effects:
        """:meth:`preselect` and :meth:`admit` in one process: the decision for one
        candidate; its task (and a gold task after it) if selected."""
        if recorded:
            return self.admit(candidate, now_ms, recorded=True)
        decision, task = self.router.route(candidate, now_ms)
        return self._routed(Effects(), candidate, decision, task)

    def follow_task(self, task: Task) -> bool:
        """A task on ``labeling.tasks``, as every scorer follows them: its item is a novelty
        center here too (see :meth:`~streams.selection.router.Router.follow`)."""
        return self.router.follow(task)

    def _routed(self, out: Effects, candidate: Candidate, decision, task) -> Effects:
        if decision is not None:
            out.rows.append(("routing_decisions", decision))
        if task is None:
            sent = self.router.sent_before(candidate["event_id"])
            if sent is not None:  # sent before a restart: its row again (the sink keeps one), not the message
                out.rows.append(("labeling_tasks", {**sent, "created_at": sent["created_ts"]}))
            return out
        task["overlap"] = self.overlap
        out.tasks.append(task)
        out.rows.append(("labeling_tasks", {**task, "created_at": task["created_ts"]}))
        gold = self.gold.follow(task) if self.gold else None
        if gold is not None:
            out.tasks.append(gold)
            out.rows.append(("labeling_tasks", {**gold, "created_at": gold["created_ts"], "kind": "gold",
                                                "reasons": ["gold"]}))
        return out

    # -- learning -----------------------------------------------------------------------
    def take(self, name: str, record: dict, now_ms: int, offset: int | None = None) -> Effects:
        """A ``LabelingTask`` or a ``Label`` (at ``offset`` on the labels topic):
        joined, settled, learned; rows, and tasks re-issued for adjudication.
        Raises :class:`~streams.labels.trainer.UnknownLabel` for a label outside its task's set."""
        learner = self.trainer.learner
        if name == "LabelingTask":
            result = self.trainer.add_task(record)
        else:
            result = self.trainer.add_label(record)
            if offset is not None:
                learner.label_offset = max(learner.label_offset, offset)
        out = Effects(tasks=list(result.tasks))
        out.rows.extend(("labels", row) for row in result.labels)
        out.rows.extend(("consensus_labels", row) for row in result.consensus)
        out.rows.extend(("adjudications", row) for row in result.adjudications)
        self.labels_changed = self.labels_changed or bool(result.labels)
        for row in result.consensus:
            out.rows.extend(self._measure(row, now_ms))
            self._save(row)
            self._release(row)
        if self.suspects is not None:
            out.extend(self._suspects_take(name, record, result, now_ms))
        return out

    def _save(self, row: dict) -> None:
        """A label the learner just learned or held out, on the savings' learning curves: a control label
        tests the counterfactual of its part and teaches the others, see :mod:`streams.evaluation.savings`.
        The policy's label count is the learner's minus the control labels and the items settled again (a
        review that changed a label: one item bought); after a restart it also counts the control labels
        before it, so the estimate errs against the policy, never for it."""
        if self.savings is None:  # a replay that learns its control labels: no counterfactual to compare with
            return
        learner = self.trainer.learner
        task = self.trainer.task(row["task_id"])
        if task is None or not getattr(learner, "hold_out_control", True):  # a replay that learns control labels
            return
        if "control" in task["reasons"]:
            self.savings.add_control(row["item_id"], featurize(task["features"], task.get("text")), row["label"],
                                     weight=row.get("confidence") or 1.0)
        else:
            labels = learner.labels_seen - self.savings.control_seen - self.savings.repeats
            # a point is measured as a published version is: on a rescaled copy, the learner left as it is
            self.savings.policy_learned(learner.model, labels, item_id=row["item_id"], tidy=learner.rescale)

    def _measure(self, row: dict, now_ms: int) -> list[tuple[str, dict]]:
        """A settled label: was the shadow model wrong on it? Feeds the live lift
        of the policy over the control slice, and drift detection on the shadow
        model's surprise (its error beyond what its confidence expected; every
        label counts, see :mod:`streams.selection.drift`)."""
        task = self.trainer.task(row["task_id"])
        predicted = row.get("shadow_prediction")
        if task is None or predicted is None:
            return []
        self.lift.add(task["reasons"], task["selection_probability"], error=predicted != row["label"])
        event = self.router.policy.observe_label(row["label"], predicted, ts=row["ts"],
                                                 confidence=row.get("shadow_confidence"))
        if event is None:
            return []
        if self.milestones is not None:
            self.milestones.drift()
        log.warning("drift detected after %s labels: shadow error %.2f -> %.2f", event["labels"],
                    event["error_before"], event["error_after"])
        learner = self.trainer.learner
        return [("drift_events", {"ts": now_ms, "model_name": learner.name, "version": learner.version,
                                  "detector": "page_hinkley:shadow_surprise", "detail": json.dumps(event)})]

    @property
    def due(self) -> bool:
        """True when the learner has a new version to publish."""
        return self.trainer.learner.due

    def publish(self, now_ms: int, key) -> Effects:
        """A new signed model version (the scorer serves it from now on), its
        lift over control, the labels it saved against random sampling and the stopping signal."""
        record = self.trainer.learner.publish(now_ms, key)
        self.scorer.use(load_version(record, key))
        out = Effects(models=[record], rows=[("model_versions", record)])
        out.rows.append(self._lift_row(record["version"], record["ts"]))
        out.rows.extend(self._stopping_rows(record))
        if self.savings is not None:
            out.rows.append(self._savings_row(record["version"], record["ts"]))
        out.extend(self._release_effects(record, out.rows))
        if self.suspects is not None:
            out.extend(self._suspects_review(record))
        log.info("published %s version %s (labels %s, control accuracy %s)", record["model_name"],
                 record["version"], record["labels_seen"], record["control_accuracy"])
        return out

    def resume(self, record: dict, key) -> None:
        """Continue from a published version after a restart (learner and scorer)."""
        self.trainer.learner.resume(record, key)
        self.scorer.use(load_version(record, key))

    def follow(self, model: ShadowModel) -> bool:
        """Serve a version published elsewhere (verified, see :mod:`streams.model_feed`), if it is newer."""
        return self.scorer.use(model)

    def _lift_row(self, version: int, ts: int) -> tuple[str, dict]:
        e = self.lift.estimate()
        accuracy = lambda rate: None if rate is None else 1.0 - rate  # noqa: E731
        return ("policy_lift", {"ts": ts, "version": version, "policy_accuracy": accuracy(e["policy_error_rate"]),
                                "control_accuracy": accuracy(e["control_error_rate"]), "lift": e["lift"],
                                "ci_low": e["low"], "ci_high": e["high"], "n_policy": e["policy_labels"],
                                "n_control": e["control_labels"]})

    def _savings_row(self, version: int, ts: int) -> tuple[str, dict]:
        e = self.savings.estimate(self.trainer.learner.model)
        return ("label_savings", {"ts": ts, "version": version, **e})

    def _stopping_rows(self, record: dict) -> list[tuple[str, dict]]:
        """Should labeling stop? Successive versions' agreement on a fixed stop set
        (the first control items: a uniform sample whose labels are never learned)
        and the control accuracy's plateau, see :mod:`streams.evaluation.stopping`."""
        learner = self.trainer.learner
        stop_set = [x for x, _ in list(learner.control)[:STOP_SET]]
        predictions = learner.predict_many(stop_set) if len(stop_set) == STOP_SET else []
        row = self.stopping.update(record["version"], predictions, record["control_accuracy"], record["labels_seen"])
        recommendation = "stop" if row["stop"] else "continue"
        return [("stopping_signals", {"ts": record["ts"], "version": record["version"], "metric": metric,
                                      "value": value, "recommendation": recommendation})
                for metric, value in (("kappa_average", row["kappa_average"]),
                                      ("control_accuracy_gain", row["accuracy_gain"]))]

    # -- the production model's releases, and retraining milestones --------------------------
    def _release(self, row: dict, milestone: bool = True) -> None:
        """A settled label: on the production release it judges (prediction tasks only,
        see :mod:`streams.evaluation.production`), and towards the next retraining milestone."""
        task = self.trainer.task(row["task_id"])
        if task is not None and task["kind"] == "prediction":
            self.production.add(row["task_id"], task["model_name"], task["model_version"], task["predicted_label"],
                                row["label"], task["selection_probability"], "control" in task["reasons"])
        if self.milestones is not None and milestone:
            self.milestones.label()

    def recount_releases(self) -> int:
        """After a restart, once the trainer is rebuilt from the topics: every label it has settled,
        on the production releases again (the milestones count from the restart). Returns how many."""
        settled = [(task_id, t["settled"]) for task_id, t in self.trainer.consensus.tasks.items()
                   if t["settled"] is not None]
        for task_id, label in settled:
            self._release({"task_id": task_id, "label": label}, milestone=False)
        return len(settled)

    def _release_effects(self, record: dict, rows: list[tuple[str, dict]]) -> Effects:
        """At a published version: the production model's accuracy, precision and recall per
        release (``production_accuracy`` rows), and a ``Retraining`` event if a milestone was
        reached (see :mod:`streams.evaluation.milestones`); the dataset version is this version."""
        out = Effects(rows=[("production_accuracy", {"ts": record["ts"], "version": record["version"], **r})
                            for r in self.production.rows()])
        if self.milestones is not None:
            stop = any(table == "stopping_signals" and r["recommendation"] == "stop" for table, r in rows)
            event = self.milestones.check(record["version"], record["ts"], record["control_accuracy"], stop)
            if event is not None:
                out.retraining.append({"event_id": f"{record['model_name']}-{record['version']}",
                                       "model_name": record["model_name"], **event})
        return out

    # -- standing -----------------------------------------------------------------------
    def standing(self, now_ms: int) -> Effects:
        """Agreement and each annotator's standing (when labels came in since the
        last call), and the budget against its caps (once the router has seen items)."""
        out = Effects()
        if self.labels_changed:
            self.labels_changed = False
            out.rows.extend(self._label_quality_rows(now_ms))
        b, caps = self.router.policy.budget, self.router.budget  # the share paced here, the caps of the owner
        if b.total_seen:
            out.rows.append(("budget_state", {
                "ts": now_ms, "spent_hour": caps.spent_in_hour(now_ms), "spent_day": caps.spent_in_day(now_ms),
                "spent_week": caps.spent_in_week(now_ms), "cap_hour": caps.caps[HOUR_MS],
                "cap_day": caps.caps[DAY_MS], "cap_week": caps.caps[WEEK_MS], "target_fraction": b.fraction,
                "realised_fraction": b.realised}))
        return out

    def _label_quality_rows(self, now_ms: int) -> list[tuple[str, dict]]:
        report = self.trainer.tracker.report()
        # cumulative, this hour, today, and by guideline version (streams/labels/agreement.py)
        rows = [("annotator_agreement", r) for r in agreement_rows(self.trainer.tracker, now_ms, cumulative=report)]
        checks = self.trainer.consensus.gold
        flagged = set(checks.flagged())
        for annotator, row in report["per_annotator"].items():
            rows.append(("annotator_quality", {
                **row, "ts": now_ms, "annotator_id": annotator, "labels": row["n_labels"],
                "gold_checks": checks.checks.get(annotator, 0), "gold_accuracy": checks.accuracy(annotator),
                "label_drift": row["drift"], "flagged": int(annotator in flagged)}))
        for annotator in flagged - self.flagged:
            log.warning("annotator %s flagged: gold accuracy %.0f%% on %d checks", annotator,
                        100 * checks.accuracy(annotator), checks.checks[annotator])
        self.flagged = flagged
        return rows

    # -- suspect labels (streams/labels/suspects.py) -----------------------------------------
    def watch_suspects(self, share: float) -> None:
        """After each published version, send the most suspect labels bought back for review,
        within ``share`` of the labels bought (0: never). The cross-fitted copies are the shadow
        model's kind; a kNN's copies are the numpy :class:`~streams.learning.models.KNN` (about twenty
        times faster) with 15 neighbours instead of 5: smoother probabilities, so the class
        thresholds mean more (at the end of a stream of 1,000 labels, 20% flipped, seeds 0-4, the
        suspects' precision rose from 0.58 to 0.75 on bananas and 0.79 to 0.83 on imagesegments,
        recall a little too)."""
        learner = self.trainer.learner
        make = (lambda: KNN(n_neighbors=15)) if learner.kind == "knn" else learner.model.clone
        self.suspects = SuspectLabels(make, share=share) if share > 0 else None

    def _suspects_review(self, record: dict) -> Effects:
        """At a published version: the suspects picked, each as a review task and a ``found`` row."""
        out = Effects()
        for suspect in self.suspects.pick():
            task = self.trainer.task(suspect.task_id)
            if task is None or suspect.task_id not in self.trainer.consensus.tasks:
                continue
            out.tasks.append(review_task(task, self.trainer.consensus))
            out.rows.append(("suspect_labels", self.suspects.row(suspect.task_id, "found", record["ts"],
                                                                 record["version"])))
        return out

    def _suspects_take(self, name: str, record: dict, result, now_ms: int) -> Effects:
        """A label or a settled consensus, for the suspect labels (see
        :meth:`~streams.labels.suspects.SuspectLabels.take`): reviews, corrections, labels scored."""
        return Effects(rows=self.suspects.take(self.trainer, name, record, result, now_ms))


#: The columns of a ``predictions`` row, in order (:func:`_prediction_row`).
_PREDICTION_COLUMNS = ("event_id", "item_id", "ts", "model_name", "model_version", "predicted_label", "confidence",
                      "shadow_label", "shadow_version", "scored_at")


def _prediction_row(c: Candidate) -> dict:
    """A prediction candidate's ``predictions`` row: the fields the table keeps, no more (the sink stores
    the row as it is, no projection; the signals are stored once, in the event's decision row: migration
    0019)."""
    return {"event_id": c["event_id"], "item_id": c["item_id"], "ts": c["ts"], "model_name": c["model_name"],
            "model_version": c["model_version"], "predicted_label": c["predicted_label"],
            "confidence": max(c["probabilities"].values(), default=0.0), "shadow_label": c["shadow_label"],
            "shadow_version": c["shadow_version"], "scored_at": c["scored_ts"]}


def _prediction_columns(candidates: Sequence[Candidate]) -> dict[str, list]:
    """The ``predictions`` rows of the prediction ``candidates`` as columns: :meth:`Loop.score`'s rows,
    read from a :class:`~streams.selection.scorer.Scored` message's own columns where it is one."""
    if hasattr(candidates, "confidence"):  # a scored message: predictions all, read as its columns
        column = candidates.column
        return {"event_id": column("event_id"), "item_id": column("item_id"), "ts": column("ts"),
                "model_name": column("model_name"), "model_version": column("model_version"),
                "predicted_label": column("predicted_label"), "confidence": candidates.confidence(),
                "shadow_label": column("shadow_label"), "shadow_version": column("shadow_version"),
                "scored_at": column("scored_ts")}
    rows = [_prediction_row(c) for c in candidates if c["kind"] == "prediction"]
    return {name: [r[name] for r in rows] for name in _PREDICTION_COLUMNS}
