"""Replay: rebuild the projection from the log into a new table and swap it in atomically, or
check it (``--check``) call by call against the log."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

import msgspec
from sqlite_utils import Database

from tracker.records import CallRecord, Drift
from tracker.render import ORPHAN, drift_fields
from tracker.state import CallState, Fact, fold_distinct
from tracker.storage.sqlite.schema import create_calls_indexes, create_calls_table
from tracker.storage.sqlite.writes import CALL_COLUMNS, INSERT_CALL, row_of

_fact_dec = msgspec.msgpack.Decoder(Fact)
_state_dec = msgspec.msgpack.Decoder(CallState)

Progress = Callable[[int, int], None]

_CALL_ROWS = "call_key, seq, call_id, fact, received_at"
_INSERT_COLUMNS = "call_key, " + CALL_COLUMNS


def _fold_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, CallState]]:
    """Fold rows ``(call_key, seq, call_id, fact, received_at)`` ordered by call_key: one state
    per call (with the latest receipt time of its events)."""
    decode = _fact_dec.decode
    latest = 0

    def pairs(group: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Fact, int]]:
        nonlocal latest
        for r in group:
            if r[4] > latest:
                latest = r[4]
            yield decode(r[3]), r[1]

    for call_key, group in groupby(rows, key=itemgetter(0)):
        first = next(group)
        latest = first[4]
        rest = pairs(group)  # noqa: B031 (consumed before the next group)
        state = fold_distinct(chain([(decode(first[3]), first[1])], rest), first[2])
        yield call_key, msgspec.structs.replace(state, received=latest)


def _iter_folded(conn: sqlite3.Connection, max_seq: int) -> Iterator[tuple[int, CallState]]:
    """Fold the log call by call, streaming in ``call_key`` order (bounded memory)."""
    rows = conn.execute(
        f"SELECT {_CALL_ROWS} FROM events WHERE call_key IS NOT NULL AND seq <= ?"
        " ORDER BY call_key, seq",
        (max_seq,),
    )
    return _fold_rows(rows)


def fold_call(conn: sqlite3.Connection, call_key: int) -> CallState | None:
    """One call's state, folded from the log."""
    rows = conn.execute(
        f"SELECT {_CALL_ROWS} FROM events WHERE call_key = ? ORDER BY seq", (call_key,)
    )
    for _, state in _fold_rows(rows):
        return state
    return None


def replay(
    conn: sqlite3.Connection,
    reader: sqlite3.Connection,
    outcomes: Mapping[str, str],
    *,
    check: bool = False,
    progress: Progress | None = None,
) -> list[Drift]:
    """``conn``: the write connection; ``reader``: a connection of its own for the pass."""
    reader.execute("BEGIN")  # one snapshot for the whole pass
    total = reader.execute("SELECT count(*) FROM calls").fetchone()[0]
    max_seq = reader.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    if check:
        drift = _check(reader, max_seq, outcomes, total, progress)
        reader.execute("COMMIT")
        return drift
    _rebuild(conn, reader, outcomes, max_seq, total, progress)
    return []


def _check(
    reader: sqlite3.Connection,
    max_seq: int,
    outcomes: Mapping[str, str],
    total: int,
    progress: Progress | None,
) -> list[Drift]:
    drift: list[Drift] = []
    seen: set[int] = set()
    lookup = f"SELECT {_INSERT_COLUMNS} FROM calls WHERE call_key = ?"
    names = _INSERT_COLUMNS.replace(" ", "").split(",")
    for n, (call_key, state) in enumerate(_iter_folded(reader, max_seq), 1):
        seen.add(call_key)
        got = reader.execute(lookup, (call_key,)).fetchone()
        want_row = (call_key, *row_of(state, outcomes))
        if got is not None and tuple(got) == want_row:
            continue
        if got is None:
            drift.append((state.call_id, drift_fields(None, state, outcomes)))
            continue
        have: CallRecord | None
        try:
            have = CallRecord(_state_dec.decode(got[-1]), got[3])
        except (msgspec.DecodeError, msgspec.ValidationError):
            have = None
        columns = {  # the filter columns beside the state
            column: (got[i], want_row[i])
            for i, column in enumerate(names[:-1])
            if got[i] != want_row[i]
        }
        fields = drift_fields(have, state, outcomes, columns, unreadable=have is None)
        drift.append((state.call_id, fields))
        if progress and n % 10000 == 0:
            progress(n, total)
    for call_key, call_id in reader.execute("SELECT call_key, call_id FROM calls"):
        if call_key not in seen:
            drift.append((call_id, dict(ORPHAN)))
    return drift


def _rebuild(
    conn: sqlite3.Connection,
    reader: sqlite3.Connection,
    outcomes: Mapping[str, str],
    max_seq: int,
    total: int,
    progress: Progress | None,
) -> None:
    """Fold into a new table (indexes built after the bulk load), catch up, swap atomically."""
    db = Database(conn)
    # a rebuild table left by a replay that was killed would hold the index names we need
    for (stale,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'calls_rebuild_*'"
    ).fetchall():
        conn.execute(f'DROP TABLE IF EXISTS "{stale}"')
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
        for n, (call_key, state) in enumerate(_iter_folded(reader, max_seq), 1):
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
