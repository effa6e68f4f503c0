"""The labeling service: the queue, the API and the web UI in one process.

:class:`LabelingService` wires the pieces: the SQLite :class:`~consumers.labeling.store.Store`
(by default ``<state_dir>/labeling/<topic prefix>queue.sqlite3``), the
:class:`~consumers.labeling.feed.Feed` that fills it from Kafka, the
:class:`~consumers.labeling.outbox.Outbox` that sends labels, the
:class:`~consumers.labeling.audit.AuditShipper` that sends the audit log, and
the HTTP app served by uvicorn. At start, labels left unsent by a crash are
sent first.

The HTTP server answers the host names of ``allowed_hosts`` (by default the
bound host, ``localhost`` and this machine's name; any IP address always), cuts
a connection whose request head takes longer than ``header_timeout`` seconds
and a body longer than ``body_timeout`` (:mod:`consumers.labeling.guard`).
The client address (for the rate limits and the audit log) is the peer's, or
the ``X-Forwarded-For`` of a proxy uvicorn trusts: one on this machine, or the
addresses in ``FORWARDED_ALLOW_IPS`` (uvicorn's setting). Behind a proxy on
another host, set it to the proxy's address, or every annotator shares that
address, and its budget and lockout.

``feedbackloop serve-labeling`` (:mod:`consumers.labeling.cli`) runs it until
Ctrl-C; ``serve()`` does the same from Python, and ``LabelingService(...).start()``
runs it in the background::

    service = LabelingService(settings, tokens, port=8000).start()
    print(service.link(token))   # http://127.0.0.1:8000/#token=...
    ...
    service.stop()
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import uvicorn

from consumers.labeling.api import create_app
from consumers.labeling.audit import AuditShipper
from consumers.labeling.feed import Feed
from consumers.labeling.gating import Gate
from consumers.labeling.guidelines import Guidebook
from consumers.labeling.guard import BODY_TIMEOUT, HEADER_TIMEOUT, default_hosts, http_protocol
from consumers.labeling.outbox import DeliveryError, KafkaLabels, Outbox
from consumers.labeling.ratelimit import Limits
from consumers.labeling.store import Store
from consumers.labeling.tokens import Tokens
from feedbackloop.datasets import load_gold
from feedbackloop.settings import Settings


def default_db(settings: Settings) -> Path:
    """Where the queue of ``settings`` lives: one file per topic prefix.

    >>> default_db(Settings(state_dir="/srv/fl", topic_prefix="acme."))
    PosixPath('/srv/fl/labeling/acme.queue.sqlite3')
    """
    prefix = re.sub(r"[^\w.-]", "_", settings.topic_prefix)
    return Path(settings.state_dir).resolve() / "labeling" / f"{prefix}queue.sqlite3"


def load_guidelines(path: str | Path | None) -> dict:
    """``{"text": ..., "labels": {label: meaning}}`` from a JSON file of that shape,
    or any other file's text as the guideline."""
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("labels", {}), dict):
            raise ValueError(f"{path}: expected {{\"text\": ..., \"labels\": {{label: meaning}}}}")
        return data
    return {"text": text.strip()}


class LabelingService:
    """The labeling service for ``settings`` (which must point at a Kafka cluster).

    ``port=0`` picks a free port (see :attr:`url` once started). ``allowed_hosts``
    are host names the service answers to besides :func:`~consumers.labeling.guard.default_hosts`
    (``["*"]``: any); ``limits`` are the guard's rate limits. With a gold set
    (``settings.gold_path``), annotators are calibrated and paused on it
    (:mod:`~consumers.labeling.gating`, ``settings.gate_gold_tasks`` and ``gate_threshold``).
    The guidelines shown come from ``settings.guidelines_path``, versioned
    (:mod:`~consumers.labeling.guidelines`), or else from ``guidelines``, a fixed
    ``{"text": ..., "labels": {label: meaning}}``.
    """

    def __init__(self, settings: Settings, tokens: Tokens, host: str = "127.0.0.1", port: int = 8000,
                 db: str | Path | None = None, lease_seconds: float = 600.0, guidelines: dict | None = None,
                 allowed_hosts: list[str] | None = None, limits: Limits | None = None,
                 header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT):
        self.settings = settings
        self.tokens = tokens
        self.host = host
        self.store = Store(db or default_db(settings))
        self.sender = KafkaLabels(settings)
        self.outbox = Outbox(self.store, self.sender)
        self.feed = Feed(settings, self.store, self.outbox)
        self.audit = AuditShipper(settings, self.store)
        self.gate = Gate(self.store, load_gold(settings.gold_path), settings.gate_gold_tasks, settings.gate_threshold)
        self.guidebook = Guidebook(settings.guidelines_path or None, self.store, static=guidelines)
        self.app = create_app(self.store, self.outbox, tokens, self.guidebook, lease_seconds, gate=self.gate,
                              allowed_hosts=default_hosts(host) + list(allowed_hosts or []), limits=limits,
                              body_timeout=body_timeout)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="off", server_header=False,
                                                    http=http_protocol(header_timeout)))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", None)
        if servers:
            return servers[0].sockets[0].getsockname()[1]
        return self.server.config.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def link(self, token: str) -> str:
        """The address that opens the UI signed in with ``token``."""
        return f"{self.url}/#token={token}"

    def _begin(self) -> None:
        try:
            self.outbox.retry()
        except DeliveryError as exc:  # the feed keeps trying
            print(f"labels left unsent, will retry: {exc}", file=sys.stderr)
        self.feed.start()
        self.audit.start()

    def start(self, timeout: float = 30.0) -> "LabelingService":
        """Run in background threads; returns once the HTTP server listens."""
        self._begin()
        self._thread = threading.Thread(target=self.server.run, name="labeling-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the labeling service did not start on {self.host}:{self.server.config.port}")
            time.sleep(0.02)
        return self

    def run(self) -> None:
        """Run in this thread until SIGINT or SIGTERM."""
        self._begin()
        try:
            self.server.run()
        finally:
            self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.feed.stop()
        if self.audit.running:
            self.audit.stop()
        self.sender.close()
        self.store.close()


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, tokens: Tokens | None = None,
          db: str | Path | None = None, lease_seconds: float = 600.0, guidelines: dict | None = None,
          announce: dict[str, str] | None = None, out=sys.stdout, allowed_hosts: list[str] | None = None) -> int:
    """Serve annotators until Ctrl-C, after printing the address to open for each
    ``{annotator: token}`` of ``announce``. Without any token, one ``admin``
    token is minted and announced."""
    tokens = tokens if tokens is not None else Tokens()
    announce = dict(announce or {})
    if not len(tokens):
        announce["admin"] = tokens.mint("admin", "admin")
    service = LabelingService(settings, tokens, host, port, db, lease_seconds, guidelines, allowed_hosts)
    print(f"labeling service on {service.url} (queue {service.store.path})", file=out)
    for who, token in announce.items():
        print(f"  {who}: {service.link(token)}", file=out)
    out.flush()
    service.run()
    return 0
