"""Rendering for the API: stored records as the JSON the HTTP API, the CLI and the Python API
show (camelCase rows, ISO times, payloads as received, base64 for bodies that are not UTF-8), and
the fields of a call whose projection drifted from its log. Pure: no I/O, no storage.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import msgspec

from tracker.events import format_time, restore_plus
from tracker.records import CallRecord, Counts, LoggedEvent, StoredReject
from tracker.state import CallState, direction_of, outcome_for, status_of

_json_enc = msgspec.json.Encoder()


# --------------------------------------------------------------------------------------------
# A call


class CallView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /calls/{callId}``: field names and order as in the spec."""

    callId: str
    api: str
    status: str
    direction: str | None
    from_: str | None = msgspec.field(name="from")
    to: str | None
    startedAt: str | None
    answeredAt: str | None
    endedAt: str | None
    cause: str | None
    outcome: str | None
    errorMessage: str | None
    ringSeconds: float | None
    talkSeconds: float | None
    durationSeconds: float | None
    tag: str | None
    parentCallId: str | None
    eventCount: int
    firstEventAt: str | None
    lastEventAt: str | None
    lastEventType: str | None
    firstSeq: int | None
    lastSeq: int | None
    anomalies: list[str]


def _secs(a: int | None, b: int | None) -> float | None:
    if a is None or b is None:
        return None
    try:
        return (b - a) / 1000.0
    except OverflowError:  # only for nonsensical times beyond any float; keeps view() total
        return None


def reconciled(s: CallState) -> bool:
    """A reconciled end is the call's end (no real hard end is known)."""
    return s.hard is None and s.recon is not None


def ended_at(s: CallState) -> int | None:
    if s.hard is not None:
        return s.hard[2]
    if s.recon is not None:
        return s.recon[2]
    if s.soft is not None:
        return s.soft[3]
    return None


def view(s: CallState, outcomes: Mapping[str, str] | None = None) -> CallView:
    """Render the public state of a call. Total."""
    return render(s, outcome_for(s, outcomes))


def render(s: CallState, outcome: str | None) -> CallView:
    """The public state with a given outcome (the one stored beside the state, on reads)."""
    end = ended_at(s)
    cause = error = None
    if s.hard is not None:
        cause, error = s.hard[3], s.hard[4]
    elif s.recon is not None:
        cause, error = s.recon[3], s.recon[4]
    elif s.soft is not None:
        error = s.soft[4]
    anomalies = []
    if s.conflict:
        anomalies.append("conflicting_end")
    if end is not None and s.live_max is not None and s.live_max > end:
        anomalies.append("event_after_end")
    if reconciled(s):
        anomalies.append("reconciled")
    if s.time_bad:
        anomalies.append("unparseable_time")
    return CallView(
        callId=s.call_id,
        api="v2" if s.v2 else "v1",
        status=status_of(s),
        direction=direction_of(s),
        from_=None if s.from_ is None else s.from_[2],
        to=None if s.to is None else s.to[2],
        startedAt=format_time(s.started),
        answeredAt=format_time(s.answered_at),
        endedAt=format_time(end),
        cause=cause,
        outcome=outcome,
        errorMessage=error,
        ringSeconds=_secs(s.started, s.answered_at),
        talkSeconds=_secs(s.answered_at, end),
        durationSeconds=_secs(s.started, end),
        tag=None if s.tag is None else s.tag[2],
        parentCallId=None if s.parent is None else s.parent[2],
        eventCount=s.count,
        firstEventAt=None if s.first is None else format_time(s.first[0]),
        lastEventAt=None if s.last is None else format_time(s.last[0]),
        lastEventType=None if s.last is None else s.last[2],
        firstSeq=s.first_seq,
        lastSeq=s.last_seq,
        anomalies=anomalies,
    )


def call_json(record: CallRecord) -> bytes:
    """A stored call as ``GET /calls/{callId}`` JSON (the stored outcome is kept)."""
    return _json_enc.encode(render(record.state, record.outcome))


class EventRow(msgspec.Struct, frozen=True):
    """One logged event as the query API shows it."""

    seq: int
    receivedAt: str | None
    eventType: str
    callId: str | None
    time: str | None
    payload: Any


class ExportedEvent(EventRow, frozen=True):
    """One logged event as ``tracker export events`` writes it: the query API's row, then the
    log's ``origin`` (null for a received event, ``"reconcile"`` for the tracker's own)."""

    origin: str | None = None


class RejectRow(msgspec.Struct, frozen=True):
    id: int
    receivedAt: str | None
    status: int
    error: str
    detail: str
    contentType: str | None
    path: str | None
    size: int
    truncated: bool
    body: str
    bodyEncoding: str  # "utf-8" or "base64" (bodies that are not valid UTF-8)


