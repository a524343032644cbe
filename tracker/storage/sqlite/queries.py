"""Reads, on any connection (the server runs them on read connections, never the writer's).

They return :mod:`tracker.records`; rendering them for the API is :mod:`tracker.render`'s job.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from tracker.records import (
    TIMELINE_PAGE_BYTES,
    CallRecord,
    Counts,
    Kpis,
    LoggedEvent,
    StoredReject,
    TimelinePlace,
)
from tracker.state import CallState
from tracker.storage.sqlite.schema import FILTER_COLUMNS

_state_dec = msgspec.msgpack.Decoder(CallState)

EVENT_COLUMNS = "seq, received_at, event_type, call_id, event_time, fmt, body, origin"


def record(state: bytes, outcome: str | None) -> CallRecord:
    return CallRecord(_state_dec.decode(state), outcome)


def get_call(conn: sqlite3.Connection, call_id: str) -> CallRecord | None:
    row = conn.execute("SELECT state, outcome FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    return None if row is None else CallRecord(_state_dec.decode(row[0]), row[1])


def timeline(
    conn: sqlite3.Connection,
    call_id: str,
    *,
    after: TimelinePlace | None = None,
    limit: int = 100,
    max_bytes: int = TIMELINE_PAGE_BYTES,
) -> tuple[list[LoggedEvent], TimelinePlace | None] | None:
    """A page of a call's timeline (by event time, untimed last, then seq) after ``after``: at
    most ``limit`` events, fewer when their bodies pass ``max_bytes`` (never none). Returns the
    page and the place to continue after (``None``: the end), or ``None`` for an unknown call.
    The sort reads only the keys (the body is the last column, and ``length()`` of a blob does
    not load it); bodies are fetched for the page alone."""
    row = conn.execute("SELECT call_key FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    if row is None:
        return None
    where, args = "call_key = ?", [row[0]]
    if after is not None:
        at, seq = after
        if at is None:
            where += " AND event_time IS NULL AND seq > ?"
            args.append(seq)
        else:
            where += " AND (event_time IS NULL OR event_time > ? OR (event_time = ? AND seq > ?))"
            args += [at, at, seq]
    keys = conn.execute(
        f"SELECT event_time, seq, length(body) FROM events WHERE {where}"
        " ORDER BY event_time IS NULL, event_time, seq LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    take, size = 0, 0
    for _at, _seq, n in keys[:limit]:
        if take and size + n > max_bytes:
            break
        take, size = take + 1, size + n
    page = keys[:take]
    nxt = (page[-1][0], page[-1][1]) if take < len(keys) else None
    seqs = [k[1] for k in page]
    if not seqs:
        return [], None
    rows = {
        r[0]: r
        for r in conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({','.join('?' * len(seqs))})",
            seqs,
        )
    }
    return [LoggedEvent(*rows[s]) for s in seqs], nxt


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[LoggedEvent]:
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
    ).fetchall()
    return [LoggedEvent(*r) for r in rows]


def list_calls(
    conn: sqlite3.Connection,
    filters: Mapping[str, str],
    *,
    since: int | None = None,
    until: int | None = None,
    limit: int = 100,
    before_seq: int | None = None,
    stale: bool | None = None,
    stale_before: int = 0,
) -> tuple[list[CallRecord], int | None]:
    """Calls, highest ``lastSeq`` first; returns the page and the next cursor."""
    where: list[str] = []
    args: list[Any] = []
    # stale=true is one range of the stale index a status: "+column" keeps the planner off the
    # other indexes, which would walk every call of a status or a time range
    plus = "+" if stale else ""
    for name, value in filters.items():
        where.append(f"{plus}{FILTER_COLUMNS[name]} = ?")
        args.append(value)
    if since is not None:
        where.append(f"{plus}first_event_at >= ?")
        args.append(since)
    if until is not None:
        where.append(f"{plus}first_event_at < ?")
        args.append(until)
    if before_seq is not None:
        where.append(f"{plus}last_seq < ?")
        args.append(before_seq)
    if stale is not None:
        where.append(STALE if stale else NOT_STALE)
        args.append(stale_before)
    sql = "SELECT state, outcome, last_seq FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seq DESC LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    decode = _state_dec.decode
    page = [CallRecord(decode(r[0]), r[1]) for r in rows]
    return page, (rows[-1][2] if more and rows else None)


#: SPEC §11: not ended, and nothing received since the cutoff (one index range a status).
STALE = "status IN ('started', 'answered') AND last_received_at < ?"
NOT_STALE = "(status = 'ended' OR last_received_at >= ?)"


def stats(
    conn: sqlite3.Connection,
    *,
    since: int | None = None,
    until: int | None = None,
    stale_before: int | None = None,
) -> Counts:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("first_event_at >= ?")
        args.append(since)
    if until is not None:
        where.append("first_event_at < ?")
        args.append(until)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    out: list[dict[str, int]] = []
    total = 0
    for column in ("status", "outcome", "cause"):
        counts: dict[str, int] = {}
        for value, n in conn.execute(
            f"SELECT {column}, count(*) FROM calls{clause} GROUP BY {column} ORDER BY {column}",
            args,
        ):
            if value is not None:
                counts[value] = n
            if column == "status":
                total += n
        out.append(counts)
    stale = 0
    if stale_before is not None:
        stale = stale_count(conn, stale_before, clause, args)
    return Counts(total, out[0], out[1], out[2], kpis(conn, clause, args), stale)


def stale_count(
    conn: sqlite3.Connection, stale_before: int, clause: str = "", args: list[Any] | None = None
) -> int:
    """How many calls are stale (within the ``WHERE`` clause of a time range, if any)."""
    where = clause + (" AND " if clause else " WHERE ") + STALE
    row = conn.execute(
        f"SELECT count(*) FROM calls{where}", [*(args or []), stale_before]
    ).fetchone()
    return int(row[0])


def claim_stale(
    conn: sqlite3.Connection, limit: int, now: int, until: int, stale_before: int
) -> list[CallRecord]:
    """Mark up to ``limit`` stale calls not claimed at ``now`` as claimed ``until``, and return
    them (longest silent first): one statement, so among any number of processes and hosts
    each stale call goes to one claimer per interval."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "UPDATE calls SET claimed_until = ? WHERE call_key IN (SELECT call_key FROM calls"
            f" WHERE {STALE} AND (claimed_until IS NULL OR claimed_until <= ?)"
            " ORDER BY last_received_at LIMIT ?) RETURNING state, outcome",
            (until, stale_before, now, limit),
        ).fetchall()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    decode = _state_dec.decode
    return [CallRecord(decode(bytes(r[0])), r[1]) for r in rows]


