"""The online shadow model: learned from labels one at a time, published in versions.

A :class:`Learner` owns the model. Each label is first predicted (for the
prequential accuracy), then learned, except labels of the random control
slice, which are held out: they are the loop's unbiased test set, and every
published version records its accuracy on them. :meth:`Learner.publish`
returns a ``ModelVersion`` record signed with the learner's Ed25519 private
key; :func:`load_version` checks the signature with the public key, then
unpickles with a restricted unpickler (see :mod:`streams.learning.snapshot`), and
refuses anything else with :class:`SnapshotRejected`.

River's ``StandardScaler | KNNClassifier`` (the ``knn`` kind) keeps each item
scaled as it was when learned, with the scaler's moments then, so the same
labels learned in another order make another model: over five orders of one
demo's 331 labels its control accuracy ranged from 0.75 to 0.825. The worker
learns labels in the order their partitions are read, the simulator in stream
order. So before a version is measured and published, :meth:`Learner.rescale`
refills the kNN with the items it holds scaled with the moments now: the model
then depends on the labels, not on their order, as the simulator's numpy kNN
(:class:`~streams.learning.models.KNN`) always does. The kNN scans its items
rather than building River's search graph (:func:`exhaustive`), so a rescale
costs milliseconds, not seconds.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> learner = Learner("demo", kind="linear", publish_every=2, min_control=1)
>>> for i in range(4):
...     _ = learner.learn({"x": float(i % 2)}, "yes" if i % 2 else "no", control=(i == 3))
>>> record = learner.publish(now_ms=0, key=key)
>>> record["version"], record["labels_seen"], record["control_labels"]
(1, 4, 1)
>>> model = load_version(record, key.public_key())
>>> model.version, sorted(model.classes)
(1, ['no', 'yes'])
>>> again = Learner("demo", kind="linear")
>>> again.resume(record, key.public_key())
>>> again.version, again.labels_seen, len(again.control)
(1, 4, 1)
>>> load_version(record, Ed25519PrivateKey.generate().public_key())
Traceback (most recent call last):
...
streams.learning.snapshot.SnapshotRejected: model 'demo' version 1: the signature does not verify with the model verify key
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from streams.selection import signals
from streams.labels.set_agreement import label_set
from streams.learning import models, one_vs_rest, snapshot
from streams.learning.batch import BatchKNN
from streams.learning.snapshot import SnapshotRejected

__all__ = ["EARLY_LABELS", "Learner", "ShadowModel", "SnapshotRejected", "load_version"]

#: Learned labels over which a learner with ``early_every`` publishes its early versions (see :class:`Learner`).
EARLY_LABELS = 100


@dataclass
class ShadowModel:
    """One published version of the online model, as scorers use it."""

    name: str
    version: int
    model: object = None
    classes: list[str] = field(default_factory=list)

    def predict_proba(self, x: dict[str, float]) -> dict[str, float]:
        """Class probabilities, or ``{}`` before the model has seen a label; for a
        one-vs-rest model (:attr:`multi_label`) each class's P(in the set)."""
        if self.model is None or not self.classes:
            return {}
        if self.multi_label:
            return one_vs_rest.proba(self.model, x, self.classes)
        return self.model.predict_proba_one(x)

    @property
    def multi_label(self) -> bool:
        """True when the model is one-vs-rest (:mod:`streams.learning.one_vs_rest`): it predicts sets."""
        return one_vs_rest.is_one_vs_rest(self.model)


def load_version(record: dict, key) -> ShadowModel:
    """A ``ModelVersion`` record as a :class:`ShadowModel`, if signed by the learner.

    ``key`` is the Ed25519 public key (a private key stands for its public half).
    Raises :class:`SnapshotRejected` (model, version and reason in its message)
    when the signature does not verify or the snapshot names what a model may not.
    """
    state = snapshot.open_snapshot(record, key)
    return ShadowModel(record["model_name"], record["version"], state["model"], list(state["classes"]))


