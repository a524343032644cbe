"""What a hostile client tries against a real ``tracker serve``: Host names, cross-site posts,
path tricks, oversized query strings, slash redirects, slow and oversized request heads and
connection floods. Forwarding tricks are in ``test_forward.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.callbacks import v1
from tests.server import Server, running, write_config
from tracker.app import create_app
from tracker.config import Settings, load_settings, serving
from tracker.openapi import _check, document
from tracker.routes import ROUTES


def new_id(prefix: str = "h") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def hangup(call_id: str) -> dict[str, str]:
    return v1("hangup", call_id, "2012-11-14T15:56:12Z", cause="NORMAL_CLEARING")


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    return body


def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` as it is on a fresh socket; everything the server sends until it closes
    (so the request should say ``Connection: close`` or be HTTP/1.0)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default configuration (loopback: loopback host names only)."""
    with running(tmp_path_factory.mktemp("hardening") / "tracker.db") as server:
        yield server


@pytest.fixture(scope="module")
def anyhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that answers to any Host, with a small body limit."""
    tmp = tmp_path_factory.mktemp("anyhost")
    config = write_config(
        tmp / "anyhost.toml",
        {"server": {"allowed_hosts": ["*"]}, "ingest": {"max_body_bytes": 4096}},
    )
    with running(tmp / "tracker.db", config=config) as server:
        yield server


# --------------------------------------------------------------------------------------------
# Host check (DNS rebinding) and cross-site posts


def test_a_loopback_server_answers_only_to_loopback_host_names_by_default(srv: Server) -> None:
    cid = new_id()
    with srv.client() as c:
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1"):
            for method, path in (("GET", "/calls"), ("GET", "/healthz"), ("GET", "/events/")):
                r = c.request(method, path, headers={"Host": host})
                detail = assert_error(r, 400, "host_not_allowed")["detail"]
                assert "server.allowed_hosts" in detail
            r = c.post("/callbacks", json=hangup(cid), headers={"Host": host})
            assert_error(r, 400, "host_not_allowed")
            r = c.get("/callbacks", params=hangup(cid), headers={"Host": host})
            assert_error(r, 400, "host_not_allowed")
        assert c.get(f"/calls/{cid}").status_code == 404  # nothing was stored
        for host in ("127.0.0.1", "localhost:9999", "LOCALHOST", "[::1]:8080", "[::1]"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        r = c.post("/callbacks", json=hangup(cid), headers={"Host": "localhost"})
        assert r.status_code == 200
    answer = raw_exchange(srv.url, b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host header at all
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"host_not_allowed"' in answer


def test_allowed_hosts_takes_trusted_host_patterns_and_ignores_ports(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "hosts.toml",
        {"server": {"allowed_hosts": ["*.example.com", "tracker.test", "::1", "127.0.0.1"]}},
    )  # 127.0.0.1: the test harness's readiness probe
    with running(tmp_path / "t.db", config=config) as server, server.client() as c:
        for host in ("a.example.com", "b.a.example.com:443", "tracker.test:8080", "[::1]:1"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("example.com", "127.0.0.2", "localhost", "tracker.test.evil", "xexample.com"):
            assert_error(c.get("/healthz", headers={"Host": host}), 400, "host_not_allowed")


def test_the_default_allowed_hosts_follow_the_listen_address() -> None:
    def hosts(host: str) -> tuple[str, ...]:
        return serving(
            load_settings(env={}, overrides={"server": {"host": host}})
        ).server.allowed_hosts

    assert hosts("127.0.0.1") == ("127.0.0.1", "localhost", "[::1]")
    assert hosts("::1") == hosts("localhost") == hosts("127.0.0.2") == hosts("127.0.0.1")
    assert hosts("0.0.0.0") == ("*",)
    assert hosts("192.0.2.7") == ("*",)
    configured = load_settings(env={"TRACKER_SERVER_ALLOWED_HOSTS": "a.test, *.b.test"})
    assert configured.server.allowed_hosts == ("a.test", "*.b.test")
    assert serving(configured).server.allowed_hosts == ("a.test", "*.b.test")
    assert Settings().server.allowed_hosts == ()  # embedded: the parent application decides


def test_a_browsers_cross_site_post_is_refused_and_bandwidths_requests_are_not(
    anyhost: Server,
) -> None:
    host = anyhost.url.removeprefix("http://")
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # no preflight in a browser
    with anyhost.client() as c:
        refused = [
            ({"Sec-Fetch-Site": "cross-site", **form}, "post"),
            ({"Sec-Fetch-Site": "same-site"}, "post"),
            ({"Origin": "https://evil.example", **form}, "post"),
            ({"Origin": "null"}, "post"),
            ({"Origin": f"http://{host}", "Sec-Fetch-Site": "cross-site"}, "post"),
            ({"Sec-Fetch-Site": "cross-site"}, "get"),  # an <img src> on another site
        ]
        for headers, how in refused:
            cid = new_id()
            if how == "post":
                r = c.post(
                    "/callbacks",
                    content=httpx.Request("POST", "/", json=hangup(cid)).content,
                    headers=headers,
                )
            else:
                r = c.get("/callbacks", params=hangup(cid), headers=headers)
            assert "browsers" in assert_error(r, 403, "cross_site")["detail"]
            assert c.get(f"/calls/{cid}").status_code == 404, headers
        accepted: list[dict[str, str]] = [
            {},  # Bandwidth, curl: neither header
            form,
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},  # typed into the address bar
            {"Origin": f"http://{host}"},
        ]
        for headers in accepted:
            cid = new_id()
            content = httpx.Request("POST", "/", json=hangup(cid)).content
            r = c.post("/callbacks", content=content, headers=headers)
            assert r.status_code == 200, (headers, r.text)


# --------------------------------------------------------------------------------------------
# Limits


def all_rejects(c: httpx.Client) -> list[dict[str, Any]]:
    rejects: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.get("/rejects", params={"after": after, "limit": 1000}).json()
        rejects += page["rejects"]
        if page["next"] is None:
            return rejects
        after = page["next"]


def query_of_length(call_id: str, length: int) -> str:
    head = f"eventType=answer&callId={call_id}&time=2012-11-14T15%3A55%3A04Z&tag="
    return head + "x" * (length - len(head))


def test_a_get_callbacks_query_string_obeys_max_body_bytes(anyhost: Server) -> None:
    big, exact = new_id(), new_id()
    with anyhost.client() as c:
        r = c.get(f"/callbacks/get?{query_of_length(big, 20_000)}")
        detail = assert_error(r, 413, "too_large")["detail"]
        assert "max_body_bytes" in detail and "20000" in detail
        assert c.get(f"/calls/{big}").status_code == 404
        [reject] = [x for x in all_rejects(c) if big in x["body"]]
        assert (reject["status"], reject["error"], reject["path"]) == (
            413,
            "too_large",
            "/callbacks/get",
        )
        assert reject["body"].startswith(f"eventType=answer&callId={big}&")
        huge = new_id()  # longer than the request head may be (server.max_header_bytes)
        r = c.get(f"/callbacks/get?{query_of_length(huge, 60_000)}")
        assert_error(r, 431, "headers_too_large")
        assert c.get(f"/calls/{huge}").status_code == 404
        r = c.get(f"/callbacks/get?{query_of_length(exact, 4096)}")  # exactly the limit
        assert r.status_code == 200, r.text
        assert c.get(f"/calls/{exact}").json()["tag"] == "x" * (
            4096 - len(query_of_length(exact, 0))
        )


# --------------------------------------------------------------------------------------------
# Paths: one reading of the raw path, no redirects


def raw_get(
    server: Server, target: str, method: str = "GET", body: bytes = b"", **headers: str
) -> httpx.Response:
    """``target`` sent exactly as written (no client-side normalisation)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        conn.close()


