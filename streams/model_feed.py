"""The model feed: the newest signed version of the shadow model on the ``models`` topic.

The learner publishes each version as a signed ``ModelVersion`` (see
:mod:`streams.learning.snapshot`). Three readers want the newest one: a worker
resuming after a restart (:func:`latest_version`), a worker serving what
another worker's learner publishes, and the labeling service re-ranking its
queue (:mod:`consumers.labeling.feed`). Each reads messages its own way (once
from the start, or following), and all choose the same way, with
:func:`newest`: of the versions of their model newer than what they have, the
newest one whose signature verifies and whose snapshot loads. A version that
does not is logged as refused and skipped; the next newest is tried.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from streams.learning.learner import Learner
>>> key, learner = Ed25519PrivateKey.generate(), Learner("shadow", kind="linear")
>>> _ = learner.learn({"x": 1.0}, "a")
>>> one, two = learner.publish(1, key), learner.publish(2, key)
>>> forged = learner.publish(3, Ed25519PrivateKey.generate())
>>> record, model = newest([(0, one), (1, two), (2, forged)], "shadow", key.public_key())
>>> record["version"], model.version
(2, 2)
>>> newest([(0, one), (1, two)], "shadow", key.public_key(), above=2) is None
True
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

from schemas import codec
from streams.learning.learner import ShadowModel, load_version
from streams.learning.snapshot import SnapshotRejected
from streams.replay import Reader

log = logging.getLogger("feedbackloop")

__all__ = ["decoded", "latest_version", "newest"]


def newest(versions: Iterable[tuple[int, dict]], model_name: str, key,
           above: int = 0) -> tuple[dict, ShadowModel] | None:
    """The newest of ``versions`` (``(offset, ModelVersion record)`` pairs) of
    ``model_name`` above version ``above`` that verifies with ``key`` (the
    learner's public key), as ``(record, model)``; None if there is none."""
    mine = [(offset, record) for offset, record in versions
            if record["model_name"] == model_name and record["version"] > above]
    for offset, record in sorted(mine, key=lambda v: v[1]["version"], reverse=True):
        try:
            return record, load_version(record, key)
        except SnapshotRejected as exc:
            log.error("refused model version at offset %s: %s", offset, exc)
    return None


def decoded(messages) -> Iterator[tuple[int, dict]]:
    """``(offset, record)`` of each confluent-kafka message on ``models`` that
    decodes as a ``ModelVersion``; others are logged and skipped."""
    for message in messages:
        if message.error():
            continue
        try:
            _, record = codec.decode(message.value(), ("ModelVersion",))
        except codec.DecodeError as exc:
            log.warning("ignored a message on %s at offset %s: %s", message.topic(), message.offset(), exc)
            continue
        yield message.offset(), record


def latest_version(settings, key) -> dict | None:
    """The newest version of ``settings.model_name`` on the ``models`` topic
    that verifies with ``key``, read once from the start; None if there is none."""
    with Reader(settings) as reader:
        low, high = reader.watermarks("models")
        found = newest(reader.read("models", ("ModelVersion",), low, high), settings.model_name, key)
    return None if found is None else found[0]
