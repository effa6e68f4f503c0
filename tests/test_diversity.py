"""The novelty sketch and its nearest-center distance (:mod:`streams.selection.diversity`) against
their definitions computed in float64 with numpy, on the benchmark's stream."""

from __future__ import annotations

import numpy as np
import pytest

from feedbackloop import bench
from streams.selection.diversity import Novelty, Sketch


def test_a_numeric_sketch_is_the_item_standardised_by_the_running_statistics():
    items = [e["features"] for e in bench._events(400, seed=2)]
    names = list(items[0])
    sketch = Sketch(dims=len(names))
    X = np.array([[x[k] for k in names] for x in items])
    for i, x in enumerate(items):
        v = sketch.update(x)
        if i >= 2:  # Welford's running mean and sample deviation, this item included
            seen = X[:i + 1]
            want = (X[i] - seen.mean(0)) / seen.std(0, ddof=1)
            assert v[:len(names)] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert not v[len(names):].any()


def test_words_are_hashed_to_a_unit_vector_apart_from_the_numbers():
    sketch = Sketch(dims=4, text_dims=16)
    v = sketch.transform({"w:cheap": 2.0, "w:pills": 1.0, "n": 3.0})
    assert np.linalg.norm(v[4:]) == pytest.approx(1.0) and sketch.has_text and sketch.width == 20
    assert not v[:4].any()  # one value of ``n``: no variance yet


def test_the_distance_is_the_nearest_center_within_float32_rounding():
    items = [e["features"] for e in bench._events(3000, seed=5)]
    novelty = Novelty(Sketch(dims=16), memory=500)
    centers = []
    worst = 0.0
    for i, x in enumerate(items):
        v = novelty.sketch.update(x)
        if centers:
            kept = np.array(centers[-500:])  # the ring keeps the newest ``memory`` centers
            exact = np.sqrt(((kept - v) ** 2).sum(1)).min()
            worst = max(worst, abs(novelty.distance(v) - exact) / max(1.0, exact))
        else:
            assert novelty.distance(v) == float("inf")
        if i % 3 == 0:
            novelty.add(v)
            centers.append(v)
    assert len(novelty) == 500
    assert worst < 1e-4, f"distances off by up to {worst}"
