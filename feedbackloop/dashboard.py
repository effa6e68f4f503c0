"""``feedbackloop dashboard``: the analysts' page, read from ClickHouse.

The page (``dashboards/page/``) draws every analyst query of
:mod:`dashboards.queries` as a plot or a table, and fetches them again every
few seconds, so it follows a running loop. The server answers three things:

- ``/``: the page; ``/page/NAME``: its script and style (no CDN, no build step);
- ``/api/panels``: every query with its question, plot and rows, as JSON.

It reads through the configured DSN (``CLICKHOUSE_DSN``). The embedded engine
(``chdb://``) lets one process own a data directory: serve the page from the
process that owns it, or once the worker writing it has stopped, or point
both at a ClickHouse server.

>>> server = start(Settings(clickhouse_dsn="chdb://memory"), port=0)
>>> import json, urllib.request
>>> panels = json.loads(urllib.request.urlopen(server.url + "api/panels").read())["panels"]
>>> panels[0]["name"], panels[0]["plot"]["kind"]
('overview', 'tiles')
>>> server.stop()
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import os
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dashboards import queries
from dashboards.migrate import migrate
from dashboards.connection import _redact, connect_settings
from feedbackloop.settings import Settings

__all__ = ["PAGE_DIR", "Dashboard", "DashboardServer", "add_parser", "run", "serve", "start"]

log = logging.getLogger(__name__)

PAGE_DIR = Path(queries.QUERIES_DIR) / "page"


class Dashboard:
    """Runs the analyst queries on one ClickHouse client, one query at a time."""

    def __init__(self, settings: Settings):
        self.dsn = _redact(settings.clickhouse_dsn)
        self.client = connect_settings(settings)
        self.lock = threading.Lock()
        with self.lock:
            migrate(self.client)  # the page reads the rollups, even before the first worker ran
        self.queries = queries.load()

    def panels(self) -> dict:
        """Every query with its answer, in the page's order."""
        started = time.monotonic()
        panels = []
        with self.lock:
            for q in self.queries:
                plot = {k: v for k, v in asdict(q.plot).items() if v is not None} if q.plot else None
                panels.append({"name": q.name, "question": q.question, "notes": q.notes, "plot": plot,
                               **queries.run(self.client, q)})
        return {"generated_at": round(time.time() * 1000), "seconds": round(time.monotonic() - started, 3),
                "clickhouse": self.dsn, "panels": panels}

    def close(self) -> None:
        with self.lock:
            self.client.close()


def _handler(dashboard: Dashboard):
    class Handler(BaseHTTPRequestHandler):
        server_version = "feedbackloop-dashboard"

        def do_GET(self):  # noqa: N802 (the name http.server dispatches to)
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._file(PAGE_DIR / "index.html")
            if path == "/api/panels":
                return self._send(200, "application/json", json.dumps(dashboard.panels()).encode())
            if path == "/healthz":
                return self._send(200, "text/plain", b"ok\n")
            if path.startswith("/page/"):
                name = path[len("/page/"):]
                if name and "/" not in name and not name.startswith("."):
                    return self._file(PAGE_DIR / name)
            self._send(404, "text/plain", b"not found\n")

        def _file(self, path: Path):
            if not path.is_file():
                return self._send(404, "text/plain", b"not found\n")
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(200, kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith("script") else ""),
                       path.read_bytes())

        def _send(self, status: int, kind: str, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 (the signature of http.server)
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class DashboardServer(ThreadingHTTPServer):
    """The page's HTTP server; :attr:`url` is where it listens."""

    daemon_threads = True

    def __init__(self, dashboard: Dashboard, host: str, port: int):
        self.dashboard = dashboard
        super().__init__((host, port), _handler(dashboard))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"

    def stop(self) -> None:
        """Stop serving and release the ClickHouse client."""
        self.shutdown()
        self.server_close()
        self.dashboard.close()


def start(settings: Settings, host: str = "127.0.0.1", port: int = 8050) -> DashboardServer:
    """Serve the page on a background thread (``port=0``: any free port); ``stop()`` ends it."""
    dashboard = Dashboard(settings)
    try:
        server = DashboardServer(dashboard, host, port)
    except BaseException:
        dashboard.close()
        raise
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve the page until interrupted."""
    server = start(settings, host, port)
    print(f"dashboard on {server.url} (ClickHouse: {server.dashboard.dsn}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8050, help="port to listen on")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``dashboard`` command to the ``feedbackloop`` command line."""
    return _options(subparsers.add_parser(
        "dashboard", help="serve the analysts' page (plots from ClickHouse)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serves a page that plots the analyst queries (dashboards/*.sql) from the configured "
                    "ClickHouse (CLICKHOUSE_DSN) and refreshes them while the loop runs."))


def run(args, settings: Settings) -> int:
    """``feedbackloop dashboard``: serve the page until interrupted."""
    serve(settings, args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m feedbackloop.dashboard``: the same command on its own, with settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m feedbackloop.dashboard",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--state-dir", help="where the local stack keeps its data (default: .feedbackloop)")
    args = _options(parser).parse_args(argv)
    env = dict(os.environ, **({"FEEDBACKLOOP_STATE_DIR": args.state_dir} if args.state_dir else {}))
    return run(args, Settings.from_env(env))


if __name__ == "__main__":
    raise SystemExit(main())
