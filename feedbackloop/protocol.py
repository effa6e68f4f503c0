"""The replay protocol both simulators share: strategies, the held-out split, the grid, the budget.

:mod:`feedbackloop.simulate` (one label per item) and
:mod:`feedbackloop.simulate_sets` (sets of labels) replay a dataset the same
way: a seeded order of the stream with a share held out, accuracy measured at
the label counts of :func:`checkpoints`, a budget read by :func:`budget_labels`,
and the labels a strategy needs read off its curve by :func:`first_reaching`.

>>> first_reaching([(10, 0.70), (20, 0.81), (30, 0.86)], 0.8)
20
"""

from __future__ import annotations

import random

from feedbackloop.datasets import Dataset

#: Policy options of each strategy the simulators can run; ``random`` is the control slice alone.
STRATEGIES = {
    "default": {},
    "random": {"mix": {"control": 1.0}},
    "uncertainty": {"mix": {"uncertain": 1.0}},
    "entropy": {"mix": {"uncertain": 1.0}, "uncertainty": "entropy"},
    "least_confidence": {"mix": {"uncertain": 1.0}, "uncertainty": "least_confidence"},
    "margin": {"mix": {"uncertain": 1.0}, "uncertainty": "margin"},
    "committee": {"mix": {"uncertain": 1.0}, "uncertainty": "committee"},
    "diversity": {"mix": {"diverse": 1.0}},
}


def split(dataset: Dataset, holdout: float, seed: int, eval_size: int = 2000):
    """``(stream, test)``: a seeded order of the stream and the held-out rows."""
    rows = list(dataset.rows)
    random.Random(seed).shuffle(rows)
    n_test = max(1, int(round(len(rows) * holdout)))
    return rows[n_test:], rows[:n_test][:eval_size]


def checkpoints(max_labels: int, points: int = 25) -> list[int]:
    """Label counts at which held-out accuracy is measured: dense early, then even.

    >>> checkpoints(100, points=10)
    [2, 4, 6, 8, 10, 11, 13, 15, 17, 20, 23, 26, 30, 35, 40, 46, 50, 53, 60, 61, 70, 80, 81, 90, 93, 100]
    """
    grid = set(range(2, min(max_labels, 10) + 1, 2))
    k = 10.0
    while k < max_labels:
        grid.add(int(k))
        k *= 1.15
    step = max(1, max_labels // points)
    grid.update(range(step, max_labels + 1, step))
    grid.add(max_labels)
    return sorted(g for g in grid if g <= max_labels)


def budget_labels(budget: float, n: int) -> int:
    """A budget as a number of labels: a fraction of ``n`` (at most 1) or a count.

    >>> budget_labels(0.1, 4240), budget_labels(300, 4240)
    (424, 300)
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return max(1, int(round(budget * n))) if budget <= 1.0 else min(n, int(budget))


def first_reaching(curve, target: float) -> int | None:
    """Labels at the first point of ``curve`` whose accuracy reaches ``target``."""
    return next((n for n, acc in curve if acc >= target), None)
