"""Resource limits and storage faults, against real server processes.

Limits: body size and batch size, slow clients that trickle (or never send) a body, storms of
401s and 413s (the server's RSS must stay flat). Faults: a full disk, made real with a file-size
limit (RLIMIT_FSIZE: writes fail with EFBIG, SQLite reports an I/O error) lifted from outside
while the server runs, and a database locked by another process beyond ``busy_timeout_ms``.
Both must give 503 with a clear detail and never a 2xx for an event not stored, and both must
heal by themselves once the fault is gone.
"""

from __future__ import annotations

import base64
import http.client
import json
import resource
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, run_tracker, start_server, write_config

pytestmark = pytest.mark.slow

MAX_BODY = 2000
MAX_BATCH = 5
BODY_TIMEOUT = 2.0
CAP = 65536  # ingest.quarantine_max_bytes, default


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_tracker(*args, timeout=timeout)


def finish(server: Server) -> int:
    """SIGTERM, wait, and close the output pipe; returns the exit code."""
    code = server.terminate()
    time.sleep(0.1)  # tests/server.py's output pump reads to EOF first
    if server.proc.stdout is not None:
        server.proc.stdout.close()
    return code


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(name, sections, preexec=None)`` starts a server; all are stopped at the end."""
    servers: list[Server] = []

    def start(name: str, sections: dict[str, dict[str, Any]], preexec: Any = None) -> Server:
        config = write_config(tmp_path / f"{name}.toml", sections)
        server = start_server(tmp_path / f"{name}.db", config=config, preexec=preexec)
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.proc.poll() is None, "the server died"
        assert finish(server) == 0


def event(call_id: str, n: int = 0, **extra: Any) -> bytes:
    ev = {"eventType": "answer", "callId": call_id, "time": f"2024-01-01T00:00:{n % 60:02d}Z"}
    ev.update(extra)
    return json.dumps(ev).encode()


def rejects_after(client: httpx.Client, after: int) -> list[dict[str, Any]]:
    r = client.get("/rejects", params={"after": after, "limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json()["rejects"])


def last_reject(client: httpx.Client) -> int:
    rows = rejects_after(client, 0)
    while len(rows) == 1000:
        rows = rejects_after(client, rows[-1]["id"])
    return rows[-1]["id"] if rows else 0


def body_of(row: dict[str, Any]) -> bytes:
    text = str(row["body"])
    return base64.b64decode(text) if row["bodyEncoding"] == "base64" else text.encode()


def error_of(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code, body
    return str(body["detail"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def limited(serve: Any) -> Server:
    return serve(
        "limited",
        {
            "ingest": {
                "max_body_bytes": MAX_BODY,
                "max_batch": MAX_BATCH,
                "body_timeout_seconds": BODY_TIMEOUT,
            }
        },
    )


# --------------------------------------------------------------------------------------------
# Body and batch limits


def test_a_body_over_max_body_bytes_is_a_413_and_is_quarantined_up_to_the_cap(serve: Any) -> None:
    server = limited(serve)
    with server.client() as c:
        mark = last_reject(c)
        ok = event("size-ok", pad="p" * (MAX_BODY - 100))
        assert len(ok) <= MAX_BODY
        assert c.post("/callbacks", content=ok).status_code == 200

        declared = event("size-declared", pad="d" * 5000)  # Content-Length says too large
        r = c.post("/callbacks", content=declared)
        assert str(MAX_BODY) in error_of(r, 413, "too_large")
        assert r.headers["connection"] == "close"

        chunked = event("size-chunked", pad="c" * 5000)  # no Content-Length: counted as read

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(chunked), 700):
                yield chunked[i : i + 700]

        r = c.post("/callbacks", content=pieces())
        assert "max_body_bytes" in error_of(r, 413, "too_large")

        huge = b"h" * (CAP * 3)  # far over the quarantine cap
        r = c.post("/callbacks", content=huge)
        error_of(r, 413, "too_large")

        rows = rejects_after(c, mark)
        assert [row["status"] for row in rows] == [413, 413, 413]
        assert body_of(rows[0]) == declared  # below the cap: kept whole
        assert rows[0]["truncated"] is False
        assert body_of(rows[1]) == chunked
        assert rows[1]["truncated"] is False
        assert body_of(rows[2]) == huge[:CAP]
        assert rows[2]["truncated"] is True
        # the connection was closed after each 413; the client simply reconnects
        assert c.post("/callbacks", content=event("size-after")).status_code == 200


def test_a_batch_over_max_batch_is_a_413_and_at_the_limit_is_accepted(serve: Any) -> None:
    server = limited(serve)
    with server.client() as c:
        mark = last_reject(c)
        at_limit = json.dumps([json.loads(event(f"b-{i}")) for i in range(MAX_BATCH)]).encode()
        r = c.post("/callbacks", content=at_limit)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == MAX_BATCH
        over = json.dumps([json.loads(event(f"o-{i}")) for i in range(MAX_BATCH + 1)]).encode()
        r = c.post("/callbacks", content=over)
        detail = error_of(r, 413, "too_large")
        assert "max_batch" in detail
        assert str(MAX_BATCH + 1) in detail
        rows = rejects_after(c, mark)
        assert len(rows) == 1
        assert body_of(rows[0]) == over
        for i in range(MAX_BATCH + 1):  # all or nothing: no element of the refused batch
            assert c.get(f"/calls/o-{i}").status_code == 404


# --------------------------------------------------------------------------------------------
# Slow clients


def _raw_post_head(url: str, length: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /callbacks/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )
    return sock


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        try:
            got = sock.recv(65536)
        except TimeoutError:
            continue
        if not got:
            break
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length and time.monotonic() < deadline:
        got = sock.recv(65536)
        if not got:
            break
        rest += got
    return head + b"\r\n\r\n" + rest


def test_tricklers_do_not_hold_the_writer_and_get_408_with_their_partial_body_quarantined(
    serve: Any,
) -> None:
    server = limited(serve)
    with server.client() as c:
        mark = last_reject(c)
    body = event("trickled", pad="t" * 300)
    tricklers = 6
    sent: list[bytes] = [b""] * tricklers
    answers: list[bytes] = [b""] * tricklers

    def trickle(i: int) -> None:
        sock = _raw_post_head(server.url, len(body))
        sock.settimeout(0.05)
        start = time.monotonic()
        try:
            pos = 0
            while time.monotonic() - start < BODY_TIMEOUT + 3:
                # Look for the answer before sending more (a client that does not is
                # test_a_trickler_that_sends_more_after_its_deadline_still_reads_its_408).
                try:
                    first = sock.recv(65536)
                except TimeoutError:
                    if pos < len(body) - 1:  # never the whole body
                        sock.sendall(body[pos : pos + 3])
                        pos += 3
                        sent[i] = body[:pos]
                    time.sleep(0.15)
                    continue
                answers[i] = first + _read_response(sock, time.monotonic() + 5)
                return
        finally:
            sock.close()

    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def poster(k: int) -> None:
        with server.client(timeout=5.0) as c:
            n = 0
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/callbacks", content=event(f"steady-{k}-{n}", n))
                latencies.append(time.monotonic() - t0)
                if r.status_code != 200:
                    failures.append(r.text)
                n += 1
                time.sleep(0.01)

    threads = [threading.Thread(target=trickle, args=(i,)) for i in range(tricklers)]
    threads += [threading.Thread(target=poster, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads[:tricklers]:
        t.join(BODY_TIMEOUT + 10)
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()

    assert not failures, failures[:3]
    assert len(latencies) > 50, "the steady posters barely got through while bodies trickled"
    assert max(latencies) < 1.0, f"a post took {max(latencies):.2f}s while bodies trickled"
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error":"timeout"' in answer
        assert b"body_timeout_seconds" in answer
    with server.client() as c:
        rows = [row for row in rejects_after(c, mark) if row["path"] == "/callbacks/slow"]
    assert len(rows) == tricklers
    for row in rows:
        assert row["status"] == 408
        got = body_of(row)
        assert 0 < len(got) < len(body)
        assert any(s.startswith(got) for s in sent), got  # what had arrived, as it was sent


def test_a_client_that_sends_headers_and_then_nothing_gets_408(serve: Any) -> None:
    server = limited(serve)
    with server.client() as c:
        mark = last_reject(c)
    sock = _raw_post_head(server.url, 100)
    sock.settimeout(0.2)
    t0 = time.monotonic()
    try:
        answer = _read_response(sock, t0 + BODY_TIMEOUT + 5)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - t0 < BODY_TIMEOUT + 2
    with server.client() as c:
        rows = rejects_after(c, mark)
    assert [(row["status"], row["body"]) for row in rows] == [(408, "")]


def _send_body(sock: socket.socket, size: int) -> int:
    """Send ``size`` body bytes flat out, as a client that writes its body before it reads."""
    chunk = b"x" * 16384
    sent = 0
    while sent < size:
        sent += sock.send(chunk[: size - sent])
    return sent


def test_a_client_still_uploading_an_oversized_body_gets_its_413_not_a_reset(
    serve: Any,
) -> None:
    server = limited(serve)
    size = 8 << 20  # far over max_body_bytes (and the quarantine's cap)
    for _ in range(3):
        sock = _raw_post_head(server.url, size)
        sock.settimeout(5)
        try:
            # The server answers once it has the quarantine's cap; the client goes on sending.
            # Were the connection closed with that unread, the reset would fail these sends
            # and discard the answer before the client reads it.
            assert _send_body(sock, size) == size
            answer = _read_response(sock, time.monotonic() + 5)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"error":"too_large"' in answer
        assert b"connection: close" in answer.lower()


def test_an_oversized_body_announced_with_expect_100_continue_is_refused_unsent(
    serve: Any,
) -> None:
    server = limited(serve)
    with server.client() as c:
        mark = last_reject(c)
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(
            b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        t0 = time.monotonic()
        answer = _read_response(sock, t0 + 5)  # the body is never sent
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # no "100 Continue" first
    assert b"5000000" in answer and b"max_body_bytes" in answer
    assert time.monotonic() - t0 < 1.0
    with server.client() as c:
        rows = rejects_after(c, mark)
    assert [(row["status"], row["body"], row["size"]) for row in rows] == [(413, "", 5000000)]


def test_a_client_that_sends_its_body_without_waiting_for_100_continue_gets_its_413(
    serve: Any,
) -> None:
    server = limited(serve)
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(5):  # http.client sends the body at once, Expect or not (RFC 9110 allows it)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "POST",
                "/callbacks",
                body=b"x" * (8 << 20),
                headers={"Content-Type": "application/json", "Expect": "100-continue"},
            )
            r = conn.getresponse()
            assert r.status == 413
            assert b"max_body_bytes" in r.read()
        finally:
            conn.close()


def test_a_whole_body_just_over_the_limit_is_answered_and_closed_at_once(serve: Any) -> None:
    server = limited(serve)
    sock = _raw_post_head(server.url, MAX_BODY + 100)
    sock.settimeout(5)
    try:
        sock.sendall(b" " * (MAX_BODY + 100))  # all of it: nothing left to linger for
        t0 = time.monotonic()
        answer = _read_response(sock, t0 + 5)
        assert sock.recv(1) == b""  # the server closed
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < 1.0, f"the connection stayed open {elapsed:.2f}s after a complete body"


def test_a_trickler_that_sends_more_after_its_deadline_still_reads_its_408(serve: Any) -> None:
    server = limited(serve)
    head = b'{"eventType":'
    sock = _raw_post_head(server.url, MAX_BODY)
    sock.settimeout(5)
    try:
        sock.sendall(head)
        time.sleep(BODY_TIMEOUT + 1)  # the deadline passes: the server answers 408
        rest = MAX_BODY - len(head)
        for piece in range(10):  # and the client, unaware, goes on trickling the rest
            sock.sendall(b" " * (rest // 10 + (rest % 10 if piece == 9 else 0)))
            time.sleep(0.03)
        answer = _read_response(sock, time.monotonic() + 5)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout_seconds" in answer


# --------------------------------------------------------------------------------------------
# Storms


def _storm(url: str, n: int, threads: int, request: Any) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        with httpx.Client(base_url=url, timeout=10.0) as c:
            mine = [request(c, k * n + i).status_code for i in range(n // threads)]
        with lock:
            statuses.extend(mine)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return statuses


def test_storms_of_401s_and_413s_do_not_grow_the_servers_memory(serve: Any) -> None:
    server = serve(
        "storm",
        {"ingest": {"username": "bw", "password": "s3cret", "max_body_bytes": 100}},
    )
    pid = server.proc.pid
    auth = ("bw", "s3cret")

    def unauthorized(c: httpx.Client, i: int) -> httpx.Response:
        return c.post("/callbacks", content=event(f"nope-{i}"))

    def too_large(c: httpx.Client, i: int) -> httpx.Response:
        return c.post("/callbacks", content=event(f"big-{i}", pad="x" * 60), auth=auth)

    with server.client() as c:
        r = unauthorized(c, 0)
        assert error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Basic realm="tracker"'
        assert c.post("/callbacks", content=event("ok"), auth=auth).status_code == 200

    for name, request, status in (("401", unauthorized, 401), ("413", too_large, 413)):
        assert set(_storm(server.url, 600, 4, request)) == {status}  # warm-up
        before = rss_kib(pid)
        statuses = _storm(server.url, 3000, 4, request)
        after = rss_kib(pid)
        assert set(statuses) == {status}
        assert len(statuses) == 3000
        grown = (after - before) / 1024
        assert grown < 4.0, f"RSS grew by {grown:.1f} MiB over 3000 {name}s"

    with server.client() as c:
        events = c.get("/events", params={"limit": 1000}).json()["events"]
        assert [e["callId"] for e in events] == ["ok"]  # no 401 or 413 was logged as an event
        assert len(rejects_after(c, 0)) == 1000  # every 413 kept in the quarantine (page 1)
        assert c.get("/readyz").status_code == 200


# --------------------------------------------------------------------------------------------
# Storage faults


def _stored(db: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {cid: bytes(body) for cid, body in conn.execute("SELECT call_id, body FROM events")}
    finally:
        conn.close()


def _lift_fsize_limit(pid: int) -> None:
    prlimit = shutil.which("prlimit")
    if prlimit is not None:
        done = subprocess.run(
            [prlimit, f"--pid={pid}", "--fsize=unlimited:unlimited"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_a_full_disk_gives_503_and_no_2xx_and_heals_by_itself_when_space_returns(
    serve: Any,
) -> None:
    limit = 1_500_000

    def small_disk() -> None:
        # soft limit only: raising a hard limit from outside needs CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    server = serve("full", {}, preexec=small_disk)
    accepted: dict[str, bytes] = {}
    refused: dict[str, bytes] = {}
    with server.client() as c:
        for i in range(2000):
            call_id = f"disk-{i}"
            body = event(call_id, i, pad="f" * 600)
            r = c.post("/callbacks", content=body)
            if r.status_code == 200:
                # a 2xx after a 503 is fine when a checkpoint made room (the WAL restarted):
                # what counts is that every 2xx is stored, checked against the file below
                accepted[call_id] = body
                continue
            detail = error_of(r, 503, "unavailable")
            assert "disk" in detail, detail
            assert "nothing was stored" in detail
            refused[call_id] = body
            if len(refused) == 15:
                break
        assert accepted, "the limit left no room for a single event"
        assert len(refused) == 15, "the file-size limit was never reached"
        assert server.proc.poll() is None
        assert c.get("/calls/disk-0").status_code == 200  # reads go on meanwhile

        _lift_fsize_limit(server.proc.pid)

        r = c.post("/callbacks", content=event("disk-healed"))
        assert r.status_code == 200, r.text
        assert c.get("/readyz").status_code == 200
        for body in refused.values():  # they were not stored: new, not duplicates
            r = c.post("/callbacks", content=body)
            assert r.status_code == 200, r.text
            assert r.json()["duplicate"] is False
        for body in list(accepted.values())[:5]:
            assert c.post("/callbacks", content=body).json()["duplicate"] is True

    stored = _stored(server.db)
    for call_id, body in accepted.items():
        assert stored[call_id] == body
    for call_id, body in refused.items():
        assert stored[call_id] == body
    done = run_cli("replay", "--check", "--db", str(server.db))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_database_locked_by_another_process_gives_503_then_recovers(serve: Any) -> None:
    server = serve("locked", {"storage": {"busy_timeout_ms": 300}})
    with server.client() as c:
        assert c.post("/callbacks", content=event("lock-before")).status_code == 200
        other = sqlite3.connect(str(server.db), isolation_level=None, timeout=5)
        try:
            other.execute("BEGIN EXCLUSIVE")
            for i in range(3):
                t0 = time.monotonic()
                r = c.post("/callbacks", content=event(f"lock-during-{i}"))
                assert time.monotonic() - t0 < 3.0
                detail = error_of(r, 503, "unavailable")
                assert "locked" in detail, detail
            assert c.get("/readyz").status_code == 503
            assert c.get("/calls/lock-before").status_code == 200  # WAL: reads go on
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert c.get("/readyz").status_code == 200
        for i in range(3):
            r = c.post("/callbacks", content=event(f"lock-during-{i}"))
            assert r.status_code == 200, r.text
            assert r.json()["duplicate"] is False  # the 503s stored nothing
        assert c.post("/callbacks", content=event("lock-after")).status_code == 200
    stored = _stored(server.db)
    assert set(stored) == {
        "lock-before",
        "lock-during-0",
        "lock-during-1",
        "lock-during-2",
        "lock-after",
    }
