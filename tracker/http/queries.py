"""The query routes: a call and its timeline (on the raw path: call ids are arbitrary strings,
``{callId}``, quotes, percent-encoded slashes), pages of calls, stats, the log, the quarantine.

Reads that scan run on a pool of two threads (each with its own storage connection): more
threads only queue up for the GIL on every row, and each holds its own page cache (measured,
BENCHMARKS.md). A lookup by id runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar
from urllib.parse import unquote_to_bytes

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tracker.errors import (
    BadParameter,
    MethodNotAllowed,
    NotFound,
    StorageUnavailable,
    TrackerError,
)
from tracker.events import format_time, parse_time, restore_plus
from tracker.http.asgi import Scope, Send, raw_route_path, send_bytes, send_error
from tracker.ingest import parse_fields
from tracker.records import FILTERS, TimelinePlace, format_place, now_ms, parse_place
from tracker.render import call_json, event_rows, reject_row, stats_json
from tracker.state import OUTCOMES
from tracker.storage import Storage

_json = msgspec.json.Encoder()
MAX_SEQ: Final = (1 << 63) - 1
READ_THREADS: Final = 2
STATUSES: Final = frozenset({"started", "answered", "ended"})
MAX_BUCKETS: Final = 1440  # the most buckets GET /stats/series answers
MAX_STEP: Final = 366 * 86400  # seconds: its widest bucket
# Bucket widths (seconds) it picks from when none is asked for: the smallest that fits.
NICE_STEPS: Final = (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800, 2592000)
T = TypeVar("T")


def int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
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


def time_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    value = parse_time(raw)
    if value is None:
        raise BadParameter(f"{name} must be an ISO-8601 time such as 2012-11-14T15:55:01Z")
    return value


def only(params: Mapping[str, str], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadParameter(f"unknown parameter {name!r} (known: {known})")


def query_params(request: Request) -> dict[str, str]:
    fields = parse_fields(request.scope["query_string"])
    if fields is None:
        raise BadParameter("the query string is not valid UTF-8 percent-encoding")
    return fields


def timeline_params(scope: Scope) -> tuple[TimelinePlace | None, int]:
    """``after`` and ``limit`` of ``GET /calls/{callId}/events``."""
    fields = parse_fields(scope["query_string"])
    if fields is None:
        raise BadParameter("the query string is not valid UTF-8 percent-encoding")
    only(fields, {"after", "limit"})
    limit = int_param(fields, "limit", 100, 1, 1000)
    raw = fields.get("after")
    if raw is None:
        return None, limit
    try:
        return parse_place(raw), limit
    except ValueError:
        raise BadParameter(
            f"after must be the next of a previous page (such as 1352908501000.17), got {raw!r}"
        ) from None


def timeline_json(
    storage: Storage, call_id: str, after: TimelinePlace | None, limit: int
) -> bytes | None:
    """A page of the timeline as JSON, encoded in the read thread, not on the event loop."""
    found = storage.timeline(call_id, after=after, limit=limit)
    if found is None:
        return None
    events, nxt = found
    return _json.encode(
        {
            "callId": call_id,
            "events": event_rows(events),
            "next": None if nxt is None else format_place(nxt),
        }
    )


class Queries:
    """The query routes on one storage (set by the app's lifespan; ``None`` before)."""

    def __init__(self, stale_after_ms: int = 14_400_000) -> None:
        self.storage: Storage | None = None
        self.stale_after_ms = stale_after_ms  # [reconcile] stale_after_seconds (SPEC §11)
        self.pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="read")

    async def read(self, fn: Callable[[Storage], T]) -> T:
        """``fn(storage)`` on the read pool."""
        storage = self.storage
        if storage is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, storage)

    def stale_before(self) -> int:
        """The receipt time before which a call not ended is stale, now."""
        return now_ms() - self.stale_after_ms

    async def stale_count(self) -> int | None:
        """How many calls are stale now (``/metrics``); ``None`` when storage cannot say."""
        cutoff = self.stale_before()
        try:
            return await self.read(lambda s: s.stale_count(cutoff))
        except TrackerError:  # storage down: the other figures are still worth a scrape
            return None

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
            storage = self.storage
            if storage is None:
                raise StorageUnavailable("the service is not started (lifespan not run)")
            if timeline:
                after, limit = timeline_params(scope)
                page = await self.read(lambda s: timeline_json(s, call_id, after, limit))
                if page is None:
                    raise NotFound(f"no call with id {call_id!r}")
                body = page
            else:
                found = storage.call(call_id)  # on the loop: an index lookup is cheaper than a hop
                if found is None:
                    raise NotFound(f"no call with id {call_id!r}")
                body = call_json(found)
        except TrackerError as err:
            await send_error(send, err, allow=b"GET, HEAD")
            return
        await send_bytes(send, 200, body)

    async def list_calls(self, request: Request) -> Response:
        params = query_params(request)
        only(params, {*FILTERS, "since", "until", "limit", "cursor", "stale"})
        # ?from=+1323... unencoded reads as " 1323...": the number it was, as on ingest
        filters = {k: v for k, v in restore_plus(params).items() if k in FILTERS}
        if "status" in filters and filters["status"] not in STATUSES:
            raise BadParameter(f"status must be one of {', '.join(sorted(STATUSES))}")
        if "outcome" in filters and filters["outcome"] not in OUTCOMES:
            raise BadParameter(f"outcome must be one of {', '.join(OUTCOMES)}")
        since, until = time_param(params, "since"), time_param(params, "until")
        limit = int_param(params, "limit", 100, 1, 1000)
        before = None
        if "cursor" in params:
            before = int_param(params, "cursor", 0, 1, MAX_SEQ)
        stale: bool | None = None
        if "stale" in params:
            if params["stale"] not in ("true", "false"):
                raise BadParameter("stale must be true or false")
            stale = params["stale"] == "true"
        cutoff = self.stale_before()
        calls, nxt = await self.read(
            lambda s: s.calls(
                filters,
                since=since,
                until=until,
                limit=limit,
                before_seq=before,
                stale=stale,
                stale_before=cutoff,
            )
        )
        views = [call_json(c) for c in calls]
        tail = b"null" if nxt is None else b'"%d"' % nxt
        return Response(
            b'{"calls":[' + b",".join(views) + b'],"next":' + tail + b"}",
            200,
            media_type="application/json",
        )

    async def stats(self, request: Request) -> Response:
        params = query_params(request)
        only(params, {"since", "until"})
        since, until = time_param(params, "since"), time_param(params, "until")
        cutoff = self.stale_before()
        out = await self.read(lambda s: s.stats(since=since, until=until, stale_before=cutoff))
        return Response(_json.encode(stats_json(out)), media_type="application/json")

    async def series(self, request: Request) -> Response:
        """Calls per time bucket by outcome (the dashboard's chart)."""
        params = query_params(request)
        only(params, {"since", "until", "step"})
        since, until = time_param(params, "since"), time_param(params, "until")
        step = int_param(params, "step", 0, 1, MAX_STEP) if "step" in params else None
        if since is None or until is None:
            lo, hi = await self.read(lambda s: s.time_bounds())
            if until is None:
                until = hi + 1 if hi is not None and since is None else now_ms()
            if since is None:
                since = lo if lo is not None and lo < until else until
        if until < since:
            raise BadParameter("until must not be before since")
        span = until - since
        if step is None:  # the smallest usual width that fits; buckets start on its multiples
            step = next((s for s in NICE_STEPS if span <= s * 1000 * MAX_BUCKETS), MAX_STEP)
            if "since" not in params and span > 0:
                since -= since % (step * 1000)
                span = until - since
        buckets = -(-span // (step * 1000))
        if buckets > MAX_BUCKETS:
            raise BadParameter(
                f"step must cut the range into at most {MAX_BUCKETS} buckets; {step} s cuts "
                f"it into {buckets}: give a larger step or a shorter range"
            )
        step_ms = step * 1000
        start = since
        counts = await self.read(lambda s: s.series(since=start, until=until, step_ms=step_ms))
        body = {
            "since": format_time(since),
            "until": format_time(until),
            "stepSeconds": step,
            "times": [format_time(since + i * step_ms) for i in range(buckets)],
            "byOutcome": {k: v[:buckets] for k, v in sorted(counts.items())},
        }
        return Response(_json.encode(body), media_type="application/json")

    async def events(self, request: Request) -> Response:
        params = query_params(request)
        only(params, {"after", "limit"})
        after = int_param(params, "after", 0, 0, MAX_SEQ)
        limit = int_param(params, "limit", 100, 1, 1000)
        rows = event_rows(await self.read(lambda s: s.events_after(after, limit)))
        nxt = rows[-1].seq if len(rows) == limit else None
        return Response(_json.encode({"events": rows, "next": nxt}), media_type="application/json")

    async def rejects(self, request: Request) -> Response:
        params = query_params(request)
        only(params, {"after", "limit"})
        after = int_param(params, "after", 0, 0, MAX_SEQ)
        limit = int_param(params, "limit", 100, 1, 1000)
        stored, nxt = await self.read(lambda s: s.rejects(after, limit))
        rows = [reject_row(r) for r in stored]
        return Response(_json.encode({"rejects": rows, "next": nxt}), media_type="application/json")
