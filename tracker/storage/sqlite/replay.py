"""Replay: rebuild the projection from the log into a new table and swap it in atomically, or
check it (``--check``) call by call against the log."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from tracker.records import Drift
from tracker.state import CallState, Fact
from tracker.storage.interface import Progress
from tracker.storage.projection import (
    DIFF_MIN,
    DIFF_SHARE,
    Difference,
    drifts,
    fold_rows,
    row_of,
)
from tracker.storage.sqlite.schema import create_calls_indexes, create_calls_table
from tracker.storage.sqlite.split import (
    KEY_MAX,
    KEY_MIN,
    SPLIT_MIN,
    Half,
    busy_ms_of,
    file_of,
    range_differences,
    split_key,
)
from tracker.storage.sqlite.writes import INSERT_CALL

_fact_dec = msgspec.msgpack.Decoder(Fact)

_CALL_ROWS = "call_key, seq, call_id, fact, received_at"
_ALL_EVENTS = (
    f"SELECT {_CALL_ROWS} FROM events"
    " WHERE call_key IS NOT NULL AND seq <= ? ORDER BY call_key, seq"
)


def fold_call(conn: sqlite3.Connection, call_key: int) -> CallState | None:
    """One call's state, folded from the log."""
    rows = conn.execute(
        f"SELECT {_CALL_ROWS} FROM events WHERE call_key = ? ORDER BY seq", (call_key,)
    )
    for _, state in fold_rows(rows):
        return state
    return None


