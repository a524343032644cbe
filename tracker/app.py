"""The HTTP service: ``create_app(settings)``.

``/callbacks`` is served by a lean ASGI path (it is the hot path: no routing, no Request object,
decode once, answer after the group commit). Everything else is a small Starlette application.
``GET /calls/{callId}`` is matched on the raw path, because call ids are arbitrary strings
(``{callId}``, quotes, percent-encoded slashes). Errors are data (:mod:`tracker.errors`) rendered
by :func:`error_response`, the one place that maps them to HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tracker import store as st
from tracker.config import Settings
from tracker.errors import (
    BadParameter,
    EventRejected,
    InvalidJson,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    StorageUnavailable,
    TooLarge,
    TrackerError,
    Unauthorized,
    UnsupportedMediaType,
)
from tracker.events import InvalidEvent, decode_object, parse_json, parse_time, restore_plus
from tracker.metrics import Metrics
from tracker.openapi import document
from tracker.state import OUTCOMES
from tracker.writer import Writer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_json = msgspec.json.Encoder()
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
JSON_HEADERS = [(b"content-type", b"application/json")]
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
QUARANTINED = frozenset({400, 408, 413, 415, 422})
STATUSES = frozenset({"started", "answered", "ended"})


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


# --------------------------------------------------------------------------------------------
# Parsing an ingest request into entries (pure apart from the clock)


def _content_kind(content_type: bytes, body: bytes) -> str:
    """How to read a POST body. A form-typed body that starts like JSON is JSON (``curl -d``)."""
    mime = content_type.split(b";", 1)[0].strip().lower()
    if mime in (b"", b"application/json") or mime.endswith(b"+json"):
        return "json"
    if mime == b"application/x-www-form-urlencoded":
        return "json" if body.lstrip()[:1] in (b"{", b"[") else "form"
    shown = mime.decode("latin-1")
    raise UnsupportedMediaType(
        f"content type {shown} is not accepted: send application/json "
        "(or application/x-www-form-urlencoded)"
    )


def _fields(raw: bytes) -> dict[str, str] | None:
    """Form or query-string fields (the last of repeated keys wins); ``None`` when not valid
    UTF-8 percent-encoding. Ingest and the query routes refuse that with their own errors."""
    try:
        return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None


def parse_entries(body: bytes, kind: str, max_batch: int) -> tuple[list[st.Entry], bool]:
    """Entries for a body; ``True`` when it was a JSON array (a batch). Raises TrackerError."""
    try:
        return _parse_entries(body, kind, max_batch)
    except RecursionError:  # msgspec's depth guard: JSON nested ~1000 levels deep
        raise InvalidJson(
            "the body is not valid JSON: it is nested too deeply (arrays or objects "
            "hundreds of levels deep); send a flatter event"
        ) from None


def _parse_entries(body: bytes, kind: str, max_batch: int) -> tuple[list[st.Entry], bool]:
    now = st.now_ms()
    if kind != "json":
        fields = _fields(body)
        if fields is None:
            what = "query string" if kind == "query" else "form body"
            raise InvalidJson(f"the {what} is not valid UTF-8 percent-encoding")
        try:
            decoded = decode_object(restore_plus(fields), lenient=True)
        except InvalidEvent as err:
            raise EventRejected(str(err)) from None
        return [st.make_entry(decoded, body, kind, now)], False
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            raws = _raw_list.decode(body)
        except msgspec.DecodeError as err:
            raise InvalidJson(f"the body is not valid JSON: {err}") from None
        if len(raws) > max_batch:
            raise TooLarge(f"a batch of {len(raws)} events exceeds max_batch ({max_batch})")
        if not raws:
            raise EventRejected("a batch must hold at least one event")
        entries = []
        for i, raw in enumerate(raws):
            element = bytes(raw)
            try:
                decoded = decode_object(parse_json(element), raw=element)
            except msgspec.DecodeError as err:  # the array scan does not check UTF-8 inside
                raise InvalidJson(f"element {i} is not valid JSON: {err}") from None
            except InvalidEvent as err:
                raise EventRejected(f"element {i}: {err}") from None
            entries.append(st.make_entry(decoded, element, "json", now))
        return entries, True
    try:
        obj = parse_json(body)
    except msgspec.DecodeError as err:
        if not body.strip():
            raise InvalidJson("the body is empty: send one JSON event or an array") from None
        raise InvalidJson(f"the body is not valid JSON: {err}") from None
    try:
        decoded = decode_object(obj, raw=body)
    except InvalidEvent as err:
        raise EventRejected(str(err)) from None
    return [st.make_entry(decoded, body, "json", now)], False


def _result_body(results: list[st.Appended], batch: bool) -> bytes:
    if not batch:
        r = results[0]
        return b'{"seq":%d,"duplicate":%s}' % (r.seq, b"true" if r.duplicate else b"false")
    return _json.encode({"results": [{"seq": r.seq, "duplicate": r.duplicate} for r in results]})


# --------------------------------------------------------------------------------------------
# Query parameters


def _int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    digits = raw[1:] if raw.startswith("-") else raw
    # ASCII digits only: int() would also take "1_0", " 7 " and non-ASCII digits (fullwidth ones)
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
        raise BadParameter(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadParameter(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _time_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    value = parse_time(raw)
    if value is None:
        raise BadParameter(f"{name} must be an ISO-8601 time such as 2012-11-14T15:55:01Z")
    return value


def _only(params: Mapping[str, str], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadParameter(f"unknown parameter {name!r} (known: {known})")


def _query(request: Request) -> dict[str, str]:
    fields = _fields(request.scope["query_string"])
    if fields is None:
        raise BadParameter("the query string is not valid UTF-8 percent-encoding")
    return fields


MAX_SEQ = (1 << 63) - 1


def _timeline_params(scope: Scope) -> tuple[st.TimelinePlace | None, int]:
    fields = _fields(scope["query_string"])
    if fields is None:
        raise BadParameter("the query string is not valid UTF-8 percent-encoding")
    _only(fields, {"after", "limit"})
    limit = _int_param(fields, "limit", 100, 1, 1000)
    raw = fields.get("after")
    if raw is None:
        return None, limit
    try:
        return st.parse_place(raw), limit
    except ValueError:
        raise BadParameter(
            f"after must be the next of a previous page (such as 1352908501000.17), got {raw!r}"
        ) from None


def _timeline_page(
    conn: sqlite3.Connection, call_id: str, after: st.TimelinePlace | None, limit: int
) -> bytes | None:
    """A page of the timeline as JSON, encoded here in the read thread, not on the event loop."""
    found = st.call_events(conn, call_id, after=after, limit=limit)
    if found is None:
        return None
    rows, nxt = found
    return _json.encode(
        {"callId": call_id, "events": rows, "next": None if nxt is None else st.format_place(nxt)}
    )


READ_THREADS = 2


class TrackerApp:
    """The ASGI application ``create_app`` returns. Mountable: see :meth:`lifespan`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.writer: Writer | None = None
        self.reader: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._changed: asyncio.Event | None = None
        self._closing = False
        self.sse_clients = 0
        self._reads: dict[asyncio.Task[Any], float] = {}  # body reads in progress: deadlines
        self._late: set[asyncio.Task[Any]] = set()  # reads the sweeper cancelled
        self._sweeper: asyncio.Task[None] | None = None
        # Reads that scan (lists, timelines, stats, the event log) run here, each thread with a
        # connection of its own. Two threads, not AnyIO's forty: more threads only queue up for
        # the GIL on every row and each holds its own page cache (measured, BENCHMARKS.md).
        self._read_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="read")
        self.forwarder: Any = None
        ing = settings.ingest
        self.max_body = ing.max_body_bytes
        self.max_batch = ing.max_batch
        self.body_timeout = ing.body_timeout_seconds
        self._basic: tuple[bytes, bytes] | None = (
            (ing.username.encode(), ing.password.encode()) if ing.username else None
        )
        self._token = settings.query.token.encode() if settings.query.token else None
        routes = [
            Route("/calls", self.list_calls),
            Route("/stats", self.stats),
            Route("/events", self.events),
            Route("/events/stream", self.stream),
            Route("/rejects", self.rejects),
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics_route),
            Route("/openapi.json", self.openapi),
        ]
        self.starlette = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={
                TrackerError: self._handle_error,
                HTTPException: self._handle_http,
                Exception: self._handle_crash,
            },
        )
        self._openapi = _json.encode(document())

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the storage and start the writer (what the lifespan does)."""
        if self.settings.forward.url:  # first: a bad forward.url fails before anything is opened
            from tracker.forward import Forwarder  # only when forwarding is configured

            self.forwarder = Forwarder(self.settings.forward, self.metrics)
        s = self.settings.storage
        try:
            store = st.Store(
                s.path,
                synchronous=s.synchronous,
                outcomes=self.settings.outcomes,
                busy_ms=s.busy_timeout_ms,
                quarantine_max_bytes=self.settings.ingest.quarantine_max_bytes,
            )
        except BaseException:
            self.forwarder = None  # it has not connected anywhere yet: nothing to close
            raise
        self.writer = Writer(
            store,
            max_events=self.settings.ingest.max_commit_events,
            on_commit=self._on_commit,
            on_error=self._on_error,
            wal_checkpoint_bytes=s.wal_checkpoint_mb << 20,
        )
        self.writer.start()
        self.reader = st.connect(s.path, busy_ms=s.busy_timeout_ms, mmap_mb=s.read_mmap_mb)
        self._changed = asyncio.Event()
        self._closing = False
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_reads())

    async def close(self) -> None:
        """Stop streams, commit everything queued, checkpoint, close."""
        self._closing = True
        self._notify()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.forwarder is not None:
            await self.forwarder.close()
            self.forwarder = None
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Open the storage, start the writer (and the forwarder); on exit drain and close.

        Served on its own (``tracker serve``, ``uvicorn``) the app runs this itself. Mounted in
        another Starlette application it does not: Starlette runs only the outer app's lifespan,
        so hand this one to the parent, alone or together with the parent's own::

            tracker_app = create_app(settings)
            app = Starlette(
                routes=[Mount("/tracker", app=tracker_app)],
                lifespan=lambda app: tracker_app.lifespan(app),
            )

            @asynccontextmanager
            async def lifespan(app):  # the parent has a lifespan of its own
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(tracker_app.lifespan(app))
                    await stack.enter_async_context(my_lifespan(app))
                    yield

        Without it the tracker's routes answer ``503 unavailable`` (never a crash, never a 2xx).
        """
        self.open()
        try:
            yield
        finally:
            await self.close()

    def _lifespan(self, app: Any) -> Any:
        return self.lifespan(app)

    def _on_commit(
        self, last_seq: int, done: list[tuple[Any, list[st.Appended]]], elapsed: float
    ) -> None:
        m = self.metrics
        n = 0
        for entries, results in done:
            for e, r in zip(entries, results, strict=False):
                n += 1
                if r.duplicate:
                    m.duplicates += 1
                else:
                    m.count_ingested(e.event_type)
        m.batch_events.observe(n)
        m.commit_seconds.observe(elapsed)
        self._notify()

    def _on_error(self) -> None:
        self.metrics.storage_errors += 1

    async def _sweep_reads(self) -> None:
        """Cancel body reads past their deadline (``ingest.body_timeout_seconds``)."""
        while True:
            await asyncio.sleep(min(0.5, self.body_timeout / 4))
            now = time.monotonic()
            if self._late:  # a cancel that landed after the read finished: forget it
                self._late = {t for t in self._late if not t.done()}
            for task, deadline in list(self._reads.items()):
                if deadline < now and task not in self._late:
                    self._late.add(task)
                    task.cancel()

    def stopping(self) -> None:
        """The server is shutting down: end the live streams so connections can drain."""
        self._closing = True
        self._notify()

    def _notify(self) -> None:
        ev = self._changed
        if ev is not None:
            self._changed = asyncio.Event()
            ev.set()

    def _read_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = st.connect(
                self.settings.storage.path,
                busy_ms=self.settings.storage.busy_timeout_ms,
                mmap_mb=self.settings.storage.read_mmap_mb,
            )
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self.writer is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, lambda: fn(self._read_conn()))

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            if path == "/callbacks" or path.startswith("/callbacks/"):
                await self.ingest(scope, receive, send, path)
                return
            if self._token is not None and path not in OPEN_PATHS and not self._bearer_ok(scope):
                self.metrics.query_auth_failures += 1
                await send_error(send, Unauthorized("a bearer token is required", "Bearer"))
                return
            if path.startswith("/calls/"):
                await self.call_route(scope, send)
                return
        await self.starlette(scope, receive, send)

    def _header(self, scope: Scope, name: bytes) -> bytes | None:
        for key, value in scope["headers"]:
            if key == name:
                return bytes(value)
        return None

    def _bearer_ok(self, scope: Scope) -> bool:
        got = self._header(scope, b"authorization") or b""
        scheme, _, token = got.partition(b" ")
        assert self._token is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)

    def _basic_ok(self, auth: bytes | None) -> bool:
        assert self._basic is not None
        if not auth:
            return False
        scheme, _, blob = auth.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(blob.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok_user = hmac.compare_digest(user, self._basic[0])
        ok_pass = hmac.compare_digest(password, self._basic[1])
        return ok_user and ok_pass

    # -- ingest ----------------------------------------------------------------------------------

    async def ingest(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        t0 = time.perf_counter()
        content_type = b""
        length: bytes | None = None
        auth: bytes | None = None
        expect = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"authorization":
                auth = value
            elif key == b"expect":
                expect = value
        if self._basic is not None and not self._basic_ok(auth):
            self.metrics.auth_failures += 1
            await send_error(
                send,
                Unauthorized("credentials are required for /callbacks", 'Basic realm="tracker"'),
            )
            return
        writer = self.writer
        body = b""
        method = scope["method"]
        try:
            if writer is None:
                raise StorageUnavailable("the service is not started (lifespan not run)")
            if method == "POST":
                body = await self._read_body(receive, length, expect)
                kind = _content_kind(content_type, body)
            elif method == "GET":
                kind = "query"
                body = scope["query_string"]
            else:
                raise MethodNotAllowed(f"{method} is not allowed on /callbacks: use POST or GET")
            entries, batch = parse_entries(body, kind, self.max_batch)
            results = await writer.submit(entries)
            status, answer = 200, _result_body(results, batch)
        except ClientGone:
            return
        except TrackerError as err:
            if err.status in QUARANTINED and writer is not None:
                partial = err.partial
                reject = st.Reject(
                    received_at=st.now_ms(),
                    status=err.status,
                    error=err.code,
                    detail=err.detail,
                    body=body if partial is None else partial,
                    content_type=content_type.decode("latin-1"),
                    path=path,
                    size=err.size,
                )
                try:
                    await writer.submit((), (reject,))
                    self.metrics.rejects[err.code] += 1
                except StorageUnavailable as unavailable:
                    err = unavailable  # the body could not be kept: the sender must retry
            # A refused body is still the application's to answer, but only a whole one: a
            # body cut short (408, 413 over the size limit), a wrong method or a storage
            # failure is answered here.
            if self.forwarder is not None and err.status in QUARANTINED and err.partial is None:
                await self.forwarder.relay(scope, body, None, send, path)
                return
            await send_error(
                send,
                err,
                close=err.status in (408, 413),
                allow=b"GET, POST",
                linger=receive if err.unread else None,  # a body we stopped reading
            )
            return
        self.metrics.ingest_seconds.observe(time.perf_counter() - t0)
        if self.forwarder is not None:
            await self.forwarder.relay(scope, body, results, send, path)
            return
        await send_bytes(send, status, answer)

    async def _read_body(self, receive: Receive, length: bytes | None, expect: bytes) -> bytes:
        limit = self.max_body
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                err = TooLarge(
                    f"the body is {declared} bytes; the limit is {limit} (max_body_bytes)"
                )
                if expect.lower() == b"100-continue":
                    # the client waits for a go-ahead before it sends the body (curl does for
                    # bodies over 1 MB): refuse it unsent. A client may also send it without
                    # waiting, so the answer still lingers (and never says 100 Continue).
                    err.partial, err.unread = b"", True
                else:  # the head, for the quarantine
                    err.partial, err.unread = await self._head(receive, [], True)
                err.size = declared
                raise err
        chunks: list[bytes] = []
        size = 0
        more = True
        # The deadline is kept by one sweeper task for all requests (an asyncio.timeout per
        # request costs more than the rest of the read); the first receive is covered too, so
        # a client that sends headers and then nothing is timed out.
        task = asyncio.current_task()
        reads = self._reads
        if task is not None:
            reads[task] = time.monotonic() + self.body_timeout
        try:
            while more and size <= limit:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                more = message.get("more_body", False)
        except asyncio.CancelledError:
            if task is None or task not in self._late:
                raise
            self._late.discard(task)
            task.uncancel()
            late = RequestTimeout(
                f"the body did not arrive within {self.body_timeout:g} s (body_timeout_seconds)"
            )
            late.partial = b"".join(chunks)
            late.unread = True
            raise late from None
        finally:
            if task is not None:
                reads.pop(task, None)
        if size > limit:
            err = TooLarge(f"the body exceeds {limit} bytes (max_body_bytes)")
            err.partial, err.unread = await self._head(receive, chunks, more)
            raise err
        return b"".join(chunks)

    async def _head(self, receive: Receive, chunks: list[bytes], more: bool) -> tuple[bytes, bool]:
        """A refused body's head for the quarantine: what was read, plus more up to one byte past
        ``quarantine_max_bytes`` (so the store marks it truncated), briefly; and whether the client
        may still be sending the rest."""
        cap = self.settings.ingest.quarantine_max_bytes
        size = sum(len(c) for c in chunks)
        try:
            async with asyncio.timeout(min(self.body_timeout, 5.0)):
                while more and size <= cap:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    size += len(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            pass
        return b"".join(chunks)[: cap + 1], more

    # -- query -----------------------------------------------------------------------------------

    async def call_route(self, scope: Scope, send: Send) -> None:
        """``GET /calls/{callId}`` and ``GET /calls/{callId}/events`` on the raw path."""
        raw = raw_route_path(scope)[len(b"/calls/") :]
        timeline = False
        if raw.endswith(b"/events"):
            raw, timeline = raw[: -len(b"/events")], True
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{scope['method']} is not allowed here: use GET")
            if not raw or b"/" in raw:
                raise NotFound("no such route: call ids with '/' must be percent-encoded (%2F)")
            try:
                call_id = unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise BadParameter("the call id is not valid UTF-8 percent-encoding") from None
            if self.reader is None:
                raise StorageUnavailable("the service is not started (lifespan not run)")
            if timeline:
                after, limit = _timeline_params(scope)
                found = await self._read(lambda c: _timeline_page(c, call_id, after, limit))
                if found is None:
                    raise NotFound(f"no call with id {call_id!r}")
                body = found
            else:
                found = st.get_view(self.reader, call_id)
                if found is None:
                    raise NotFound(f"no call with id {call_id!r}")
                body = found
        except TrackerError as err:
            await send_error(send, err, allow=b"GET, HEAD")
            return
        await send_bytes(send, 200, body)

    async def list_calls(self, request: Request) -> Response:
        params = _query(request)
        _only(params, {*st.FILTER_COLUMNS, "since", "until", "limit", "cursor"})
        # ?from=+1323... unencoded reads as " 1323...": the number it was, as on ingest
        filters = {k: v for k, v in restore_plus(params).items() if k in st.FILTER_COLUMNS}
        if "status" in filters and filters["status"] not in STATUSES:
            raise BadParameter(f"status must be one of {', '.join(sorted(STATUSES))}")
        if "outcome" in filters and filters["outcome"] not in OUTCOMES:
            raise BadParameter(f"outcome must be one of {', '.join(OUTCOMES)}")
        since, until = _time_param(params, "since"), _time_param(params, "until")
        limit = _int_param(params, "limit", 100, 1, 1000)
        before = None
        if "cursor" in params:
            before = _int_param(params, "cursor", 0, 1, MAX_SEQ)
        views, nxt = await self._read(
            lambda c: st.list_calls(
                c, filters, since=since, until=until, limit=limit, before_seq=before
            )
        )
        tail = b"null" if nxt is None else b'"%d"' % nxt
        return Response(
            b'{"calls":[' + b",".join(views) + b'],"next":' + tail + b"}",
            200,
            media_type="application/json",
        )

    async def stats(self, request: Request) -> Response:
        params = _query(request)
        _only(params, {"since", "until"})
        since, until = _time_param(params, "since"), _time_param(params, "until")
        out = await self._read(lambda c: st.stats(c, since=since, until=until))
        return Response(_json.encode(out), media_type="application/json")

    async def events(self, request: Request) -> Response:
        params = _query(request)
        _only(params, {"after", "limit"})
        after = _int_param(params, "after", 0, 0, MAX_SEQ)
        limit = _int_param(params, "limit", 100, 1, 1000)
        rows = await self._read(lambda c: st.events_after(c, after, limit))
        nxt = rows[-1].seq if len(rows) == limit else None
        return Response(_json.encode({"events": rows, "next": nxt}), media_type="application/json")

    async def stream(self, request: Request) -> Response:
        params = _query(request)
        _only(params, {"after"})
        after = _int_param(params, "after", 0, 0, MAX_SEQ)
        last_id = request.headers.get("last-event-id")
        if last_id is not None:  # the same strict reading as ?after= (no "1_0", " 3 ", 2**63)
            after = _int_param({"Last-Event-ID": last_id}, "Last-Event-ID", 0, 0, MAX_SEQ)
        if self._changed is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        return StreamingResponse(
            self._sse(after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, after: int) -> AsyncIterator[bytes]:
        last = after
        self.sse_clients += 1
        try:
            yield b"retry: 1000\n\n"
            while not self._closing:
                changed = self._changed
                rows = await self._read(partial(st.events_after, after=last, limit=500))
                if rows:
                    parts = []
                    for row in rows:
                        data = _json.encode(st.one_line(row))
                        parts.append(b"id: %d\nevent: callback\ndata: %s\n\n" % (row.seq, data))
                        last = row.seq
                    yield b"".join(parts)
                    continue
                if changed is None:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self.sse_clients -= 1

    async def rejects(self, request: Request) -> Response:
        params = _query(request)
        _only(params, {"after", "limit"})
        after = _int_param(params, "after", 0, 0, MAX_SEQ)
        limit = _int_param(params, "limit", 100, 1, 1000)
        rows, nxt = await self._read(lambda c: st.list_rejects(c, after, limit))
        return Response(_json.encode({"rejects": rows, "next": nxt}), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        writer = self.writer
        if writer is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        ok, detail = await asyncio.get_running_loop().run_in_executor(
            self._read_pool, self._writable
        )
        if not ok:
            raise StorageUnavailable(detail)
        if self._token is not None and not self._bearer_ok(request.scope):
            # an open route: with a token set, how much was ingested is for those who hold it
            return Response(b'{"status":"ready"}', media_type="application/json")
        return Response(
            _json.encode({"status": "ready", "lastSeq": writer.last_seq}),
            media_type="application/json",
        )

    def _writable(self) -> tuple[bool, str]:
        """Storage is writable: the file opens read-write and a write lock can be taken."""
        writer = self.writer
        conn = None
        try:
            conn = self._read_conn()
            conn.execute("BEGIN IMMEDIATE")
            if writer is not None and not writer.healthy:
                # The last commit failed. Taking the lock writes nothing, so it passes on a full
                # disk: only a real (one-page) write shows whether the fault is gone.
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            from tracker.writer import describe_storage_error

            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return False, describe_storage_error(err)
        return True, ""

    async def metrics_route(self, request: Request) -> Response:
        last = self.writer.last_seq if self.writer is not None else 0
        return Response(
            self.metrics.render(last, self.sse_clients),
            media_type="text/plain; version=0.0.4",
        )

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    # -- errors ----------------------------------------------------------------------------------

    async def _handle_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TrackerError)
        return error_response(exc)

    async def _handle_http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.url.path}"))
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow")  # Starlette names the allowed methods
            return error_response(
                MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"),
                allow=None if allow is None else allow.encode(),
            )
        return Response(
            _json.encode({"error": "http_error", "detail": str(exc.detail)}),
            exc.status_code,
            media_type="application/json",
        )

    async def _handle_crash(self, request: Request, exc: Exception) -> Response:
        return Response(
            _json.encode(
                {"error": "internal", "detail": f"unexpected error: {type(exc).__name__}"}
            ),
            500,
            media_type="application/json",
        )


def create_app(settings: Settings | None = None) -> TrackerApp:
    """The tracker as an ASGI app (its lifespan opens storage; see ``TrackerApp.lifespan``)."""
    return TrackerApp(settings or Settings())