def knn_step(model) -> str | None:
    """The name of the kNN step of a ``StandardScaler | KNNClassifier`` pipeline, else None."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) != 2:
        return None
    (_, scaler), (name, knn) = steps.items()
    kinds = (type(scaler).__name__, type(knn).__name__)
    return name if kinds == ("StandardScaler", "KNNClassifier") else None


def exhaustive(knn) -> None:
    """Make River's kNN search its stored items exhaustively, as a scan, and never build its search graph.

    River's default index (SWINN) scans until it holds ``warm_up`` items (500), then builds an
    approximate search graph: 0.9-3.9 s at 500-800 items here, on the learn agent's thread at the
    500th label and again at every :meth:`Learner.rescale` past it, which rebuilds the index. A warm-up
    beyond the window means the scan always: a rescale of 1,000 items takes about 20 ms, a prediction
    0.7 ms instead of 0.3 (labels are few; scorers score whole messages with
    :class:`~streams.learning.batch.BatchKNN`, which now matches River at any size). An index whose
    graph is built already is left as it is (:meth:`Learner.rescale` replaces it).

    >>> from streams.learning.models import make
    >>> knn = make("knn").steps["KNNClassifier"]
    >>> exhaustive(knn)
    >>> for i in range(600):
    ...     knn.learn_one({"x": float(i)}, "ab"[i % 2])
    >>> len(knn._nn), knn._nn._index, knn.predict_one({"x": 7.2})
    (600, False, 'b')
    """
    for engine in (knn.engine, getattr(knn, "_nn", None)):
        if hasattr(engine, "warm_up") and hasattr(engine, "maxlen") and not getattr(engine, "_index", False):
            engine.warm_up = engine.maxlen + 1


class Learner:
    """Learns labels incrementally and publishes signed model versions.

    Parameters
    ----------
    name
        Model name, the key of its versions on the ``models`` topic.
    kind
        Model family, see :func:`streams.learning.models.make`.
    publish_every
        A new version is due after this many new labels.
    control_window
        How many held-out control labels are kept for evaluation.
    min_control
        The first version waits for this many control labels, so its
        accuracy is measured on more than a handful of items.
    early_every
        Until the learner has learned :data:`EARLY_LABELS` labels (control labels held out are not
        learned), a version every ``early_every`` learned labels, the first without waiting for
        ``min_control`` (0: none, and the usual cadence above). Scorers score with the newest version,
        so the policy stops leaning on the production model's doubt after a few labels instead of a
        few dozen (docs/policy.md, "The shadow's first versions sooner"). The usual versions then come
        each time the labels seen reach a multiple of ``publish_every``, early versions or not, so a
        worker sent N labels, N a multiple of ``publish_every``, publishes a version that has seen N.
    model
        The model to learn, instead of a fresh one of ``kind`` (an offline
        replay gives its own, see :mod:`feedbackloop.simulate`).
    multi_label
        Learn sets of classes (:meth:`learn_set`) with a one-vs-rest model of
        ``kind`` (:func:`streams.learning.one_vs_rest.make`; ``linear`` for a kind
        it lacks). Its control accuracy is then the micro-F1 of the predicted sets.
    hold_out_control
        Hold control labels out (the live loop's test set). An offline replay,
        which has a held-out test set of its own, learns them like any other.
    prequential
        Predict each label before learning it (what drift detection and the
        lift compare with the label). An offline replay of uniform sampling,
        which never predicts, turns it off.

    >>> replay = Learner("m", model=models.make("knn", offline=True), hold_out_control=False)
    >>> _ = replay.learn({"x": 1.0}, "a", control=True)
    >>> sorted(replay.classes), len(replay.control), replay.model.n_seen
    (['a'], 0, 1)
    >>> replay.learn({"x": 2.0}, "b"), Learner("m", model=replay.model, prequential=False).learn({"x": 2.0}, "b")
    ({'a': 1.0}, {})

    Rescaled, a kNN learner's predictions do not depend on the order it learned in:

    >>> import random
    >>> rng = random.Random(0)
    >>> items = [({"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)}, "ab"[i % 2]) for i in range(60)]
    >>> queries = [{"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)} for _ in range(100)]
    >>> def probabilities(order, rescale=True):
    ...     learner = Learner("m")
    ...     for x, y in order:
    ...         _ = learner.learn(x, y)
    ...     if rescale:
    ...         learner.rescale()
    ...     return [round(learner.model.predict_proba_one(q)["a"], 9) for q in queries]
    >>> orders = [items[i:] + items[:i] for i in range(0, 60, 6)]
    >>> len({tuple(probabilities(o, rescale=False)) for o in orders}), len({tuple(probabilities(o)) for o in orders})
    (10, 1)
    """

    def __init__(self, name: str, kind: str = "knn", publish_every: int = 25, control_window: int = 1000,
                 min_control: int = 20, model=None, hold_out_control: bool = True, prequential: bool = True,
                 multi_label: bool = False, early_every: int = 0):
        self.name = name
        self.kind = kind
        self.publish_every = publish_every
        self.min_control = min_control
        self.early_every = early_every
        self.hold_out_control = hold_out_control
        self.prequential = prequential
        if model is None and multi_label:
            model = one_vs_rest.make(kind if kind in one_vs_rest.KINDS else "linear")
        self.model = models.make(kind) if model is None else model
        self.multi_label = one_vs_rest.is_one_vs_rest(self.model)
        self.classes: set[str] = set()
        self.version = 0
        self.labels_seen = 0
        self.held_out = 0  # control labels held out (not learned)
        self.prequential_hits = 0
        self.prequential_total = 0
        self.control: deque[tuple[dict, str]] = deque(maxlen=control_window)
        knn = knn_step(self.model)
        if knn:
            exhaustive(self.model.steps[knn])
        window = getattr(getattr(self.model.steps[knn], "engine", None), "maxlen", None) if knn else None
        self.learned: deque[tuple[dict, str]] = deque(maxlen=window or 1000)  # as learned, for rescale
        self.label_offset = -1  # offset on the labels topic of the newest label taken (set by the worker)
        self.published_at = self.learned_at = 0  # labels seen and learned by the newest version (or the one resumed)

    def learn(self, x: dict[str, float], label: str, control: bool = False, weight: float = 1.0) -> dict[str, float]:
        """Predict ``x``, then learn it (or hold it out if ``control`` and
        ``hold_out_control``); return the class probabilities predicted (``{}``
        before the first label). A multi-label learner takes ``label`` as a set joined by ``|``."""
        if self.multi_label:
            return self.learn_set(x, label_set(label), control=control, weight=weight)
        proba = self.model.predict_proba_one(x) if self.classes and self.prequential else {}
        predicted = signals.top_label(proba)
        if not self._book(x, label, None if predicted is None else predicted == label, control):
            self.classes.add(label)
            self._learn(x, label, weight)
            if knn_step(self.model):
                self.learned.append((x, label))
        return proba

    def learn_set(self, x: dict[str, float], labels, control: bool = False, weight: float = 1.0,
                  classes=()) -> dict[str, float]:
        """A multi-label learner's :meth:`learn`: ``labels`` is the item's set of classes and
        ``classes`` every class of its task (a class left out of the set is a "no" for it). Returns
        each class's P(in the set) predicted before learning (``{}`` before the first label); the
        prequential accuracy counts exact sets.

        >>> learner = Learner("m", multi_label=True, publish_every=1, min_control=0)
        >>> for i in range(200):
        ...     _ = learner.learn_set({"a": float(i % 2)}, {"odd"} if i % 2 else set(), classes=["odd", "big"])
        >>> p = learner.learn_set({"a": 1.0}, {"odd"}, control=True, classes=["odd", "big"])
        >>> p["odd"] > 0.6 > 0.4 > p["big"], learner.control[-1][1], learner.predict_one({"a": 0.0})
        (True, 'odd', '')
        >>> learner.control_accuracy(), sorted(learner.classes)
        (1.0, ['big', 'odd'])
        """
        labels = frozenset(labels)
        self.classes.update(classes)
        self.classes.update(labels)
        proba = one_vs_rest.proba(self.model, x, sorted(self.classes)) if self.prequential and \
            self.labels_seen else {}
        hit = ({c for c, p in proba.items() if p > 0.5} == labels) if proba else None
        if not self._book(x, one_vs_rest.joined(labels), hit, control):
            one_vs_rest.learn(self.model, x, labels, classes=sorted(self.classes), weight=weight)
        return proba

    def _book(self, x: dict, label: str, hit: bool | None, control: bool) -> bool:
        """The bookkeeping of one label: the prequential score (``hit``: whether the prediction before
        learning was right; None: no prediction), the label counts, and a control label held out.
        Returns True if it was held out (not to be learned)."""
        if hit is not None:
            self.prequential_total += 1
            self.prequential_hits += hit
        self.labels_seen += 1
        if control and self.hold_out_control:
            self.control.append((x, label))
            self.held_out += 1
            return True
        return False

    def predict_one(self, x: dict[str, float]) -> str | None:
        """The model's label for ``x``; a multi-label model's predicted set joined by ``|``."""
        if self.multi_label:
            return one_vs_rest.joined(one_vs_rest.predict(self.model, x, sorted(self.classes)))
        return self.model.predict_one(x)

    def predict_many(self, xs: list[dict[str, float]]) -> list[str | None]:
        """:meth:`predict_one` of each of ``xs``; a kNN's in one matrix product
        (:class:`~streams.learning.batch.BatchKNN`, River's labels and ties), as a version is measured.

        >>> learner = Learner("m")
        >>> for i in range(40):
        ...     _ = learner.learn({"x": float(i % 4)}, "ab"[i % 4 // 2])
        >>> xs = [{"x": v / 4} for v in range(16)]
        >>> learner.predict_many(xs) == [learner.predict_one(x) for x in xs]
        True
        """
        fast = None if self.multi_label else BatchKNN.of(self.model)
        if fast is None or not xs:
            return [self.predict_one(x) for x in xs]
        return [max(p, key=p.get) if p else None for p in fast.predict_proba(xs)]

    def _learn(self, x, label, weight):
        if weight == 1.0:
            self.model.learn_one(x, label)
            return
        try:
            self.model.learn_one(x, label, w=weight)
        except TypeError:  # a model that takes no sample weight
            self.model.learn_one(x, label)

    def rescale(self, model=None):
        """A kNN pipeline's stored items scaled again with the scaler's moments now (see the module).
        With ``model`` (a copy of this learner's model) that copy is rescaled instead, and the learner is
        left as it is: what a measurement takes, so measuring does not change what the learner predicts
        meanwhile. Returns the model rescaled.

        >>> learner = Learner("m")
        >>> for i in range(20):
        ...     _ = learner.learn({"x": float(i)}, "ab"[i % 2])
        >>> import copy
        >>> xs = [{"x": v / 2} for v in range(40)]
        >>> predict = lambda model: [model.predict_one(x) for x in xs]
        >>> before = predict(learner.model)
        >>> copied = learner.rescale(copy.deepcopy(learner.model))
        >>> predict(learner.model) == before  # the learner left as it is
        True
        >>> learner.rescale() is learner.model, predict(copied) == predict(learner.model)
        (True, True)
        """
        model = self.model if model is None else model
        name = knn_step(model)
        if name is None or not self.learned:
            return model
        scaler, knn = model.steps[next(iter(model.steps))], model.steps[name]
        exhaustive(knn)  # a model resumed from a version that built River's search graph: no graph any more
        knn._nn = knn.engine.clone(include_attributes=True)  # emptied in place: the pipeline caches its steps
        for x, label in self.learned:
            knn._nn.append((scaler.transform_one(x), label))
        return model

    @property
    def prequential_accuracy(self) -> float | None:
        return self.prequential_hits / self.prequential_total if self.prequential_total else None

    def control_accuracy(self) -> float | None:
        """Accuracy of the current model on the held-out control labels (a multi-label
        model's micro-F1, :func:`~streams.learning.one_vs_rest.micro_f1`)."""
        if not self.control or not self.classes:
            return None
        if self.multi_label:
            return one_vs_rest.micro_f1((label_set(y), label_set(self.predict_one(x))) for x, y in self.control)
        predicted = self.predict_many([x for x, _ in self.control])
        return sum(p == y for p, (_, y) in zip(predicted, self.control)) / len(self.control)

    @property
    def due(self) -> bool:
        """True when a new version is to be published: after ``publish_every`` labels (the first once
        ``min_control`` control labels are held out); with ``early_every``, each ``early_every`` learned
        labels up to :data:`EARLY_LABELS`, and each time the labels seen reach a multiple of ``publish_every``.

        >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        >>> key, learner = Ed25519PrivateKey.generate(), Learner("m", kind="linear", early_every=10)
        >>> published = []  # (labels seen, of them learned) at each version
        >>> for i in range(200):
        ...     _ = learner.learn({"x": float(i % 2)}, "ab"[i % 2], control=i % 4 == 0)
        ...     if learner.due:
        ...         published.append((learner.publish(0, key)["labels_seen"], learner.labels_seen - learner.held_out))
        >>> published[:3], published[-4:]
        ([(14, 10), (25, 18), (27, 20)], [(134, 100), (150, 112), (175, 131), (200, 150)])
        """
        if not self.classes:
            return False
        if self.early_every:
            early = (self.learned_at // self.early_every + 1) * self.early_every
            cadence = (self.published_at // self.publish_every + 1) * self.publish_every
            return (self.labels_seen - self.held_out >= early and early <= EARLY_LABELS
                    or self.labels_seen >= cadence)
        return (self.labels_seen - self.published_at >= self.publish_every
                and (self.version > 0 or len(self.control) >= self.min_control))

    def publish(self, now_ms: int, key) -> dict:
        """Bump the version and return it as a ``ModelVersion`` record signed with
        ``key``, the Ed25519 private key only the learner holds."""
        self.version += 1
        self.published_at, self.learned_at = self.labels_seen, self.labels_seen - self.held_out
        self.rescale()
        data = snapshot.dumps({"model": self.model, "classes": sorted(self.classes), "state": {
            "labels_seen": self.labels_seen, "prequential_hits": self.prequential_hits,
            "prequential_total": self.prequential_total, "control": list(self.control),
            "label_offset": self.label_offset, "learned": list(self.learned), "held_out": self.held_out}})
        return {
            "model_name": self.name,
            "version": self.version,
            "ts": now_ms,
            "labels_seen": self.labels_seen,
            "prequential_accuracy": self.prequential_accuracy,
            "control_accuracy": self.control_accuracy(),
            "control_labels": len(self.control),
            "classes": sorted(self.classes),
            "snapshot": data,
            "signature": snapshot.sign(self.name, self.version, data, key),
        }

    def resume(self, record: dict, key) -> None:
        """Continue from a published version (after a restart): model, counters
        and held-out control labels; labels learned after it are learned again.
        ``key`` and refusals as in :func:`load_version`."""
        state = snapshot.open_snapshot(record, key)
        self.model, self.classes, self.version = state["model"], set(state["classes"]), record["version"]
        saved = state.get("state", {})
        self.labels_seen = saved.get("labels_seen", record["labels_seen"])
        self.prequential_hits = saved.get("prequential_hits", 0)
        self.prequential_total = saved.get("prequential_total", 0)
        self.control.extend(saved.get("control", []))
        self.learned.extend(saved.get("learned", []))
        self.label_offset = saved.get("label_offset", -1)
        self.held_out = saved.get("held_out", len(self.control))
        self.published_at, self.learned_at = self.labels_seen, self.labels_seen - self.held_out
