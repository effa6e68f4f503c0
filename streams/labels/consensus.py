"""Consensus: how many labels a task needs, who adjudicates, and what it settles on.

Each task asks for ``overlap`` labels from different annotators (``overlap=0``
is adaptive: one label is enough when it agrees with a confident model,
otherwise a second is asked for). Labels are combined by a weighted vote in
which each annotator counts by the log-odds of their estimated accuracy (the
one-coin Dawid-Skene model); the consensus confidence is the posterior of the
winning label. When the vote is not clear, the task is adjudicated: another
annotator outside the disagreeing set is asked, and after ``max_annotators``
a reviewer decides. A label sent again by the same annotator for the same task
is a correction: it replaces their earlier one and the consensus is recomputed.

Annotator accuracy comes from gold checks (known-answer items mixed into the
queue) with a Beta(4, 1) prior, so a newcomer starts at 0.8.

>>> c = Consensus(overlap=2)
>>> c.open({"task_id": "t1", "item_id": "i1", "suggested_label": "a", "confidence": 0.6,
...         "label_set": ["a", "b"]})
>>> c.add("t1", "ann-1", "a").action
'wait'
>>> out = c.add("t1", "ann-2", "b")
>>> out.action, out.tier, sorted(out.exclude)
('request', 'annotator', ['ann-1', 'ann-2'])
>>> out = c.add("t1", "ann-3", "a")
>>> out.action, out.label, round(out.confidence, 2), out.method
('done', 'a', 0.8, 'weighted_vote')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streams.recent import Recent

PRIOR_HITS, PRIOR_MISSES = 4.0, 1.0


@dataclass
class Outcome:
    """What the loop should do after a label: ``wait``, ``request`` more labels, or ``done``."""

    action: str
    label: str | None = None
    confidence: float = 0.0
    method: str = ""
    tier: str = "annotator"
    exclude: list[str] = field(default_factory=list)
    reason: str = ""
    round: int = 0
    changed: bool = True


class GoldChecks:
    """Each annotator's accuracy on known-answer items, and who falls below ``threshold``.

    >>> g = GoldChecks(threshold=0.7, min_checks=3)
    >>> for ok in (True, False, False, False):
    ...     g.add("ann-1", ok)
    >>> round(g.accuracy("ann-1"), 2), g.flagged()
    (0.25, ['ann-1'])
    """

    def __init__(self, threshold: float = 0.7, min_checks: int = 5):
        self.threshold = threshold
        self.min_checks = min_checks
        self.hits: dict[str, int] = {}
        self.checks: dict[str, int] = {}

    def add(self, annotator: str, correct: bool) -> None:
        self.checks[annotator] = self.checks.get(annotator, 0) + 1
        self.hits[annotator] = self.hits.get(annotator, 0) + bool(correct)

    def accuracy(self, annotator: str) -> float | None:
        n = self.checks.get(annotator, 0)
        return self.hits[annotator] / n if n else None

    def estimate(self, annotator: str) -> float:
        """Smoothed accuracy used to weigh votes (Beta prior)."""
        n, hits = self.checks.get(annotator, 0), self.hits.get(annotator, 0)
        return (hits + PRIOR_HITS) / (n + PRIOR_HITS + PRIOR_MISSES)

    def flagged(self) -> list[str]:
        return sorted(a for a, n in self.checks.items()
                      if n >= self.min_checks and self.hits[a] / n < self.threshold)


def weighted_vote(votes: dict[str, str], classes: list[str], accuracy) -> dict[str, float]:
    """Posterior over ``classes`` given each annotator's vote and accuracy.

    >>> p = weighted_vote({"x": "a", "y": "b"}, ["a", "b"], {"x": 0.9, "y": 0.6}.get)
    >>> round(p["a"], 3)
    0.857
    """
    k = max(len(classes), 2)
    scores = {c: 0.0 for c in classes}
    for annotator, label in votes.items():
        acc = min(max(accuracy(annotator), 1e-3), 1 - 1e-3)
        for c in scores:
            scores[c] += math.log(acc) if c == label else math.log((1 - acc) / (k - 1))
    top = max(scores.values())
    exp = {c: math.exp(s - top) for c, s in scores.items()}
    total = sum(exp.values())
    return {c: v / total for c, v in exp.items()}


class Consensus:
    """Collects the labels of each task and decides when and how it is settled.

    Parameters
    ----------
    overlap
        Labels wanted per task (``0``: adaptive).
    confident
        Adaptive mode: one label suffices when it equals the suggestion and the
        model's confidence is at least this.
    agree
        Consensus needs a posterior of at least this for the winning label.
    max_annotators
        Annotators asked before a reviewer decides.
    gold
        The :class:`GoldChecks` whose estimates weigh the votes.
    """

    def __init__(self, overlap: int = 1, confident: float = 0.9, agree: float = 0.75, max_annotators: int = 5,
                 gold: GoldChecks | None = None, memory: int = 200_000):
        self.overlap = overlap
        self.confident = confident
        self.agree = agree
        self.max_annotators = max_annotators
        self.gold = gold or GoldChecks()
        self.tasks: Recent = Recent(memory)

    def open(self, task: dict) -> None:
        """Start collecting labels for ``task`` (again: keeps what it has)."""
        if task["task_id"] in self.tasks:
            return
        self.tasks[task["task_id"]] = {
            "item_id": task["item_id"], "suggested": task.get("suggested_label"),
            "confidence": task.get("confidence", 0.0), "classes": list(task.get("label_set") or []),
            "votes": {}, "tier_votes": {}, "round": 0, "settled": None,
            "wanted": self.overlap if self.overlap > 0 else 1,
        }

    def add(self, task_id: str, annotator: str, label: str, tier: str = "annotator") -> Outcome:
        """Take one label (or a correction) and say what to do next."""
        t = self.tasks[task_id]
        (t["tier_votes"] if tier != "annotator" else t["votes"])[annotator] = label
        classes = sorted(set(t["classes"]) | set(t["votes"].values()) | set(t["tier_votes"].values()))
        if t["tier_votes"]:  # a reviewer has the last word
            final = max(t["tier_votes"].items())[1]
            return self._settle(t, final, 1.0, "reviewer")
        votes = t["votes"]
        if len(votes) < t["wanted"]:
            return Outcome("wait", round=t["round"])
        posterior = weighted_vote(votes, classes, self.gold.estimate)
        label, p = max(sorted(posterior.items()), key=lambda kv: kv[1])
        if self.overlap == 0 and len(votes) == 1:
            if label == t["suggested"] and t["confidence"] >= self.confident:
                return self._settle(t, label, p, "adaptive_single")
            return self._request(t, "the model is unsure or the annotator disagrees with it")
        if p >= self.agree:
            return self._settle(t, label, p, "weighted_vote")
        if len(votes) >= self.max_annotators:
            return self._request(t, f"no clear majority after {len(votes)} annotators", tier="reviewer")
        return self._request(t, f"annotators disagree ({p:.0%} for {label!r})")

    def _request(self, t: dict, reason: str, tier: str = "annotator") -> Outcome:
        t["round"] += 1
        t["wanted"] = len(t["votes"]) + (1 if tier == "annotator" else 0)
        return Outcome("request", tier=tier, exclude=sorted(t["votes"]), reason=reason, round=t["round"])

    def _settle(self, t: dict, label: str, confidence: float, method: str) -> Outcome:
        changed = t["settled"] != label
        t["settled"] = label
        return Outcome("done", label, confidence, method, round=t["round"], changed=changed)

    def votes(self, task_id: str) -> dict[str, str]:
        t = self.tasks[task_id]
        return {**t["votes"], **t["tier_votes"]}