def test_an_encoded_slash_is_never_a_path_separator(anyhost: Server) -> None:
    plain, slashed = new_id("auth"), new_id("auth") + "/1"
    with anyhost.client() as c:
        for cid in (plain, slashed):
            assert c.post("/callbacks", json=hangup(cid)).status_code == 200
    assert raw_get(anyhost, f"/calls/{plain}").json()["callId"] == plain
    assert raw_get(anyhost, f"/calls/{quote(slashed, safe='')}").json()["callId"] == slashed
    assert raw_get(anyhost, f"/calls/{quote(slashed, safe='')}/events").status_code == 200
    for target in (
        f"/calls%2F{plain}",
        f"/calls%2f{plain}",
        f"/calls%2F{plain}/events",
        "/events%2Fstream",
        "/%63alls/" + plain,  # the call route is read from the raw path too
    ):
        detail = assert_error(raw_get(anyhost, target), 404, "not_found")["detail"]
        assert "no route" in detail, target
    cid = new_id()
    body = json.dumps(hangup(cid)).encode()
    r = raw_get(anyhost, "/callbacks%2Fx", "POST", body, **{"Content-Type": "application/json"})
    assert_error(r, 404, "not_found")
    with anyhost.client() as c:
        assert c.get(f"/calls/{cid}").status_code == 404
        r = c.post("/callbacks/x%2Fy", json=hangup(cid))  # inside a sub-path it is kept
        assert r.status_code == 200


