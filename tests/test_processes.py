"""Processes stop when told, and restarts rejoin fast: real processes, a real broker.

* ``feedbackloop demo`` stopped by SIGINT (with ``--serve``) or SIGTERM (while
  replaying) stops every process it started, the stack's JVMs included, within
  10 s; killed by SIGKILL, its worker and the stack it started stop by themselves.
* A worker stops within 10 s of SIGTERM even with its event loop blocked, and
  while it waits for a ClickHouse server that is not up.
* A worker killed with SIGKILL and restarted takes its partitions back at once
  (static group membership) instead of after the dead member's session timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from feedbackloop import stack, worker
from feedbackloop.producer import Producer
from feedbackloop.settings import Settings

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
#: What the issue asks: every process gone this many seconds after the signal.
LIMIT = 10.0


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (None once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``: {pid: command line}."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found and alive(child):
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                frontier.append(child)
    return found


def wait_gone(pids, timeout: float) -> float:
    """Seconds until none of ``pids`` runs; fails after ``timeout``."""
    start = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - start > timeout:
            left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in pids if alive(p)}
            pytest.fail(f"still running {timeout:.0f} s after the signal: {left}")
        time.sleep(0.1)
    return time.monotonic() - start


class Output:
    """A child's merged stdout and stderr, read on a thread (tqdm writes no newlines)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.text = process, ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} in the demo's output (exit code {self.process.poll()}):\n"
                            f"{self.text[-3000:]}")
            time.sleep(0.2)


def start_demo(tmp_path: Path, free_port, *options: str) -> tuple[subprocess.Popen, Output]:
    """``feedbackloop demo`` with a state dir of its own, so it starts its own stack."""
    env = dict(os.environ, FEEDBACKLOOP_STACK_KAFKA_PORT=str(free_port()),
               FEEDBACKLOOP_STACK_ZOOKEEPER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "feedbackloop", "--state-dir", str(tmp_path / "state"), "demo", *options],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return process, Output(process)


def expected_children(children: dict[int, str]) -> None:
    commands = list(children.values())
    assert any("feedbackloop worker" in c for c in commands), commands
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):  # the demo started the stack: both JVMs
        assert sum("kafka.Kafka" in c for c in commands) == 1, commands
        assert sum("QuorumPeerMain" in c for c in commands) == 1, commands


def test_demo_serve_stopped_by_sigint_stops_every_process_it_started(tmp_path, free_port):
    demo, out = start_demo(tmp_path, free_port, "--serve", "--events", "200", "--rate", "400",
                           "--labeling-port", str(free_port()), "--dashboard-port", str(free_port()))
    try:
        out.wait_for("Ctrl-C to stop.", timeout=300)
        children = descendants(demo.pid)
        expected_children(children)
        demo.send_signal(signal.SIGINT)
        seconds = wait_gone(children, LIMIT)
        print(f"SIGINT to demo --serve: {len(children)} processes gone after {seconds:.1f} s")
        assert demo.wait(LIMIT) == 0  # Ctrl-C ends serving; the report is printed
        assert "labels" in out.text
    finally:
        demo.kill()


def test_demo_stopped_by_sigterm_while_replaying_stops_every_process_it_started(tmp_path, free_port):
    demo, out = start_demo(tmp_path, free_port, "--events", "100000", "--rate", "100")
    try:
        out.wait_for("replaying", timeout=300)
        time.sleep(2)
        children = descendants(demo.pid)
        expected_children(children)
        demo.send_signal(signal.SIGTERM)
        seconds = wait_gone(children, LIMIT)
        print(f"SIGTERM to demo while replaying: {len(children)} processes gone after {seconds:.1f} s")
        assert demo.wait(LIMIT) == 130
    finally:
        demo.kill()


def test_children_of_a_killed_demo_stop_by_themselves(tmp_path, free_port):
    demo, out = start_demo(tmp_path, free_port, "--events", "100000", "--rate", "100")
    try:
        out.wait_for("replaying", timeout=300)
        children = descendants(demo.pid)
        expected_children(children)
        demo.kill()
        demo.wait()
        # the worker notices within 0.5 s and stops within its grace; the watcher then stops the stack
        seconds = wait_gone(children, Settings().stop_grace + 2 + LIMIT)
        print(f"SIGKILL to demo: its {len(children)} processes gone after {seconds:.1f} s")
    finally:
        demo.kill()


# -- a worker on its own ----------------------------------------------------------

