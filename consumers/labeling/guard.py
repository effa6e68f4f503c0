"""The door of the labeling service: what a request passes before the API reads it.

:class:`Guard` wraps the API (an ASGI app) and, in this order:

1. refuses a ``Host`` that is not allowed (400): an IP address, ``localhost``,
   the name the service is bound to, this machine's name, and the names given
   (``FEEDBACKLOOP_LABELING_ALLOWED_HOSTS``; ``*`` for any, ``.example.com`` for
   it and its subdomains). A web page cannot reach the service through a name
   it controls (DNS rebinding), since a browser sends that name;
2. answers 429 to an address over its request budget (:mod:`~consumers.labeling.ratelimit`);
3. refuses a body announced larger than ``max_body`` bytes (413), unread;
4. on ``/api``, checks the bearer token before any byte of the body is read:
   401 for a missing or wrong one (which counts against the address), 429 for
   an address locked out after too many, or a valid token over its budget;
5. reads the body, at most ``max_body`` bytes (413) within ``body_timeout``
   seconds (408), and only then hands the request on.

A refusal closes the connection (``Connection: close``), so a body left
unread is never read. Every answer, the API's and the guard's, static files
and errors alike, carries :data:`HEADERS`; API answers are ``no-store``, the
page and its files ``no-cache`` (revalidated).

A request head (the request line and headers) must arrive within
``header_timeout`` seconds of the connection or of the previous answer on it:
:func:`http_protocol` is uvicorn's h11 protocol with that timer; ASGI sees a
request only once its head is complete, hence a protocol and not middleware.

>>> from fastapi.testclient import TestClient
>>> from starlette.responses import PlainTextResponse
>>> from consumers.labeling.tokens import Tokens
>>> hello = PlainTextResponse("hello")
>>> client = TestClient(Guard(hello, Tokens(), allowed_hosts=["labels.example.com"]),
...                     base_url="http://labels.example.com")
>>> r = client.get("/")
>>> r.text, r.headers["x-content-type-options"], r.headers["x-frame-options"]
('hello', 'nosniff', 'DENY')
>>> client.post("/api/tasks/next").status_code  # no token: refused before the body is read
401
>>> client.post("/", content=b"x" * (MAX_BODY + 1)).status_code
413
>>> client.get("/", headers={"Host": "attacker.example"}).status_code
400
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import socket
from typing import Awaitable, Callable, Iterable

import anyio
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from consumers.labeling.ratelimit import Limits, RateLimiter
from consumers.labeling.tokens import Tokens

log = logging.getLogger("feedbackloop.labeling")

#: Largest request body, in bytes (a label with the longest note takes about 8 KiB).
MAX_BODY = 64 * 1024
#: Seconds a request body may take to arrive, whole.
BODY_TIMEOUT = 10.0
#: Seconds a request head may take to arrive.
HEADER_TIMEOUT = 10.0
#: Headers on every answer.
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_WILDCARD = {"", "0.0.0.0", "::", "[::]"}


def default_hosts(bound: str) -> list[str]:
    """The host names allowed when none are configured: the bound name (unless
    it binds every interface), ``localhost`` and this machine's name.

    >>> default_hosts("labels.internal")[:2]
    ['labels.internal', 'localhost']
    """
    names = [] if bound in _WILDCARD else [bound]
    return names + ["localhost", socket.gethostname()]


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a ``Host`` header value may reach the service: any IP address
    (a browser sends a name for a page's own origin), or a name of ``allowed``.

    >>> [host_allowed(h, ["labels.example.com", ".corp.example"]) for h in
    ...  ("127.0.0.1:8000", "[::1]:8000", "labels.example.com", "a.corp.example", "corp.example", "evil.test", "")]
    [True, True, True, True, True, False, False]
    """
    name = host.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    name = name.rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    for a in allowed:
        a = a.strip().lower().rstrip(".")
        if a == "*" or name == a or (a.startswith(".") and (name.endswith(a) or name == a[1:])):
            return True
    return False


async def _refuse(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _retry(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class Guard:
    """ASGI middleware: the checks of the module's text, then ``app``.

    ``on_lockout(address)`` is called (on a worker thread) when an address is
    locked out; the service writes it to the audit log.
    """

    def __init__(self, app, tokens: Tokens, allowed_hosts: Iterable[str] | None = None,
                 limits: Limits | RateLimiter | None = None, max_body: int = MAX_BODY,
                 body_timeout: float = BODY_TIMEOUT, on_lockout: Callable[[str], None] | None = None):
        self.app = app
        self.tokens = tokens
        self.allowed_hosts = list(default_hosts("") if allowed_hosts is None else allowed_hosts)
        self.limiter = limits if isinstance(limits, RateLimiter) else RateLimiter(limits or Limits())
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.on_lockout = on_lockout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._headed(scope, send)
        refused = await self._check(scope)
        if refused is not None:
            await _refuse(send, *refused)
            return
        body = await self._read(receive, send)
        if body is None:
            return
        replayed = False

        async def again():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, again, send)

    def _headed(self, scope, send) -> Callable[[dict], Awaitable[None]]:
        page = scope["path"] == "/" or scope["path"].startswith("/ui/")
        cache = b"no-cache" if page else b"no-store"  # the page and its files are revalidated, the rest never kept

        async def headed(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower().decode() not in HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", cache))
                message = {**message, "headers": headers}
            await send(message)

        return headed

    async def _check(self, scope) -> tuple | None:
        """``(status, detail, headers)`` of a refusal, or None to read on."""
        headers = dict(scope["headers"])
        if not host_allowed(headers.get(b"host", b"").decode("latin-1"), self.allowed_hosts):
            return 400, "this service does not answer to that host name (see FEEDBACKLOOP_LABELING_ALLOWED_HOSTS)"
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.limiter.address(address)
        if wait:
            return 429, "too many requests from your address; try again later", _retry(wait)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            return 413, f"the body is larger than {self.max_body} bytes"
        if not scope["path"].startswith("/api/"):
            return None
        locked = self.limiter.locked(address)
        if locked:
            return 429, "too many bad tokens from your address; try again later", _retry(locked)
        who = self.tokens.get(_bearer(headers))
        if who is None:
            locked = self.limiter.failure(address)
            if not locked:
                return 401, "missing or invalid token: send Authorization: Bearer <token>", \
                    {"WWW-Authenticate": "Bearer"}
            log.warning("locked out %s for %.0f s after too many bad tokens", address, locked)
            if self.on_lockout is not None:
                await anyio.to_thread.run_sync(self.on_lockout, address)
            return 429, "too many bad tokens from your address; try again later", _retry(locked)
        wait = self.limiter.token(who.annotator_id)
        if wait:
            return 429, "too many requests with your token; try again later", _retry(wait)
        return None

    async def _read(self, receive, send) -> bytes | None:
        """The whole body, or None once the request is refused (or the client left)."""
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        while True:
            try:
                with anyio.fail_after(max(0.0, deadline - asyncio.get_running_loop().time())):
                    message = await receive()
            except TimeoutError:
                await _refuse(send, 408, f"the body did not arrive within {self.body_timeout:g} s")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _refuse(send, 413, f"the body is larger than {self.max_body} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def http_protocol(header_timeout: float = HEADER_TIMEOUT) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose next request head has
    not arrived whole ``header_timeout`` seconds after the connection opened or
    the previous answer went (``uvicorn.Config(http=...)``)."""

    class HeadTimeout(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # the head is still incomplete (or never came)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadTimeout
