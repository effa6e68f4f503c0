"""The labeling service's door, tried as an attacker would, over real sockets.

The service runs as it does in production: as ``serve-labeling`` in a process
of its own (its memory is measured from outside) or in process on a real
port, over the real broker. Checked: a 50 MB anonymous body is refused unread
and the service's memory does not grow; the 600th bad token from one address
within a minute gets 429 (from the 21st on, in fact) while another address
goes on; every answer carries the security headers; a request head or body
that never completes is cut off; unknown host names are refused; ten parallel
identical submits put one label on Kafka; tokens are refused when weak and
revoked without a restart; the audit log reaches ClickHouse; the terminal
labeler prints no escape sequence it was sent.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers.labeling.guard import HEADERS
from consumers.labeling.ratelimit import Limits, RateLimiter
from consumers.labeling.service import LabelingService
from consumers.labeling.tokens import Tokens, entry
from consumers.terminal import show
from feedbackloop import stack, worker
from dashboards.connection import connect
from schemas import codec

ROOT = Path(__file__).resolve().parent.parent
TOKEN = {who: f"{who}-{secrets.token_urlsafe(32)}" for who in ("ann", "bob", "rev", "adm")}
TOKENS = ",".join(f"{TOKEN[w]}:{w}:{r}" for w, r in
                  (("ann", "annotator"), ("bob", "annotator"), ("rev", "reviewer"), ("adm", "admin")))
MB = 1 << 20


def task(i: int, **extra) -> dict:
    return {"task_id": f"t-{i}", "event_id": f"e-{i}", "item_id": f"item-{i}", "created_ts": 1, "source_ts": 1,
            "kind": "prediction", "reasons": ["uncertain"], "signals": {"margin": 0.04},
            "selection_probability": 0.3, "priority": 1 - i / 1000, "suggested_label": "ham", "confidence": 0.52,
            "label_set": ["ham", "spam"], "features": {"x": float(i)}, "text": None, "predicted_label": "ham",
            "user_label": None, "note": None, "model_name": "prod", "model_version": "7", "shadow_version": 0,
            "policy_version": "p", "context": {}, **extra}


def request(port: int, method: str, path: str, token: str | None = None, body: bytes | dict | None = None,
            source: str = "127.0.0.1", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """``(status, headers, body)`` of one request over a new connection from ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict):
        body, h["Content-Type"] = json.dumps(body).encode(), "application/json"
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def connect_raw(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_head(s: socket.socket) -> tuple[int, str]:
    """The status and the text of the answer waiting on ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data.decode("latin-1")


def closed_after(s: socket.socket, limit: float = 30.0) -> float:
    """Seconds until the server closes ``s`` (what it sends before is read and dropped)."""
    started = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def stream(s: socket.socket, chunk: bytes, total: int = 50 * MB) -> int:
    """Send ``total`` bytes of chunked body on ``s`` until the server closes it; the bytes sent."""
    sent = 0
    try:
        while sent < total:
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    return sent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_topic(settings, topic: str, name: str, expect: int, timeout: float = 20.0, settle: float = 1.5) -> list:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic(topic)])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expect:
            out += [codec.decode(m.value(), (name,))[1] for m in consumer.consume(100, timeout=0.3) if not m.error()]
        out += [codec.decode(m.value(), (name,))[1] for m in consumer.consume(100, timeout=settle) if not m.error()]
    finally:
        consumer.close()
    return out


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fresh(kafka):
    """Settings with topics of their own, and tasks t-0 .. t-9 on ``labeling.tasks``."""
    run = uuid.uuid4().hex[:8]
    settings = kafka.replace(topic_prefix=f"{kafka.topic_prefix}door-{run}.", app_id=f"door-{run}")
    stack.ensure_topics(settings.kafka_config(), settings)
    p = Producer(settings.kafka_config())
    for i in range(10):
        p.produce(settings.topic("labeling.tasks"), codec.encode("LabelingTask", task(i)), key=f"t-{i}".encode())
    assert p.flush(10) == 0
    return settings


@pytest.fixture
def service(fresh, tmp_path):
    """The service in process, on a real port, with one-second head and body timeouts."""
    svc = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3", header_timeout=1.0,
                          body_timeout=1.0, limits=Limits(per_token=(1.0, 100.0))).start()
    try:
        wait_for(lambda: svc.store.counts()["pending"] == 10, what="tasks queued")
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def served(fresh, tmp_path, free_port):
    """``(process, port)`` of ``serve-labeling`` in a process of its own."""
    port, log = free_port(), tmp_path / "service.log"
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=fresh.kafka_bootstrap_servers,
               FEEDBACKLOOP_TOPIC_PREFIX=fresh.topic_prefix, FEEDBACKLOOP_APP_ID=fresh.app_id,
               FEEDBACKLOOP_LABELING_TOKENS=TOKENS, FEEDBACKLOOP_MODEL_VERIFY_KEY=fresh.model_verify_key,
               PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "consumers.labeling.cli", "--port", str(port),
                                "--db", str(tmp_path / "q.sqlite3")], cwd=ROOT, env=env,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def up():
        assert process.poll() is None, log.read_text()
        try:
            return request(port, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, "the service to answer")
        yield process, port
    finally:
        process.terminate()
        process.wait(10)


# --------------------------------------------------------------------------- the checks


@pytest.mark.kafka
def test_a_50_mb_anonymous_body_is_refused_unread(served):
    process, port = served
    for _ in range(3):  # warm up: the first requests load what the service needs
        request(port, "POST", "/api/tasks/next", body=b"{}", source="127.0.0.3")
    before = rss_mb(process.pid)

    # announced: refused on the head alone, before a byte of the body is sent
    s = connect_raw(port, "127.0.0.3")
    s.sendall(f"POST /api/tasks/t-1/label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              f"Content-Length: {50 * MB}\r\n\r\n".encode())
    status, answer = read_head(s)
    assert status == 413 and "connection: close" in answer.lower()
    accepted, chunk = 0, b"x" * MB
    try:
        for _ in range(50):
            s.sendall(chunk)
            accepted += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert accepted < 50 * MB, "the connection was closed instead of reading the body"

    # not announced (chunked) and anonymous: 401 on the head, the body is never read
    head = "POST /api/tasks/t-1/label HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    s = connect_raw(port, "127.0.0.3")
    s.sendall(f"{head}\r\n".encode())
    assert read_head(s)[0] == 401
    streamed = stream(s, chunk)
    assert streamed < 50 * MB

    # chunked with a valid token: refused once past the limit, and the connection is closed
    s = connect_raw(port, "127.0.0.3")
    s.sendall(f"{head}Authorization: Bearer {TOKEN['ann']}\r\n\r\n".encode())
    s.sendall(b"".join(f"{64 * 1024:x}\r\n".encode() + b"y" * 64 * 1024 + b"\r\n" for _ in range(2)))
    assert read_head(s)[0] == 413
    streamed = max(streamed, stream(s, chunk))
    assert streamed < 50 * MB

    time.sleep(0.5)
    grew = rss_mb(process.pid) - before
    print(f"\n50 MB bodies: 413 (announced) or 401 (anonymous, chunked) on the head, then the connection "
          f"closed after {max(accepted, streamed) / MB:.0f} MB at most went into socket buffers; the service's "
          f"memory grew {grew:+.1f} MB ({before:.0f} MB before)")
    assert grew < 10


@pytest.mark.kafka
def test_the_600th_bad_token_from_one_address_gets_429(served):
    _, port = served
    statuses, started = [], time.monotonic()
    for _ in range(600):
        status, headers, _ = request(port, "GET", "/api/me", token=secrets.token_urlsafe(32), source="127.0.0.4")
        statuses.append(status)
        assert ("retry-after" in headers) == (status == 429)
    elapsed = time.monotonic() - started
    first = statuses.index(429) + 1
    print(f"\n600 bad tokens from one address in {elapsed:.1f} s: 401 for the first {first - 1}, 429 from "
          f"number {first} on ({statuses.count(429)} refused)")
    assert elapsed < 60 and statuses[-1] == 429
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    # a locked-out address gets 429 whatever it sends, so a right guess looks like a wrong one ...
    assert request(port, "GET", "/api/me", token=TOKEN["ann"], source="127.0.0.4")[0] == 429
    # ... while annotators elsewhere work on, at any pace a person keeps
    codes = [request(port, "GET", "/api/me", token=TOKEN["ann"], source="127.0.0.5")[0] for _ in range(50)]
    assert codes == [200] * 50


@pytest.mark.kafka
def test_every_response_carries_the_security_headers(service):
    port, ann, rev = service.port, TOKEN["ann"], TOKEN["rev"]
    h = {"Host": f"localhost:{port}"}
    cases = [
        ("GET", "/", None, None, h, 200), ("GET", "/ui/app.js", None, None, h, 200),
        ("GET", "/ui/style.css", None, None, h, 200), ("GET", "/ui/nothing.js", None, None, h, 404),
        ("GET", "/openapi.json", None, None, h, 200), ("GET", "/healthz", None, None, h, 200),
        ("PUT", "/healthz", None, None, h, 405), ("GET", "/docs", None, None, h, 404),
        ("GET", "/nope", None, None, h, 404), ("GET", "/api/me", None, None, h, 401),
        ("GET", "/api/me", ann, None, h, 200), ("GET", "/api/review/flagged", ann, None, h, 403),
        ("POST", "/api/tasks/nope/skip", ann, None, h, 404), ("POST", "/api/tasks/next", ann, None, h, 200),
        ("POST", "/api/tasks/t-0/label", ann, b"{not json", {**h, "Content-Type": "application/json"}, 422),
        ("POST", "/api/tasks/t-0/label", ann, b"x" * (65 * 1024), h, 413),
        ("POST", "/api/tasks/next", rev, None, h, 200), ("POST", "/api/tasks/next", TOKEN["bob"], None, h, 200),
        ("GET", "/api/me", ann, None, {"Host": "attacker.example"}, 400),
    ]
    seen = set()
    for method, path, token, body, headers, expected in cases:
        status, got, _ = request(port, method, path, token, body, headers=headers)
        assert status == expected, (method, path, status)
        for name, value in HEADERS.items():
            assert got.get(name) == value, (method, path, status, name)
        page = path == "/" or path.startswith("/ui/")
        assert got["cache-control"] == ("no-cache" if page else "no-store"), (path, got["cache-control"])
        seen.add(status)
    for _ in range(200):  # past the token's budget (100 at once here): 429, with the headers too
        status, got, _ = request(port, "GET", "/api/me", ann)
        if status == 429:
            break
    assert status == 429 and all(got.get(k) == v for k, v in HEADERS.items()) and "retry-after" in got
    assert seen | {429} == {200, 400, 401, 403, 404, 405, 413, 422, 429}
    assert "server" not in got, "the server does not say what it runs"


@pytest.mark.kafka
def test_a_request_that_never_completes_is_cut_off(service):
    port = service.port
    s = connect_raw(port)  # connects, sends nothing
    silent = closed_after(s)
    assert 0.8 < silent < 3

    s = connect_raw(port)  # half a head
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    half = closed_after(s)
    assert 0.8 < half < 3

    s = connect_raw(port)  # a head dripped a byte at a time: the clock is not reset by each byte
    started = time.monotonic()
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            s.send(bytes([byte]))
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert time.monotonic() - started + closed_after(s) < 3

    s = connect_raw(port)  # one full request answered, then the next head never completes
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_head(s)[0] == 200
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert 0.8 < closed_after(s) < 3

    s = connect_raw(port)  # a body promised and never sent: 408, and the connection is closed
    s.sendall(f"POST /api/tasks/next HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN['ann']}\r\n"
              "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"".encode())
    started = time.monotonic()
    status, answer = read_head(s)
    body = time.monotonic() - started
    assert status == 408 and 0.8 < body < 3
    assert closed_after(s) < 1
    print(f"\nwith 1 s timeouts: a silent connection closed after {silent:.2f} s, half a head after {half:.2f} s, "
          f"a promised body answered 408 after {body:.2f} s")

    s = connect_raw(port)  # the same without a token: 401 at once, the body is not waited for
    s.sendall(b"POST /api/tasks/next HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()
    assert read_head(s)[0] == 401 and time.monotonic() - started < 0.5
    s.close()
    assert service.store.counts()["leased"] == 0, "no refused request leased a task"


@pytest.mark.kafka
def test_host_names_are_checked(fresh, tmp_path):
    svc = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3",
                          allowed_hosts=["labels.example.com"]).start()
    try:
        port = svc.port
        allowed = ["127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:8000", "labels.example.com",
                   f"{socket.gethostname()}:{port}"]
        refused = ["attacker.example", f"attacker.example:{port}", "labels.example.com.attacker.example", ""]
        assert [request(port, "GET", "/healthz", headers={"Host": h})[0] for h in allowed] == [200] * len(allowed)
        assert [request(port, "GET", "/healthz", headers={"Host": h})[0] for h in refused] == [400] * len(refused)
    finally:
        svc.stop()


@pytest.mark.kafka
def test_ten_parallel_identical_submits_put_one_label_on_kafka(service, fresh):
    port, tasks = service.port, 5
    answers = []
    for _ in range(tasks):
        status, _, body = request(port, "POST", "/api/tasks/next", TOKEN["ann"])
        task_id = json.loads(body)["task_id"]
        start = threading.Barrier(10)

        def submit():
            start.wait()
            answers.append(request(port, "POST", f"/api/tasks/{task_id}/label", TOKEN["ann"], {"label": "spam"}))

        threads = [threading.Thread(target=submit) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert [a[0] for a in answers] == [200] * 10 * tasks
    outs = [json.loads(a[2]) for a in answers]
    assert sum(not o["duplicate"] for o in outs) == tasks, "one submit per task is the first"
    labels = read_topic(fresh, "labels", "Label", expect=tasks, settle=2.0)
    print(f"\n{10 * tasks} submits, 10 at once for each of {tasks} tasks: {len(labels)} labels on Kafka")
    assert sorted(l["task_id"] for l in labels) == sorted({o["task_id"] for o in outs})


# --------------------------------------------------------------------------- tokens


def test_weak_tokens_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"token entry 1 \(annotator 'adm'\): about 49 bits of entropy, 128"):
        Tokens.parse("s3cret-1:adm:admin")  # the 8-character admin token once accepted
    with pytest.raises(ValueError, match="unknown role"):
        Tokens.parse(f"{secrets.token_urlsafe(32)}:erin:boss")
    with pytest.raises(ValueError, match="128 or more"):
        Tokens().add("correct-horse", "ann")
    env = dict(os.environ, FEEDBACKLOOP_LABELING_TOKENS="s3cret-1:adm:admin", PYTHONPATH=str(ROOT),
               FEEDBACKLOOP_STATE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "consumers.labeling.cli"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "about 49 bits of entropy" in done.stderr
    assert "s3cret-1" not in done.stderr, "the error does not repeat the token"


def test_the_token_file_holds_digests_and_is_read_again(tmp_path, caplog):
    now = [0.0]
    ann, rev = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    path = tmp_path / "tokens"
    path.write_text(f"# team\n{entry(ann, 'ann')}\n{rev}:rev:reviewer\n")
    both = Tokens.from_env({"FEEDBACKLOOP_LABELING_TOKENS_FILE": str(path),
                            "FEEDBACKLOOP_LABELING_TOKENS": f"{TOKEN['adm']}:adm:admin"})
    assert len(both) == 3 and both.get(TOKEN["adm"]) == ("adm", "admin") and both.get(rev) == ("rev", "reviewer")
    tokens = Tokens(path, clock=lambda: now[0])
    tokens.add(TOKEN["adm"], "adm", "admin")
    assert ann not in path.read_text(), "the file holds the digest, not the token"
    assert tokens.get(ann) == ("ann", "annotator") and tokens.get(rev) == ("rev", "reviewer")
    path.write_text(f"{entry(ann, 'ann')}\n")  # rev revoked
    assert tokens.get(rev) == ("rev", "reviewer"), "looked at once a second, not at every request"
    now[0] = 1.0
    assert tokens.get(rev) is None and tokens.get(ann) == ("ann", "annotator")
    path.write_text(f"{entry(ann, 'ann')}\nweak:eve:admin\n")  # a mistake revokes the file's tokens
    now[0] = 2.0
    assert tokens.get(ann) is None and tokens.get(TOKEN["adm"]) == ("adm", "admin")
    assert "refused until it is fixed" in caplog.text and "weak" not in caplog.text
    path.write_text(f"{entry(ann, 'ann')}\n")
    now[0] = 3.0
    assert tokens.get(ann) == ("ann", "annotator")


@pytest.mark.kafka
def test_a_token_is_revoked_without_a_restart(fresh, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN['ann']}:ann:annotator\n{TOKEN['bob']}:bob:annotator\n")
    svc = LabelingService(fresh, Tokens(path), port=0, db=tmp_path / "q.sqlite3").start()
    try:
        assert request(svc.port, "GET", "/api/me", TOKEN["bob"])[0] == 200
        path.write_text(f"{TOKEN['ann']}:ann:annotator\n")
        time.sleep(1.1)
        assert request(svc.port, "GET", "/api/me", TOKEN["bob"])[0] == 401
        assert request(svc.port, "GET", "/api/me", TOKEN["ann"])[0] == 200
    finally:
        svc.stop()


# --------------------------------------------------------------------------- rate limits


def test_people_are_never_throttled_and_floods_are():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    throttled = 0
    for second in range(8 * 3600):  # a working day: an annotator at one request a second ...
        now[0] = float(second)
        throttled += limiter.token("ann") > 0
        for person in range(30):  # ... among 30 behind one office address
            throttled += limiter.address("10.1.1.1") > 0
    assert throttled == 0
    now[0] += 1
    flood = [limiter.address("10.6.6.6") for _ in range(2000)]
    assert flood.count(0.0) == 500 and flood[-1] > 0, "a burst of 500, then 429"
    used = [limiter.token("bot") for _ in range(200)]
    assert used.count(0.0) == 100
    tables = RateLimiter(Limits(max_keys=1000), clock=lambda: now[0])
    for i in range(100_000):  # a scan from many addresses keeps a bounded table
        tables.failure(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}")
    assert len(tables._failures._level) <= 1000


# --------------------------------------------------------------------------- the audit log


@pytest.mark.kafka
def test_the_audit_log_says_who_did_what_from_where_and_lands_in_clickhouse(fresh, tmp_path, clickhouse_dsn):
    svc = LabelingService(fresh, Tokens.parse(TOKENS), port=0, db=tmp_path / "q.sqlite3",
                          limits=Limits(failures=(1 / 60, 2.0))).start()
    try:
        port, ann, rev, adm = svc.port, TOKEN["ann"], TOKEN["rev"], TOKEN["adm"]
        wait_for(lambda: svc.store.counts()["pending"] == 10, what="tasks queued")
        first = json.loads(request(port, "POST", "/api/tasks/next", ann, source="127.0.0.7")[2])["task_id"]
        assert request(port, "POST", f"/api/tasks/{first}/label", ann, {"label": "spam"}, "127.0.0.7")[0] == 200
        assert request(port, "POST", f"/api/tasks/{first}/label", ann, {"label": "spam"}, "127.0.0.7")[0] == 200
        second = json.loads(request(port, "POST", "/api/tasks/next", ann, source="127.0.0.7")[2])["task_id"]
        assert request(port, "POST", f"/api/tasks/{second}/skip", ann, source="127.0.0.7")[0] == 200
        third = json.loads(request(port, "POST", "/api/tasks/next", ann, source="127.0.0.7")[2])["task_id"]
        assert request(port, "POST", f"/api/tasks/{third}/flag", ann, {"note": "both?"}, "127.0.0.7")[0] == 200
        assert request(port, "POST", f"/api/review/{third}/label", rev, {"label": "ham"}, "127.0.0.8")[0] == 200
        assert request(port, "POST", f"/api/admin/tasks/{second}/requeue", adm, {}, "127.0.0.9")[0] == 200
        assert request(port, "POST", "/api/tasks/nope/skip", ann, source="127.0.0.7")[0] == 404  # not audited
        for _ in range(3):
            request(port, "GET", "/api/me", secrets.token_urlsafe(32), source="127.0.0.10")
        expected = [("lease", "ann", "127.0.0.7", first, ""), ("label", "ann", "127.0.0.7", first, "spam"),
                    ("lease", "ann", "127.0.0.7", second, ""), ("skip", "ann", "127.0.0.7", second, ""),
                    ("lease", "ann", "127.0.0.7", third, ""), ("flag", "ann", "127.0.0.7", third, ""),
                    ("resolve", "rev", "127.0.0.8", third, "ham"), ("requeue", "adm", "127.0.0.9", second, "pending"),
                    ("lockout", "", "127.0.0.10", None, "too many bad tokens")]
        events = read_topic(fresh, "audit", "AuditEvent", expect=len(expected))
        assert [(e["action"], e["annotator_id"], e["client"], e["task_id"], e["detail"]) for e in events] == expected
        assert all(e["ts"] > time.time() * 1000 - 60_000 and e["service"].endswith(f":{os.getpid()}")
                   for e in events)
        wait_for(lambda: svc.store.unsent_audit() == [], what="the store to drop what Kafka confirmed")
    finally:
        svc.stop()

    # the worker's audit agent writes them to ClickHouse: one row each, however often delivered
    p = Producer(fresh.kafka_config())
    for e in events:  # delivered a second time
        p.produce(fresh.topic("audit"), codec.encode("AuditEvent", e))
    assert p.flush(10) == 0
    settings = fresh.replace(state_dir=str(tmp_path / "worker"), clickhouse_dsn=clickhouse_dsn)
    process = worker.spawn(settings, tmp_path / "worker.log")
    try:
        audit_log = TopicPartition(fresh.topic("audit"), 0)
        group = Consumer({**fresh.kafka_config(), "group.id": settings.app_id})
        try:
            wait_for(lambda: process.poll() is None and group.committed([audit_log], timeout=5)[0].offset
                     == 2 * len(events), 120, "the worker to take the audit events")
        finally:
            group.close()
    finally:
        assert worker.stop(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    client = connect(clickhouse_dsn)
    for final in ("FINAL", ""):
        rows = client.query(f"SELECT action, annotator_id, client, task_id, detail FROM audit_log {final} "
                            "ORDER BY ts, event_id").result_rows
        assert sorted(rows, key=str) == sorted([tuple(e) for e in expected], key=str), final


# --------------------------------------------------------------------------- the terminal labeler


def test_the_terminal_labeler_prints_no_escape_sequence():
    hostile = task(1, text="Nice offer\x1b[2J\x1b]0;owned\x07\nsecond line\r\x1b[1A> label sent",
                   item_id="item\x1b[31m", label_set=["ham\x1b[8m", "spam"], features={"x\x1b[K": 1.0},
                   reasons=["uncertain", "\x9b31mC1 too\u202eeliF"])
    out = io.StringIO()
    show(hostile, out=out)
    text = out.getvalue()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), repr(text)
    assert "Nice offer\\x1b[2J\\x1b]0;owned\\x07" in text and "\n  second line\\r\\x1b[1A> label sent" in text
    assert "item\\x1b[31m" in text and "[1] ham\\x1b[8m" in text and "\\x9b31mC1 too\\u202eeliF" in text