def test_a_trailing_slash_is_404_and_never_a_redirect_built_from_the_host(
    anyhost: Server,
) -> None:
    for target in ("/events/", "/stats/", "/healthz/", "/events/stream/", "/calls/", "/rejects/"):
        for host in ("evil.example", "127.0.0.1"):
            r = raw_get(anyhost, target, Host=host)
            assert_error(r, 404, "not_found")
            assert "location" not in r.headers, target


# --------------------------------------------------------------------------------------------
# The OpenAPI document


def test_the_served_openapi_document_is_valid_openapi_3_1(srv: Server) -> None:
    with srv.client() as c:
        doc = c.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)  # raises with the first error it finds
    assert {"type": "null"} in doc["components"]["schemas"]["CallView"]["properties"]["tag"][
        "anyOf"
    ]  # 3.1 syntax, which a 3.0 document may not use


def test_the_document_and_the_app_serve_exactly_the_route_table() -> None:
    doc = document()
    assert {p: set(ops) for p, ops in doc["paths"].items()} == {
        r.path: {m.lower() for m in r.methods} for r in ROUTES
    }
    app = create_app(Settings())
    assert all(callable(app._handler(r.handler)) for r in ROUTES)  # every handler exists
    served = {(r.path, m) for r in app.starlette.routes for m in r.methods or ()}  # type: ignore[attr-defined]
    assert served == {
        (r.served or r.path, m)
        for r in ROUTES
        if not r.raw
        for m in (*r.methods, *(("HEAD",) if "GET" in r.methods else ()))
    }
    with pytest.raises(RuntimeError, match="differs from the routes"):
        _check({**doc["paths"], "/admin": {"get": {}}})
    with pytest.raises(RuntimeError, match="differs from the routes"):
        _check({**doc["paths"], "/calls": {"get": {}, "post": {}}})


# --------------------------------------------------------------------------------------------
# Request heads and connections (real sockets)


def limited_server(tmp_path: Path, **server: Any) -> Any:
    config = write_config(tmp_path / "limits.toml", {"server": server})
    return running(tmp_path / "t.db", config=config)


def read_answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def json_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower()
    assert b"\r\ncontent-type: application/json" in head.lower()
    parsed: dict[str, Any] = json.loads(body)
    assert set(parsed) == {"error", "detail"}
    return parsed