#: A worker whose event loop blocks for good, as a synchronous retry loop once did.
BLOCKED_WORKER = """
import time
from feedbackloop import worker
from feedbackloop.settings import Settings
from streams import app

create_app = app.create_app

def blocked_app(settings):
    built = create_app(settings)

    @built.timer(0.2)
    async def block():
        print("loop blocked", flush=True)
        time.sleep(3600)

    return built

app.create_app = blocked_app  # worker.serve builds its app with this
worker.serve(Settings.from_env())
"""


def settings_for(kafka: Settings, name: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}{name}-{run}.", app_id=f"{name}-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    return settings


def test_worker_with_a_blocked_event_loop_stops_within_its_grace(kafka, tmp_path):
    settings = settings_for(kafka, "blocked").replace(clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}")
    assert settings.stop_grace < LIMIT
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", BLOCKED_WORKER], cwd=ROOT, env=worker.environment(settings),
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "loop blocked" not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(LIMIT + 5)
        seconds = time.monotonic() - start
    finally:
        process.kill()
    print(f"blocked worker: exit {code} {seconds:.1f} s after SIGTERM")
    assert code == 128 + signal.SIGTERM, "the watchdog ended it, not the blocked graceful stop"
    assert settings.stop_grace <= seconds < LIMIT
    assert f"not stopped {settings.stop_grace:g} s after SIGTERM: exiting now" in log.read_text()


def test_worker_waiting_for_clickhouse_stops_on_sigterm(kafka, tmp_path, free_port):
    closed = free_port()  # nothing listens there
    settings = settings_for(kafka, "noclickhouse").replace(clickhouse_dsn=f"http://127.0.0.1:{closed}")
    process = worker.spawn(settings, tmp_path / "worker.log")
    try:
        with Producer(settings) as producer:  # something to do, so the agents need ClickHouse
            producer.prediction("item-1", {"a": 0.6, "b": 0.4}, features={"x": 1.0})
        time.sleep(12)  # started, and waiting for ClickHouse for a while
        assert process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(LIMIT + 5)
        seconds = time.monotonic() - start
    finally:
        process.kill()
    print(f"worker waiting for ClickHouse: exit {code} {seconds:.1f} s after SIGTERM")
    assert seconds < LIMIT


def instance_of(log: Path) -> str:
    """The static group membership id a worker's log announces."""
    line = next(line for line in log.read_text().splitlines() if "static group member" in line)
    return line.split("static group member ", 1)[1].split(";", 1)[0]


def members(settings: Settings) -> list:
    admin = AdminClient(settings.kafka_config())
    return admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10).members


def is_static(member, instance: str) -> bool:
    # Kafka 2.3 does not describe the instance id (DescribeGroups v4, 2.4) but names the member after it
    return member.group_instance_id == instance or member.member_id.startswith(f"{instance}-")


def processed_after(settings: Settings, process: subprocess.Popen, event: str, timeout: float) -> float:
    """Send one prediction; seconds until the worker group has committed it."""
    start = time.monotonic()
    with Producer(settings) as producer:
        producer.prediction(f"item-{event}", {"a": 0.6, "b": 0.4}, features={"x": 1.0}, event_id=event)
    while worker.lag(settings, topics=("predictions",)) != 0:
        assert process.poll() is None, f"worker exited with {process.returncode}"
        assert time.monotonic() - start < timeout, f"{event} not processed within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic() - start


def test_worker_killed_and_restarted_rejoins_at_once(kafka, tmp_path):
    settings = settings_for(kafka, "rejoin").replace(clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}")
    process = worker.spawn(settings, tmp_path / "worker-1.log")
    try:
        worker.wait_ready(settings, process)
        processed_after(settings, process, "first", timeout=60)
        instance = instance_of(tmp_path / "worker-1.log")
        assert [is_static(m, instance) for m in members(settings)] == [True]

        process.kill()
        process.wait()
        start = time.monotonic()
        process = worker.spawn(settings, tmp_path / "worker-2.log")
        # a dynamic member waits for the dead one's session to time out (Faust: 60 s)
        processed_after(settings, process, "after-kill", timeout=40)
        seconds = time.monotonic() - start
        print(f"kill -9, restart: an event sent at the restart committed after {seconds:.1f} s")
        assert instance_of(tmp_path / "worker-2.log") == instance, "the restarted worker took its old place"
        assert [is_static(m, instance) for m in members(settings)] == [True]
    finally:
        worker.stop(process)
