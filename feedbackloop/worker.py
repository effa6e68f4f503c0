"""Running the stream worker: in this process, or as a child process, and watching its lag.

``feedbackloop worker`` (:func:`run`) calls :func:`serve`. The demo, the
benchmark and the tests start workers as child processes with :func:`spawn`,
configured only through the environment, exactly as in production, and wait
for them with :func:`wait_drained`.

Stopping. SIGTERM or SIGINT starts Faust's graceful stop (the open batches
made durable, offsets committed). A watchdog that needs no event loop backs it
(:func:`exit_after_grace`): a worker still running ``stop_grace`` seconds later
(8 by default) exits at once, whatever it was doing; what it had not committed
is delivered again. A spawned worker also stops when its parent dies, however
it died (:func:`stop_with_parent`).

Restarting. Each worker is a static member of its consumer group (KIP-345,
Kafka 2.3+) under :func:`instance_id`: a worker restarted under the same id
takes its partitions back at once, instead of waiting for the session of the
member it replaces to time out. A static member does not leave the group when
it stops, so a worker stopped for good hands its partitions over only when its
session expires (Faust's ``broker_session_timeout``, 60 s).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from feedbackloop import keys, stack
from feedbackloop.settings import Settings, env_name

#: Topics the worker's consumer group reads.
CONSUMED = ("predictions", "overrides", "appeals", "labeling.candidates", "labeling.tasks", "labels")
#: What a worker's log says once it is ready: Faust's consumer is running, and the state of the
#: partitions assigned to it is rebuilt (:meth:`streams.app.Runtime.assigned`).
READY = (b"Worker ready", b"state ready for")

log = logging.getLogger("feedbackloop")
_slots: list = []  # the slot locks this process holds, for as long as it runs


def environment(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = dict(os.environ)
    for f in fields(settings):
        env[env_name(f.name)] = str(getattr(settings, f.name))
    return env


def instance_id(settings: Settings) -> str:
    """This worker's static group membership id: ``settings.worker_id`` if set.

    Otherwise ``<host>-<state dir digest>-<slot>``, where the slot is the lowest
    one no other running worker of this app holds on this host and state dir (a
    lock file, held until the process ends). A worker restarted after a crash
    gets its old id back; workers running side by side get distinct ones.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as state:
    ...     s = Settings(state_dir=state, app_id="shop")
    ...     first, second = instance_id(s), instance_id(s)
    ...     for lock in _slots[-2:]:
    ...         lock.close()  # as when these two workers end
    ...     again = instance_id(s)
    ...     _slots.pop().close()
    >>> first.rsplit("-", 1)[1], second.rsplit("-", 1)[1], again == first
    ('0', '1', True)
    >>> instance_id(Settings(worker_id="scorer-7"))
    'scorer-7'
    """
    if settings.worker_id:
        return settings.worker_id
    state = Path(settings.state_dir).resolve()
    folder = state / "worker"
    folder.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:8]
    app = re.sub(r"[^A-Za-z0-9._-]", "-", settings.app_id)
    for slot in itertools.count():
        lock = open(folder / f"{app}.slot-{slot}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _slots.append(lock)
        return f"{host}-{digest}-{slot}"


def exit_after_grace(grace: float, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """From now on, ``signals`` also start a clock: if this process still runs
    ``grace`` seconds after the first of them, it exits at once with status
    128 + the signal's number, whatever its event loop is doing.

    The clock runs on a daemon thread started here; the handler only sets an
    event. The signal keeps its other handling: an asyncio loop still gets it
    (the interpreter writes every signal to the loop's wakeup descriptor), so
    the graceful stop stays the normal path. Call it after the loop installed
    its signal handlers, from the main thread.

    >>> import subprocess, sys
    >>> code = ("import os, signal, time; from feedbackloop.worker import exit_after_grace; "
    ...         "signal.signal(signal.SIGTERM, lambda *a: None); exit_after_grace(0.2); "
    ...         "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    >>> done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    >>> done.returncode, done.stderr.strip()
    (143, 'not stopped 0.2 s after SIGTERM: exiting now')
    """
    first: list[int] = []
    received = threading.Event()

    def expire():
        received.wait()
        time.sleep(grace)
        # no logging, no print: the blocked thread may hold their locks
        os.write(2, f"not stopped {grace:g} s after {signal.Signals(first[0]).name}: exiting now\n".encode())
        os._exit(128 + first[0])

    def handler(signum, frame):
        if not first:
            first.append(signum)
        received.set()

    threading.Thread(target=expire, name="stop-watchdog", daemon=True).start()
    for sig in signals:
        signal.signal(sig, handler)


def stop_with_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """Send this process SIGTERM once ``parent`` is no longer its parent, that
    is once the parent has ended, however it ended (even by SIGKILL). Checked
    every ``interval`` seconds on a daemon thread; portable, unlike
    ``PR_SET_PDEATHSIG``, which also fires when the spawning *thread* ends."""

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def serve(settings: Settings, loglevel: str = "info", parent: int | None = None) -> None:
    """Run the Faust worker in this process until it is stopped (SIGINT/SIGTERM,
    or the death of process ``parent``); see the module's description."""
    settings = settings.replace(worker_id=instance_id(settings))
    if parent is not None:
        stop_with_parent(parent)
    from faust import Worker

    from streams.app import create_app

    app = create_app(settings)
    if settings.dashboard_port:  # the embedded engine has one owner: serve the page from it
        from feedbackloop import dashboard

        page = dashboard.start(settings, settings.dashboard_host, settings.dashboard_port)
        log.info("dashboard at %s", page.url)

    class GuardedWorker(Worker):
        def install_signal_handlers(self) -> None:
            super().install_signal_handlers()
            exit_after_grace(settings.stop_grace)
            log.info("static group member %s; stops on SIGTERM, within %g s", settings.worker_id,
                     settings.stop_grace)

    GuardedWorker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


def spawn(settings: Settings, log_path: Path) -> subprocess.Popen:
    """Start a worker as a child process, logging to ``log_path``. It stops when
    this process ends; its instance id is its own (:func:`instance_id`) unless
    ``settings.worker_id`` is set."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    env = environment(settings)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        # a worker scores a message at a time with numpy: one BLAS thread, so workers side by side
        # (or pinned to a core) do not take turns on the cores with their own BLAS threads
        env.setdefault(name, "1")
    with open(log_path, "ab") as out:
        # a session of its own: a terminal's Ctrl-C reaches the parent, which stops its children in order
        process = subprocess.Popen([sys.executable, "-m", "feedbackloop", "worker", "--parent", str(os.getpid())],
                                   env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path, process.log_start = log_path, start  # for wait_ready
    return process


def stop(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop a worker: SIGTERM, then SIGKILL if it still runs ``timeout`` seconds
    later (its own watchdog ends it after its stop grace; this is the backstop)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(settings: Settings, process: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Wait until the worker group is stable with partitions assigned and, for a
    worker started by :func:`spawn`, until that process says it is ready (a
    restarted static member takes over an assignment the group already shows)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with code {process.returncode}")
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=5)
            if group.state == ConsumerGroupState.STABLE and any(m.assignment.topic_partitions for m in group.members) \
                    and _says_ready(process):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker not ready after {timeout:.0f} s")


def _says_ready(process: subprocess.Popen | None) -> bool:
    """True unless ``process`` was spawned with a log that does not yet say it is ready (:data:`READY`)."""
    log_path = getattr(process, "log_path", None)
    if log_path is None:
        return True
    with open(log_path, "rb") as log:
        log.seek(process.log_start)
        text = log.read()
        return all(line in text for line in READY)


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


# -- feedbackloop worker -----------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``worker`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "worker", help="run the stream worker (scoring, routing, learning)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Runs the Faust app against the configured Kafka and ClickHouse until SIGINT/SIGTERM. "
                    "Scale out by running more workers: input topics split by partition. Without "
                    "KAFKA_BOOTSTRAP_SERVERS it joins the local stack (`feedbackloop stack up`).")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                   help="how much the worker logs")
    p.add_argument("--parent", type=int, metavar="PID",
                   help="stop when process PID, which started this worker, ends (however it ends)")
    p.set_defaults(func=run)
    return p


def run(args, settings: Settings) -> int:
    """``feedbackloop worker``: serve until stopped; 2 if there is no Kafka to join."""
    attached = stack.attach(settings)
    if attached is None:
        print(stack.NO_KAFKA, file=sys.stderr)
        return 2
    keys.signing_key(attached)  # no key, no worker: the error says how to set one
    serve(attached, loglevel=args.loglevel, parent=args.parent)
    return 0