def connect(server: Server, timeout: float = 30.0) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _idle_after_one_request(server: Server, wait: float) -> bool:
    """Whether a keep-alive connection is still open ``wait`` seconds after its answer."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        time.sleep(wait)
        sock.settimeout(0.2)
        try:
            return sock.recv(1) != b""
        except TimeoutError:
            return True  # nothing to read and not closed


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(tmp_path: Path) -> None:
    with limited_server(tmp_path, keepalive_seconds=1.0) as server:
        assert not _idle_after_one_request(server, 2.5)
    with limited_server(tmp_path, keepalive_seconds=30.0) as server:
        assert _idle_after_one_request(server, 2.5)


def test_a_request_head_that_trickles_past_the_deadline_is_cut_off(tmp_path: Path) -> None:
    with limited_server(tmp_path, header_timeout_seconds=1.0) as server:
        for keep_alive_first in (False, True):
            with connect(server) as sock:
                if keep_alive_first:  # the deadline also holds for the next request on a connection
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    first = b""
                    while not first.endswith(b'{"status":"ok"}'):
                        first += sock.recv(65536)
                    assert first.startswith(b"HTTP/1.1 200 ")
                sock.sendall(b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                sock.settimeout(0.1)
                answer = b""
                for _ in range(300):  # one header byte every 0.1 s, for up to 30 s
                    try:
                        sock.sendall(b"X")
                        answer = sock.recv(65536)
                        break
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        break
                sock.settimeout(10)
                answer += read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            error = json_of(answer)
            assert error["error"] == "timeout"
            assert "server.header_timeout_seconds" in error["detail"]
        with connect(server) as sock:  # a connection that never sends anything is closed too
            assert read_answer(sock) == b""
        with server.client() as c:
            assert c.get("/rejects").json()["rejects"] == []  # no body: nothing to quarantine
            assert c.get("/healthz").status_code == 200


def test_a_head_that_starts_late_on_a_keep_alive_connection_gets_its_whole_deadline(
    tmp_path: Path,
) -> None:
    """One timer per connection serves every head: set when the connection opened, it fires
    during the second head here and must wait out that head's own deadline, not cut it off."""
    with limited_server(tmp_path, header_timeout_seconds=2.0) as server, connect(server) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        time.sleep(max(0.0, opened + 1.5 - time.monotonic()))
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n\r\n"
        started = time.monotonic()
        for i in range(0, len(head), 6):  # over ~1.2 s: past the first timer, within its own
            sock.sendall(head[i : i + 6])
            time.sleep(1.2 / (len(head) / 6))
        assert time.monotonic() - opened > 2.2  # the connection's first deadline has passed
        assert time.monotonic() - started < 1.9  # this head's own has not
        answer = b""
        while not answer.endswith(b'{"status":"ok"}') and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_an_oversized_request_head_gets_431_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    with limited_server(tmp_path, max_header_bytes=8192) as server:
        cid = new_id()
        heads = [
            b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n",
            b"GET /callbacks?tag=" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Many: 1\r\n" * 20_000,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000_000,
        ]
        for head in heads:
            with connect(server) as sock:
                with contextlib.suppress(ConnectionError):  # closed after the answer and a linger
                    sock.sendall(head + b"\r\n")
                answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
            error = json_of(answer)
            assert error["error"] == "headers_too_large"
            assert "server.max_header_bytes" in error["detail"]
        body = json.dumps(hangup(cid)).encode()
        fits = (
            b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\nX-Pad: %s\r\n\r\n%s"
            % (len(body), b"p" * 6000, body)
        )
        assert raw_exchange(server.url, fits).startswith(b"HTTP/1.1 200 ")
        with server.client() as c:
            assert c.get(f"/calls/{cid}").status_code == 200
        assert "Invalid HTTP request" not in "".join(server.output)  # a 431, not a parse error


