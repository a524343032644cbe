"""Reads, on any connection (the server runs them on read connections, never the writer's).

They return :mod:`tracker.records`; rendering them for the API is :mod:`tracker.render`'s job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

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
    sql, args = timeline_keys_query("?", "length", row[0], after, limit)
    seqs, nxt = timeline_page(conn.execute(sql, args).fetchall(), limit, max_bytes)
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
    sql, args = calls_page_query(
        "?",
        filters,
        since=since,
        until=until,
        limit=limit,
        before_seq=before_seq,
        stale=stale,
        stale_before=stale_before,
        hint="+",
    )
    return calls_page(conn.execute(sql, args).fetchall(), limit)


def stats(
    conn: sqlite3.Connection,
    *,
    since: int | None = None,
    until: int | None = None,
    stale_before: int | None = None,
) -> Counts:
    parts, args = time_range("?", since, until)
    clause = where(parts)
    rows = [conn.execute(count_query(column, clause), args) for column in COUNTED_COLUMNS]
    stale = 0
    if stale_before is not None:
        stale = stale_count(conn, stale_before, clause, args)
    return counts_of(rows, kpis(conn, clause, args), stale)


def stale_count(
    conn: sqlite3.Connection, stale_before: int, clause: str = "", args: list[Any] | None = None
) -> int:
    """How many calls are stale (SPEC §11), within a time range's clause if any."""
    sql = stale_count_query("?", clause)
    row = conn.execute(sql, [*(args or []), stale_before]).fetchone()
    return int(row[0]) if row is not None else 0


def claim_stale(
    conn: sqlite3.Connection, limit: int, now: int, until: int, stale_before: int
) -> list[CallRecord]:
    """Mark up to ``limit`` stale calls no claim holds at ``now`` as claimed ``until``, and
    return them: one statement, so among any number of processes and hosts each stale call
    goes to one claimer per interval (an ``UPDATE … RETURNING`` in one write transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            claim_stale_query("?", ""), (stale_before, now, limit, until)
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
    row = conn.execute(
        "SELECT count(*), count(answered_at),"
        " total(ended_at - answered_at), count(ended_at - answered_at),"
        " total(answered_at - started_at), count(answered_at - started_at)"
        f" FROM calls{kpi_clause(clause)}",
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
    rows = conn.execute(series_query("?"), (since, step_ms, since, until))
    return series_of(rows, since, until, step_ms)


def list_rejects(
    conn: sqlite3.Connection, after: int, limit: int
) -> tuple[list[StoredReject], int | None]:
    return rejects_page(conn.execute(rejects_query("?"), (after, limit + 1)).fetchall(), limit)


def counts(conn: sqlite3.Connection) -> tuple[int, int]:
    calls = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return int(calls), int(events)


def head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


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