def kpis(conn: sqlite3.Connection, clause: str, args: list[Any]) -> Kpis:
    """One pass over the ended calls' time columns. ``total()`` sums in floating point, so
    nonsensical far-apart times cannot overflow."""
    where = clause + (" AND " if clause else " WHERE ") + "status = 'ended'"
    row = conn.execute(
        "SELECT count(*), count(answered_at),"
        " total(ended_at - answered_at), count(ended_at - answered_at),"
        f" total(answered_at - started_at), count(answered_at - started_at) FROM calls{where}",
        args,
    ).fetchone()
    return Kpis(*row)


def time_bounds(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    """The earliest and latest first event time of any call (two index look-ups)."""
    lo = conn.execute("SELECT min(first_event_at) FROM calls").fetchone()[0]
    hi = conn.execute("SELECT max(first_event_at) FROM calls").fetchone()[0]
    return lo, hi


def series(
    conn: sqlite3.Connection, *, since: int, until: int, step_ms: int
) -> dict[str, list[int]]:
    """Calls by first-event-time bucket (``[since, until)`` in ``step_ms`` slices) and outcome
    (calls not ended yet under ``in_progress``): ``{outcome: [count per bucket]}``."""
    n = max(1, -(-(until - since) // step_ms))
    out: dict[str, list[int]] = {}
    for bucket, outcome, count in conn.execute(
        "SELECT (first_event_at - ?) / ? AS b, outcome, count(*) FROM calls"
        " WHERE first_event_at >= ? AND first_event_at < ? GROUP BY b, outcome",
        (since, step_ms, since, until),
    ):
        key = outcome if outcome is not None else "in_progress"
        counts = out.get(key)
        if counts is None:
            counts = out[key] = [0] * n
        counts[bucket] += count
    return out


def list_rejects(
    conn: sqlite3.Connection, after: int, limit: int
) -> tuple[list[StoredReject], int | None]:
    rows = conn.execute(
        "SELECT id, received_at, status, error, detail, content_type, path, size, truncated, body"
        " FROM rejects WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit + 1),
    ).fetchall()
    more = len(rows) > limit
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
    return out, (out[-1].id if more and out else None)


def counts(conn: sqlite3.Connection) -> tuple[int, int]:
    calls = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return int(calls), int(events)


def head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


WAIT_POLL_SECONDS = 0.05  # how often wait_for_head looks at the head


def wait_for_head(conn: sqlite3.Connection, after: int, timeout: float) -> int:
    """Poll the head until it is > ``after`` or ``timeout`` seconds passed; return it."""
    deadline = time.monotonic() + timeout
    while True:
        now = head(conn)
        left = deadline - time.monotonic()
        if now > after or left <= 0:
            return now
        time.sleep(min(WAIT_POLL_SECONDS, left))


# Streaming reads (export): one cursor each, so memory stays bounded. Run them inside one read
# transaction (``BEGIN`` on a connection of its own) for a consistent snapshot.


def iter_calls(conn: sqlite3.Connection) -> Iterator[CallRecord]:
    """Every call, lowest ``lastSeq`` first."""
    decode = _state_dec.decode
    for state, outcome in conn.execute("SELECT state, outcome FROM calls ORDER BY last_seq"):
        yield CallRecord(decode(state), outcome)


def iter_events(conn: sqlite3.Connection, after: int = 0) -> Iterator[LoggedEvent]:
    """The whole log after ``after``, in seq order."""
    for r in conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after,)
    ):
        yield LoggedEvent(*r)