def test_beyond_max_connections_new_connections_get_503_and_open_ones_are_served(
    tmp_path: Path,
) -> None:
    with limited_server(tmp_path, max_connections=4, header_timeout_seconds=60.0) as server:
        host, port = server.url.removeprefix("http://").split(":")
        sender = http.client.HTTPConnection(host, int(port), timeout=10)  # a keep-alive sender
        sender.request("GET", "/healthz")
        assert sender.getresponse().read() == b'{"status":"ok"}'
        idle = [connect(server) for _ in range(3)]  # with the sender: the limit, 4
        try:
            for _ in range(3):
                with connect(server) as sock:
                    answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                error = json_of(answer)
                assert error["error"] == "too_many_connections"
                assert "server.max_connections" in error["detail"]
            cid = new_id()
            sender.request(
                "POST",
                "/callbacks",
                json.dumps(hangup(cid)),
                {"Content-Type": "application/json"},
            )
            answer = sender.getresponse()
            assert answer.status == 200, answer.read()
            assert json.loads(answer.read())["duplicate"] is False
            sender.request("GET", f"/calls/{cid}")
            assert sender.getresponse().status == 200
        finally:
            for sock in idle:
                sock.close()
        for _ in range(200):  # the server sees the idle ones close: new connections work again
            with connect(server) as sock:
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                if read_answer(sock).startswith(b"HTTP/1.1 200 "):
                    break
        else:
            raise AssertionError("new connections are still refused after the idle ones closed")
        sender.close()


# --------------------------------------------------------------------------------------------
# What held up, kept tested


def test_a_gzip_body_is_not_decompressed_but_refused_and_quarantined(anyhost: Server) -> None:
    cid = new_id()
    packed = gzip.compress(json.dumps(hangup(cid)).encode() + b" " * 100_000)  # a "zip bomb"
    with anyhost.client() as c:
        r = c.post(
            "/callbacks",
            content=packed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert_error(r, 400, "invalid_json")
        assert c.get(f"/calls/{cid}").status_code == 404
        [reject] = [x for x in all_rejects(c) if x["size"] == len(packed)]
        assert reject["error"] == "invalid_json"


def test_the_query_token_is_required_whatever_the_path_trick_or_method(tmp_path: Path) -> None:
    config = write_config(tmp_path / "token.toml", {"query": {"token": "s3cr3t-token"}})
    tricks = [
        "/calls",
        "/calls/x",
        "/calls%2Fx",
        "/%63alls/x",
        "/calls/x%2F..%2F..%2Fevents",
        "//calls",
        "/./calls",
        "/calls/",
        "/events/",
        "/events%2Fstream",
        "/Calls",
        "/rejects?limit=1000",
        "/metrics",
        "/openapi.json",
        "/nothing-here",
    ]
    with running(tmp_path / "t.db", config=config) as server:
        for target in tricks:
            for method in ("GET", "HEAD", "POST", "DELETE"):
                r = raw_get(server, target, method)
                assert r.status_code == 401, (method, target, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
        for target in ("/healthz", "/readyz"):
            assert raw_get(server, target).status_code == 200


def test_serve_raises_its_open_file_limit_and_warns_when_max_connections_does_not_fit(
    tmp_path: Path,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard open-file limit above 256")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    with running(tmp_path / "a.db", preexec=low_soft_limit) as server:
        assert resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE) == (hard, hard)
        assert "max_connections" not in "".join(server.output)
    with limited_server(tmp_path, max_connections=hard + 1) as server:
        warning = "".join(server.output)
        assert "server.max_connections" in warning and "open-file limit" in warning


def test_the_head_attack_script_runs_and_finds_the_limits_in_place() -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "attack_heads.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=root / "scripts",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["huge"]["answers"] == ["HTTP/1.1 431 Request Header Fields Too Large"] * 3
    assert found["trickle"]["answer"] == "HTTP/1.1 408 Request Timeout"
    assert found["idle"]["valid_callback"] == "HTTP/1.1 200 OK"
    assert found["idle"]["still_open_after_11s"] == 0
