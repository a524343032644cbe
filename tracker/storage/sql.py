"""The SQL text and row handling both backends share: the schema's column names are the same on
SQLite and PostgreSQL, only the placeholder differs (``?`` or ``%s``), so each builder takes it.

Nothing here runs a statement: the backends' ``queries`` modules do, on their own connections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from tracker.records import CallRecord, Counts, Kpis, StoredReject, TimelinePlace
from tracker.state import CallState

# The filters of GET /calls (names in tracker.records.FILTERS) and the column each reads
FILTER_COLUMNS: Final = {
    "status": "status",
    "outcome": "outcome",
    "cause": "cause",
    "direction": "direction",
    "from": "from_number",
    "to": "to_number",
    "tag": "tag",
}
EVENT_COLUMNS: Final = "seq, received_at, event_type, call_id, event_time, fmt, body, origin"
REJECT_COLUMNS: Final = (
    "id, received_at, status, error, detail, content_type, path, size, truncated, body"
)
COUNTED_COLUMNS: Final = ("status", "outcome", "cause")  # the breakdowns of /stats

state_decoder: Final = msgspec.msgpack.Decoder(CallState)


def where(parts: Sequence[str]) -> str:
    return (" WHERE " + " AND ".join(parts)) if parts else ""


def time_range(p: str, since: int | None, until: int | None) -> tuple[list[str], list[Any]]:
    """Conditions on a call's first event time in ``[since, until)``."""
    parts: list[str] = []
    args: list[Any] = []
    if since is not None:
        parts.append(f"first_event_at >= {p}")
        args.append(since)
    if until is not None:
        parts.append(f"first_event_at < {p}")
        args.append(until)
    return parts, args


def calls_page_query(
    p: str,
    filters: Mapping[str, str],
    *,
    since: int | None,
    until: int | None,
    limit: int,
    before_seq: int | None,
    stale: bool | None = None,
    stale_before: int = 0,
    hint: str = "",
) -> tuple[str, list[Any]]:
    """GET /calls's statement: equality filters, the time range, the cursor and whether the call
    is stale (SPEC §11), highest ``last_seq`` first, one row more than ``limit`` (to know
    whether a next page exists). ``hint`` prefixes the other columns' terms when ``stale`` is
    true (SQLite's ``+``: the planner then takes the stale index's one range a status instead of
    walking every call of a status or a time range)."""
    h = hint if stale else ""
    parts = [f"{h}{FILTER_COLUMNS[name]} = {p}" for name in filters]
    args: list[Any] = list(filters.values())
    more_parts, more_args = time_range(p, since, until)
    parts += [h + part for part in more_parts]
    args += more_args
    if before_seq is not None:
        parts.append(f"{h}last_seq < {p}")
        args.append(before_seq)
    if stale is not None:
        parts.append(stale_term(p) if stale else f"(status = 'ended' OR last_received_at >= {p})")
        args.append(stale_before)
    args.append(limit + 1)
    sql = f"SELECT state, outcome, last_seq FROM calls{where(parts)}"
    return sql + f" ORDER BY last_seq DESC LIMIT {p}", args


def stale_term(p: str) -> str:
    """SPEC §11: not ended, and nothing received since the cutoff (one index range a status)."""
    return f"status IN ('started', 'answered') AND last_received_at < {p}"


def stale_count_query(p: str, clause: str) -> str:
    """How many calls are stale (within a ``WHERE`` clause of a time range, if any)."""
    return f"SELECT count(*) FROM calls{clause}{' AND ' if clause else ' WHERE '}{stale_term(p)}"


def claim_stale_query(p: str, pick: str) -> str:
    """The stale calls no claim holds at ``now`` (longest silent first, ``pick``: the backend's
    way of picking them), then claimed: args ``(stale_before, now, limit, until)``."""
    return (
        f"WITH picked AS (SELECT call_key FROM calls WHERE {stale_term(p)} AND"
        f" (claimed_until IS NULL OR claimed_until <= {p}) ORDER BY last_received_at"
        f" LIMIT {p}{pick}) UPDATE calls SET claimed_until = {p}"
        " WHERE call_key IN (SELECT call_key FROM picked) RETURNING state, outcome"
    )


