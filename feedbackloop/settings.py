"""Settings, read from environment variables and an optional config file.

Every setting has an environment variable; a config file (``FEEDBACKLOOP_CONFIG``,
``KEY=value`` lines using the same names) fills in what the environment leaves
unset. Secrets are never printed: ``Settings.public()`` masks them.

Model keys have no default: ``model_signing_key`` (the Ed25519 private key,
held by workers, since any worker may own the learner) and ``model_verify_key``
(its public half, all the labeling service needs) are each the base64 of the
raw 32 bytes, as ``feedbackloop keygen`` prints them (see :mod:`feedbackloop.keys`).

>>> s = Settings.from_env({"FEEDBACKLOOP_TOPIC_PREFIX": "acme.", "FEEDBACKLOOP_BUDGET_PER_HOUR": "50"})
>>> s.topic("labeling.tasks")
'acme.labeling.tasks'
>>> s.budget_per_hour
50
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

#: Topic name -> (partitions, extra topic config). Inputs scale out by partition;
#: candidates and labels have one partition, so one worker owns the global budget
#: and the learner. Tasks and labels are kept for good: they are what was paid
#: for, and a restarted worker rebuilds its state from them (streams.replay).
TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "predictions": (4, {}),
    "overrides": (4, {}),
    "appeals": (4, {}),
    "labeling.candidates": (1, {}),
    "labeling.tasks": (1, {"retention.ms": "-1"}),
    "labels": (1, {"retention.ms": "-1"}),
    "models": (1, {"cleanup.policy": "compact"}),
    "deadletter": (1, {}),
    "audit": (1, {}),  # the labeling service's audit log (AuditEvent), sunk into audit_log by the worker
    "retraining": (1, {"retention.ms": "-1"}),  # Retraining events: a dataset version is due (streams.evaluation.milestones)
}

SECRET_FIELDS = {"kafka_sasl_password", "clickhouse_password", "model_signing_key"}


def env_name(name: str) -> str:
    if name in {"kafka_bootstrap_servers", "clickhouse_dsn"}:
        return name.upper()
    return "FEEDBACKLOOP_" + name.upper()


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=value`` lines of a file (blank lines and ``#`` comments skipped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def raw_key(text: str, name: str = "key") -> bytes:
    """The 32 bytes of an Ed25519 key given as base64, or a ``ValueError`` naming ``name``.

    >>> len(raw_key("A" * 43 + "="))
    32
    >>> raw_key("feedbackloop-dev-key", "FEEDBACKLOOP_MODEL_SIGNING_KEY")
    Traceback (most recent call last):
    ...
    ValueError: FEEDBACKLOOP_MODEL_SIGNING_KEY is not an Ed25519 key (the base64 of 32 bytes); `feedbackloop keygen` prints a new key pair
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{name} is not an Ed25519 key (the base64 of 32 bytes); "
                         "`feedbackloop keygen` prints a new key pair")
    return raw


@dataclass(frozen=True)
class Settings:
    """All knobs of a worker; the env var for ``x`` is ``FEEDBACKLOOP_X``
    (``KAFKA_BOOTSTRAP_SERVERS`` and ``CLICKHOUSE_DSN`` keep their usual names)."""

    kafka_bootstrap_servers: str = ""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    topic_prefix: str = ""
    clickhouse_dsn: str = ""
    clickhouse_username: str = ""
    clickhouse_password: str = ""
    state_dir: str = ".feedbackloop"
    stack_kafka_port: int = 9092
    stack_zookeeper_port: int = 2181
    app_id: str = "feedbackloop"
    budget_fraction: float = 0.1
    budget_per_hour: int = 1000
    budget_per_day: int = 10000
    budget_per_week: int = 0
    control_fraction: float = 0.1
    model_name: str = "shadow"
    model_kind: str = "knn"
    publish_every: int = 25
    min_control: int = 20
    #: until the shadow model has learned 100 labels, a version every this many learned labels, the first
    #: without waiting for min_control (0: none); and before its first version the diverse share's distance
    #: is weighted by how typical the item is, to this power (0: not). On for a worker and the demo alike
    #: (docs/policy.md, "The shadow's first versions sooner", 2026-12-01 morning and midday).
    early_every: int = 5
    typical_first: float = 1.0
    model_signing_key: str = ""
    model_verify_key: str = ""
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 0
    overlap: int = 1
    max_annotators: int = 5
    gold_path: str = ""
    gold_rate: float = 0.0
    gold_threshold: float = 0.7
    seed: int = 0
    #: 1: the label set is multi-label (an item gets any subset; predictions carry each class's
    #: P(in the set) and the predicted set joined by "|"; see the README's multi-label section)
    multi_label: int = 0
    # -- annotator gating and guidelines (the labeling service) --
    #: a new (or re-admitted) annotator's first K tasks are gold items from ``gold_path``
    gate_gold_tasks: int = 5
    #: below this gold accuracy, over at least ``gate_gold_tasks`` checks, an annotator is paused
    gate_threshold: float = 0.7
    #: the labeling guidelines: a markdown file, or a directory of them (one per label set)
    guidelines_path: str = ""
    # -- suspect labels (streams.labels.suspects) --
    #: reviews of labels the cross-fitted model finds suspect, as a share of the labels bought (0: none)
    suspect_share: float = 0.05
    # -- retraining the production model (streams.evaluation.milestones; 0 turns a rule off) --
    #: a Retraining event after this many new consensus labels
    retrain_every_labels: int = 500
    #: ... or once the shadow model's control accuracy gained this much since the last event
    retrain_accuracy_gain: float = 0.02
    #: ... or when a drift detector fires (1) / when the stopping signal turns to stop (1)
    retrain_on_drift: int = 1
    retrain_on_stop: int = 1
    #: this worker's static group membership id (KIP-345); empty: derived from the host and state dir
    worker_id: str = ""
    #: seconds a worker has to stop gracefully after SIGTERM/SIGINT before it exits regardless
    stop_grace: float = 8.0
    #: a test hook: while a file exists at this path, every ClickHouse insert of the sink
    #: fails as if the server were down (the embedded engine cannot be taken down otherwise)
    sink_fault_path: str = ""

    def __post_init__(self):
        for name in ("model_signing_key", "model_verify_key"):
            if getattr(self, name):
                raw_key(getattr(self, name), env_name(name))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        config = env.get("FEEDBACKLOOP_CONFIG")
        if config:
            for key, value in read_env_file(config).items():
                env.setdefault(key, value)
        values = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)
        if not settings.clickhouse_dsn:
            dsn = "chdb://" + str(Path(settings.state_dir).resolve() / "clickhouse")
            settings = settings.replace(clickhouse_dsn=dsn)
        return settings

    def replace(self, **changes) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return type(self)(**values)

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings for confluent-kafka clients."""
        conf = {"bootstrap.servers": self.kafka_bootstrap_servers,
                "security.protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf

    def public(self) -> dict:
        """Settings as a dict, secrets masked (safe to log)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.name in SECRET_FIELDS and value else value
        return out
