"""Running the stream worker: in this process, or as a child process, and watching its lag.

``feedbackloop worker`` calls :func:`run`. The demo, the benchmark and the tests
start workers as child processes with :func:`spawn`, configured only through
the environment, exactly as in production, and wait for them with
:func:`wait_drained`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from feedbackloop.settings import Settings, env_name

#: Topics the worker's consumer group reads.
CONSUMED = ("predictions", "overrides", "appeals", "labeling.candidates", "labeling.tasks", "labels")


def environment(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = dict(os.environ)
    for f in fields(settings):
        env[env_name(f.name)] = str(getattr(settings, f.name))
    return env


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    os.environ.update(environment(settings))
    from streams.app import app  # reads the settings from the environment
    from faust import Worker

    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


def spawn(settings: Settings, log_path: Path) -> subprocess.Popen:
    """Start a worker as a child process, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "feedbackloop", "worker"], env=environment(settings),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop a worker gracefully (SIGTERM), killing it if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(settings: Settings, process: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Wait until the worker group is stable with partitions assigned."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with code {process.returncode}")
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=5)
            if group.state == ConsumerGroupState.STABLE and any(m.assignment.topic_partitions for m in group.members):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker not ready after {timeout:.0f} s")


def lag(settings: Settings, group: str | None = None, topics=CONSUMED) -> int:
    """Messages not yet committed by the worker group (or ``group``) on ``topics``."""
    consumer = Consumer({**settings.kafka_config(), "group.id": group or settings.app_id,
                         "enable.auto.commit": False})
    try:
        names = [settings.topic(t) for t in topics]
        meta = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in names if t in meta.topics for p in meta.topics[t].partitions]
        total = 0
        for tp in consumer.committed(tps, timeout=10):
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            committed = tp.offset if tp.offset >= 0 else low
            total += max(0, high - committed)
        return total
    finally:
        consumer.close()


def wait_drained(settings: Settings, process: subprocess.Popen | None = None, timeout: float = 120.0,
                 settle: float = 1.0, extra=lambda: True) -> bool:
    """Wait until the worker has committed everything (twice in a row) and
    ``extra()`` holds; return False on timeout."""
    deadline = time.monotonic() + timeout
    clean = 0
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with code {process.returncode}")
        clean = clean + 1 if lag(settings) == 0 and extra() else 0
        if clean >= 2:
            return True
        time.sleep(settle)
    return False
