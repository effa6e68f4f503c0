"""Scoring: turn input events into candidates carrying every signal, and the model input.

Each :class:`~streams.events.Candidate` carries ``x``, the item's model input
(:func:`~streams.learning.features.featurize`), computed here once: the router
reads it from the candidate within a process (and computes it again only after
the Kafka hop, where ``x`` does not travel).

A :class:`Scorer` holds the newest shadow model version and a bounded memory
of recent predictions by item, so an override or an appeal (which names only
the item) is scored with the features and probabilities of the prediction it
contests.

>>> scorer = Scorer()
>>> c = scorer.prediction({"event_id": "e1", "item_id": "i1", "ts": 5, "model_name": "prod",
...     "model_version": "3", "predicted_label": "a", "probabilities": {"a": 0.55, "b": 0.45},
...     "features": {"x": 1.0}, "text": None, "context": {}}, now_ms=7)
>>> c["kind"], round(c["signals"]["margin"], 2), c["shadow_version"]
('prediction', 0.1, 0)
>>> o = scorer.override({"event_id": "e2", "item_id": "i1", "ts": 9, "predicted_label": None,
...     "override_label": "b", "user_id": "u", "context": {}}, now_ms=10)
>>> o["kind"], o["user_label"], o["predicted_label"], o["features"]
('override', 'b', 'a', {'x': 1.0})

An offline replay has no production model: with ``live=True`` the scorer's
model is the learner's own (a view that learns as it learns), scored in the
production model's place, with its committee's disagreement when it has
members, over ``n_classes`` classes; the event's probabilities are not read.

>>> from streams.learning.models import make
>>> model = make("knn", offline=True)
>>> for v, y in [(0.0, "a"), (1.0, "b")]:
...     model.learn_one({"x": v}, y)
>>> replay = Scorer(ShadowModel("shadow", 0, model, ["a", "b"]), live=True, n_classes=3)
>>> c = replay.prediction({"event_id": "e3", "item_id": "i3", "ts": 1, "model_name": "", "model_version": "",
...     "predicted_label": None, "probabilities": {}, "features": {"x": 0.1}, "text": None, "context": {}}, now_ms=1)
>>> c["predicted_label"], c["shadow_label"], c["signals"] == signals.score(c["probabilities"], None, 3)
('a', None, True)
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.events import Candidate, candidate
from streams.selection import set_signals, signals
from streams.selection.lazy import LazyItems
from streams.learning import one_vs_rest
from streams.learning.batch import BatchKNN, predict_proba_many
from streams.learning.features import featurize
from streams.learning.learner import ShadowModel
from streams.recent import Recent


class Scorer:
    """Scores predictions, overrides and appeals against the current shadow model."""

    def __init__(self, model: ShadowModel | None = None, memory: int = 100_000, live: bool = False,
                 n_classes: int | None = None, multi_label: bool = False):
        self.model = model or ShadowModel("shadow", 0)
        self.live = live
        self.n_classes = n_classes
        self.multi_label = multi_label  # probabilities are per class, P(in the set): see _set_signals
        self._recent: Recent = Recent(memory)
        self._batch: tuple = (None, None)  # (model version, its BatchKNN or None)

    def use(self, model: ShadowModel) -> bool:
        """Swap in ``model`` if it is newer than the current one."""
        if model.version <= self.model.version and model.name == self.model.name:
            return False
        self.model = model
        return True

    def prediction(self, event: dict, now_ms: int) -> Candidate:
        x = featurize(event["features"], event.get("text"))
        return self._candidate(event, x, None if self.live else self.model.predict_proba(x), now_ms)

    def predictions(self, events: list[dict], now_ms: int) -> list[Candidate]:
        """Candidates for many predictions at once: the shadow model scores them all in one
        call (:func:`~streams.learning.batch.predict_proba_many`), as :meth:`prediction` would one by one.

        >>> from streams.learning.models import make
        >>> model = make("knn")
        >>> for v, y in [(0.0, "a"), (1.0, "b"), (0.2, "a")]:
        ...     model.learn_one({"x": v}, y)
        >>> one, many = Scorer(ShadowModel("s", 1, model, ["a", "b"])), Scorer(ShadowModel("s", 1, model, ["a", "b"]))
        >>> events = [{"event_id": f"e{i}", "item_id": f"i{i}", "ts": 1, "model_name": "", "model_version": "",
        ...            "predicted_label": "a", "probabilities": {"a": 0.6, "b": 0.4}, "features": {"x": i / 4},
        ...            "text": None, "context": {}} for i in range(5)]
        >>> pairs = list(zip([one.prediction(e, 2) for e in events], many.predictions(events, 2)))
        >>> all(a["shadow_label"] == b["shadow_label"] and a["signals"].keys() == b["signals"].keys()
        ...     and max(abs(a["signals"][k] - b["signals"][k]) for k in a["signals"]) < 1e-9 for a, b in pairs)
        True
        """
        return self._scored(events, now_ms)

    def _knn(self) -> BatchKNN | None:
        """The served version's :class:`BatchKNN` (built once a version), or None if it is no kNN."""
        if self._batch[0] is not self.model:  # a new version: its arrays, once
            self._batch = (self.model, BatchKNN.of(self.model.model) if self.model.model is not None else None)
        return self._batch[1]

    def _scored(self, events: list[dict], now_ms: int, shadows: list | None = None) -> list[Candidate]:
        """:meth:`predictions`, given the shadow model's probabilities if they were found already."""
        xs = [featurize(e["features"], e.get("text")) for e in events]
        if self.live:
            return [self._candidate(e, x, None, now_ms) for e, x in zip(events, xs)]
        model = self.model
        if self.multi_label:
            return self._sets(events, xs, now_ms)
        if shadows is None and (model.model is None or not model.classes or len(events) < 2):
            shadows = [model.predict_proba(x) for x in xs]
        elif shadows is None:
            shadows = predict_proba_many(model.model, xs, self._knn())
        known = set(model.classes)
        counts = [self.n_classes or len(known.union(e["probabilities"])) for e in events]
        scored = signals.score_many([e["probabilities"] for e in events], shadows, counts)
        return [self._candidate(e, x, shadow, now_ms, s) for e, x, shadow, s in zip(events, xs, shadows, scored)]

    def _candidate(self, event: dict, x: dict[str, float], shadow: dict[str, float] | None,
                   now_ms: int, scored: dict[str, float] | None = None) -> Candidate:
        top_label = self._set_label if self.multi_label else signals.top_label
        if self.live:
            probabilities, scored = self._live(x)
            predicted, shadow = top_label(probabilities), {}
        else:
            probabilities, predicted = event["probabilities"], event["predicted_label"]
            if scored is None and self.multi_label:
                scored = set_signals.score(probabilities, shadow)
            elif scored is None:
                classes = set(probabilities) | set(self.model.classes)
                scored = signals.score(probabilities, shadow, self.n_classes or len(classes))
        c = candidate(
            event_id=event["event_id"], item_id=event["item_id"], ts=event["ts"], kind="prediction",
            model_name=event["model_name"], model_version=event["model_version"],
            predicted_label=predicted, probabilities=probabilities, features=event["features"],
            text=event.get("text"), context=event.get("context") or {}, shadow_label=top_label(shadow),
            shadow_version=self.model.version, signals=scored, user_label=None, note=None, scored_ts=now_ms, x=x)
        self._recent[event["item_id"]] = c
        return c

    def columns(self, record: dict, now_ms: int) -> Sequence[Candidate]:
        """Candidates for a ``PredictionColumns`` message (one array per field, see
        ``schemas/prediction_columns.avsc``), in order (scored by a kNN: a :class:`Scored`).

        >>> cols = {"event_id": ["e1", "e2"], "item_id": ["i1", "i2"], "ts": [5, 6], "model_name": ["m", "m"],
        ...         "model_version": ["1", "1"], "predicted_label": ["a", "b"], "classes": ["a", "b"],
        ...         "probabilities": [0.6, 0.4, 0.1, 0.9], "feature_names": ["x"], "features": [1.0, 2.0],
        ...         "text": [], "context": []}
        >>> [(c["event_id"], c["probabilities"], c["features"], c["text"]) for c in Scorer().columns(cols, 7)]
        [('e1', {'a': 0.6, 'b': 0.4}, {'x': 1.0}, None), ('e2', {'a': 0.1, 'b': 0.9}, {'x': 2.0}, None)]
        """
        n, f = len(record["event_id"]), len(record["feature_names"])
        if not self.live and not self.multi_label and n > 1 and f and not record["text"] and \
                self.model.model is not None and self.model.classes and self._knn() is not None:
            return self._knn_columns(record, now_ms)
        return self._scored(self._events(record), now_ms)

    @staticmethod
    def _events(record: dict) -> list[dict]:
        """The ``Prediction`` events of a ``PredictionColumns`` message, one map each."""
        classes, names = record["classes"], record["feature_names"]
        n, k, f = len(record["event_id"]), len(classes), len(names)
        p, x = record["probabilities"], record["features"]
        texts = record["text"] or [None] * n
        contexts = record["context"] or [{}] * n
        return [{"event_id": event_id, "item_id": item_id, "ts": ts, "model_name": model_name,
                 "model_version": model_version, "predicted_label": predicted,
                 "probabilities": dict(zip(classes, p[i * k:i * k + k])),
                 "features": dict(zip(names, x[i * f:i * f + f])), "text": text, "context": dict(context)}
                for i, (event_id, item_id, ts, model_name, model_version, predicted, text, context)
                in enumerate(zip(record["event_id"], record["item_id"], record["ts"], record["model_name"],
                                 record["model_version"], record["predicted_label"], texts, contexts))]

    def _knn_columns(self, record: dict, now_ms: int) -> "Scored":
        """:meth:`columns` of a message of numeric features scored by a kNN shadow model, from the
        arrays as they came: the kNN's votes (:meth:`BatchKNN.votes_columns
        <streams.learning.batch.BatchKNN.votes_columns>`) and the production probabilities go into
        :func:`~streams.selection.signals.score_matrix` as they are, the shadow label is the
        votes' first largest in label order; no map per event on the way but the features (the
        policy's input), the same candidates as :meth:`_scored` of :meth:`_events`
        (``tests/test_decide_many.py``), made only when asked for (:class:`Scored`)."""
        import numpy as np

        knn, model = self._batch[1], self.model
        classes, names = record["classes"], record["feature_names"]
        n, k, f = len(record["event_id"]), len(classes), len(names)
        p, x = record["probabilities"], record["features"]
        votes, shadow_classes = knn.votes_columns(x, names, n), knn.classes
        labels = sorted(set(classes).union(shadow_classes))
        index = {c: i for i, c in enumerate(labels)}
        P, Q = np.zeros((n, max(len(labels), 2))), np.zeros((n, max(len(labels), 2)))
        P[:, [index[c] for c in classes]] = np.asarray(p, dtype=float).reshape(n, k)
        Q[:, [index[c] for c in shadow_classes]] = votes
        count = self.n_classes or len(set(model.classes).union(classes))
        scored = signals.score_matrix(P, Q, np.full(n, count), np.full(n, bool(shadow_classes)))
        by_label = sorted(range(len(shadow_classes)), key=shadow_classes.__getitem__)  # ties: the first label
        shadow_labels = ([shadow_classes[by_label[j]] for j in votes[:, by_label].argmax(1).tolist()]
                         if shadow_classes else [None] * n)
        out = Scored(record, FeatureRows(names, x), scored, shadow_labels, model.version, now_ms)
        self._recent.set_many(zip(record["item_id"], zip([out] * n, range(n))))  # made into a candidate if asked
        return out

    # -- multi-label: probabilities are per class, P(in the set) (streams.learning.one_vs_rest) --------------
    @staticmethod
    def _set_label(proba: dict[str, float] | None) -> str | None:
        """The predicted set (classes over 0.5) joined by ``|``; None with no probabilities."""
        return one_vs_rest.joined(c for c, p in proba.items() if p > 0.5) if proba else None

    def _sets(self, events: list[dict], xs: list[dict], now_ms: int) -> list[Candidate]:
        """:meth:`predictions` of a multi-label scorer: the shadow model's per-class probabilities
        for all at once (:func:`~streams.learning.one_vs_rest.proba_many`), and the set signals
        (:func:`~streams.selection.set_signals.score`: per-class entropy drives the uncertainty).

        >>> model = one_vs_rest.make()
        >>> for i in range(50):
        ...     one_vs_rest.learn(model, {"x": float(i % 2)}, {"a"} if i % 2 else {"b"}, classes=["a", "b"])
        >>> scorer = Scorer(ShadowModel("s", 1, model, ["a", "b"]), multi_label=True)
        >>> c = scorer.predictions([{"event_id": "e", "item_id": "i", "ts": 1, "model_name": "", "model_version": "",
        ...     "predicted_label": "a|b", "probabilities": {"a": 0.9, "b": 0.8}, "features": {"x": 1.0},
        ...     "text": None, "context": {}}], 2)[0]
        >>> c["shadow_label"], c["signals"]["label_disagreement"], 0 < c["signals"]["uncertainty"] < 1
        ('a', 1.0, True)
        """
        model = self.model
        shadows = [{} for _ in xs]
        if model.model is not None and model.classes and model.multi_label:
            shadows = one_vs_rest.proba_many(model.model, xs, sorted(model.classes))
        return [self._candidate(e, x, shadow, now_ms, set_signals.score(e["probabilities"], shadow))
                for e, x, shadow in zip(events, xs, shadows)]

    def _live(self, x: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """The live model's probabilities for ``x`` and their signals (none before it knows two classes)."""
        model = self.model.model
        if model is None or len(self.model.classes) < 2:
            return {}, {}
        if self.multi_label:  # a one-vs-rest model: P(in the set) of each class, and the set signals
            proba = self.model.predict_proba(x)
            return proba, set_signals.score({}, proba)
        members = model.members_proba(x) if hasattr(model, "members_proba") else None
        proba = signals.mean_proba(members) if members else model.predict_proba_one(x)
        if not proba:
            return {}, {}
        return proba, signals.score(proba, None, self.n_classes, committee=members)

    def seen(self, item_id: str) -> Candidate | None:
        """The candidate of the item's latest prediction scored here, if it is remembered."""
        seen = self._recent.get(item_id)
        return seen[0][seen[1]] if type(seen) is tuple else seen  # (a Scored message, the item's place in it)

    def _error(self, kind: str, event: dict, now_ms: int, user_label: str | None, note: str | None) -> Candidate:
        seen = self.seen(event["item_id"]) or {}
        return candidate(
            event_id=event["event_id"], item_id=event["item_id"], ts=event["ts"], kind=kind,
            model_name=seen.get("model_name", ""), model_version=seen.get("model_version", ""),
            predicted_label=event.get("predicted_label") or seen.get("predicted_label"),
            probabilities=seen.get("probabilities", {}), features=seen.get("features", {}), text=seen.get("text"),
            context={**seen.get("context", {}), **(event.get("context") or {})},
            shadow_label=seen.get("shadow_label"), shadow_version=self.model.version,
            signals={**seen.get("signals", {}), "known_item": float(bool(seen))}, user_label=user_label,
            note=note, scored_ts=now_ms, x=seen.get("x"))

    def override(self, event: dict, now_ms: int) -> Candidate:
        return self._error("override", event, now_ms, event["override_label"], None)

    def appeal(self, event: dict, now_ms: int) -> Candidate:
        return self._error("appeal", event, now_ms, None, event.get("reason"))


class FeatureRows(LazyItems):
    """The feature dicts of a message's items, ``{name: value}`` in the order of ``names``, from the
    message's flat row-major ``values``: a dict is made when one is asked for, once; :meth:`matrix`
    gives them all as one array, no dict made (the policy's sketches read it, :meth:`Sketch.update_many
    <streams.selection.diversity.Sketch.update_many>`).

    >>> rows = FeatureRows(["x", "y"], [1.0, 2.0, 3.0, 4.0])
    >>> len(rows), rows[-1], rows[1] is rows[1], rows.matrix().tolist()
    (2, {'x': 3.0, 'y': 4.0}, True, [[1.0, 2.0], [3.0, 4.0]])
    """

    __slots__ = ("names", "values", "_made")

    def __init__(self, names: list[str], values: list[float]):
        self.names, self.values = names, values
        self._made: list = [None] * (len(values) // len(names))

    def _make(self, i: int) -> dict:
        f = len(self.names)
        return dict(zip(self.names, self.values[i * f:i * f + f]))

    def matrix(self):
        """Every item's values as the rows of one array (floats)."""
        import numpy as np

        return np.asarray(self.values, dtype=float).reshape(len(self), len(self.names))


class Scored(LazyItems):
    """The candidates of a ``PredictionColumns`` message scored at once (:meth:`Scorer.columns`), kept
    as the message's columns: a candidate is made only when it is asked for (by index, or
    iterating), the same dict :meth:`Scorer.prediction` makes of the event, once. A message's
    path through the worker reads its columns (:meth:`column`) and makes dicts only for the few
    the policy preselects (:meth:`Router.preselect_columns
    <streams.selection.router.Router.preselect_columns>`).

    >>> record = {"event_id": ["e1", "e2"], "item_id": ["i1", "i2"], "ts": [5, 6], "model_name": ["m", "m"],
    ...           "model_version": ["1", "1"], "predicted_label": ["a", "b"], "classes": ["a", "b"],
    ...           "probabilities": [0.6, 0.4, 0.1, 0.9], "feature_names": ["x"], "features": [1.0, 2.0],
    ...           "text": [], "context": []}
    >>> scored = Scored(record, [{"x": 1.0}, {"x": 2.0}], [{"margin": 0.2}, {"margin": 0.8}], ["a", "b"], 3, 7)
    >>> len(scored), scored.column("event_id"), scored.column("shadow_version"), scored.confidence()
    (2, ['e1', 'e2'], [3, 3], [0.6, 0.9])
    >>> c = scored[-1]
    >>> c["probabilities"], c["features"], c["signals"], c is scored[1], c["x"] is c["features"]
    ({'a': 0.1, 'b': 0.9}, {'x': 2.0}, {'margin': 0.8}, True, True)
    """

    __slots__ = ("record", "features", "signals", "shadow_labels", "version", "now", "_made")

    #: Fields every candidate of a message has alike, and their value.
    ALIKE = {"kind": "prediction", "text": None, "user_label": None, "note": None}

    def __init__(self, record: dict, features: Sequence[dict], signals: list[dict], shadow_labels: list, version: int,
                 now_ms: int):
        self.record, self.features, self.signals, self.shadow_labels = record, features, signals, shadow_labels
        self.version, self.now = version, now_ms
        self._made: list = [None] * len(features)

    def _make(self, i: int) -> Candidate:
        r, features = self.record, self.features[i]
        classes, k = r["classes"], len(r["classes"])
        return candidate(
            event_id=r["event_id"][i], item_id=r["item_id"][i], ts=r["ts"][i], kind="prediction",
            model_name=r["model_name"][i], model_version=r["model_version"][i],
            predicted_label=r["predicted_label"][i], probabilities=dict(zip(classes, r["probabilities"][i * k:i * k + k])),
            features=features, text=None, context=dict(r["context"][i]) if r["context"] else {},
            shadow_label=self.shadow_labels[i], shadow_version=self.version, signals=self.signals[i],
            user_label=None, note=None, scored_ts=self.now, x=features)

    def column(self, name: str) -> list:
        """One field of every candidate, in order (``x`` is the features: numbers only)."""
        if name in self.record and name not in ("probabilities", "features", "text", "context"):
            return self.record[name]
        n = len(self)
        if name in ("features", "x"):
            return self.features
        if name in ("signals", "shadow_label"):
            return self.signals if name == "signals" else self.shadow_labels
        if name in self.ALIKE:
            return [self.ALIKE[name]] * n
        if name in ("shadow_version", "scored_ts"):
            return [self.version if name == "shadow_version" else self.now] * n
        return [c[name] for c in self]

    def confidence(self) -> list[float]:
        """Each candidate's largest production probability (0.0 with none), as
        ``max(c["probabilities"].values(), default=0.0)``."""
        p, k = self.record["probabilities"], len(self.record["classes"])
        return [max(pi) for pi in zip(*[iter(p)] * k)] if k else [0.0] * len(self)
