"""Replay on PostgreSQL: fold the log from one snapshot and compare it with the stored rows in
one merged pass (as on SQLite). Few differences: holding the head row (writers wait), rewrite
them and refold what committed meanwhile, in one transaction. Many (or ``rebuild``): fold into a
new table, then, holding the head row, catch up and swap the table in. ``--check`` only compares.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg

from tracker.records import Drift
from tracker.state import CallState
from tracker.storage.interface import Progress
from tracker.storage.postgres.schema import calls_ddl, calls_indexes
from tracker.storage.postgres.writes import INSERT_CALL, LOCK_HEAD
from tracker.storage.projection import (
    CALL_COLUMNS,
    DIFF_MIN,
    DIFF_SHARE,
    Difference,
    differences,
    drifts,
    fold_rows,
    row_of,
)

Conn = psycopg.Connection[Any]

_CALL_ROWS = "call_key, seq, call_id, fact, received_at"
_INSERT_COLUMNS = "call_key, " + CALL_COLUMNS


def _iter_folded(conn: Conn, max_seq: int) -> Iterator[tuple[int, CallState]]:
    with conn.cursor(name="tracker_replay") as cur:
        cur.itersize = 5000
        cur.execute(
            f"SELECT {_CALL_ROWS} FROM events WHERE call_key IS NOT NULL AND seq <= %s"
            " ORDER BY call_key, seq".encode(),
            (max_seq,),
        )
        yield from fold_rows((r[0], r[1], r[2], bytes(r[3]), r[4]) for r in cur)


def _stored(conn: Conn) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="tracker_replay_calls") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT {_INSERT_COLUMNS} FROM calls ORDER BY call_key".encode())
        for r in cur:
            yield (*r[:-1], bytes(r[-1]))


def _fold_call(conn: Conn, call_key: int) -> CallState | None:
    rows = conn.execute(
        f"SELECT {_CALL_ROWS} FROM events WHERE call_key = %s ORDER BY seq".encode(), (call_key,)
    ).fetchall()
    for _, state in fold_rows((r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows):
        return state
    return None


def replay(
    conn: Conn,
    reader: Conn,
    outcomes: Mapping[str, str],
    *,
    check: bool = False,
    progress: Progress | None = None,
    rebuild: bool = False,
) -> list[Drift]:
    """``conn``: a connection for the writes; ``reader``: one for the snapshot pass."""
    with reader.transaction():
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        total = int(_one(reader, "SELECT count(*) FROM calls"))
        max_seq = int(_one(reader, "SELECT seq FROM tracker_head WHERE id = 1"))
        if check:
            return _check(reader, max_seq, outcomes, total, progress)
        fixes = None if rebuild else _collect(reader, max_seq, outcomes, total, progress)
    if fixes is not None:
        _fix(conn, fixes, max_seq, outcomes)
        return []
    with reader.transaction():
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        max_seq = int(_one(reader, "SELECT seq FROM tracker_head WHERE id = 1"))
        name = f"calls_rebuild_{secrets.token_hex(4)}"
        _rebuild(conn, reader, outcomes, name, max_seq, total, progress)
    _swap(conn, name, outcomes, max_seq)
    return []


def _one(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


def _collect(
    reader: Conn, max_seq: int, outcomes: Mapping[str, str], total: int, progress: Progress | None
) -> list[Difference] | None:
    """The differing calls, or ``None`` once there are too many to rewrite in place."""
    limit = max(DIFF_MIN, total // DIFF_SHARE)
    fixes: list[Difference] = []
    folded = _iter_folded(reader, max_seq)
    for d in differences(folded, _stored(reader), outcomes, progress, total):
        fixes.append(d)
        if len(fixes) > limit:
            return None
    return fixes


def _fix(conn: Conn, fixes: list[Difference], max_seq: int, outcomes: Mapping[str, str]) -> None:
    """Holding the head row: rewrite the differing rows, refold the calls that got events since
    the snapshot, bump the epoch (writers drop their cached calls)."""
    delete = b"DELETE FROM calls WHERE call_key = %s"
    with conn.transaction():
        conn.execute(LOCK_HEAD)
        late = {
            int(k)
            for (k,) in conn.execute(
                "SELECT DISTINCT call_key FROM events WHERE seq > %s AND call_key IS NOT NULL",
                (max_seq,),
            ).fetchall()
        }
        with conn.cursor() as cur:
            # every differing row goes first, so a call id may move between keys
            gone = [(k,) for k, _, _, got in fixes if got is not None]
            if gone:
                cur.executemany(delete, gone)
            rows = [want for k, _, want, _ in fixes if want is not None and k not in late]
            if rows:
                cur.executemany(INSERT_CALL.encode(), rows)
        for call_key in sorted(late):
            latest = _fold_call(conn, call_key)
            conn.execute(delete, (call_key,))
            if latest is not None:
                conn.execute(INSERT_CALL.encode(), (call_key, *row_of(latest, outcomes)))
        if fixes or late:
            conn.execute("UPDATE tracker_head SET epoch = epoch + 1 WHERE id = 1")


def _check(
    reader: Conn, max_seq: int, outcomes: Mapping[str, str], total: int, progress: Progress | None
) -> list[Drift]:
    folded = _iter_folded(reader, max_seq)
    found = differences(folded, _stored(reader), outcomes, progress, total)
    drift, orphans = drifts(found, outcomes)
    return drift + orphans


def _rebuild(
    conn: Conn,
    reader: Conn,
    outcomes: Mapping[str, str],
    name: str,
    max_seq: int,
    total: int,
    progress: Progress | None,
) -> None:
    """Fold into ``name`` (indexes built after the bulk load), committed in chunks."""
    conn.execute(calls_ddl(name).encode())
    insert = INSERT_CALL.replace("INTO calls", f"INTO {name}", 1).encode()
    try:
        n = 0
        chunk: list[tuple[Any, ...]] = []
        for n, (call_key, state) in enumerate(_iter_folded(reader, max_seq), 1):
            chunk.append((call_key, *row_of(state, outcomes)))
            if len(chunk) >= 5000:
                with conn.cursor() as cur:
                    cur.executemany(insert, chunk)
                chunk.clear()
                if progress:
                    progress(n, total)
        if chunk:
            with conn.cursor() as cur:
                cur.executemany(insert, chunk)
        for sql in calls_indexes(name):
            conn.execute(sql.encode())
        if progress:
            progress(n, total)
    except BaseException:
        conn.execute(f"DROP TABLE IF EXISTS {name}".encode())
        raise


def _swap(conn: Conn, name: str, outcomes: Mapping[str, str], max_seq: int) -> None:
    """Holding the head row: refold the calls that changed since the snapshot, swap, bump the
    epoch (writers drop their cached calls)."""
    insert = INSERT_CALL.replace("INTO calls", f"INTO {name}", 1).encode()
    try:
        with conn.transaction():
            conn.execute(LOCK_HEAD)
            late = conn.execute(
                "SELECT DISTINCT call_key FROM events WHERE seq > %s AND call_key IS NOT NULL",
                (max_seq,),
            ).fetchall()
            for (call_key,) in late:
                latest = _fold_call(conn, call_key)
                if latest is not None:
                    conn.execute(f"DELETE FROM {name} WHERE call_key = %s".encode(), (call_key,))
                    conn.execute(insert, (call_key, *row_of(latest, outcomes)))
            conn.execute("DROP TABLE calls")
            conn.execute(f"ALTER TABLE {name} RENAME TO calls".encode())
            conn.execute("UPDATE tracker_head SET epoch = epoch + 1 WHERE id = 1")
    except BaseException:
        conn.execute(f"DROP TABLE IF EXISTS {name}".encode())
        raise
