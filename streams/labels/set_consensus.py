"""Consensus on multi-label answers: a majority per class over the annotators.

Each class is settled on its own: it is in the consensus set when more than
half of the weight of the votes says so (a tie leaves it out). Without
accuracies every annotator counts the same and a class's confidence is the
share of votes on the winning side; with accuracies (e.g.
:meth:`~streams.labels.consensus.GoldChecks.estimate`) each yes/no vote is
weighed as in :func:`~streams.labels.consensus.weighted_vote` (one-coin
Dawid-Skene per class) and the confidence is the posterior of the winning side.
The set's confidence is the product of its classes' confidences: the chance
that the whole set is right if the classes are judged independently.

>>> c = set_consensus({"ann": "cat|dog", "bob": "cat", "cy": "cat|fox"})
>>> sorted(c.labels), round(c.confidence, 3), round(c.per_class["dog"], 3)
(['cat'], 0.444, 0.333)
>>> sorted(set_consensus({"ann": "cat|dog", "bob": "cat"}, accuracy={"ann": 0.9, "bob": 0.6}.get).labels)
['cat', 'dog']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping

from streams.labels.agreement import _sorted
from streams.labels.consensus import weighted_vote
from streams.labels.set_agreement import label_set

__all__ = ["SetConsensus", "set_consensus"]


@dataclass(frozen=True)
class SetConsensus:
    """The settled set, the chance it is right as a whole, and per class the
    share (or posterior) of "in the set"."""

    labels: frozenset
    confidence: float
    per_class: dict

    def class_confidence(self, cls: Hashable) -> float:
        """The confidence of the decision on one class (in or out).

        >>> set_consensus({"a": "x", "b": "x|y", "c": "x"}).class_confidence("y")
        0.6666666666666667
        """
        p = self.per_class.get(cls, 0.0)
        return p if cls in self.labels else 1.0 - p


def set_consensus(votes: Mapping[Hashable, str | Iterable[Hashable]], classes: Iterable[Hashable] | None = None,
                  accuracy: Callable[[Hashable], float] | None = None) -> SetConsensus:
    """Settle the answers ``{annotator: labels}`` class by class.

    ``labels`` is an iterable of classes or a string joined by ``|``.
    ``classes`` (default: every class someone chose) are the classes decided;
    a class nobody chose is out. ``accuracy(annotator)`` weighs the votes.

    >>> c = set_consensus({"ann": "a", "bob": "b"}, classes=["a", "b", "c"])
    >>> sorted(c.labels), c.per_class
    ([], {'a': 0.5, 'b': 0.5, 'c': 0.0})
    """
    if not votes:
        raise ValueError("consensus of no answers")
    answers = {a: label_set(labels) for a, labels in votes.items()}
    decided = _sorted({c for s in answers.values() for c in s} if classes is None else classes)
    per_class, chosen, confidence = {}, [], []
    for cls in decided:
        if accuracy is None:
            p = sum(cls in s for s in answers.values()) / len(answers)
        else:
            p = weighted_vote({a: cls in s for a, s in answers.items()}, [True, False], accuracy)[True]
        per_class[cls] = p
        if p > 0.5:
            chosen.append(cls)
        confidence.append(max(p, 1.0 - p))
    return SetConsensus(frozenset(chosen), math.prod(confidence), per_class)
