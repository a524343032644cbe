"""The OpenAPI 3.1 document of every route in :data:`tracker.routes.ROUTES` (schemas come from
the Structs, as JSON Schema 2020-12, which is what OpenAPI 3.1 uses)."""

from __future__ import annotations

from typing import Any

import msgspec

from tracker.render import CallView, EventRow, RejectRow
from tracker.routes import ROUTES
from tracker.state import OUTCOMES


class Error(msgspec.Struct):
    """Every error: a machine-readable code and a sentence a person can act on."""

    error: str
    detail: str


class Appended(msgspec.Struct):
    seq: int
    duplicate: bool


class BatchAppended(msgspec.Struct):
    results: list[Appended]


class CallList(msgspec.Struct):
    calls: list[CallView]
    next: str | None


class Timeline(msgspec.Struct):
    callId: str
    events: list[EventRow]
    next: str | None  # the ``after`` of the next page; null on the last page


class Kpis(msgspec.Struct):
    """Over the ended calls in the range; null when there is nothing to divide or average."""

    attempts: int
    answered: int
    asr: float | None
    acd: float | None
    averageRingSeconds: float | None


class Stats(msgspec.Struct):
    total: int
    byStatus: dict[str, int]
    byOutcome: dict[str, int]
    byCause: dict[str, int]
    stale: int  # calls not ended with nothing received for [reconcile] stale_after_seconds
    kpis: Kpis


class Series(msgspec.Struct):
    """Calls by bucket of ``firstEventAt`` and outcome (``in_progress``: not ended yet)."""

    since: str
    until: str
    stepSeconds: int
    times: list[str]
    byOutcome: dict[str, list[int]]


class EventPage(msgspec.Struct):
    events: list[EventRow]
    next: int | None


class RejectPage(msgspec.Struct):
    rejects: list[RejectRow]
    next: int | None


def _schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            Error,
            Appended,
            BatchAppended,
            CallView,
            CallList,
            Timeline,
            Stats,
            Series,
            EventPage,
            RejectPage,
        ],
        ref_template="#/components/schemas/{name}",
    )
    return components


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad parameter, body, path or Host (the detail names it)",
        401: "Missing or wrong credentials",
        403: "A browser's cross-site request",
        404: "Not found",
        405: "Method not allowed",
        408: "The body did not arrive in time",
        413: "Body or batch too large",
        415: "Unsupported content type",
        422: "Invalid event (the detail names the field)",
        503: "Storage cannot commit",
    }
    return {str(c): _json("Error", text[c]) for c in codes}


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_TIME = {"type": "string", "format": "date-time"}
_SEQ = {"type": "integer", "minimum": 0}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}


def _check(paths: dict[str, Any]) -> None:
    """The document describes exactly :data:`tracker.routes.ROUTES`, path for path and method
    for method: a route added or removed on one side only fails here, at start-up."""
    served = {r.path: {m.lower() for m in r.methods} for r in ROUTES}
    documented = {path: set(ops) for path, ops in paths.items()}
    if served != documented:
        raise RuntimeError(f"/openapi.json differs from the routes: {served} != {documented}")


