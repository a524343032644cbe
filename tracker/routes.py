"""The one table of routes. The app serves exactly these and ``/openapi.json`` documents exactly
these (``tracker.openapi`` refuses to build a document that misses or adds one)."""

from __future__ import annotations

from typing import Final, NamedTuple


class RouteSpec(NamedTuple):
    path: str  # OpenAPI path template
    methods: tuple[str, ...]  # GET also answers HEAD
    handler: str  # the TrackerApp method that serves it
    raw: bool = False  # matched on the raw path ahead of Starlette (see TrackerApp.__call__)


ROUTES: Final = (
    RouteSpec("/callbacks", ("POST", "GET"), "ingest", raw=True),
    RouteSpec("/callbacks/{path}", ("POST", "GET"), "ingest", raw=True),
    RouteSpec("/calls/{callId}", ("GET",), "call_route", raw=True),
    RouteSpec("/calls/{callId}/events", ("GET",), "call_route", raw=True),
    RouteSpec("/calls", ("GET",), "list_calls"),
    RouteSpec("/stats", ("GET",), "stats"),
    RouteSpec("/events", ("GET",), "events"),
    RouteSpec("/events/stream", ("GET",), "stream"),
    RouteSpec("/rejects", ("GET",), "rejects"),
    RouteSpec("/healthz", ("GET",), "healthz"),
    RouteSpec("/readyz", ("GET",), "readyz"),
    RouteSpec("/metrics", ("GET",), "metrics_route"),
    RouteSpec("/openapi.json", ("GET",), "openapi"),
)