def replay(
    conn: sqlite3.Connection,
    reader: sqlite3.Connection,
    outcomes: Mapping[str, str],
    check: bool = False,
    progress: Progress | None = None,
    rebuild: bool = False,
    jobs: int = 1,
) -> list[Drift]:
    """``conn``: the write connection; ``reader``: a connection of its own for the pass.

    Compares the fold of the log with the stored rows in one merged pass; when few calls differ
    (the usual case), rewrites just those in one transaction, else (or with ``rebuild``) folds
    into a new table and swaps it in. Either way the projection changes atomically. With
    ``jobs`` > 1 and many calls, a second process compares the upper half of them
    (:mod:`.split`)."""
    reader.execute("BEGIN")  # one snapshot for the whole pass
    half: Half | None = None
    try:
        total = reader.execute("SELECT count(*) FROM calls").fetchone()[0]
        max_seq = reader.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        limit = None if check else max(DIFF_MIN, total // DIFF_SHARE)
        hi = KEY_MAX
        if jobs > 1 and total >= SPLIT_MIN and not rebuild and (file := file_of(reader)):
            split = split_key(reader, total)
            with contextlib.suppress(OSError):  # no second process: this one does it all
                half = Half(file, busy_ms_of(reader), outcomes, split, limit)
                hi = split - 1
        if check:
            return _check(reader, max_seq, outcomes, hi, half, progress, total)
        if not rebuild:
            assert limit is not None
            found = _collect(reader, max_seq, outcomes, hi, half, limit, progress, total)
            if found is not None:
                reader.execute("COMMIT")
                _fix(conn, found[0], found[1], outcomes)
                return []
        if half is not None:  # too many differ: its answer is not needed for a rebuild
            half.stop()
        _rebuild(conn, reader, outcomes, max_seq, total, progress)
        return []
    finally:
        if half is not None:
            half.stop()
        if reader.in_transaction:
            reader.execute("COMMIT")


def _collect(
    reader: sqlite3.Connection,
    max_seq: int,
    outcomes: Mapping[str, str],
    hi: int,
    half: Half | None,
    limit: int,
    progress: Progress | None,
    total: int,
) -> tuple[list[Difference], int] | None:
    """The differing calls and the oldest snapshot's last ``seq`` they were found in, or
    ``None`` once there are too many to rewrite in place."""
    fixes: list[Difference] = []
    for d in range_differences(reader, max_seq, outcomes, KEY_MIN, hi, progress, total):
        fixes.append(d)
        if len(fixes) > limit:
            return None
    if half is None:
        return fixes, max_seq
    got = half.result()
    if got is None:  # the second process failed: its half here, in this snapshot
        for d in range_differences(reader, max_seq, outcomes, hi + 1, KEY_MAX):
            fixes.append(d)
            if len(fixes) > limit:
                return None
        return fixes, max_seq
    its_max, more = got
    if more is None or len(fixes) + len(more) > limit:
        return None
    if progress:
        progress(total, total)
    # its snapshot is the later one: the calls with events after ours are refolded under the lock
    return fixes + more, min(max_seq, its_max)


def _drop_stale(conn: sqlite3.Connection) -> None:
    """Drop what a rebuild that was killed left: its table holds index names a rebuild needs."""
    for (stale,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'calls_rebuild_*'"
    ).fetchall():
        conn.execute(f'DROP TABLE IF EXISTS "{stale}"')


def _fix(
    conn: sqlite3.Connection, fixes: list[Difference], max_seq: int, outcomes: Mapping[str, str]
) -> None:
    """Under the write lock: rewrite the differing rows, and refold the calls that got events
    since the snapshot (their rows are the writer's, newer than the pass's)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _drop_stale(conn)
        late = {
            k
            for (k,) in conn.execute(
                "SELECT DISTINCT call_key FROM events WHERE seq > ? AND call_key IS NOT NULL",
                (max_seq,),
            )
        }
        delete = "DELETE FROM calls WHERE call_key = ?"
        # every differing row goes first, so a call id may move between keys
        conn.executemany(delete, [(k,) for k, _, _, got in fixes if got is not None])
        conn.executemany(
            INSERT_CALL, [want for k, _, want, _ in fixes if want is not None and k not in late]
        )
        for call_key in sorted(late):
            latest = fold_call(conn, call_key)
            conn.execute(delete, (call_key,))
            if latest is not None:
                conn.execute(INSERT_CALL, (call_key, *row_of(latest, outcomes)))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check(
    reader: sqlite3.Connection,
    max_seq: int,
    outcomes: Mapping[str, str],
    hi: int,
    half: Half | None,
    progress: Progress | None,
    total: int,
) -> list[Drift]:
    """Every drifting call, then every orphan: this process's range, then the second
    process's (or, if that one failed, its range here)."""
    drift, orphans = drifts(
        range_differences(reader, max_seq, outcomes, KEY_MIN, hi, progress, total), outcomes
    )
    if half is not None:
        got = half.drift()
        if got is None:
            got = drifts(range_differences(reader, max_seq, outcomes, hi + 1, KEY_MAX), outcomes)
        drift += got[0]
        orphans += got[1]
        if progress:
            progress(total, total)
    return drift + orphans


def _rebuild(
    conn: sqlite3.Connection,
    reader: sqlite3.Connection,
    outcomes: Mapping[str, str],
    max_seq: int,
    total: int,
    progress: Progress | None,
) -> None:
    """Fold into a new table (indexes built after the bulk load), catch up, swap atomically."""
    from sqlite_utils import Database  # only here: a tenth of a second of every start-up

    db = Database(conn)
    _drop_stale(conn)
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    suffix = "b" if "calls_id_a" in existing else "a"
    name = f"calls_rebuild_{int(time.time() * 1000)}"
    insert = INSERT_CALL.replace("INTO calls", f"INTO {name}", 1)
    try:
        conn.execute("BEGIN IMMEDIATE")
        create_calls_table(db, name, suffix, indexes=False)
        conn.execute("COMMIT")
        n = 0
        chunk: list[tuple[Any, ...]] = []
        rows = reader.execute(_ALL_EVENTS, (max_seq,))
        for n, (call_key, state) in enumerate(fold_rows(rows), 1):
            chunk.append((call_key, *row_of(state, outcomes)))
            if len(chunk) >= 5000:
                _insert_chunk(conn, insert, chunk)
                if progress:
                    progress(n, total)
        _insert_chunk(conn, insert, chunk)
        reader.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        create_calls_indexes(db, name, suffix)
        conn.execute("COMMIT")
        # Catch up under the write lock with what arrived meanwhile, then swap.
        conn.execute("BEGIN IMMEDIATE")
        late = conn.execute(
            "SELECT DISTINCT call_key FROM events WHERE seq > ? AND call_key IS NOT NULL",
            (max_seq,),
        ).fetchall()
        for (call_key,) in late:
            latest = fold_call(conn, call_key)
            if latest is not None:
                conn.execute(f"DELETE FROM {name} WHERE call_key = ?", (call_key,))
                conn.execute(insert, (call_key, *row_of(latest, outcomes)))
        conn.execute("DROP TABLE calls")
        conn.execute(f"ALTER TABLE {name} RENAME TO calls")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        raise
    if progress:
        progress(n, total)


def _insert_chunk(conn: sqlite3.Connection, insert: str, chunk: list[tuple[Any, ...]]) -> None:
    if not chunk:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(insert, chunk)
    conn.execute("COMMIT")
    chunk.clear()