def document() -> dict[str, Any]:
    ingest_body = {
        "required": False,
        "content": {
            "application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        },
    }
    ingest_answers = {
        "200": {
            "description": "Committed to the log (or recognised as a duplicate)",
            "content": {
                "application/json": {"schema": {"oneOf": [_ref("Appended"), _ref("BatchAppended")]}}
            },
        },
        **_errors(400, 401, 403, 405, 408, 413, 415, 422, 503),
    }
    post = {
        "summary": "Receive a Bandwidth callback (one event, or an array for backfill)",
        "requestBody": ingest_body,
        "responses": ingest_answers,
    }
    get = {
        "summary": "Receive a Bandwidth callback in GET mode (query parameters are the event)",
        "parameters": [_q("eventType", "The event type"), _q("callId", "The call id")],
        "responses": ingest_answers,
    }
    sub = {
        "name": "path",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Any sub-path (kept with the reject, passed on when forwarding)",
    }
    call_id = {
        "name": "callId",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The call id, percent-encoded",
    }
    filters = [
        _q("status", "Call status", {"type": "string", "enum": ["started", "answered", "ended"]}),
        _q("outcome", "Call outcome", {"type": "string", "enum": list(OUTCOMES)}),
        _q("cause", "Raw cause"),
        _q("direction", "Direction"),
        _q("from", "Caller number"),
        _q("to", "Called number"),
        _q("tag", "Tag"),
        _q(
            "stale",
            "Stale calls (not ended, nothing received for [reconcile] stale_after_seconds) or not",
            {"type": "string", "enum": ["true", "false"]},
        ),
        _q("since", "firstEventAt >= since", _TIME),
        _q("until", "firstEventAt < until", _TIME),
        _q("limit", "Page size", _LIMIT),
        _q("cursor", "The previous page's next", {"type": "string", "pattern": "^[0-9]+$"}),
    ]
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    html = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
    redirect = {"description": "Signed in or out: on to the page (sets or clears the cookie)"}
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"token": {"type": "string"}, "next": {"type": "string"}},
                }
            }
        },
    }
    paths: dict[str, Any] = {
        "/callbacks": {"post": post, "get": get},
        "/callbacks/{path}": {
            "post": {**post, "parameters": [sub]},
            "get": {**get, "parameters": [sub, *get["parameters"]]},
        },
        "/calls/{callId}": {
            "get": {
                "summary": "A call's state",
                "parameters": [call_id],
                "responses": {"200": _json("CallView", "The call"), **_errors(400, 401, 404, 503)},
            }
        },
        "/calls/{callId}/events": {
            "get": {
                "summary": "A page of a call's timeline (by event time, untimed last, then seq)",
                "parameters": [
                    call_id,
                    _q(
                        "after",
                        "Continue after this place: the next of the previous page (opaque)",
                        {"type": "string", "pattern": r"^(-?[0-9]{1,19}|u)\.[0-9]{1,19}$"},
                    ),
                    _q("limit", "Most events in the page (fewer past 4 MiB of payloads)", _LIMIT),
                ],
                "responses": {
                    "200": _json("Timeline", "The events"),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/calls": {
            "get": {
                "summary": "Calls, most recently changed first (keyset pagination)",
                "parameters": filters,
                "responses": {"200": _json("CallList", "A page of calls"), **_errors(400, 401)},
            }
        },
        "/stats": {
            "get": {
                "summary": "Counts by status, outcome and cause",
                "parameters": [
                    _q("since", "firstEventAt >= since", _TIME),
                    _q("until", "firstEventAt < until", _TIME),
                ],
                "responses": {"200": _json("Stats", "Counts"), **_errors(400, 401)},
            }
        },
        "/stats/series": {
            "get": {
                "summary": "Calls per time bucket by outcome (by firstEventAt), for a chart",
                "parameters": [
                    _q("since", "First bucket's start (default: the earliest call)", _TIME),
                    _q(
                        "until",
                        "End, exclusive (default: now; with neither bound: after the latest call)",
                        _TIME,
                    ),
                    _q(
                        "step",
                        "Bucket width in seconds (default: the smallest of 1 min, 5 min, 15 min,"
                        " 30 min, 1 h, 2 h, 6 h, 12 h, 1 d, 7 d, 30 d that gives at most 1440)",
                        {"type": "integer", "minimum": 1, "maximum": 366 * 86400},
                    ),
                ],
                "responses": {"200": _json("Series", "Counts per bucket"), **_errors(400, 401)},
            }
        },
        "/events": {
            "get": {
                "summary": "The global log in seq order, for catch-up",
                "parameters": [
                    _q("after", "Events after this seq", _SEQ),
                    _q("limit", "Page size", _LIMIT),
                ],
                "responses": {"200": _json("EventPage", "A page of events"), **_errors(400, 401)},
            }
        },
        "/events/stream": {
            "get": {
                "summary": "The log as server-sent events, live (id = seq; honours Last-Event-ID)",
                "parameters": [_q("after", "Start after this seq", _SEQ)],
                "responses": {
                    "200": {
                        "description": "An endless event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401),
                    "503": _json(
                        "Error",
                        "query.max_streams streams are open in this process (too_many_streams)",
                    ),
                },
            }
        },
        "/rejects": {
            "get": {
                "summary": "The quarantine of refused bodies",
                "parameters": [
                    _q("after", "Rejects after this id", _SEQ),
                    _q("limit", "Page size", _LIMIT),
                ],
                "responses": {"200": _json("RejectPage", "A page of rejects"), **_errors(400, 401)},
            }
        },
        "/healthz": {
            "get": {"summary": "The process is up", "responses": {"200": {"description": "OK"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Storage is writable",
                "responses": {"200": {"description": "Ready"}, **_errors(503)},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": text, **_errors(401)}}
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}, **_errors(401)},
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard (HTML; its script reads this API). Open without a token:"
                " it holds no data. ?token= signs in",
                "parameters": [_q("token", "The query token: sets the session cookie")],
                "responses": {"200": html, "303": redirect},
            }
        },
        "/ui/calls/{callId}": {
            "get": {
                "summary": "A call's page on the dashboard (HTML)",
                "parameters": [call_id],
                "responses": {"200": html},
            }
        },
        "/ui/static/{name}": {
            "get": {
                "summary": "The dashboard's scripts, styles and icon (served from the package)",
                "parameters": [{**sub, "name": "name", "description": "The file"}],
                "responses": {"200": {"description": "The file"}, **_errors(404)},
            }
        },
        "/favicon.ico": {
            "get": {
                "summary": "The icon (SVG), for browsers that ask for it on any page",
                "responses": {"200": {"description": "The icon"}},
            }
        },
        "/ui/sign-in": {
            "post": {
                "summary": "The sign-in form: a right token sets the HttpOnly session cookie",
                "requestBody": form,
                "responses": {"200": html, "303": redirect, **_errors(400, 413)},
            }
        },
        "/ui/sign-out": {
            "post": {
                "summary": "Clears the session cookie",
                "responses": {"303": redirect, **_errors(400)},
            }
        },
    }
    _check(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tracker",
            "version": "0.1.0",
            "description": "Call-state tracker for Bandwidth voice callbacks",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "ingestBasic": {"type": "http", "scheme": "basic"},
                "queryBearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
