"""A committee of shadow models, for query by committee.

Online bagging (Oza and Russell, "Online Bagging and Boosting", AISTATS 2001):
each member learns each label ``k ~ Poisson(1)`` times, so the members differ
the way bootstrap replicates do, one item at a time. Their disagreement on an
item (:func:`streams.selection.signals.vote_entropy`, :func:`streams.selection.signals.consensus_kl`)
is the committee signal of query by committee (Seung et al. 1992); the committee's
prediction is the members' mean probability. It has the River classifier API.

>>> from streams.learning.models import KNN
>>> committee = Committee(KNN(n_neighbors=1), size=3, seed=0)
>>> for i in range(30):
...     committee.learn_one({"x": float(i)}, "low" if i < 15 else "high")
>>> committee.predict_one({"x": 2.0})
'low'
>>> len(committee.members_proba({"x": 14.5}))
3
"""

from __future__ import annotations

import copy
import math
import random

from streams.selection.signals import mean_proba, top_label


def _poisson1(rng: random.Random) -> int:
    k, p, limit = 0, rng.random(), math.exp(-1.0)
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Committee:
    """Members cloned from ``model``, trained by online bagging.

    Parameters
    ----------
    model
        A River classifier (or one with the same API) to clone.
    size
        Number of members.
    """

    def __init__(self, model, size: int = 5, seed: int | None = None):
        self.members = [model.clone() if hasattr(model, "clone") else copy.deepcopy(model) for _ in range(size)]
        self.rng = random.Random(seed)

    def learn_one(self, x: dict, y, **kwargs) -> None:
        for i, member in enumerate(self.members):
            # every member sees the first labels, so none is left without a class
            for _ in range(_poisson1(self.rng) if self._seen(member) else 1):
                member.learn_one(x, y, **kwargs)

    @staticmethod
    def _seen(member) -> bool:
        return getattr(member, "n_seen", 1) >= 1

    def members_proba(self, x: dict) -> list[dict[str, float]]:
        """Each member's class probabilities for ``x``."""
        return [member.predict_proba_one(x) for member in self.members]

    def predict_proba_one(self, x: dict) -> dict[str, float]:
        return mean_proba(self.members_proba(x))

    def predict_one(self, x: dict):
        return top_label(self.predict_proba_one(x))

    def clone(self) -> "Committee":
        return Committee(self.members[0].clone(), len(self.members), self.rng.randrange(2**31))
