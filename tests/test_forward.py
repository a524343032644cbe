"""Record-and-forward: a real ``tracker serve`` in front of a real application on loopback.

The application is a small Starlette app served by uvicorn in a thread of the test process; it
records every request it receives and answers according to the path it is called on.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.server import Server, running, write_config
from tracker.app import create_app
from tracker.config import Forward, Settings, Storage, load_settings
from tracker.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

BXML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Response>\n"
    b'  <SpeakSentence voice="julie">Thank you for calling, caf\xc3\xa9 &amp; co.</SpeakSentence>\n'
    b'  <Gather gatherUrl="/gather" maxDigits="1" />\n'
    b"</Response>\n"
)
BIG = bytes(range(256)) * 8192  # 2 MiB, streamed back in chunks


# --------------------------------------------------------------------------------------------
# The application behind the tracker


@dataclass
class Seen:
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: dict[str, str]
    body: bytes


class Upstream:
    """The application: answers by path, remembers every request."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.url = ""
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT"])]
        )

    def seen(self, marker: str) -> list[Seen]:
        """The requests whose body or query string mention ``marker`` (a unique call id)."""
        m = marker.encode()
        with self.lock:
            return [r for r in self.requests if m in r.body or m in r.query]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(
            request.method,
            request.url.path,
            request.scope["raw_path"],
            request.scope["query_string"],
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        with self.lock:
            self.requests.append(seen)
        path = request.url.path
        if path.endswith("/initiate"):
            return Response(BXML, 200, media_type="application/xml")
        if path.endswith("/disconnect"):
            return Response(status_code=204)
        if path.endswith("/slow"):
            await asyncio.sleep(3.0)
            return Response(b"too late", 200, media_type="text/plain")
        if path.endswith("/echo"):
            await asyncio.sleep(random.uniform(0, 0.05))  # answers finish out of order
            call_id = json.loads(body)["callId"]
            return JSONResponse(
                {"callId": call_id, "seq": seen.headers.get("x-tracker-seq")},
                headers={"X-Echo": call_id},
            )
        if path.endswith("/big"):

            async def chunks() -> Any:
                for i in range(0, len(BIG), 65536):
                    yield BIG[i : i + 65536]

            return StreamingResponse(chunks(), media_type="application/octet-stream")
        if path.endswith("/cookie"):
            r = Response(b"", 204)
            r.set_cookie("session", "secret-of-one-caller")
            return r
        if "/status/" in path:
            status = int(path.rsplit("/", 1)[1])
            content_type = request.query_params.get("type", "text/plain; charset=iso-8859-1")
            return Response(
                f"answer {status}".encode(),
                status,
                headers={"Content-Type": content_type, "X-App": "yes"},
            )
        return JSONResponse({"path": path, "method": request.method})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app.app,
        log_level="critical",
        lifespan="off",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the upstream application did not start"
        time.sleep(0.01)
    app.url = f"http://127.0.0.1:{port}"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def forwarding_config(tmp: Path, url: str, name: str, **sections: dict[str, Any]) -> Path:
    """A config file whose ``[forward] url`` is ``url`` (timeout 5 s unless given)."""
    forward = {"url": url, "timeout_seconds": 5.0, **sections.pop("forward", {})}
    return write_config(tmp / f"{name}.toml", {"forward": forward, **sections})


@pytest.fixture(scope="module")
def tracker(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A tracker forwarding to ``{upstream}/hooks``."""
    tmp = tmp_path_factory.mktemp("forward")
    config = forwarding_config(tmp, upstream.url + "/hooks", "main")
    with running(tmp / "tracker.db", config=config) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A tracker with ingest basic auth and a small body limit, forwarding to ``{upstream}``."""
    tmp = tmp_path_factory.mktemp("guarded")
    config = forwarding_config(
        tmp,
        upstream.url,
        "guarded",
        ingest={"username": "bw", "password": "s3cret", "max_body_bytes": 4096},
    )
    with running(tmp / "tracker.db", config=config) as server:
        yield server


_serial = iter(range(1, 1_000_000))


def call_id(prefix: str = "c") -> str:
    return f"{prefix}-{next(_serial)}-{random.getrandbits(32):08x}"


def initiate(cid: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": "initiate",
        "eventTime": "2024-03-01T12:00:00.000Z",
        "accountId": "9900000",
        "applicationId": "04e88489-df02-4e34-a0ee-27a91849555f",
        "from": "+15554443333",
        "to": "+15553334444",
        "direction": "inbound",
        "callId": cid,
        "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/9900000/calls/{cid}",
        "startTime": "2024-03-01T12:00:00.000Z",
        **extra,
    }


def disconnect(cid: str) -> dict[str, Any]:
    return {
        **initiate(cid),
        "eventType": "disconnect",
        "eventTime": "2024-03-01T12:01:00.000Z",
        "endTime": "2024-03-01T12:01:00.000Z",
        "cause": "hangup",
    }


# --------------------------------------------------------------------------------------------
# Answers come back unchanged


def test_the_bxml_answer_to_an_initiate_is_relayed_byte_for_byte(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with tracker.client() as c:
        r = c.post("/callbacks/voice/initiate", json=initiate(cid))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/xml"
        assert r.content == BXML
        assert c.get(f"/calls/{cid}").json()["status"] == "started"
    [seen] = upstream.seen(cid)
    assert seen.method == "POST"
    assert seen.path == "/hooks/voice/initiate"
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == initiate(cid)


def test_a_disconnect_gets_the_applications_204(tracker: Server, upstream: Upstream) -> None:
    cid = call_id()
    with tracker.client() as c:
        r = c.post("/callbacks/voice/disconnect", json=disconnect(cid))
        assert r.status_code == 204
        assert r.content == b""
        assert c.get(f"/calls/{cid}").json()["status"] == "ended"
    assert len(upstream.seen(cid)) == 1


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (200, "text/plain; charset=iso-8859-1"),
        (201, "application/vnd.example+json"),
        (302, "text/html; charset=utf-8"),
        (404, "text/plain"),
        (500, "application/problem+json"),
        (503, "text/plain; charset=utf-8"),
    ],
)
def test_status_codes_content_types_and_headers_of_the_answer_are_preserved(
    tracker: Server, upstream: Upstream, status: int, content_type: str
) -> None:
    cid = call_id()
    with tracker.client() as c:
        r = c.post(
            f"/callbacks/status/{status}",
            params={"type": content_type},
            json=initiate(cid),
        )
    assert r.status_code == status
    assert r.headers["content-type"] == content_type
    assert r.headers["x-app"] == "yes"
    assert r.content == f"answer {status}".encode()
    assert r.headers.get_list("server") == ["uvicorn"]  # the tracker's own, not a second one


def test_a_large_answer_is_streamed_back_whole(tracker: Server, upstream: Upstream) -> None:
    with tracker.client() as c:
        r = c.post("/callbacks/big", json=initiate(call_id()))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == BIG


# --------------------------------------------------------------------------------------------
# What the application receives


def test_the_application_sees_the_seq_and_duplicate_headers(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with tracker.client() as c:
        c.post("/callbacks/first", json=initiate(cid))
        c.post("/callbacks/again", content=json.dumps(initiate(cid), indent=2))
    first, again = upstream.seen(cid)
    seq = first.headers["x-tracker-seq"]
    assert int(seq) > 0
    assert first.headers["x-tracker-duplicate"] == "false"
    assert again.headers["x-tracker-seq"] == seq
    assert again.headers["x-tracker-duplicate"] == "true"  # a duplicate is still forwarded


def test_a_batch_is_forwarded_with_comma_separated_seqs_and_duplicates(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with tracker.client() as c:
        one = c.post("/callbacks/single", json=initiate(cid))
        assert one.status_code == 200
        batch = [initiate(cid), disconnect(cid)]
        r = c.post("/callbacks/batch", json=batch)
        assert r.status_code == 200
    seen = upstream.seen(cid)[-1]
    seqs = seen.headers["x-tracker-seq"].split(",")
    assert seqs[0] == upstream.seen(cid)[0].headers["x-tracker-seq"]
    assert int(seqs[1]) > int(seqs[0])
    assert seen.headers["x-tracker-duplicate"] == "true,false"
    assert json.loads(seen.body) == batch


def test_method_path_and_query_string_are_forwarded_unchanged(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    query = f"eventType=answer&callId={quote(cid)}&time=2012-11-14T15%3A55%3A04Z&tag=a+b%2Fc"
    with tracker.client() as c:
        r = c.get(f"/callbacks/v1/answer%2Fx?{query}")
        assert r.status_code == 200
        assert c.get(f"/calls/{cid}").json()["tag"] == "a b/c"
    [seen] = upstream.seen(cid)
    assert seen.method == "GET"
    assert seen.query == query.encode()
    assert seen.body == b""
    assert seen.raw_path == b"/hooks/v1/answer%2Fx"  # still percent-encoded
    assert "x-tracker-seq" in seen.headers


def test_a_form_body_is_forwarded_with_its_content_type(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    form = f"eventType=answer&callId={cid}&time=2012-11-14T15:55:04Z"
    with tracker.client() as c:
        r = c.post(
            "/callbacks",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
    [seen] = upstream.seen(cid)
    assert seen.path == "/hooks"
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.body == form.encode()


def test_tracker_headers_sent_by_the_client_are_not_passed_on(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with tracker.client() as c:
        r = c.post(
            "/callbacks",
            content=b'{"callId": "%s", not json' % cid.encode(),
            headers={"X-Tracker-Seq": "999", "Content-Type": "application/json"},
        )
    assert r.status_code == 200  # refused (400) by the tracker, answered by the application
    [seen] = upstream.seen(cid)
    assert "x-tracker-seq" not in seen.headers


def test_the_proxy_adds_no_headers_and_keeps_no_cookies_of_its_own(
    tracker: Server, upstream: Upstream
) -> None:
    first, second = call_id(), call_id()
    with tracker.client() as c:
        r = c.post("/callbacks/cookie", json=initiate(first))
        assert r.status_code == 204
        assert "secret-of-one-caller" in r.headers["set-cookie"]  # relayed to the caller
    host, port = tracker.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(initiate(second)).encode()
    conn.putrequest("POST", "/callbacks/plain", skip_accept_encoding=True)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    assert conn.getresponse().status == 200
    conn.close()
    [seen] = upstream.seen(second)
    assert "cookie" not in seen.headers  # the first caller's cookie went nowhere else
    assert "accept-encoding" not in seen.headers  # nor did the proxy ask for compression
    assert "user-agent" not in seen.headers
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["x-forwarded-host"] == f"{host}:{port}"
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["host"] == upstream.url.removeprefix("http://")


def test_a_compressed_answer_is_relayed_as_the_application_sent_it(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with tracker.client() as c:
        r = c.post("/callbacks/big", json=initiate(cid), headers={"Accept-Encoding": "identity"})
    assert r.content == BIG
    assert upstream.seen(cid)[0].headers["accept-encoding"] == "identity"


# --------------------------------------------------------------------------------------------
# Authentication


def test_the_tracker_challenges_itself_and_forwards_only_authenticated_callbacks(
    guarded: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with guarded.client() as c:
        r = c.post("/callbacks/voice/initiate", json=initiate(cid))
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="tracker"'
        assert upstream.seen(cid) == []
        r = c.post("/callbacks/voice/initiate", json=initiate(cid), auth=("bw", "s3cret"))
        assert r.status_code == 200
        assert r.content == BXML
    [seen] = upstream.seen(cid)
    assert "authorization" not in seen.headers


def test_authorization_is_passed_on_when_pass_authorization_is_set(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = forwarding_config(
        tmp_path,
        upstream.url,
        "pass",
        forward={"pass_authorization": True},
        ingest={"username": "bw", "password": "s3cret"},
    )
    cid = call_id()
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        r = c.post("/callbacks/voice/disconnect", json=disconnect(cid), auth=("bw", "s3cret"))
        assert r.status_code == 204
    [seen] = upstream.seen(cid)
    assert seen.headers["authorization"] == httpx.BasicAuth("bw", "s3cret")._auth_header


def test_an_oversized_body_is_answered_by_the_tracker_and_not_forwarded(
    guarded: Server, upstream: Upstream
) -> None:
    cid = call_id()
    with guarded.client(auth=("bw", "s3cret")) as c:
        r = c.post("/callbacks", json=initiate(cid, padding="x" * 5000))
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"
    assert upstream.seen(cid) == []


# --------------------------------------------------------------------------------------------
# Failures


def test_an_unreachable_application_gives_502_and_the_event_stays_recorded(
    tmp_path: Path,
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    config = forwarding_config(tmp_path, f"http://127.0.0.1:{port}/app", "down")
    cid = call_id()
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        r = c.post("/callbacks", json=initiate(cid))
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "bad_gateway"
        assert f"127.0.0.1:{port}" in body["detail"]
        assert "recorded" in body["detail"]
        assert c.get(f"/calls/{cid}").json()["status"] == "started"
        retry = c.post("/callbacks", json=initiate(cid))  # Bandwidth retries: a duplicate
        assert retry.status_code == 502
        assert len(c.get(f"/calls/{cid}/events").json()["events"]) == 1
        metrics = c.get("/metrics").text
    assert 'tracker_forward_errors_total{kind="connect"} 2.0' in metrics


def test_a_slow_application_gives_504_within_the_timeout_and_the_event_stays_recorded(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = forwarding_config(tmp_path, upstream.url, "slow", forward={"timeout_seconds": 0.5})
    cid = call_id()
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        t0 = time.monotonic()
        r = c.post("/callbacks/slow", json=initiate(cid))
        elapsed = time.monotonic() - t0
        assert r.status_code == 504
        assert r.json()["error"] == "gateway_timeout"
        assert 0.45 <= elapsed < 1.5
        assert c.get(f"/calls/{cid}").json()["callId"] == cid
        assert c.post("/callbacks/voice/disconnect", json=disconnect(cid)).status_code == 204
        metrics = c.get("/metrics").text
    assert 'tracker_forward_errors_total{kind="timeout"} 1.0' in metrics


class BreakingApplication(socketserver.ThreadingTCPServer):
    """An application that declares a body and then hangs up before sending all of it."""

    daemon_threads = True
    allow_reuse_address = True

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                head += chunk
            declared, sent = (100, 10) if b" /short " in head else (1_000_000, 200_000)
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\n"
                b"content-length: %d\r\n\r\n" % declared + b"x" * sent
            )

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)


def test_an_answer_that_breaks_off_gives_502_or_an_aborted_connection_never_a_short_body(
    tmp_path: Path,
) -> None:
    app = BreakingApplication()
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{app.server_address[1]}"
    try:
        config = forwarding_config(tmp_path, url, "breaking")
        with running(tmp_path / "t.db", config=config) as server, server.client() as c:
            short = c.post("/callbacks/short", json=initiate(call_id()))
            assert short.status_code == 502  # nothing was sent yet: a clean error
            assert short.json()["error"] == "bad_gateway"
            long_id = call_id()
            with pytest.raises(httpx.RemoteProtocolError):
                c.post("/callbacks/long", json=initiate(long_id))  # streamed: cut off
            assert c.get(f"/calls/{long_id}").status_code == 200  # recorded all the same
            metrics = c.get("/metrics").text
    finally:
        app.shutdown()
        app.server_close()
        thread.join(5)
    assert 'tracker_forward_errors_total{kind="protocol"} 1.0' in metrics
    assert 'tracker_forward_errors_total{kind="aborted"} 1.0' in metrics


def test_a_refused_body_is_still_forwarded_and_quarantined(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id()
    bad = {**initiate(cid), "eventType": "disconnect"}
    del bad["callId"]
    bad["note"] = cid  # so the upstream record can be found
    with tracker.client() as c:
        r = c.post("/callbacks/voice/disconnect", json=bad)
        assert r.status_code == 204  # the application's answer
        assert c.get(f"/calls/{cid}").status_code == 404
        rejects = c.get("/rejects", params={"limit": 1000}).json()["rejects"]
    [seen] = upstream.seen(cid)
    assert "x-tracker-seq" not in seen.headers
    assert "x-tracker-duplicate" not in seen.headers
    assert json.loads(seen.body) == bad
    [reject] = [x for x in rejects if cid in x["body"]]
    assert reject["error"] == "invalid_event"
    assert reject["path"] == "/callbacks/voice/disconnect"


def test_concurrent_callbacks_each_get_their_own_answer(
    tracker: Server, upstream: Upstream
) -> None:
    ids = [call_id("conc") for _ in range(20)]
    barrier = threading.Barrier(len(ids))

    def post(cid: str) -> httpx.Response:
        with tracker.client() as c:
            barrier.wait()
            return c.post("/callbacks/echo", json=initiate(cid))

    with ThreadPoolExecutor(len(ids)) as pool:
        answers = list(pool.map(post, ids))
    seqs = set()
    for cid, r in zip(ids, answers, strict=True):
        assert r.status_code == 200
        assert r.json()["callId"] == cid
        assert r.headers["x-echo"] == cid
        seqs.add(r.json()["seq"])
    assert len(seqs) == len(ids)


def test_the_proxy_benchmark_runs_in_smoke_mode() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_proxy.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "p50" in proc.stdout


@pytest.mark.parametrize("url", ["ftp://example.com/hooks", "localhost:3000", "http://"])
def test_a_forward_url_that_is_not_http_fails_startup_before_storage_is_opened(
    tmp_path: Path, url: str
) -> None:
    db = tmp_path / "t.db"
    app = create_app(Settings(storage=Storage(path=str(db)), forward=Forward(url=url)))
    with pytest.raises(ConfigError, match=r"forward\.url"), TestClient(app):
        pass
    assert app.forwarder is None
    assert app.writer is None
    assert not db.exists()


# --------------------------------------------------------------------------------------------
# Hardening: what never reaches the application


def raw_request(
    server: Server,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request with ``target`` sent exactly as written (httpx would resolve ``..``)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


DOT_PATHS = [
    "/callbacks/../admin",
    "/callbacks/..",
    "/callbacks/./x/../../admin",
    "/callbacks/x/./y",
    "/callbacks/%2e%2e/admin",
    "/callbacks/%2E%2e/admin",
    "/callbacks/.%2e/admin",
    "/callbacks/..%2Fadmin",
    "/callbacks/x%2F..%2F..%2Fadmin",
    "/callbacks/%2e%2e%5cadmin",
    "/callbacks/%252e%252e/admin",
    "/callbacks/%2e",
]


def test_a_forwarded_path_with_dot_segments_is_refused_quarantined_and_never_forwarded(
    tracker: Server, upstream: Upstream
) -> None:
    for target in DOT_PATHS:
        cid = call_id("dots")
        status, answer = raw_request(tracker, "POST", target, json.dumps(initiate(cid)).encode())
        assert status == 400, (target, answer)
        error = json.loads(answer)
        assert error["error"] == "bad_path", target
        assert "dot segment" in error["detail"]
        query = f"eventType=answer&callId={cid}&time=2012-11-14T15%3A55%3A04Z"
        status, answer = raw_request(tracker, "GET", f"{target}?{query}")
        assert (status, json.loads(answer)["error"]) == (400, "bad_path"), target
        assert upstream.seen(cid) == [], target
        with tracker.client() as c:
            assert c.get(f"/calls/{cid}").status_code == 404
            rejects = c.get("/rejects", params={"limit": 1000}).json()["rejects"]
        mine = [x for x in rejects if cid in x["body"]]
        assert [x["error"] for x in mine] == ["bad_path", "bad_path"], target
    with upstream.lock:
        assert not [r for r in upstream.requests if "admin" in r.path or ".." in r.path]


def test_dots_inside_path_segments_are_not_dot_segments(
    tracker: Server, upstream: Upstream
) -> None:
    for target in (
        "/callbacks/.well-known/x",
        "/callbacks/a..b/c.d",
        "/callbacks/...",
        "/callbacks/x%2E.y",
    ):
        cid = call_id("dotted")
        status, _ = raw_request(tracker, "POST", target, json.dumps(initiate(cid)).encode())
        assert status == 200, target
        [seen] = upstream.seen(cid)
        assert seen.raw_path == b"/hooks" + target.removeprefix("/callbacks").encode()


def test_credentials_in_the_forward_url_never_leave_the_process(
    upstream: Upstream, tmp_path: Path
) -> None:
    secret = "pa55-w0rd-never-shown"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    down = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    host = upstream.url.removeprefix("http://")
    cases = [
        (f"http://app-user:{secret}@127.0.0.1:{down}/app", "/callbacks", 502, "bad_gateway"),
        (f"http://app-user:{secret}@{host}/hooks", "/callbacks/slow", 504, "gateway_timeout"),
    ]
    for i, (url, path, status, code) in enumerate(cases):
        config = forwarding_config(
            tmp_path,
            url,
            f"creds{i}",
            forward={"timeout_seconds": 0.5},
            server={"log_level": "debug", "access_log": True},
        )
        cid = call_id("creds")
        with running(tmp_path / f"t{i}.db", config=config) as server, server.client() as c:
            r = c.post(path, json=initiate(cid))
            assert r.status_code == status
            assert r.json()["error"] == code
            assert "app-user" not in r.text and secret not in r.text
            assert "@" not in r.json()["detail"]
            metrics = c.get("/metrics").text
            assert c.get(f"/calls/{cid}").status_code == 200
            server.terminate()
        assert secret not in metrics and "app-user" not in metrics
        log = "".join(server.output)
        assert "tracker: listening" in log
        assert secret not in log and "app-user" not in log
    # and the application still gets them, as Basic credentials
    config = forwarding_config(tmp_path, f"http://app-user:{secret}@{host}/hooks", "creds-ok")
    cid = call_id("creds")
    with running(tmp_path / "ok.db", config=config) as server, server.client() as c:
        assert c.post("/callbacks/x", json=initiate(cid)).status_code == 200
    [seen] = upstream.seen(cid)
    assert seen.headers["authorization"] == httpx.BasicAuth("app-user", secret)._auth_header
    assert seen.path == "/hooks/x"


def test_the_query_string_of_the_forward_url_is_kept_before_the_callbacks_own(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = forwarding_config(tmp_path, upstream.url + "/hooks?apikey=K%2F1&env=prod", "query")
    post, get = call_id("q"), call_id("q")
    query = f"eventType=answer&callId={get}&time=2012-11-14T15%3A55%3A04Z"
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        assert c.post("/callbacks/v2", json=initiate(post)).status_code == 200
        assert c.get(f"/callbacks/v1?{query}").status_code == 200
    [seen] = upstream.seen(post)
    assert (seen.raw_path, seen.query) == (b"/hooks/v2", b"apikey=K%2F1&env=prod")
    [seen] = upstream.seen(get)
    assert (seen.raw_path, seen.query) == (b"/hooks/v1", b"apikey=K%2F1&env=prod&" + query.encode())


@pytest.mark.parametrize("url", ["http://app/hooks#part", "http://app/hooks#"])
def test_a_forward_url_with_a_fragment_is_refused_at_startup(url: str) -> None:
    with pytest.raises(ConfigError, match=r"forward\.url must not have a #fragment"):
        load_settings(env={}, overrides={"forward": {"url": url}})


def test_a_bad_forward_url_is_named_without_its_credentials() -> None:
    with pytest.raises(ConfigError, match=r"forward\.url") as caught:
        load_settings(env={}, overrides={"forward": {"url": "ftp://user:pw-secret@app/x"}})
    assert "pw-secret" not in str(caught.value) and "user" not in str(caught.value)
    assert "ftp://***@app/x" in str(caught.value)


SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "public.example",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Real-IP": "6.6.6.6",
    "X_Forwarded_For": "7.7.7.7",
    "X_Forwarded_Host": "underscore.example",
    "x_tracker_seq": "999",
    "X-Tracker-Duplicate": "maybe",
    "X_Tracker_Anything": "1",
    "X-Other": "kept",
}


def test_a_clients_proxy_and_tracker_headers_are_dropped_and_the_peer_is_appended(
    tracker: Server, upstream: Upstream
) -> None:
    cid = call_id("xff")
    with tracker.client() as c:
        assert c.post("/callbacks/x", json=initiate(cid), headers=SPOOFED).status_code == 200
    [seen] = upstream.seen(cid)
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"  # the real peer, nothing else
    assert seen.headers["x-forwarded-host"] == tracker.url.removeprefix("http://")
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["x-other"] == "kept"
    for name in ("forwarded", "x-real-ip"):
        assert name not in seen.headers
    assert not [k for k in seen.headers if "_" in k]
    assert [k for k in seen.headers if k.startswith("x-tracker")] == [
        "x-tracker-seq",
        "x-tracker-duplicate",
    ]
    assert seen.headers["x-tracker-duplicate"] == "false"


def test_a_trusted_proxys_forwarded_headers_are_kept_and_its_address_appended(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = forwarding_config(
        tmp_path,
        upstream.url,
        "trusted",
        server={"forwarded_allow_ips": ["10.0.0.0/8", "127.0.0.1"]},
    )
    cid = call_id("xff")
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        assert c.post("/callbacks/x", json=initiate(cid), headers=SPOOFED).status_code == 200
    [seen] = upstream.seen(cid)
    assert seen.headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert seen.headers["x-forwarded-host"] == "public.example"
    assert seen.headers["x-forwarded-proto"] == "https"
    assert seen.headers["forwarded"] == "for=6.6.6.6;proto=https"
    assert not [k for k in seen.headers if "_" in k]  # underscore forms never pass
    assert seen.headers["x-tracker-duplicate"] == "false"


def test_forwarded_allow_ips_must_be_addresses_or_networks() -> None:
    for bad in (["localhost"], ["10.0.0.0/33"], ["*.example"]):
        with pytest.raises(ConfigError, match=r"server\.forwarded_allow_ips"):
            load_settings(env={}, overrides={"server": {"forwarded_allow_ips": bad}})
    ok = load_settings(env={"TRACKER_SERVER_FORWARDED_ALLOW_IPS": "10.0.0.1, ::1,*"})
    assert ok.server.forwarded_allow_ips == ("10.0.0.1", "::1", "*")
