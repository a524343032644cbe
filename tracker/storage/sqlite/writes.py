"""The append transaction: log with dedupe, projection and quarantine, in one commit.

:class:`Appender` owns the write connection. It keeps recently touched calls in memory, so an
event of an active call needs no SELECT; the cache is valid while no other connection commits
(checked with ``PRAGMA data_version`` at each write) and cleared on any failure.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, Final

import msgspec

from tracker.records import Appended, Entry, Reject
from tracker.state import (
    CallState,
    evolve,
    initial_state,
)
from tracker.storage.projection import CALL_COLUMNS, quarantine_cap, row_of
from tracker.storage.sqlite.lock import WriterLock

CACHE_CALLS: Final = 20_000  # calls whose state the writer keeps in memory

_state_dec = msgspec.msgpack.Decoder(CallState)
_state_enc = msgspec.msgpack.Encoder()


INSERT_CALL: Final = f"INSERT INTO calls (call_key, {CALL_COLUMNS}) VALUES ({', '.join('?' * 16)})"
_SELECT_CALL = f"SELECT call_key, {CALL_COLUMNS} FROM calls WHERE call_id = ?"
_UPDATE_CALL = (
    "UPDATE calls SET status = ?, outcome = ?, cause = ?, direction = ?, from_number = ?,"
    " to_number = ?, tag = ?, first_event_at = ?, last_seq = ?, started_at = ?, answered_at = ?,"
    " ended_at = ?, last_received_at = ?, state = ? WHERE call_key = ?"
)
_UPDATE_CALL_LEAN = (
    "UPDATE calls SET status = ?, outcome = ?, cause = ?, last_seq = ?, started_at = ?,"
    " answered_at = ?, ended_at = ?, last_received_at = ?, state = ? WHERE call_key = ?"
)
# (call_key, state, the row as last committed or None for a call not yet in the table)
_Call = tuple[int, CallState, tuple[Any, ...] | None]

_INSERT_EVENT = """
INSERT INTO events (seq, received_at, api, event_type, call_id, call_key, event_time, dkey, fmt,
                    fact, body, origin)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dkey) DO NOTHING
"""


class Appender:
    """The write path on one connection. Its methods belong to one thread at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        outcomes: Mapping[str, str],
        quarantine_max_bytes: int,
        lock: WriterLock | None = None,
    ) -> None:
        self.conn = conn
        self.lock = lock
        self.outcomes = outcomes
        self.quarantine_max_bytes = quarantine_max_bytes
        self._cache: dict[str, _Call] = {}
        self._data_version = -1
        self._next: tuple[int, int] | None = None  # next seq and call_key, under the same rule

    def forget(self) -> None:
        """Drop what is cached (another writer may change the tables, e.g. a replay's swap)."""
        self._cache.clear()
        self._next = None

    def write_batch(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject] = ()
    ) -> list[list[Appended]]:
        """Append every group's entries and refresh the projection, all in one transaction.

        Returns each group's results in order. Raises ``sqlite3.Error`` with nothing written.
        With a :class:`WriterLock`, the transaction runs while holding it (several processes).
        """
        if self.lock is None:
            return self._transaction(groups, rejects)
        with self.lock.held():
            return self._transaction(groups, rejects)

    def _transaction(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject]
    ) -> list[list[Appended]]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        touched: dict[str, _Call] = {}
        try:
            # another connection committed since our last commit: cached states may be stale
            if conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                self._cache.clear()
                self._next = None
            out = self._append(conn, groups, touched)
            for r in rejects:
                self._reject(conn, r)
            conn.execute("COMMIT")
        except BaseException:
            self._cache.clear()
            self._next = None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        cache = self._cache
        for cid, item in touched.items():
            cache.pop(cid, None)
            cache[cid] = item  # most recently used last
        if len(cache) > CACHE_CALLS:
            for cid in list(islice(cache, len(cache) - CACHE_CALLS // 2)):
                del cache[cid]
        return out

    def _append(
        self,
        conn: sqlite3.Connection,
        groups: Sequence[Sequence[Entry]],
        touched: dict[str, _Call],
    ) -> list[list[Appended]]:
        if self._next is None:  # else nobody else wrote since our last commit
            row = conn.execute("SELECT max(seq) FROM events").fetchone()
            next_seq = (row[0] or 0) + 1
            row = conn.execute("SELECT max(call_key) FROM calls").fetchone()
            next_key = (row[0] or 0) + 1
        else:
            next_seq, next_key = self._next
        cache = self._cache
        results: list[list[Appended]] = []
        execute = conn.execute
        for group in groups:
            res: list[Appended] = []
            for e in group:
                cid = e.call_id
                call_key = None
                cur = None
                if cid is not None:
                    cur = touched.get(cid) or cache.get(cid)
                    if cur is None:
                        got = execute(_SELECT_CALL, (cid,)).fetchone()
                        if got is None:
                            cur = (next_key, initial_state(cid), None)
                        else:
                            cur = (got[0], _state_dec.decode(got[-1]), tuple(got[1:]))
                    call_key = cur[0]
                inserted = execute(
                    _INSERT_EVENT,
                    (
                        next_seq,
                        e.received_at,
                        e.api,
                        e.event_type,
                        cid,
                        call_key,
                        e.event_time,
                        e.dkey,
                        e.fmt,
                        e.fact_blob,
                        e.body,
                        e.origin,
                    ),
                ).rowcount
                if not inserted:  # the UNIQUE dkey: the same content is already logged
                    found = execute("SELECT seq FROM events WHERE dkey = ?", (e.dkey,)).fetchone()
                    res.append(Appended(found[0], True))
                    continue
                if cur is not None and cid is not None:
                    if call_key == next_key:
                        next_key += 1
                    state = evolve(cur[1], e.fact, next_seq, e.received_at)
                    touched[cid] = (cur[0], state, cur[2])
                res.append(Appended(next_seq, False))
                next_seq += 1
            results.append(res)
        self._next = (next_seq, next_key)  # kept only if the commit succeeds (see write_batch)
        outcomes = self.outcomes
        for cid, (call_key, state, before) in touched.items():
            row = row_of(state, outcomes)
            if before is None:
                execute(INSERT_CALL, (call_key, *row))
            elif row[4:9] == before[4:9]:
                # SQLite rewrites only the indexes of the columns a statement sets: leave out
                # those that did not change (direction, numbers, tag, first event time)
                execute(_UPDATE_CALL_LEAN, (*row[1:4], *row[9:], call_key))
            else:
                execute(_UPDATE_CALL, (*row[1:], call_key))
            touched[cid] = (call_key, state, row)  # the row as committed, for the cache
        return results

    def _reject(self, conn: sqlite3.Connection, r: Reject) -> int:
        body, truncated = quarantine_cap(r.body, self.quarantine_max_bytes)
        cur = conn.execute(
            "INSERT INTO rejects (received_at, status, error, detail, content_type, path, size,"
            " truncated, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.received_at,
                r.status,
                r.error,
                r.detail,
                r.content_type,
                r.path,
                len(r.body) if r.size is None else max(r.size, len(r.body)),
                int(truncated or (r.size is not None and r.size > len(body))),
                body,
            ),
        )
        return int(cur.lastrowid or 0)
