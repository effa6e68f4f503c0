"""No code from the bus: a model version runs nothing its learner did not sign,
and even a signed snapshot may name only what a River model is made of.

The attack: a ``ModelVersion`` whose snapshot, once unpickled, writes a marker
file. It is signed with every key an attacker can know (the old public HMAC
default, their own Ed25519 key, no signature at all) and, as defence in depth,
with the learner's own key. Each is refused, the marker never appears, and
the labeling feed logs the refusal when the record comes from a real broker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consumers.labeling.feed import Feed
from consumers.labeling.store import Store
from feedbackloop import keys, stack
from feedbackloop.settings import Settings
from schemas import codec
from streams.learning import snapshot
from streams.learning.features import featurize
from streams.learning.learner import Learner, SnapshotRejected, load_version

ROOT = Path(__file__).resolve().parent.parent
OLD_DEFAULT_KEY = b"feedbackloop-dev-key"
LEARNER_KEY = Ed25519PrivateKey.generate()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _call(module: str, name: str, argument: str | bytes) -> bytes:
    """A protocol 4 pickle that calls ``module.name(argument)`` when loaded."""
    arg = b"C" + bytes([len(argument)]) + argument if isinstance(argument, bytes) else _str(argument)
    return b"\x80\x04" + _str(module) + _str(name) + b"\x93" + arg + b"\x85R."


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def payloads(marker: Path) -> dict[str, bytes]:
    """Snapshots that each create ``marker`` when unpickled by :func:`pickle.loads`."""
    touch = f"touch {marker}"
    inner = pickle.dumps(_System(touch))
    return {
        "os.system": pickle.dumps({"model": _System(touch), "classes": ["a"]}),
        "builtins.eval": _call("builtins", "eval", f"__import__('os').system({touch!r})"),
        "builtins.exec": _call("builtins", "exec", f"open({str(marker)!r}, 'w').close()"),
        # names reaching a module through a River module: river.checks.common imports pickle
        "dotted name": _call("river.checks.common", "pickle.loads", inner),
        "river I/O module": _call("river.datasets.base", "os.system", touch),
    }


def forged(name: str, version: int, data: bytes, how: str) -> dict:
    """A ``ModelVersion`` carrying ``data``, signed ``how``."""
    record = {"model_name": name, "version": version, "ts": 0, "labels_seen": 1, "prequential_accuracy": None,
              "control_accuracy": None, "control_labels": 0, "classes": ["a"], "snapshot": data}
    if how == "old HMAC default":
        record["signature"] = hmac.new(OLD_DEFAULT_KEY, data, hashlib.sha256).hexdigest()
    elif how == "HMAC as ed25519":
        record["signature"] = "ed25519:" + 2 * hmac.new(OLD_DEFAULT_KEY, data, hashlib.sha256).hexdigest()
    elif how == "attacker's Ed25519 key":
        record["signature"] = snapshot.sign(name, version, data, Ed25519PrivateKey.generate())
    elif how == "no signature":
        record["signature"] = ""
    elif how == "learner's key":
        record["signature"] = snapshot.sign(name, version, data, LEARNER_KEY)
    return record


ATTACKER_KEYS = ("old HMAC default", "HMAC as ed25519", "attacker's Ed25519 key", "no signature")


def test_the_payloads_do_run_code_without_the_checks(tmp_path):
    """The attack is real: plain ``pickle.loads`` creates the marker with each payload."""
    for what, data in payloads(tmp_path / "marker").items():
        marker = tmp_path / "marker"
        try:
            pickle.loads(data)
        except Exception:
            pass
        assert marker.exists(), what
        marker.unlink()


@pytest.mark.parametrize("how", ATTACKER_KEYS + ("learner's key",))
def test_a_forged_snapshot_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "marker"
    for what, data in payloads(marker).items():
        record = forged("shadow", 7, data, how)
        with pytest.raises(SnapshotRejected) as refused:
            load_version(record, LEARNER_KEY.public_key())
        learner = Learner("shadow")
        with pytest.raises(SnapshotRejected):
            learner.resume(record, LEARNER_KEY.public_key())
        assert learner.version == 0
        assert not marker.exists(), f"{what} signed with {how} ran"
        reason = str(refused.value)
        assert reason.startswith("model 'shadow' version 7: "), reason
        if how == "learner's key":
            assert "may not use" in reason, reason
        else:
            assert "signature" in reason, reason


def test_a_signed_snapshot_counts_only_for_its_own_model_and_version():
    learner = Learner("shadow", kind="linear", publish_every=1, min_control=0)
    learner.learn({"x": 1.0}, "a")
    record = learner.publish(0, LEARNER_KEY)
    for replayed in (dict(record, version=record["version"] + 100), dict(record, model_name="other")):
        with pytest.raises(SnapshotRejected, match="does not verify"):
            load_version(replayed, LEARNER_KEY.public_key())
    with pytest.raises(SnapshotRejected, match="does not verify"):
        load_version(dict(record, snapshot=record["snapshot"] + b" "), LEARNER_KEY.public_key())


@pytest.mark.parametrize("module, name, why", [
    ("river.checks.common", "pickle", "not a River class"),  # a module reached through River
    ("river.evaluate.progressive_validation", "progressive_val_score", "not a River class"),
    ("river.stream.iter_csv", "iter_csv", "may not use"),
    ("river.linear_model", "_private", "may not use"),
    ("builtins", "getattr", "may not use"),
    ("posix", "system", "may not use"),
    ("streams.learning.learner", "Learner", "may not use"),
    ("river.no_such_module", "Model", "does not exist"),
])
def test_the_unpickler_allows_only_what_models_are_made_of(module, name, why):
    with pytest.raises(SnapshotRejected, match=why):
        snapshot.loads(b"\x80\x04" + _str(module) + _str(name) + b"\x93.")


@pytest.mark.parametrize("kind", ["knn", "linear", "tree"])
def test_every_model_kind_round_trips(kind):
    import random
    rng = random.Random(1)
    learner = Learner("shadow", kind=kind, publish_every=1, min_control=1)
    points = []
    for i in range(400):
        x = featurize({"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}, rng.choice(["good dog", "bad cat", ""]))
        points.append(x)
        learner.learn(x, "pos" if x["a"] + x["b"] > 0 else "neg", control=(i % 10 == 0))
    record = learner.publish(0, LEARNER_KEY)
    model = load_version(record, LEARNER_KEY.public_key())
    assert (model.name, model.version, model.classes) == ("shadow", 1, ["neg", "pos"])
    probe = points[-50:]
    assert [model.predict_proba(x) for x in probe] == [learner.model.predict_proba_one(x) for x in probe]
    again = Learner("shadow", kind=kind)
    again.resume(record, LEARNER_KEY.public_key())
    assert (again.version, again.labels_seen, len(again.control)) == (1, 400, 40)
    assert [again.model.predict_proba_one(x) for x in probe] == [learner.model.predict_proba_one(x) for x in probe]


def test_no_key_has_a_default(tmp_path):
    assert Settings().model_signing_key == Settings().model_verify_key == ""
    with pytest.raises(keys.MissingKey, match="FEEDBACKLOOP_MODEL_SIGNING_KEY.*feedbackloop keygen"):
        keys.signing_key(Settings())
    with pytest.raises(ValueError, match="FEEDBACKLOOP_MODEL_SIGNING_KEY is not an Ed25519 key"):
        Settings.from_env({"FEEDBACKLOOP_MODEL_SIGNING_KEY": OLD_DEFAULT_KEY.decode()})
    one, other = keys.generate(), keys.generate()
    with pytest.raises(ValueError, match="not the public key"):
        keys.signing_key(Settings(model_signing_key=one[0], model_verify_key=other[1]))
    assert "***" == Settings(model_signing_key=one[0]).public()["model_signing_key"]


def test_a_state_dir_keeps_one_private_key_pair(tmp_path):
    state = Settings(state_dir=str(tmp_path / "state"))
    first, again = keys.local(state), keys.local(state)
    assert first.model_signing_key and (first.model_signing_key, first.model_verify_key) \
        == (again.model_signing_key, again.model_verify_key)
    assert keys.local(Settings(state_dir=str(tmp_path / "other"))).model_signing_key != first.model_signing_key
    path = tmp_path / "state" / keys.LOCAL_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    config = Settings.from_env({"FEEDBACKLOOP_CONFIG": str(path)})  # the file is a config file too
    assert keys.signing_key(config).public_key() == keys.verify_key(first)


def _run(tmp_path, *command, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDBACKLOOP_", "KAFKA_", "CLICKHOUSE_"))}
    clean.update(PYTHONPATH=str(ROOT), FEEDBACKLOOP_STATE_DIR=str(tmp_path / "state"), **env)
    return subprocess.run([sys.executable, "-m", "feedbackloop", *command], env=clean, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command, needs", [
    (["worker"], "FEEDBACKLOOP_MODEL_SIGNING_KEY"),
    (["serve-labeling", "--port", "0"], "FEEDBACKLOOP_MODEL_VERIFY_KEY"),
])
def test_a_process_without_its_key_refuses_to_start(tmp_path, free_port, command, needs):
    closed = f"127.0.0.1:{free_port()}"  # refused before Kafka is ever contacted
    started = time.monotonic()
    out = _run(tmp_path, *command, KAFKA_BOOTSTRAP_SERVERS=closed)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr  # one clear line
    assert needs in out.stderr and "feedbackloop keygen" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - started < 30
    old = _run(tmp_path, *command, KAFKA_BOOTSTRAP_SERVERS=closed, **{needs: OLD_DEFAULT_KEY.decode()})
    assert old.returncode != 0 and f"{needs} is not an Ed25519 key" in old.stderr, old.stderr
    assert not (tmp_path / "state" / keys.LOCAL_FILE).exists(), "no key is made up for a real cluster"


def test_keygen_prints_a_pair_and_writes_a_private_file(tmp_path):
    printed = _run(tmp_path, "keygen")
    values = dict(line.split("=", 1) for line in printed.stdout.split())
    assert keys.verify_text(values["FEEDBACKLOOP_MODEL_SIGNING_KEY"]) == values["FEEDBACKLOOP_MODEL_VERIFY_KEY"]
    path = tmp_path / "keys.env"
    assert _run(tmp_path, "keygen", "--out", str(path)).returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.signing_key(Settings.from_env({"FEEDBACKLOOP_CONFIG": str(path)}))
    written = path.read_text()
    again = _run(tmp_path, "keygen", "--out", str(path))
    assert again.returncode != 0 and "never overwrites" in again.stderr and path.read_text() == written


@pytest.mark.kafka
def test_the_labeling_feed_refuses_forged_versions_from_the_broker(kafka, tmp_path, caplog):
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}sec-{uuid.uuid4().hex[:8]}.")
    stack.ensure_topics(settings.kafka_config(), settings)
    marker = tmp_path / "marker"
    signed = [(how, data) for how in ATTACKER_KEYS for data in payloads(marker).values()]
    attacks = [forged(settings.model_name, 100 + i, data, how) for i, (how, data) in enumerate(signed)]
    learner = Learner(settings.model_name, kind="linear", publish_every=1, min_control=0)
    learner.learn({"x": 1.0}, "a")
    learner.learn({"x": -1.0}, "b")
    genuine = learner.publish(0, keys.signing_key(settings))  # signed by the stack's learner key
    producer = Producer(settings.kafka_config())
    for record in [*attacks, genuine]:
        producer.produce(settings.topic("models"), codec.encode("ModelVersion", record),
                         key=record["model_name"].encode())
    assert producer.flush(10) == 0

    store = Store(tmp_path / "queue.sqlite3")
    reader = settings.replace(model_signing_key="")  # the service holds the public key only
    caplog.set_level(logging.INFO, logger="feedbackloop.labeling")
    feed = Feed(reader, store).start()
    try:
        deadline = time.monotonic() + 30
        while store.model_version() != genuine["version"] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        feed.stop()
    assert store.model_version() == genuine["version"], "the genuine version is loaded"
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused model version")]
    for record in attacks:
        assert any(f"model {settings.model_name!r} version {record['version']}: " in m and "signature" in m
                   for m in refused), record["version"]
    assert len(refused) == len(attacks)
    assert not marker.exists()
    store.close()
