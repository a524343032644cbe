"""The one table of routes. The app serves exactly these and ``/openapi.json`` documents exactly
these (``tracker.openapi`` refuses to build a document that misses or adds one)."""

from __future__ import annotations

from typing import Final, NamedTuple


class RouteSpec(NamedTuple):
    path: str  # OpenAPI path template
    methods: tuple[str, ...]  # GET also answers HEAD
    handler: str  # what serves it: an attribute path from the TrackerApp ("queries.stats")
    raw: bool = False  # matched on the raw path ahead of Starlette (see TrackerApp.__call__)
    served: str = ""  # the Starlette pattern, when it is not ``path`` ({name:path} convertors)


ROUTES: Final = (
    RouteSpec("/callbacks", ("POST", "GET"), "callbacks", raw=True),
    RouteSpec("/callbacks/{path}", ("POST", "GET"), "callbacks", raw=True),
    RouteSpec("/calls/{callId}", ("GET",), "queries.call_route", raw=True),
    RouteSpec("/calls/{callId}/events", ("GET",), "queries.call_route", raw=True),
    RouteSpec("/calls", ("GET",), "queries.list_calls"),
    RouteSpec("/stats", ("GET",), "queries.stats"),
    RouteSpec("/stats/series", ("GET",), "queries.series"),
    RouteSpec("/events", ("GET",), "queries.events"),
    RouteSpec("/events/stream", ("GET",), "live.stream"),
    RouteSpec("/rejects", ("GET",), "queries.rejects"),
    RouteSpec("/healthz", ("GET",), "healthz"),
    RouteSpec("/readyz", ("GET",), "readyz"),
    RouteSpec("/metrics", ("GET",), "metrics_route"),
    RouteSpec("/openapi.json", ("GET",), "openapi"),
    # the dashboard (tracker/http/dashboard.py)
    RouteSpec("/", ("GET",), "dashboard.page"),
    RouteSpec("/ui/calls/{callId}", ("GET",), "dashboard.page", served="/ui/calls/{callId:path}"),
    RouteSpec("/ui/static/{name}", ("GET",), "dashboard.asset", served="/ui/static/{name:path}"),
    RouteSpec("/favicon.ico", ("GET",), "dashboard.favicon"),
    RouteSpec("/ui/sign-in", ("POST",), "dashboard.sign_in"),
    RouteSpec("/ui/sign-out", ("POST",), "dashboard.sign_out"),
)
