"""The HTTP service: ``create_app(settings)``, assembled from its parts.

``/callbacks`` goes to the lean ingest path (:mod:`tracker.http.callbacks`), ``/calls/{callId}``
to the raw-path route of :mod:`tracker.http.queries`; everything else is a small Starlette
application (the query routes, the live stream of :mod:`tracker.http.stream`, health, metrics,
the OpenAPI document, the dashboard of :mod:`tracker.http.dashboard`). The lifespan opens the
storage, starts the group-commit writer (and the forwarder), and on exit drains and closes them.
Errors are data (:mod:`tracker.errors`) rendered by :func:`tracker.http.asgi.error_response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracker.config import Settings
from tracker.errors import (
    HostNotAllowed,
    MethodNotAllowed,
    NotFound,
    StorageUnavailable,
    TrackerError,
    Unauthorized,
)
from tracker.guards import HostCheck
from tracker.http.asgi import (
    Receive,
    Scope,
    Send,
    error_response,
    header,
    raw_route_path,
    route_path,
    send_error,
)
from tracker.http.callbacks import Callbacks
from tracker.http.dashboard import Dashboard, is_page
from tracker.http.queries import Queries
from tracker.http.stream import LiveStream
from tracker.metrics import Metrics
from tracker.openapi import document
from tracker.reconcile import start_reconciler, stop_reconciler
from tracker.records import Appended
from tracker.routes import ROUTES
from tracker.storage import Storage, open_storage
from tracker.writer import Writer

_json = msgspec.json.Encoder()
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# what follows may hold %2F: a /callbacks sub-path, a call id (API and dashboard)
_RAW_PREFIXES = (b"/callbacks/", b"/calls/", b"/ui/calls/")

__all__ = ["TrackerApp", "create_app", "raw_route_path", "route_path"]


def _tally(done: list[tuple[Any, list[Appended]]]) -> tuple[int, int, dict[str, int]]:
    """A commit's events, duplicates and new events by type (counted once per commit: one
    increment per type, not per event)."""
    n = duplicates = 0
    types: dict[str, int] = {}
    for entries, results in done:
        for e, r in zip(entries, results, strict=False):
            n += 1
            if r.duplicate:
                duplicates += 1
            else:
                types[e.event_type] = types.get(e.event_type, 0) + 1
    return n, duplicates, types


class TrackerApp:
    """The ASGI application ``create_app`` returns. Mountable: see :meth:`lifespan`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.storage: Storage | None = None
        self.writer: Writer | None = None
        self.forwarder: Any = None
        self.callbacks = Callbacks(settings, self.metrics)
        self.queries = Queries(int(settings.reconcile.stale_after_seconds * 1000))
        self.reconciler: Any = None
        self.live = LiveStream(self.queries, self.metrics, settings.query.max_streams)
        self._sweeper: asyncio.Task[None] | None = None
        self._token = settings.query.token.encode() if settings.query.token else None
        hosts = HostCheck(settings.server.allowed_hosts)
        # None: any host (allowed_hosts unset, as when embedded, or "*")
        self._hosts = None if hosts.any or not settings.server.allowed_hosts else hosts
        self.dashboard = Dashboard(self._token, self.metrics)
        routes = [
            Route(r.served or r.path, self._handler(r.handler), methods=list(r.methods))
            for r in ROUTES
            if not r.raw
        ]
        self.starlette = Starlette(
            routes=routes,
            lifespan=lambda app: self.lifespan(app),
            exception_handlers={
                TrackerError: self._handle_error,
                HTTPException: self._handle_http,
                Exception: self._handle_crash,
            },
        )
        # /events/ is no route: Starlette would redirect it to /events, to an absolute URL
        # built from the Host header
        self.starlette.router.redirect_slashes = False
        self._openapi = _json.encode(document())

    def _handler(self, name: str) -> Any:
        obj: Any = self
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the storage and start the writer (what the lifespan does)."""
        if self.settings.forward.url:  # first: a bad forward.url fails before anything is opened
            from tracker.http.forward import Forwarder  # only when forwarding is configured

            self.forwarder = Forwarder(
                self.settings.forward, self.metrics, self.settings.server.forwarded_allow_ips
            )
        try:
            storage = open_storage(self.settings, deferred=True)
        except BaseException:
            self.forwarder = None  # it has not connected anywhere yet: nothing to close
            raise
        self.storage = storage
        self.writer = Writer(
            storage,
            max_events=self.settings.ingest.max_commit_events,
            on_commit=self._on_commit,
            on_error=self._on_error,
        )
        self.writer.start()
        self.queries.storage = storage
        self.callbacks.writer = self.writer
        self.callbacks.forwarder = self.forwarder
        self.live.start(storage)
        self._sweeper = asyncio.get_running_loop().create_task(self.callbacks.sweep_reads())
        self.reconciler = start_reconciler(storage, self.writer, self.settings, self.metrics)

    async def close(self) -> None:
        """Stop streams, commit everything queued, checkpoint, close."""
        self.live.stop()
        self.reconciler = await stop_reconciler(self.reconciler)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.callbacks.forwarder = None
        if self.forwarder is not None:
            await self.forwarder.close()
            self.forwarder = None
        self.callbacks.writer = None
        self.queries.storage = None
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)  # closes storage
        self.storage = None

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

    def _on_commit(
        self, last_seq: int, done: list[tuple[Any, list[Appended]]], elapsed: float
    ) -> None:
        m = self.metrics
        n, duplicates, types = _tally(done)
        for event_type, count in types.items():
            m.count_ingested(event_type, count)
        if duplicates:
            m.duplicates.inc(duplicates)
        m.batch_events.observe(n)
        m.commit_seconds.observe(elapsed)
        self.live.notify()

    def _on_error(self) -> None:
        self.metrics.storage_errors.inc()

    def stopping(self) -> None:
        """The server is shutting down: end the live streams so connections can drain."""
        self.live.stop()

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._hosts is not None and not self._hosts.allows(header(scope, b"host")):
                await send_error(send, _host_refused(header(scope, b"host")))
                return
            path = route_path(scope)
            # Routes are read from the raw path: an encoded slash (%2F) is part of a segment,
            # never a separator, so it may appear only in a call id or a /callbacks sub-path.
            raw = raw_route_path(scope) if b"%" in scope.get("raw_path", b"") else b""
            slashed = not raw.startswith(_RAW_PREFIXES) and b"%2f" in raw.lower()
            if (path == "/callbacks" or path.startswith("/callbacks/")) and not slashed:
                await self.callbacks(scope, receive, send, path)
                return
            if (
                self._token is not None
                and path not in OPEN_PATHS
                and not is_page(path)  # the pages and their assets hold no data
                and not self._bearer_ok(scope)
                and not self.dashboard.cookie_ok(scope)  # the dashboard's session
            ):
                self.metrics.query_auth_failures.inc()
                await send_error(send, Unauthorized("a bearer token is required", "Bearer"))
                return
            if slashed:
                await send_error(
                    send, NotFound(f"no route {path}: '/' must be a real slash here, not %2F")
                )
                return
            if path.startswith("/calls/") and (not raw or raw.startswith(b"/calls/")):
                await self.queries.call_route(scope, send)
                return
        await self.starlette(scope, receive, send)

    def _bearer_ok(self, scope: Scope) -> bool:
        got = header(scope, b"authorization") or b""
        scheme, _, token = got.partition(b" ")
        assert self._token is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)

    # -- health, metrics, the document -----------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        writer = self.writer
        if writer is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        # after a failed commit, only a real write proves the fault gone
        head = await self.queries.read(partial(_ready, write=not writer.healthy))
        scope = request.scope
        if (
            self._token is not None
            and not self._bearer_ok(scope)
            and not self.dashboard.cookie_ok(scope)
        ):
            # an open route: with a token set, how much was ingested is for those who hold it
            return Response(b'{"status":"ready"}', media_type="application/json")
        return Response(
            _json.encode({"status": "ready", "lastSeq": head}),
            media_type="application/json",
        )

    async def metrics_route(self, request: Request) -> Response:
        last = self.writer.last_seq if self.writer is not None else 0
        stale: int | None = None
        with contextlib.suppress(StorageUnavailable):  # metrics go on without the database
            last = await self.queries.read(_head)  # the log's head, whoever committed it
            stale = await self.queries.stale_count()
        return Response(self.metrics.render(last, stale), media_type="text/plain; version=0.0.4")

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


def _ready(storage: Storage, *, write: bool) -> int:
    """``/readyz``: the probe, then the log's head (other workers or hosts commit too)."""
    storage.probe(write=write)
    return storage.head()


def _head(storage: Storage) -> int:
    return storage.head()


def _host_refused(got: bytes | None) -> HostNotAllowed:
    shown = "no Host header" if got is None else f"the Host {got.decode('latin-1')[:100]!r}"
    return HostNotAllowed(
        f"{shown} is not a name this server answers to: "
        "add it to server.allowed_hosts (DNS-rebinding protection)"
    )


def create_app(settings: Settings | None = None) -> TrackerApp:
    """The tracker as an ASGI app (its lifespan opens storage; see ``TrackerApp.lifespan``)."""
    return TrackerApp(settings or Settings())