def form_fields(body: bytes) -> dict[str, str]:
    """A form-encoded or query-string body as string fields (the last of repeated keys wins),
    ``from``/``to`` read as on ingest (:func:`tracker.events.restore_plus`)."""
    return restore_plus(dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))


def payload_of(fmt: str, body: bytes) -> Any:
    """What was received, as JSON: JSON bodies verbatim, form/query bodies as string fields."""
    if fmt == "json":
        return msgspec.Raw(body)
    return form_fields(body)


Row = TypeVar("Row", bound=EventRow)


def event_row(e: LoggedEvent) -> EventRow:
    return EventRow(
        seq=e.seq,
        receivedAt=format_time(e.received_at),
        eventType=e.event_type,
        callId=e.call_id,
        time=format_time(e.event_time),
        payload=payload_of(e.fmt, e.body),
    )


def exported_event(e: LoggedEvent) -> ExportedEvent:
    """:func:`event_row`'s fields, then ``origin``."""
    return ExportedEvent(**msgspec.structs.asdict(event_row(e)), origin=e.origin)


def event_rows(events: list[LoggedEvent]) -> list[EventRow]:
    return [event_row(e) for e in events]


def one_line(row: Row) -> Row:
    """The row with a pretty-printed JSON payload re-emitted without line breaks (tokens
    untouched), for formats of one event per line: SSE frames, NDJSON export."""
    payload = row.payload
    if isinstance(payload, msgspec.Raw):
        raw = bytes(payload)
        if b"\n" in raw or b"\r" in raw:
            return msgspec.structs.replace(
                row, payload=msgspec.Raw(msgspec.json.format(raw, indent=-1))
            )
    return row


def reject_row(r: StoredReject) -> RejectRow:
    raw = bytes(r.body or b"")
    try:
        text, enc = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, enc = base64.b64encode(raw).decode("ascii"), "base64"
    return RejectRow(
        id=r.id,
        receivedAt=format_time(r.received_at),
        status=r.status,
        error=r.error,
        detail=r.detail,
        contentType=r.content_type,
        path=r.path,
        size=r.size,
        truncated=r.truncated,
        body=text,
        bodyEncoding=enc,
    )


def stats_json(c: Counts) -> dict[str, Any]:
    """``GET /stats``: the counts, and SPEC §5's KPIs over the ended calls (ASR to 4 decimals,
    seconds to the millisecond; null when there is nothing to divide or average)."""
    k = c.kpis
    return {
        "total": c.total,
        "byStatus": c.by_status,
        "byOutcome": c.by_outcome,
        "byCause": c.by_cause,
        "stale": c.stale,
        "kpis": {
            "attempts": k.attempts,
            "answered": k.answered,
            "asr": round(k.answered / k.attempts, 4) if k.attempts else None,
            "acd": round(k.talk_ms / k.talk_n / 1000.0, 3) if k.talk_n else None,
            "averageRingSeconds": round(k.ring_ms / k.ring_n / 1000.0, 3) if k.ring_n else None,
        },
    }


# --------------------------------------------------------------------------------------------
# Drift (``tracker replay --check``)

#: A projected call that no event of the log names.
ORPHAN: Final = {"*": ("present", "absent from the log")}


def drift_fields(
    have: CallRecord | None,
    want: CallState,
    outcomes: Mapping[str, str],
    columns: Mapping[str, tuple[Any, Any]] | None = None,
    *,
    unreadable: bool = False,
) -> dict[str, tuple[Any, Any]]:
    """How a stored call differs from its state folded from the log, field by field as
    ``(have, want)`` in the API's names. ``have`` ``None``: the call is missing from the
    projection; ``unreadable``: its stored state cannot be decoded. ``columns``: stored filter
    columns that differ besides the state (shown as ``[column]``)."""
    wanted = msgspec.json.decode(_json_enc.encode(view(want, outcomes)))
    if have is None and not unreadable:
        return {"*": ("absent", "present in the log")}
    shown: dict[str, Any] = {}
    if have is not None:
        shown = msgspec.json.decode(call_json(have))
    diff = {k: (shown.get(k), v) for k, v in wanted.items() if shown.get(k) != v}
    for column, pair in (columns or {}).items():
        diff.setdefault(f"[{column}]", pair)
    return diff or {"[state]": ("differs", "as folded")}


__all__ = [
    "CallView",
    "EventRow",
    "RejectRow",
    "call_json",
    "drift_fields",
    "event_row",
    "form_fields",
    "one_line",
    "payload_of",
    "reject_row",
    "stats_json",
]
