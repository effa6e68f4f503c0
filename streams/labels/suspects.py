"""Suspect labels: labels already bought that are probably wrong, found the way confident learning does.

After each model version the labels bought so far are scored with out-of-sample
class probabilities (:class:`CrossFit`: K copies of the shadow model, each learning
every label but those of its fold, so no label is scored by a model that learned it).
Confident learning (Northcutt, Jiang and Chuang, 2021) sets a threshold per class,
the mean probability the model gives that class on the items labelled with it
(:func:`confident_thresholds`). A label is suspect (:func:`find`) when

- the model's probability for it is below its class's threshold,
- another class is at or above its own threshold, and the model's top class is not the label,
- and, where other annotators labelled the item, their weighted vote gives it less than ``support_below``.

Why cross-fitted rather than prequential (each label's probability recorded before the online
learner learned it, which costs nothing): a prequential probability is frozen at the time, from a
model that had seen few labels, while a cross-fit scores every label again with the newest copies.
On 1,000-label streams with 20% of labels flipped, scanned every 25 labels (seeds 0-4, median),
the cross-fit found 80% of the flips on bananas and 92% on imagesegments, the prequential
probabilities 70% and 87%, at precisions of 0.49 against 0.56 and 0.62 against 0.64.

These are exactly the labels cleanlab's ``find_label_issues(filter_by="confident_learning")``
reports whose own probability is under its threshold (``tests/test_suspects.py`` checks it).
:class:`SuspectLabels` keeps the labels, ranks the suspects by margin (the suggested class's
probability minus the label's), sends the top ones back for review within ``share`` of the
labels bought, and says what each review did: ``confirmed`` (the reviewer disagrees with the
label), ``cleared`` (agrees) and ``corrected`` (the task's consensus settled on another label).
:func:`correct_learner` takes a corrected label back out of a learner.

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.85, 0.15]])
>>> given = np.array([0, 0, 1, 1, 1])          # the last item is labelled 1, the model says 0
>>> np.round(confident_thresholds(probs, given), 3)
array([0.85, 0.55])
>>> mask, guess, score = find(probs, given)
>>> mask.nonzero()[0].tolist(), int(guess[4]), round(float(score[4]), 2)
([4], 0, 0.7)

Another annotator who backs the label clears it:

>>> bool(find(probs, given, support=np.array([np.nan] * 4 + [0.9]))[0].any())
False
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableSequence
from dataclasses import dataclass, field

import numpy as np

from streams import events
from streams.labels.consensus import Consensus, weighted_vote
from streams.learning.features import featurize
from streams.learning.learner import Learner, knn_step

__all__ = ["CrossFit", "Suspect", "SuspectLabels", "confident_thresholds", "correct_learner", "find", "others_support",
           "review_task"]

#: Probabilities this close count as equal (as in cleanlab, so the two agree at the boundaries).
TIE = 1e-6


def confident_thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the items labelled with it (2.0, out of
    reach, for a class no item is labelled with).

    >>> confident_thresholds(np.array([[0.6, 0.4], [0.2, 0.8]]), np.array([0, 0])).tolist()
    [0.4, 2.0]
    """
    thresholds = np.full(probs.shape[1], 2.0)
    for c in np.unique(given):
        thresholds[c] = probs[given == c, c].mean()
    return np.clip(thresholds, 2 * TIE, None)


