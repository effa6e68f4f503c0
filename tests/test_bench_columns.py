"""The bench's columnar input: ``PredictionColumns`` messages read by the limit loop give the very
columns, scores and tasks the ``PredictionBatch`` form gives."""

from __future__ import annotations

import time

import numpy as np

from feedbackloop import bench, limit_loop
from schemas import codec
from streams.learning.models import KNN

CLASSES, FEATURES = ("no", "yes"), tuple(f"f{j}" for j in range(10))


def test_the_limit_loop_reads_columns_as_it_reads_batches():
    events = list(bench._events(1200, seed=5))
    records = [limit_loop.decode_columns(m) for m in bench._encoded_batches(events, 500, "columns")]
    batches = [e for m in bench._encoded_batches(events, 500, "batch") for e in limit_loop.decode(m)]
    assert [len(r["event_id"]) for r in records] == [500, 500, 200]
    a, b = limit_loop.columns_of(records, CLASSES, FEATURES), limit_loop.to_columns(batches, CLASSES, FEATURES)
    assert a.event_id == b.event_id and a.item_id == b.item_id and np.array_equal(a.ts, b.ts)
    assert np.allclose(a.proba, b.proba) and np.allclose(a.X, b.X) and a.X.shape == (1200, 10)
    knn = KNN()
    for e in bench._events(200, seed=8):
        knn.learn_one(e["features"], bench.truth(e["features"]))
    sa, sb = limit_loop.score(a, knn, CLASSES, FEATURES), limit_loop.score(b, knn, CLASSES, FEATURES)
    pa_, chosen = limit_loop.select(a.event_id, sa, 0.1, 0)
    pb_, same = limit_loop.select(b.event_id, sb, 0.1, 0)
    assert np.array_equal(chosen, same) and np.allclose(pa_, pb_) and chosen.sum() > 50
    now = int(time.time() * 1000)
    from_rows = limit_loop.tasks(a, limit_loop.Rows(records), sa, pa_, chosen, CLASSES, now)
    from_maps = limit_loop.tasks(b, batches, sb, pb_, same, CLASSES, now)
    decode = lambda t: codec.decode(t, ("LabelingTask",))[1]  # noqa: E731
    assert [decode(t) for t in from_rows] == [decode(t) for t in from_maps]
