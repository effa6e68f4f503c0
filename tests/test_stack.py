"""The local stack (real Kafka 2.3 + ZooKeeper) and topic provisioning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from feedbackloop.settings import TOPICS
from feedbackloop.stack import KAFKA_DIST, LocalStack, StackError, ensure_topics, start


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _java_pids_under(path: Path) -> list[int]:
    """Live java processes whose command line mentions ``path``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            cmd = _cmdline(int(proc.name))
            if "java" in cmd.split(" ")[0] and str(path) in cmd and _alive(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- lifecycle of a stack of its own -------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, free_port):
    """A LocalStack brought up by a separate Python process that then exits."""
    stack = LocalStack(tmp_path_factory.mktemp("own-stack"), free_port(), free_port())
    code = (f"from feedbackloop.stack import LocalStack; import json; "
            f"print(json.dumps(LocalStack({str(stack.state_dir)!r}, {stack.kafka_port}, "
            f"{stack.zookeeper_port}).up()))")
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        stack.launch = json.loads(out.stdout)
        stack.cold_start_s = time.monotonic() - started
        yield stack
    finally:
        stack.down()
        assert _java_pids_under(stack.state_dir) == []


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.kafka
def test_up_outlives_the_launching_process(stack):
    status = stack.status()
    assert status["running"] is True
    assert status["pids"] == stack.launch["pids"]
    for role in ("zookeeper", "kafka"):
        pid = status["pids"][role]
        assert _alive(pid)
        assert str(stack.state_dir) in _cmdline(pid)
    assert sorted(_java_pids_under(stack.state_dir)) == sorted(status["pids"].values())


@pytest.mark.kafka
def test_up_is_idempotent(stack):
    before = stack.status()["pids"]
    again = stack.up()
    other_instance = LocalStack(stack.state_dir, stack.kafka_port, stack.zookeeper_port).up()
    assert again["pids"] == before
    assert other_instance["pids"] == before
    assert again["running"] and other_instance["running"]
    assert len(_java_pids_under(stack.state_dir)) == 2


@pytest.mark.kafka
def test_status_fields(stack, monkeypatch):
    monkeypatch.delenv("CLICKHOUSE_DSN", raising=False)
    monkeypatch.delenv("FEEDBACKLOOP_CONFIG", raising=False)
    status = json.loads(json.dumps(stack.status()))
    assert status["kafka"] == f"127.0.0.1:{stack.kafka_port}"
    assert status["zookeeper"] == f"127.0.0.1:{stack.zookeeper_port}"
    assert status["state_dir"] == str(stack.state_dir)
    assert Path(status["state_dir"]).is_absolute()
    assert status["clickhouse_dsn"] == "chdb://" + str(stack.state_dir / "clickhouse")
    assert set(status["pids"]) == {"zookeeper", "kafka"}
    monkeypatch.setenv("CLICKHOUSE_DSN", "http://ch.example:8123/db")
    assert stack.status()["clickhouse_dsn"] == "http://ch.example:8123/db"


@pytest.mark.kafka
def test_extracted_distribution_is_the_unmodified_kafka(stack):
    home = stack.state_dir / KAFKA_DIST
    assert (home / "libs" / "kafka_2.12-2.3.0.jar").is_file()
    assert (home / "libs" / "zookeeper-3.4.14.jar").is_file()
    assert stack.install() == home  # idempotent


@pytest.mark.kafka
def test_broker_is_real_and_round_trips(stack):
    conf = {"bootstrap.servers": stack.bootstrap_servers}
    admin = AdminClient(conf)
    meta = admin.list_topics(timeout=10)
    assert [b.port for b in meta.brokers.values()] == [stack.kafka_port]
    topic = "roundtrip"
    admin.create_topics([NewTopic(topic, 2, 1)], operation_timeout=30)[topic].result()
    messages = _round_trip(conf, topic, n=5)
    assert messages == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5)]


@pytest.mark.kafka
def test_up_on_other_ports_is_refused_while_running(stack, free_port):
    before = stack.status()["pids"]
    with pytest.raises(StackError, match="already runs"):
        LocalStack(stack.state_dir, free_port(), free_port()).up(timeout=20)
    assert stack.status()["pids"] == before


@pytest.mark.kafka
def test_busy_port_is_refused_and_nothing_is_left_running(tmp_path, free_port):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        other = LocalStack(tmp_path, kafka_port=busy.getsockname()[1], zookeeper_port=free_port())
        with pytest.raises(StackError, match="in use by another program"):
            other.up(timeout=60)
        assert _java_pids_under(tmp_path) == []  # the ZooKeeper it had started is gone
        assert not list(tmp_path.glob("*.pid"))
        assert other.status()["running"] is False
    finally:
        busy.close()


