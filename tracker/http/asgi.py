"""ASGI helpers shared by the HTTP modules: sending bytes and errors, the route path.

Errors are data (:mod:`tracker.errors`); :func:`error_response` and :func:`send_error` are the one
place that maps them to HTTP (status and code come from the error class).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from starlette.responses import Response

from tracker.errors import MethodNotAllowed, TrackerError, Unauthorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_json = msgspec.json.Encoder()
JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


def error_body(err: TrackerError) -> bytes:
    return _json.encode({"error": err.code, "detail": err.detail})


def error_headers(
    err: TrackerError, *, allow: bytes | None = None, close: bool = False
) -> list[tuple[bytes, bytes]]:
    """The headers an error carries besides its JSON body (both renderings below use these)."""
    headers = []
    if isinstance(err, Unauthorized):
        headers.append((b"www-authenticate", err.challenge.encode()))
    if allow is not None and isinstance(err, MethodNotAllowed):
        headers.append((b"allow", allow))  # a 405 must name the allowed methods (RFC 9110)
    if close:
        headers.append((b"connection", b"close"))
    return headers


def error_response(err: TrackerError, *, allow: bytes | None = None) -> Response:
    """The one table from errors to HTTP: status and code come from the error class."""
    response = Response(error_body(err), err.status, media_type="application/json")
    response.raw_headers.extend(error_headers(err, allow=allow))
    return response


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] = JSON_HEADERS,
    *,
    more_body: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


LINGER_SECONDS = 2.0  # how long a refused upload is still read (and dropped) before closing
LINGER_BYTES = 64 << 20


async def send_error(
    send: Send,
    err: TrackerError,
    close: bool = False,
    allow: bytes | None = None,
    linger: Receive | None = None,
) -> None:
    """:func:`error_response` for the raw ASGI paths.

    ``linger``: the request's ``receive``, when the client may still be sending a body we
    stopped reading. Closing a socket that still has unread data makes the kernel reset the
    connection, and a client that is still sending then loses the answer it was sent (the
    reset discards it). So, like other HTTP/1.1 servers' "lingering close", the whole answer
    goes out first, then what the client still sends is read and dropped for up to
    ``LINGER_SECONDS`` (or ``LINGER_BYTES``) before the connection closes.
    """
    headers = [*JSON_HEADERS, *error_headers(err, allow=allow, close=close)]
    await send_bytes(send, err.status, error_body(err), headers, more_body=linger is not None)
    if linger is None:
        return
    dropped = 0
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                message = await linger()
                if message["type"] == "http.disconnect":
                    break
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    await send({"type": "http.response.body", "body": b""})


def route_path(scope: Scope) -> str:
    """The path below ``root_path``. Servers (uvicorn ``--root-path``) and Starlette 1.x ``Mount``
    keep the full path in ``path`` and put the prefix in ``root_path``; a ``path`` that does not
    start with it (older servers strip it) is taken as it is."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def raw_route_path(scope: Scope) -> bytes:
    """:func:`route_path` on ``raw_path`` (still percent-encoded). ``root_path`` is decoded, so a
    prefix written with escapes (``/my%20app``) is found by decoding the raw path segment-wise."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    root: str = scope.get("root_path", "")
    if not root:
        return raw
    prefix = root.encode()
    if raw.startswith(prefix) and (len(raw) == len(prefix) or raw[len(prefix)] == 0x2F):
        return raw[len(prefix) :] or b"/"
    end = 0
    while end < len(raw):
        end = raw.find(b"/", end + 1)
        if end < 0:
            end = len(raw)
        if unquote_to_bytes(raw[:end]).decode("utf-8", "replace") == root:
            return raw[end:] or b"/"
    return raw


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
