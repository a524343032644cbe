"""The records that cross the storage boundary: what the shell hands to storage and what it gets
back. Plain data (NamedTuples on the hot path), no I/O: any backend speaks in these.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from tracker.state import CallState, Fact

#: The filters of a page of calls (``GET /calls``), by their API names.
FILTERS: Final = ("status", "outcome", "cause", "direction", "from", "to", "tag")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Entry(NamedTuple):
    """One accepted event, ready to append: decoded once, on the caller's side
    (:func:`tracker.ingest.make_entry`).

    (NamedTuples, not frozen dataclasses: these are built per event on the hot path.)"""

    dkey: bytes  # the dedupe key: 8 bytes of event time, then the 16-byte content digest
    api: int
    event_type: str
    call_id: str | None
    event_time: int | None
    fact: Fact
    fact_blob: bytes  # ``fact`` as msgpack: what replay folds, so it never re-parses JSON
    fmt: str  # "json", "form" or "query": how the body bytes are to be read
    body: bytes
    received_at: int
    origin: str | None = None  # None: received; ORIGIN_RECONCILE: the tracker's own event


#: The log's ``origin`` of the events the tracker appends itself (SPEC §11's ``reconciled``).
ORIGIN_RECONCILE: Final = "reconcile"


class Appended(NamedTuple):
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Reject:
    """A refused body for the quarantine."""

    received_at: int
    status: int
    error: str
    detail: str
    body: bytes
    content_type: str
    path: str
    size: int | None = None  # the full size when ``body`` is only its head (a 413)


class CallRecord(NamedTuple):
    """A call as the projection holds it: its folded state and its stored outcome."""

    state: CallState
    outcome: str | None


class LoggedEvent(NamedTuple):
    """One event of the log, as stored."""

    seq: int
    received_at: int
    event_type: str
    call_id: str | None
    event_time: int | None
    fmt: str
    body: bytes
    origin: str | None = None


class StoredReject(NamedTuple):
    id: int
    received_at: int
    status: int
    error: str
    detail: str
    content_type: str | None
    path: str | None
    size: int
    truncated: bool
    body: bytes


class Kpis(NamedTuple):
    """Sums over the ended calls, for SPEC §5's telephony figures (the ratios and means are
    :func:`tracker.render.stats_json`'s): ``talk_ms`` over the ``talk_n`` answered calls whose
    end time is known, ``ring_ms`` over the ``ring_n`` whose start and answer are known."""

    attempts: int
    answered: int
    talk_ms: float
    talk_n: int
    ring_ms: float
    ring_n: int


class Counts(NamedTuple):
    """Calls counted by status, outcome and cause (``None`` values left out), and the KPIs."""

    total: int
    by_status: dict[str, int]
    by_outcome: dict[str, int]
    by_cause: dict[str, int]
    kpis: Kpis
    stale: int = 0


#: A place in a call's timeline: (event time in ms, or ``None`` for the untimed events, seq).
#: The timeline's order is by event time, untimed last, then seq; a page continues after a place.
TimelinePlace = tuple[int | None, int]
#: A page of a timeline and the place the next one starts after (``None``: the end).
TimelinePage = tuple[list[LoggedEvent], TimelinePlace | None]
#: A timeline page stops before this many payload bytes (with at least one event).
TIMELINE_PAGE_BYTES: Final = 4 << 20
_PLACE = re.compile(r"(-?[0-9]{1,19}|u)\.([0-9]{1,19})")
_INT64: Final = (1 << 63) - 1


def format_place(place: TimelinePlace) -> str:
    """A place as cursor text: ``<event time ms>.<seq>``, or ``u.<seq>`` when untimed."""
    at, seq = place
    return f"{'u' if at is None else at}.{seq}"


def parse_place(text: str) -> TimelinePlace:
    """The place a cursor names; ``ValueError`` for anything :func:`format_place` cannot give."""
    m = _PLACE.fullmatch(text)
    if m is None:
        raise ValueError(text)
    at = None if m[1] == "u" else int(m[1])
    seq = int(m[2])
    if (at is not None and not -_INT64 - 1 <= at <= _INT64) or not 0 <= seq <= _INT64:
        raise ValueError(text)
    return at, seq


def iter_timeline(
    page: Callable[[TimelinePlace | None], tuple[list[LoggedEvent], TimelinePlace | None] | None],
) -> Iterator[LoggedEvent]:
    """Every event of a timeline, in its order, from its pages (``page(after)``, as a storage's
    or a snapshot's ``timeline``): bounded memory however long the call."""
    after: TimelinePlace | None = None
    while True:
        found = page(after)
        if found is None:
            return
        events, after = found
        yield from events
        if after is None:
            return


#: One call whose projection differs from its log: its id and each differing field as
#: ``(have, want)``; ``[column]`` names a stored filter column, ``*`` the whole call.
Drift = tuple[str, dict[str, tuple[Any, Any]]]