def calls_page(rows: Sequence[Any], limit: int) -> tuple[list[CallRecord], int | None]:
    """The page and the next cursor from :func:`calls_page_query`'s rows."""
    decode = state_decoder.decode
    page = [CallRecord(decode(r[0]), r[1]) for r in rows[:limit]]
    return page, (rows[limit - 1][2] if len(rows) > limit and limit > 0 else None)


def timeline_keys_query(
    p: str, length: str, call_key: Any, after: TimelinePlace | None, limit: int
) -> tuple[str, list[Any]]:
    """The sort keys (and body sizes, by the backend's ``length`` function) of a call's events
    after ``after``, by event time (untimed last), then seq; one more than ``limit``."""
    cond, args = f"call_key = {p}", [call_key]
    if after is not None:
        at, seq = after
        if at is None:
            cond += f" AND event_time IS NULL AND seq > {p}"
            args.append(seq)
        else:
            cond += (
                f" AND (event_time IS NULL OR event_time > {p} OR (event_time = {p} AND seq > {p}))"
            )
            args += [at, at, seq]
    args.append(limit + 1)
    sql = f"SELECT event_time, seq, {length}(body) FROM events WHERE {cond}"
    return sql + f" ORDER BY event_time IS NULL, event_time, seq LIMIT {p}", args


def timeline_page(
    keys: Sequence[Any], limit: int, max_bytes: int
) -> tuple[list[int], TimelinePlace | None]:
    """The seqs of the page (at most ``limit``, fewer once the bodies pass ``max_bytes``, never
    none) and the place the next page starts after (``None``: the end)."""
    take, size = 0, 0
    for _at, _seq, n in keys[:limit]:
        if take and size + n > max_bytes:
            break
        take, size = take + 1, size + n
    page = keys[:take]
    nxt = (page[-1][0], page[-1][1]) if take < len(keys) else None
    return [k[1] for k in page], nxt


def count_query(column: str, clause: str) -> str:
    assert column in COUNTED_COLUMNS
    return f"SELECT {column}, count(*) FROM calls{clause} GROUP BY {column} ORDER BY {column}"


def counts_of(breakdowns: Sequence[Iterable[Any]], kpis: Kpis, stale: int = 0) -> Counts:
    """/stats' counts from the rows of :func:`count_query` for each of ``COUNTED_COLUMNS``
    (the total is the sum over the statuses), and the stale calls."""
    out: list[dict[str, int]] = []
    for rows in breakdowns:
        out.append({value: int(n) for value, n in rows if value is not None})
    total = sum(out[0].values())
    return Counts(total, out[0], out[1], out[2], kpis, stale)


def kpi_clause(clause: str) -> str:
    return clause + (" AND " if clause else " WHERE ") + "status = 'ended'"


def series_query(p: str) -> str:
    return (
        f"SELECT (first_event_at - {p}) / {p} AS b, outcome, count(*) FROM calls"
        f" WHERE first_event_at >= {p} AND first_event_at < {p} GROUP BY b, outcome"
    )


def series_of(rows: Iterable[Any], since: int, until: int, step_ms: int) -> dict[str, list[int]]:
    """Calls per bucket by outcome (calls not ended yet under ``in_progress``) from
    :func:`series_query`'s rows: ``{outcome: [count per bucket]}``."""
    n = max(1, -(-(until - since) // step_ms))
    out: dict[str, list[int]] = {}
    for bucket, outcome, count in rows:
        key = outcome if outcome is not None else "in_progress"
        counts = out.get(key)
        if counts is None:
            counts = out[key] = [0] * n
        counts[int(bucket)] += int(count)
    return out


def rejects_query(p: str) -> str:
    return f"SELECT {REJECT_COLUMNS} FROM rejects WHERE id > {p} ORDER BY id LIMIT {p}"


def rejects_page(rows: Sequence[Any], limit: int) -> tuple[list[StoredReject], int | None]:
    out = [
        StoredReject(
            id=r[0],
            received_at=r[1],
            status=r[2],
            error=r[3],
            detail=r[4],
            content_type=r[5],
            path=r[6],
            size=r[7],
            truncated=bool(r[8]),
            body=bytes(r[9] or b""),
        )
        for r in rows[:limit]
    ]
    return out, (out[-1].id if len(rows) > limit and out else None)
