"""Reads on any PostgreSQL connection; they return :mod:`tracker.records`, as SQLite's do."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

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
from tracker.storage.sql import (
    COUNTED_COLUMNS,
    EVENT_COLUMNS,
    calls_page,
    calls_page_query,
    claim_stale_query,
    count_query,
    counts_of,
    kpi_clause,
    rejects_page,
    rejects_query,
    series_of,
    series_query,
    stale_count_query,
    time_range,
    timeline_keys_query,
    timeline_page,
    where,
)
from tracker.storage.sql import state_decoder as _state_dec

Conn = psycopg.Connection[Any]


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
    sql, args = timeline_keys_query("%s", "octet_length", row[0], after, limit)
    seqs, nxt = timeline_page(conn.execute(sql.encode(), args).fetchall(), limit, max_bytes)
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
    sql, args = calls_page_query(
        "%s",
        filters,
        since=since,
        until=until,
        limit=limit,
        before_seq=before_seq,
        stale=stale,
        stale_before=stale_before,
        hint="",
    )
    return calls_page(conn.execute(sql.encode(), args).fetchall(), limit)


def stats(
    conn: Conn,
    *,
    since: int | None = None,
    until: int | None = None,
    stale_before: int | None = None,
) -> Counts:
    parts, args = time_range("%s", since, until)
    clause = where(parts)
    rows = [
        conn.execute(count_query(column, clause).encode(), args).fetchall()
        for column in COUNTED_COLUMNS
    ]
    stale = 0
    if stale_before is not None:
        stale = stale_count(conn, stale_before, clause, args)
    return counts_of(rows, kpis(conn, clause, args), stale)


def stale_count(
    conn: Conn, stale_before: int, clause: str = "", args: list[Any] | None = None
) -> int:
    """How many calls are stale (SPEC §11), within a time range's clause if any."""
    sql = stale_count_query("%s", clause).encode()
    row = conn.execute(sql, [*(args or []), stale_before]).fetchone()
    return int(row[0]) if row is not None else 0


def claim_stale(
    conn: Conn, limit: int, now: int, until: int, stale_before: int
) -> list[CallRecord]:
    """Mark up to ``limit`` stale calls no claim holds at ``now`` as claimed ``until``, and
    return them: one statement, so among any number of processes and hosts each stale call
    goes to one claimer per interval (``FOR UPDATE SKIP LOCKED``: claimers never wait on
    each other)."""
    sql = claim_stale_query("%s", " FOR UPDATE SKIP LOCKED").encode()
    rows = conn.execute(sql, (stale_before, now, limit, until)).fetchall()
    decode = _state_dec.decode
    return [CallRecord(decode(bytes(r[0])), r[1]) for r in rows]


def kpis(conn: Conn, clause: str, args: list[Any]) -> Kpis:
    """One pass over the ended calls' time columns (sums in floating point, as SQLite's)."""
    sql = (
        "SELECT count(*), count(answered_at),"
        " coalesce(sum((ended_at - answered_at)::float8), 0), count(ended_at - answered_at),"
        " coalesce(sum((answered_at - started_at)::float8), 0),"
        f" count(answered_at - started_at) FROM calls{kpi_clause(clause)}"
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
    rows = conn.execute(series_query("%s").encode(), (since, step_ms, since, until))
    return series_of(rows, since, until, step_ms)


def list_rejects(conn: Conn, after: int, limit: int) -> tuple[list[StoredReject], int | None]:
    rows = conn.execute(rejects_query("%s").encode(), (after, limit + 1)).fetchall()
    return rejects_page(rows, limit)


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