def test_down_never_signals_foreign_pids(tmp_path, sleeper):
    foreign = LocalStack(tmp_path)
    (tmp_path / "kafka.pid").write_text(json.dumps({"pid": sleeper.pid, "port": 9092}))
    (tmp_path / "zookeeper.pid").write_text(json.dumps({"pid": os.getpid(), "port": 2181}))
    assert foreign.status()["pids"] == {"zookeeper": None, "kafka": None}
    foreign.down(timeout=1)
    time.sleep(0.3)
    assert sleeper.poll() is None
    assert not list(tmp_path.glob("*.pid"))


@pytest.mark.kafka
def test_recovers_from_a_killed_broker(stack):
    before = stack.status()["pids"]
    os.kill(before["kafka"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(before["kafka"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.status()["running"] is False
    after = stack.up(timeout=60)
    assert after["running"] is True
    assert after["pids"]["zookeeper"] == before["zookeeper"]
    assert after["pids"]["kafka"] != before["kafka"]


@pytest.mark.kafka
def test_down_stops_only_our_processes_and_is_idempotent(stack, sleeper):
    pids = stack.status()["pids"]
    stack.down()
    assert not any(_alive(pid) for pid in pids.values())
    assert _java_pids_under(stack.state_dir) == []
    assert sleeper.poll() is None
    assert not _port_open(stack.kafka_port) and not _port_open(stack.zookeeper_port)
    assert not list(stack.state_dir.glob("*.pid"))
    status = stack.status()
    assert status["running"] is False
    assert status["pids"] == {"zookeeper": None, "kafka": None}
    stack.down()  # idempotent
    assert sleeper.poll() is None


@pytest.mark.kafka
def test_warm_restart_keeps_data_and_purge_removes_it(stack):
    started = time.monotonic()
    status = stack.up()
    warm_s = time.monotonic() - started
    assert status["running"] is True
    conf = {"bootstrap.servers": stack.bootstrap_servers}
    assert "roundtrip" in AdminClient(conf).list_topics(timeout=10).topics
    print(f"cold start {stack.cold_start_s:.1f}s (incl. interpreter), warm start {warm_s:.1f}s")
    stack.down(purge=True)
    assert not (stack.state_dir / "kafka-data").exists()
    assert not (stack.state_dir / "zookeeper-data").exists()
    assert (stack.state_dir / KAFKA_DIST / "libs").is_dir()  # no second extraction needed
    status = stack.up()
    assert "roundtrip" not in AdminClient(conf).list_topics(timeout=10).topics


# -- topics on the shared broker ------------------------------------------------------


@pytest.mark.kafka
def test_all_topics_exist_with_their_partitions(kafka):
    topics = AdminClient(kafka.kafka_config()).list_topics(timeout=10).topics
    for name, (partitions, _) in TOPICS.items():
        full = kafka.topic(name)
        assert full.startswith(kafka.topic_prefix) and kafka.topic_prefix
        assert full in topics, full
        assert len(topics[full].partitions) == partitions, full


@pytest.mark.kafka
def test_models_topic_is_compacted(kafka):
    admin = AdminClient(kafka.kafka_config())
    resources = [ConfigResource("topic", kafka.topic(n)) for n in ("models", "predictions")]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    assert configs[kafka.topic("models")]["cleanup.policy"].value == "compact"
    assert configs[kafka.topic("predictions")]["cleanup.policy"].value == "delete"


@pytest.mark.kafka
def test_ensure_topics_is_idempotent(kafka):
    counts = ensure_topics(kafka.kafka_config(), kafka, timeout=30)
    assert counts == {kafka.topic(n): p for n, (p, _) in TOPICS.items()}


@pytest.mark.kafka
def test_produce_consume_round_trip(kafka):
    messages = _round_trip(kafka.kafka_config(), kafka.topic("labels"), n=3)
    assert messages == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(3)]


@pytest.mark.kafka
def test_start_with_a_configured_cluster_starts_nothing(kafka, tmp_path):
    state = tmp_path / "state"
    settings = kafka.replace(state_dir=str(state), topic_prefix=kafka.topic_prefix + "ext.")
    result = start(settings, timeout=30)
    assert result.kafka_bootstrap_servers == kafka.kafka_bootstrap_servers
    assert not state.exists()  # no stack, no extraction, no pid files
    topics = AdminClient(kafka.kafka_config()).list_topics(timeout=10).topics
    assert all(settings.topic(n) in topics for n in TOPICS)


def _round_trip(conf: dict, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    """Produce n keyed messages to ``topic`` and read them back in order."""
    marker = uuid.uuid4().hex.encode()
    producer = Producer(conf)
    for i in range(n):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0,
                         headers={"run": marker})
    assert producer.flush(30) == 0
    consumer = Consumer({**conf, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + 60
    try:
        while len(received) < n and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            if dict(msg.headers() or []).get("run") == marker:
                received.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return received
