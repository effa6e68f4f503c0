"""The one newest-ModelVersion reader (streams/model_feed.py), on messages as confluent-kafka gives them."""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import codec
from streams import model_feed
from streams.learning.learner import Learner
from streams.loop import Loop

KEY = Ed25519PrivateKey.generate()


class Message:
    def __init__(self, offset, value, error=None):
        self._offset, self._value, self._error = offset, value, error

    def error(self):
        return self._error

    def value(self):
        return self._value

    def offset(self):
        return self._offset

    def topic(self):
        return "models"


def versions(name="shadow", n=3, key=KEY):
    learner = Learner(name, kind="linear")
    learner.learn({"x": 1.0}, "a")
    learner.learn({"x": -1.0}, "b")
    return [learner.publish(i, key) for i in range(n)]


def test_the_newest_version_that_verifies_is_served_and_the_rest_refused(caplog):
    mine, other = versions(), versions("other", 5)
    forged = versions(n=4, key=Ed25519PrivateKey.generate())[3]  # version 4, not the learner's key
    messages = [Message(i, codec.encode("ModelVersion", r)) for i, r in enumerate([*mine, *other, forged])]
    messages += [Message(9, b"not a version"), Message(10, None, error="broker says no")]
    with caplog.at_level(logging.INFO, logger="feedbackloop"):
        record, model = model_feed.newest(model_feed.decoded(messages), "shadow", KEY.public_key())
    assert (record["version"], model.name, model.version) == (3, "shadow", 3)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "ignored a message on models at offset 9", "refused model version at offset 8"]
    assert model_feed.newest(model_feed.decoded(messages), "shadow", KEY.public_key(), above=3) is None


def test_a_worker_follows_only_newer_versions_of_its_model():
    loop = Loop.build(model_kind="linear")
    found = model_feed.newest([(0, r) for r in versions(n=2)], "shadow", KEY,
                              above=loop.scorer.model.version)
    assert loop.follow(found[1]) and loop.scorer.model.version == 2
    assert model_feed.newest([(0, r) for r in versions(n=2)], "shadow", KEY,
                             above=loop.scorer.model.version) is None