def find(probs: np.ndarray, given: np.ndarray, support: np.ndarray | None = None,
         support_below: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which labels are suspect: ``(mask, suggested class, score)``, one entry per row of ``probs``.

    ``probs`` are out-of-sample probabilities (rows: items, columns: classes), ``given`` the
    class index of each label, ``support`` the other annotators' probability for the label
    (NaN where no one else labelled the item). The score is the suggested class's probability
    minus the label's: the higher, the more suspect.
    """
    rows = np.arange(len(given))
    thresholds = confident_thresholds(probs, given)
    p_given = probs[rows, given]
    confident = probs >= thresholds - TIE
    confident[rows, given] = False
    suggested = np.where(confident, probs, -1.0).argmax(1)
    top = probs.copy()
    top[rows, given] += TIE  # a tie with the label is no evidence against it
    mask = (p_given < thresholds[given] - TIE) & confident.any(1) & (top.argmax(1) != given)
    if support is not None:
        support = np.asarray(support, dtype=float)
        mask &= np.isnan(support) | (support < support_below)
    return mask, suggested, probs[rows, suggested] - p_given


def fold_of(key: str, folds: int) -> int:
    """The fold a label belongs to: a stable hash of its key (a task id), the same in every process.

    >>> fold_of("t1", 5) == fold_of("t1", 5), 0 <= fold_of("t2", 5) < 5
    (True, True)
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % folds


class CrossFit:
    """Out-of-sample probabilities for labels learned online: K copies of a model, copy k
    learning every label outside fold k (the labels of fold k are scored by copy k).

    Each copy is a :class:`~streams.learning.learner.Learner`, so a River kNN copy is
    rescaled before it scores (its predictions do not depend on the order it learned in)
    and a corrected label is taken back out of it (:func:`correct_learner`).

    >>> from streams.learning.models import make
    >>> fit = CrossFit(lambda: make("knn", offline=True), folds=2)
    >>> for i in range(20):
    ...     fit.learn(f"t{i}", {"x": float(i)}, "low" if i < 10 else "high")
    >>> p = fit.proba("t3", {"x": 3.0})
    >>> p["low"] > p["high"], sum(f.labels_seen for f in fit.models) == 20
    (True, True)
    """

    def __init__(self, make, folds: int = 5):
        self.folds = folds
        self.models = [Learner(f"crossfit-{k}", model=make(), hold_out_control=False, prequential=False)
                       for k in range(folds)]

    def learn(self, key: str, x: dict, label: str, weight: float = 1.0) -> None:
        own = fold_of(key, self.folds)
        for k, learner in enumerate(self.models):
            if k != own:
                learner.learn(x, label, weight=weight)

    def correct(self, key: str, x: dict, old: str, new: str) -> None:
        """``x`` was learned as ``old`` and is ``new``: see :func:`correct_learner`."""
        own = fold_of(key, self.folds)
        for k, learner in enumerate(self.models):
            if k != own:
                correct_learner(learner, x, old, new, learn_new=True)

    def ready(self) -> None:
        """Rescale the kNN copies (see :meth:`~streams.learning.learner.Learner.rescale`) before scoring."""
        for learner in self.models:
            learner.rescale()

    def proba(self, key: str, x: dict) -> dict[str, float]:
        return self.models[fold_of(key, self.folds)].model.predict_proba_one(x)


def correct_learner(learner: Learner, x: dict, old: str, new: str, learn_new: bool = False,
                    control: bool = False) -> str:
    """Take a label the learner learned as ``old`` back: ``x`` is ``new``. Returns how.

    A ``control`` label was held out, not learned: its entry in the learner's control labels
    is dropped (the trainer has held the new one out beside it) or, with ``learn_new``,
    relabelled (``held_out``).

    Most River models cannot unlearn. A kNN can be rebuilt: the learner keeps every item it
    holds (:attr:`~streams.learning.learner.Learner.learned`), so the entry is relabelled and
    the kNN refilled (``rebuilt``). Any other model learns ``new`` once more, weighted to
    outvote ``old`` (``outweighed``). With ``learn_new`` the new label is also learned (the
    caller has not taught it yet); without, the caller already has (the trainer learns a
    consensus that changes), and a kNN drops the old entry instead of relabelling it.

    >>> learner = Learner("m")
    >>> x = {"v": 1.0}
    >>> for v, y in [({"v": 0.0}, "a"), ({"v": 0.1}, "a"), (x, "a"), ({"v": 1.1}, "b"), ({"v": 0.9}, "b")]:
    ...     _ = learner.learn(v, y)
    >>> correct_learner(learner, x, "a", "b", learn_new=True), [y for v, y in learner.learned if v is x]
    ('rebuilt', ['b'])
    """
    if control:
        _relabel(learner.control, x, old, new if learn_new else None)
        return "held_out"
    if knn_step(learner.model) is not None and _relabel(learner.learned, x, old, new if learn_new else None):
        learner.rescale()
        return "rebuilt"
    for _ in range(2 if learn_new else 1):
        try:
            learner.model.learn_one(x, new, w=1.0)
        except TypeError:  # a model that takes no sample weight
            learner.model.learn_one(x, new)
    learner.classes.add(new)
    return "outweighed"


def _relabel(pairs: MutableSequence, x: dict, old: str, new: str | None) -> bool:
    """The first ``(x, old)`` of ``pairs`` relabelled ``new`` (dropped if ``new`` is None); False if none.

    >>> pairs = [({"v": 1}, "a"), ({"v": 2}, "a")]
    >>> _relabel(pairs, {"v": 2}, "a", "b"), _relabel(pairs, {"v": 1}, "a", None), pairs
    (True, True, [({'v': 2}, 'b')])
    """
    for i, (item, label) in enumerate(pairs):
        if label == old and item == x:
            if new is None:
                del pairs[i]
            else:
                pairs[i] = (item, new)
            return True
    return False


def others_support(votes: dict[str, str], first: str, classes: list[str], accuracy) -> float:
    """The other annotators' weighted-vote probability for ``first``'s label (NaN when
    ``first`` labelled the item alone); ``accuracy`` maps an annotator to their estimated
    accuracy, see :func:`~streams.labels.consensus.weighted_vote`.

    >>> others_support({"a1": "cat", "a2": "dog"}, "a1", ["cat", "dog"], lambda a: 0.8) < 0.5
    True
    >>> math.isnan(others_support({"a1": "cat"}, "a1", ["cat", "dog"], lambda a: 0.8))
    True
    """
    others = {a: y for a, y in votes.items() if a != first}
    if not others:
        return math.nan
    return weighted_vote(others, classes, accuracy).get(votes[first], 0.0)


def review_task(task: events.Task, consensus: Consensus) -> events.Task:
    """``task`` again, for review: reason ``suspect_label``, one label from an annotator who has
    not labelled it (``exclude_annotators``), in the task's next round (the consensus counts the
    round too, so a later adjudication gets a round of its own). The reviewer's label is one more
    vote in the task's consensus.

    >>> c = Consensus()
    >>> task = {"task_id": "t1", "item_id": "i1", "reasons": ["uncertain"], "label_set": ["a", "b"],
    ...         "overlap": 1, "exclude_annotators": [], "tier": "annotator", "round": 0}
    >>> c.open(task)
    >>> _ = c.add("t1", "ann-1", "a")
    >>> again = review_task(task, c)
    >>> again["reasons"], again["exclude_annotators"], again["round"], c.tasks["t1"]["round"]
    (['suspect_label'], ['ann-1'], 1, 1)
    """
    entry = consensus.tasks[task["task_id"]]
    entry["round"] += 1
    return events.replace_task(task, reasons=["suspect_label"], overlap=1, tier="annotator", round=entry["round"],
                               exclude_annotators=sorted(consensus.votes(task["task_id"])))


@dataclass
class Suspect:
    """A label sent back for review, and why."""

    task_id: str
    item_id: str
    label: str
    suggested: str
    probability: float
    threshold: float
    suggested_probability: float
    suggested_threshold: float
    support: float | None
    score: float
    annotators: list[str] = field(default_factory=list)
    recorded: str | None = None  # the reason as its ``found`` row gave it (a suspect restored after a restart)

    @classmethod
    def from_row(cls, row: dict) -> "Suspect":
        """A suspect as its ``found`` row in ``suspect_labels`` recorded it.

        >>> s = Suspect("t1", "i1", "a", "b", 0.1, 0.6, 0.8, 0.5, None, 0.7, ["ann"])
        >>> again = Suspect.from_row(s.row("found", ts=1, version=2))
        >>> again.reason == s.reason, again.score
        (True, 0.7)
        """
        return cls(row["task_id"], row["item_id"], row["label"], row["suggested_label"], row["probability"],
                   row["threshold"], row["suggested_probability"], math.nan, row["support"], row["score"],
                   list(row["annotators"]), recorded=row["reason"])

    def row(self, status: str, ts: int, version: int, label: str | None = None, corrected: str | None = None,
            reviewer: str | None = None) -> dict:
        """Its ``suspect_labels`` row at one step (``found``, ``confirmed``, ``cleared``, ``corrected``);
        ``label`` as first bought (default: the suspected one)."""
        return {"ts": ts, "task_id": self.task_id, "item_id": self.item_id, "status": status, "version": version,
                "label": self.label if label is None else label, "suggested_label": self.suggested,
                "corrected_label": corrected, "probability": self.probability, "threshold": self.threshold,
                "suggested_probability": self.suggested_probability, "support": self.support, "score": self.score,
                "reason": self.reason, "annotators": self.annotators, "reviewer": reviewer}

    @property
    def reason(self) -> str:
        if self.recorded is not None:
            return self.recorded
        backed = "" if self.support is None else f"; the other annotators give it {self.support:.2f}"
        return (f"the model gives {self.label!r} {self.probability:.2f} (class threshold {self.threshold:.2f}) "
                f"and {self.suggested!r} {self.suggested_probability:.2f} (threshold "
                f"{self.suggested_threshold:.2f}){backed}")


class SuspectLabels:
    """The labels bought, scored after each version; the suspects to review, and what reviews found.

    Parameters
    ----------
    make
        A fresh copy of the shadow model (e.g. ``learner.model.clone``).
    folds
        Copies for cross-fitting (each label is scored by a copy that learned the others).
    share
        Reviews allowed, as a share of the labels bought.
    support_below
        Where other annotators labelled the item, their vote must give the label less than this.
    min_labels
        No scan before this many labels (thresholds from a handful of labels mean nothing).
    persist
        Scans in a row a label must be suspect in before it is picked: an item near a class
        boundary is suspect in one scan and not in the next, a wrong label stays suspect.

    >>> import random
    >>> from streams.learning.models import make
    >>> rng = random.Random(1)
    >>> s = SuspectLabels(lambda: make("knn", offline=True), share=0.1, min_labels=10, persist=1)
    >>> for i in range(100):
    ...     x = rng.random()
    ...     true = "low" if x < 0.5 else "high"
    ...     label = ("high" if true == "low" else "low") if i in (20, 40, 60) else true
    ...     s.add(f"t{i}", f"i{i}", {"x": x}, label, {"ann-1": label})
    >>> picked = s.pick()
    >>> sorted(p.task_id for p in picked), picked[0].annotators
    (['t20', 't40', 't60'], ['ann-1'])
    >>> first, second = picked[0], picked[1]
    >>> s.review(first.task_id, "ann-2", first.suggested), s.review(second.task_id, "ann-2", second.label)
    ('confirmed', 'cleared')
    >>> s.settled(first.task_id, first.suggested), s.settled(second.task_id, second.label)
    ('corrected', None)
    >>> s.pick()
    []
    """

    def __init__(self, make, folds: int = 5, share: float = 0.05, support_below: float = 0.5, min_labels: int = 50,
                 persist: int = 1):
        self.crossfit = CrossFit(make, folds)
        self.persist = persist
        self.share = share
        self.support_below = support_below
        self.min_labels = min_labels
        self.labels: dict[str, dict] = {}
        self.reviews = 0
        self.found = self.confirmed = self.corrected = 0
        self.pending: dict[str, tuple[dict | None, bool]] = {}  # reviews to reopen once their label settles
        self.unscored: list[tuple[str, bool]] = []  # reopened without their found row: (task id, row lost)

    def add(self, task_id: str, item_id: str, x: dict, label: str, votes: dict[str, str],
            support: float | None = None) -> None:
        """A settled label (with the votes it was settled from, and the other annotators'
        support for it, see :func:`others_support`); a task settled again keeps its first label
        in the cross-fit until :meth:`settled` corrects it."""
        if task_id in self.labels:
            return
        self.labels[task_id] = {"item_id": item_id, "x": x, "label": label, "first": label,
                                "annotators": sorted(a for a, y in votes.items() if y == label),
                                "support": support, "state": "learned", "streak": 0}
        self.crossfit.learn(task_id, x, label)
        if task_id in self.pending:  # its review was out before a restart
            self._reopened(task_id, *self.pending.pop(task_id))

    def scan(self) -> list[Suspect]:
        """Every label now suspect and not reviewed yet, most suspect first."""
        open_ = [(t, e) for t, e in self.labels.items() if e["state"] == "learned"]
        if len(self.labels) < self.min_labels or not open_:
            return []
        keys, classes, probs, given = self._probabilities()
        support = np.array([math.nan if self.labels[t]["support"] is None else self.labels[t]["support"]
                            for t in keys])
        mask, suggested, score = find(probs, given, support, self.support_below)
        thresholds = confident_thresholds(probs, given)
        out = []
        for i, t in enumerate(keys):
            e = self.labels[t]
            e["streak"] = e["streak"] + 1 if mask[i] else 0
            if e["state"] != "learned" or e["streak"] < self.persist:
                continue
            out.append(Suspect(keys[i], e["item_id"], e["label"], classes[suggested[i]], float(probs[i, given[i]]),
                               float(thresholds[given[i]]), float(probs[i, suggested[i]]),
                               float(thresholds[suggested[i]]),
                               None if math.isnan(support[i]) else float(support[i]), float(score[i]),
                               list(e["annotators"])))
        return sorted(out, key=lambda s: (-s.score, s.task_id))

    def _probabilities(self) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        """Every label's out-of-sample probabilities: ``(task ids, classes, probabilities, given class index)``."""
        self.crossfit.ready()
        keys = list(self.labels)
        classes = sorted({e["label"] for e in self.labels.values()})
        index = {c: i for i, c in enumerate(classes)}
        probs = np.zeros((len(keys), len(classes)))
        for i, t in enumerate(keys):
            for c, p in self.crossfit.proba(t, self.labels[t]["x"]).items():
                if c in index:
                    probs[i, index[c]] = p
        return keys, classes, probs, np.array([index[self.labels[t]["label"]] for t in keys])

    @property
    def quota(self) -> int:
        """Reviews still allowed: ``share`` of the labels bought, less those sent."""
        return max(0, int(self.share * len(self.labels)) - self.reviews)

    def pick(self) -> list[Suspect]:
        """The most suspect labels the quota allows, marked as under review."""
        picked = self.scan()[:self.quota]
        for s in picked:
            self.labels[s.task_id].update(state="reviewing", suspect=s)
        self.reviews += len(picked)
        self.found += len(picked)
        return picked

    def row(self, task_id: str, status: str, ts: int, version: int, reviewer: str | None = None) -> dict:
        """A ``suspect_labels`` row: one step (``found``, ``confirmed``, ``cleared``, ``corrected``)
        of one label picked for review."""
        e = self.labels[task_id]
        return e["suspect"].row(status, ts, version, label=e["first"],
                                corrected=e["label"] if status == "corrected" else None, reviewer=reviewer)

    def reviewing(self, task_id: str) -> bool:
        e = self.labels.get(task_id)
        return e is not None and e["state"] in ("reviewing", "confirmed", "cleared")

    def review(self, task_id: str, annotator: str, label: str) -> str | None:
        """A reviewer's label on a task under review: ``confirmed`` if it differs from the
        suspected label, ``cleared`` if not (None for a task not under review, or an annotator
        of the suspected label)."""
        e = self.labels.get(task_id)
        if e is None or e["state"] != "reviewing" or annotator in e["annotators"]:
            return None
        e["state"] = "confirmed" if label != e["label"] else "cleared"
        self.confirmed += e["state"] == "confirmed"
        return e["state"]

    def settled(self, task_id: str, label: str) -> str | None:
        """The task's consensus after a review: ``corrected`` when it moved off the suspected
        label (the cross-fit copies learn the new one; the caller corrects the learner, see
        :func:`correct_learner`), else None."""
        e = self.labels.get(task_id)
        if e is None or e["state"] not in ("reviewing", "confirmed", "cleared") or label == e["label"]:
            return None
        self.crossfit.correct(task_id, e["x"], e["label"], label)
        e["label"], e["state"] = label, "corrected"
        self.corrected += 1
        return "corrected"

    def take(self, trainer, name: str, record: dict, result, ts: int, correct: bool = True) -> list[tuple[str, dict]]:
        """A task or a label the ``trainer`` (:class:`~streams.labels.trainer.Trainer`) took, and its
        ``result``: the ``suspect_labels`` rows it makes.

        A reviewer's label confirms or clears a suspect (:meth:`review`); a consensus that moved off a
        suspected label corrects it (:meth:`settled`) and, with ``correct``, the trainer's learner
        (:func:`correct_learner`; a control label in the held-out test set); any other settled label
        joins the labels scored (:meth:`add`). Control labels are reviewed too: correcting the wrong
        ones the model doubts leaves only those it agrees with, which the test set counted as right
        before as well, so its accuracy moves towards the true one (with 13% of labels wrong and a
        model right 85% of the time, from 0.09 under it to 0.02 over it at most). A replay after a
        restart passes ``correct=False`` for labels the resumed model already reflects.
        """
        rows, learner = [], trainer.learner
        if name == "Label" and result.labels:
            status = self.review(record["task_id"], record["annotator_id"], record["label"])
            if status is not None:
                rows.append(("suspect_labels", self.row(record["task_id"], status, ts, learner.version,
                                                        reviewer=record["annotator_id"])))
        for row in result.consensus:
            task = trainer.task(row["task_id"])
            if task is None:
                continue
            x = featurize(task["features"], task.get("text"))
            old = self.labels[row["task_id"]]["label"] if row["task_id"] in self.labels else None
            if self.settled(row["task_id"], row["label"]) == "corrected":
                if correct:
                    correct_learner(learner, x, old, row["label"], control="control" in task["reasons"])
                rows.append(("suspect_labels", self.row(row["task_id"], "corrected", ts, learner.version)))
            else:
                votes = trainer.consensus.votes(row["task_id"])
                first = next((a for a, y in votes.items() if y == row["label"]), None)
                classes = sorted(set(task.get("label_set") or []) | set(votes.values()))
                support = others_support(votes, first, classes, trainer.consensus.gold.estimate) if first else None
                self.add(row["task_id"], row["item_id"], x, row["label"], votes,
                         None if support is None or support != support else support)
        rows.extend(("suspect_labels", r) for r in self.restored(ts, learner.version))  # see reopen
        return rows

    # -- after a restart ------------------------------------------------------------------
    def reopen(self, task: events.Task, consensus: Consensus, found: dict | None = None, lost: bool = False) -> bool:
        """A review task sent before a restart (reason ``suspect_label``), replayed: its label is under
        review again, counted as found and against the quota as when it was picked, so it is never
        picked twice; the task's consensus is in the review's round. ``found`` is its ``found`` row,
        whose figures the later rows repeat; without one they are scored again (:meth:`restored`),
        and with ``lost`` (ClickHouse has no such row) the row is written again. A label not settled
        yet (the resumed model is older than the review: its label comes again after the restart)
        is reopened when it settles (:meth:`add`). False unless reopened now.

        >>> from streams.learning.models import make
        >>> s, c = SuspectLabels(lambda: make("knn", offline=True)), Consensus()
        >>> task = {"task_id": "t1", "item_id": "i1", "reasons": ["uncertain"], "label_set": ["a", "b"],
        ...         "overlap": 1, "exclude_annotators": [], "tier": "annotator", "round": 0}
        >>> c.open(task)
        >>> again = {**task, "reasons": ["suspect_label"], "exclude_annotators": ["ann-1"], "round": 1}
        >>> s.reopen(again, c), c.tasks["t1"]["round"]     # its label comes after the restart
        (False, 1)
        >>> _ = c.add("t1", "ann-1", "a")
        >>> s.add("t1", "i1", {"x": 1.0}, "a", {"ann-1": "a"})
        >>> s.reopen(again, c), s.found, s.reviewing("t1")
        (False, 1, True)
        >>> s.review("t1", "ann-2", "b")
        'confirmed'
        """
        task_id = task["task_id"]
        e = self.labels.get(task_id)
        if e is not None and e["state"] != "learned":
            return False
        entry = consensus.tasks.get(task_id)
        if entry is not None:
            entry["round"] = max(entry["round"], task.get("round") or 0)
        if e is None:
            self.pending[task_id] = (found, lost)
            return False
        self._reopened(task_id, found, lost)
        return True

    def _reopened(self, task_id: str, found: dict | None, lost: bool) -> None:
        e = self.labels[task_id]
        suspect = Suspect.from_row(found) if found else Suspect(
            task_id, e["item_id"], e["label"], e["label"], math.nan, math.nan, math.nan, math.nan,
            e["support"], math.nan, list(e["annotators"]))
        e.update(state="reviewing", suspect=suspect, streak=0)
        self.reviews += 1
        self.found += 1
        if not found:
            self.unscored.append((task_id, lost))

    def restored(self, ts: int, version: int) -> list[dict]:
        """The labels reopened without their ``found`` row since the last call, scored now (their
        later rows repeat these figures); the ``found`` rows to write again, for those ``lost``."""
        todo, self.unscored = self.unscored, []
        self.describe([t for t, _ in todo])
        return [self.row(t, "found", ts, version) for t, lost in todo if lost]

    def describe(self, task_ids) -> list[Suspect]:
        """The figures of the labels ``task_ids`` reopened without their ``found`` row (lost in a
        restart): scored now, the way :meth:`scan` scores, and kept for their later rows."""
        wanted = [t for t in task_ids if t in self.labels]
        if not wanted:
            return []
        keys, classes, probs, given = self._probabilities()
        thresholds = confident_thresholds(probs, given)
        position, out = {t: i for i, t in enumerate(keys)}, []
        for t in wanted:
            i, e = position[t], self.labels[t]
            others = np.where(np.arange(len(classes)) == given[i], -1.0, probs[i])
            g = int(others.argmax()) if len(classes) > 1 else int(given[i])
            old = e["suspect"]
            e["suspect"] = Suspect(t, e["item_id"], old.label, classes[g], float(probs[i, given[i]]),
                                   float(thresholds[given[i]]), float(probs[i, g]), float(thresholds[g]),
                                   old.support, float(probs[i, g] - probs[i, given[i]]), old.annotators)
            out.append(e["suspect"])
        return out
