"""A fake of Bandwidth's call API on loopback (``http.server`` in a thread), for the
reconciliation tests: ``GET /v2/accounts/{accountId}/calls/{callId}`` and
``GET /v1/users/{userId}/calls/{callId}``. What a call's answer is comes from its id's first
word: ``ended``, ``busy`` (v2: ended busy, unanswered), ``rejected`` (v1), ``live``, ``missing``
(404), ``denied`` (401), ``throttled`` (429), ``broken`` (500), ``garbage`` (200, not JSON),
``slow`` (answers after 2 s). Every request is kept (path and Authorization header)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

START, ANSWER, END = (
    "2026-01-05T10:00:00.000Z",
    "2026-01-05T10:00:03.000Z",
    "2026-01-05T10:05:00.000Z",
)


def v2_body(call_id: str, account: str) -> dict[str, Any] | None:
    kind = call_id.split("-")[0]
    base: dict[str, Any] = {
        "accountId": account,
        "callId": call_id,
        "applicationId": "app-1",
        "direction": "outbound",
        "from": "+19195551234",
        "to": "+19195554321",
        "startTime": START,
        "lastUpdate": END,
    }
    if kind == "ended":
        return {
            **base,
            "state": "disconnected",
            "answerTime": ANSWER,
            "endTime": END,
            "disconnectCause": "hangup",
            "errorMessage": None,
            "errorId": None,
        }
    if kind == "busy":
        return {**base, "state": "disconnected", "endTime": END, "disconnectCause": "busy"}
    if kind == "live":
        return {**base, "state": "answered", "answerTime": ANSWER}
    return None


def v1_body(call_id: str, user: str) -> dict[str, Any] | None:
    kind = call_id.split("-")[0]
    base: dict[str, Any] = {
        "id": call_id,
        "direction": "in",
        "from": "+19195551234",
        "to": "+19195554321",
        "startTime": START,
        "callbackUrl": "https://example.com/cb",
    }
    if kind == "ended":
        return {**base, "state": "completed", "activeTime": ANSWER, "endTime": END}
    if kind == "rejected":
        return {**base, "state": "rejected", "endTime": END}
    if kind == "live":
        return {**base, "state": "active", "activeTime": ANSWER}
    return None


class FakeApi:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.url = ""

    def asked(self, call_id: str) -> int:
        with self.lock:
            return sum(1 for path, _ in self.requests if path.endswith(f"/calls/{call_id}"))

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[3] != "calls":
            return 404, b'{"message":"no such route"}', {}
        gen, owner, call_id = parts[0], parts[2], parts[4]
        kind = call_id.split("-")[0]
        if kind == "missing":
            return 404, b'{"type":"validation","description":"call not found"}', {}
        if kind == "denied":
            return 401, b'{"message":"Unauthorized"}', {}
        if kind == "throttled":
            return 429, b'{"message":"Too many requests"}', {"Retry-After": "0"}
        if kind == "broken":
            return 500, b'{"message":"oops"}', {}
        if kind == "garbage":
            return 200, b"<html>maintenance</html>", {"Content-Type": "text/html"}
        if kind == "slow":
            time.sleep(2.0)
        body = v2_body(call_id, owner) if gen == "v2" else v1_body(call_id, owner)
        if body is None:
            body = (v2_body if gen == "v2" else v1_body)("live-" + call_id, owner)
        return 200, json.dumps(body, indent=2).encode(), {"Content-Type": "application/json"}


@contextmanager
def fake_bandwidth() -> Iterator[FakeApi]:
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with api.lock:
                api.requests.append((self.path, self.headers.get("Authorization")))
            status, body, headers = api.answer(self.path)
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
