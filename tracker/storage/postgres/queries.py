"""Reads on any PostgreSQL connection; they return :mod:`tracker.records`, as SQLite's do."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import psycopg

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
from tracker.storage.postgres.schema import FILTER_COLUMNS

_state_dec = msgspec.msgpack.Decoder(CallState)

Conn = psycopg.Connection[Any]
EVENT_COLUMNS = "seq, received_at, event_type, call_id, event_time, fmt, body, origin"


def _event(r: Any) -> LoggedEvent:
    return LoggedEvent(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7])


def get_call(conn: Conn, call_id: str) -> CallRecord | None:
    row = conn.execute("SELECT state, outcome FROM calls WHERE call_id = %s", (call_id,)).fetchone()
    return None if row is None else CallRecord(_state_dec.decode(row[0]), row[1])


def timeline(
    conn: Conn,
    call_id: str,
    *,
    after: TimelinePlace | None = None,
    limit: int = 100,
    max_bytes: int = TIMELINE_PAGE_BYTES,
) -> tuple[list[LoggedEvent], TimelinePlace | None] | None:
    """A page of a call's timeline after ``after`` (as SQLite's: by event time, untimed last,
    then seq; at most ``limit`` events, fewer once their bodies pass ``max_bytes``, never
    none); the sort reads only the keys, bodies are fetched for the page alone."""
    row = conn.execute("SELECT call_key FROM calls WHERE call_id = %s", (call_id,)).fetchone()
    if row is None:
        return None
    where, args = "call_key = %s", [row[0]]
    if after is not None:
        at, seq = after
        if at is None:
            where += " AND event_time IS NULL AND seq > %s"
            args.append(seq)
        else:
            where += (
                " AND (event_time IS NULL OR event_time > %s OR (event_time = %s AND seq > %s))"
            )
            args += [at, at, seq]
    keys = conn.execute(
        f"SELECT event_time, seq, octet_length(body) FROM events WHERE {where}"
        " ORDER BY event_time IS NULL, event_time, seq LIMIT %s".encode(),
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
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY(%s)".encode(), (seqs,)
        )
    }
    return [_event(rows[s]) for s in seqs], nxt


def events_after(conn: Conn, after: int, limit: int) -> list[LoggedEvent]:
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT %s".encode(),
        (after, limit),
    ).fetchall()
    return [_event(r) for r in rows]


def list_calls(
    conn: Conn,
    filters: Mapping[str, str],
    *,
    since: int | None = None,
    until: int | None = None,
    limit: int = 100,
    before_seq: int | None = None,
    stale: bool | None = None,
    stale_before: int = 0,
) -> tuple[list[CallRecord], int | None]:
    where: list[str] = []
    args: list[Any] = []
    for name, value in filters.items():
        where.append(f"{FILTER_COLUMNS[name]} = %s")
        args.append(value)
    if since is not None:
        where.append("first_event_at >= %s")
        args.append(since)
    if until is not None:
        where.append("first_event_at < %s")
        args.append(until)
    if before_seq is not None:
        where.append("last_seq < %s")
        args.append(before_seq)
    if stale is not None:
        where.append(STALE if stale else NOT_STALE)
        args.append(stale_before)
    sql = "SELECT state, outcome, last_seq FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seq DESC LIMIT %s"
    args.append(limit + 1)
    rows = conn.execute(sql.encode(), args).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    decode = _state_dec.decode
    page = [CallRecord(decode(r[0]), r[1]) for r in rows]
    return page, (rows[-1][2] if more and rows else None)


#: SPEC §11: not ended, and nothing received since the cutoff (one index range a status).
STALE = "status IN ('started', 'answered') AND last_received_at < %s"
NOT_STALE = "(status = 'ended' OR last_received_at >= %s)"


def stats(
    conn: Conn,
    *,
    since: int | None = None,
    until: int | None = None,
    stale_before: int | None = None,
) -> Counts:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("first_event_at >= %s")
        args.append(since)
    if until is not None:
        where.append("first_event_at < %s")
        args.append(until)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    out: list[dict[str, int]] = []
    total = 0
    for column in ("status", "outcome", "cause"):
        counts: dict[str, int] = {}
        sql = f"SELECT {column}, count(*) FROM calls{clause} GROUP BY {column} ORDER BY {column}"
        for value, n in conn.execute(sql.encode(), args):
            if value is not None:
                counts[value] = int(n)
            if column == "status":
                total += int(n)
        out.append(counts)
    stale = 0
    if stale_before is not None:
        stale = stale_count(conn, stale_before, clause, args)
    return Counts(total, out[0], out[1], out[2], kpis(conn, clause, args), stale)


def stale_count(
    conn: Conn, stale_before: int, clause: str = "", args: list[Any] | None = None
) -> int:
    """How many calls are stale (within the ``WHERE`` clause of a time range, if any)."""
    where = clause + (" AND " if clause else " WHERE ") + STALE
    row = conn.execute(
        f"SELECT count(*) FROM calls{where}".encode(), [*(args or []), stale_before]
    ).fetchone()
    return int(row[0]) if row is not None else 0


def claim_stale(
    conn: Conn, limit: int, now: int, until: int, stale_before: int
) -> list[CallRecord]:
    """Mark up to ``limit`` stale calls not claimed at ``now`` as claimed ``until``, and return
    them (longest silent first): one statement, so among any number of processes and hosts
    each stale call goes to one claimer per interval."""
    rows = conn.execute(
        "WITH picked AS (SELECT call_key FROM calls"
        f" WHERE {STALE} AND (claimed_until IS NULL OR claimed_until <= %s)"
        " ORDER BY last_received_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE calls c SET claimed_until = %s FROM picked WHERE c.call_key = picked.call_key"
        " RETURNING c.state, c.outcome",
        (stale_before, now, limit, until),
    ).fetchall()
    decode = _state_dec.decode
    return [CallRecord(decode(bytes(r[0])), r[1]) for r in rows]


def kpis(conn: Conn, clause: str, args: list[Any]) -> Kpis:
    """One pass over the ended calls' time columns (sums in floating point, as SQLite's)."""
    where = clause + (" AND " if clause else " WHERE ") + "status = 'ended'"
    sql = (
        "SELECT count(*), count(answered_at),"
        " coalesce(sum((ended_at - answered_at)::float8), 0), count(ended_at - answered_at),"
        " coalesce(sum((answered_at - started_at)::float8), 0),"
        f" count(answered_at - started_at) FROM calls{where}"
    )
    row = conn.execute(sql.encode(), args).fetchone()
    assert row is not None
    return Kpis(int(row[0]), int(row[1]), float(row[2]), int(row[3]), float(row[4]), int(row[5]))


def time_bounds(conn: Conn) -> tuple[int | None, int | None]:
    row = conn.execute("SELECT min(first_event_at), max(first_event_at) FROM calls").fetchone()
    assert row is not None
    return row[0], row[1]


def series(conn: Conn, *, since: int, until: int, step_ms: int) -> dict[str, list[int]]:
    """Calls by first-event-time bucket and outcome (as SQLite's)."""
    n = max(1, -(-(until - since) // step_ms))
    out: dict[str, list[int]] = {}
    for bucket, outcome, count in conn.execute(
        "SELECT (first_event_at - %s) / %s AS b, outcome, count(*) FROM calls"
        " WHERE first_event_at >= %s AND first_event_at < %s GROUP BY b, outcome",
        (since, step_ms, since, until),
    ):
        key = outcome if outcome is not None else "in_progress"
        counts = out.get(key)
        if counts is None:
            counts = out[key] = [0] * n
        counts[int(bucket)] += int(count)
    return out


def list_rejects(conn: Conn, after: int, limit: int) -> tuple[list[StoredReject], int | None]:
    rows = conn.execute(
        "SELECT id, received_at, status, error, detail, content_type, path, size, truncated, body"
        " FROM rejects WHERE id > %s ORDER BY id LIMIT %s",
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


def counts(conn: Conn) -> tuple[int, int]:
    calls = conn.execute("SELECT count(*) FROM calls").fetchone()
    events = conn.execute("SELECT count(*) FROM events").fetchone()
    assert calls is not None and events is not None
    return int(calls[0]), int(events[0])


def head(conn: Conn) -> int:
    """The committed head: the head row's ``seq`` (readers never lock it)."""
    row = conn.execute("SELECT seq FROM tracker_head WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


# Streaming reads (export, copy): a server-side cursor each, inside one REPEATABLE READ
# transaction for a consistent snapshot.


def iter_calls(conn: Conn) -> Iterator[CallRecord]:
    decode = _state_dec.decode
    with conn.cursor(name="tracker_calls") as cur:
        cur.itersize = 2000
        cur.execute("SELECT state, outcome FROM calls ORDER BY last_seq")
        for state, outcome in cur:
            yield CallRecord(decode(state), outcome)


def iter_events(conn: Conn, after: int = 0) -> Iterator[LoggedEvent]:
    with conn.cursor(name="tracker_events") as cur:
        cur.itersize = 2000
        cur.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > %s ORDER BY seq".encode(), (after,)
        )
        for r in cur:
            yield _event(r)
