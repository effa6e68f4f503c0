"""Shared fixtures.

``kafka`` (session): ``Settings`` whose ``kafka_bootstrap_servers`` points at a
real broker. With ``KAFKA_BOOTSTRAP_SERVERS`` set that cluster is used;
otherwise a local stack (``feedbackloop.stack``) is started in a temporary
directory on free ports and stopped at the end of the session. All topics of
``TOPICS`` exist under a topic prefix unique to the session, so runs against a
shared cluster do not collide (they are deleted again there). A test needing
topics of its own uses ``kafka.replace(topic_prefix=...)`` and ``ensure_topics``.
Tests using it are marked ``@pytest.mark.kafka``. If the broker cannot be
started the fixture errors; it never skips.

``clickhouse_dsn`` (function): a fresh in-process ClickHouse (chdb) DSN.

``db`` (function): a client of a fresh in-process ClickHouse, migrated.

``free_port`` (session): a function returning a free TCP port on 127.0.0.1,
never the same one twice in a session.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

# Make the project importable when it is not installed into the environment.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from confluent_kafka.admin import AdminClient  # noqa: E402

from dashboards.connection import connect  # noqa: E402
from dashboards.migrate import migrate  # noqa: E402
from feedbackloop.settings import Settings  # noqa: E402
from feedbackloop.stack import start, stop  # noqa: E402


@pytest.fixture(scope="session")
def free_port():
    given: set[int] = set()

    def pick() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in given:
                given.add(port)
                return port

    return pick


@pytest.fixture(scope="session")
def kafka(tmp_path_factory, free_port) -> Settings:
    env = dict(os.environ)
    env.update(
        FEEDBACKLOOP_STATE_DIR=str(tmp_path_factory.mktemp("stack")),
        FEEDBACKLOOP_TOPIC_PREFIX=f"test-{uuid.uuid4().hex[:8]}.",
        FEEDBACKLOOP_STACK_KAFKA_PORT=str(free_port()),
        FEEDBACKLOOP_STACK_ZOOKEEPER_PORT=str(free_port()),
    )
    external = bool(env.get("KAFKA_BOOTSTRAP_SERVERS"))
    settings = Settings.from_env(env)
    try:
        settings = start(settings)
        yield settings
    finally:
        if external:  # leave the shared cluster as we found it
            admin = AdminClient(settings.kafka_config())
            ours = [t for t in admin.list_topics(timeout=30).topics if t.startswith(settings.topic_prefix)]
            if ours:
                for future in admin.delete_topics(ours, operation_timeout=30).values():
                    future.exception()
        stop(settings)


@pytest.fixture
def clickhouse_dsn(tmp_path) -> str:
    return "chdb://" + str(tmp_path / "clickhouse")


@pytest.fixture
def db(tmp_path):
    """A client of an embedded ClickHouse in the test's directory, every migration applied."""
    client = connect("chdb://" + str(tmp_path / "ch"))
    migrate(client)
    yield client
    client.close()
