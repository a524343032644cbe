"""The append transaction on PostgreSQL: the head row, the log with dedupe, the projection, the
quarantine and the commit notification, in one transaction.

Each transaction first locks the one ``tracker_head`` row (``FOR UPDATE``): writers on every host
take turns, each numbers its events from the head it found, and the row's new value commits
with them. So ``seq`` is gap-free and in commit order across hosts, and a duplicate check inside
the transaction is sound (the UNIQUE ``dkey`` index still guards it: a violation rolls back and
the batch is written again, finding the original). The writer caches recently touched calls;
the cache is valid while the head row shows nobody else wrote since our last commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, Final

import msgspec
import psycopg

from tracker.records import Appended, Entry, Reject
from tracker.state import CallState, evolve, initial_state
from tracker.storage.postgres.schema import CHANNEL
from tracker.storage.projection import CALL_COLUMNS, quarantine_cap, row_of

CACHE_CALLS: Final = 20_000

_state_dec = msgspec.msgpack.Decoder(CallState)

INSERT_CALL: Final = (
    f"INSERT INTO calls (call_key, {CALL_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})"
)
_SELECT_CALLS = f"SELECT call_key, {CALL_COLUMNS} FROM calls WHERE call_id = ANY(%s)"
_UPDATE_CALL = (
    "UPDATE calls SET status = %s, outcome = %s, cause = %s, direction = %s, from_number = %s,"
    " to_number = %s, tag = %s, first_event_at = %s, last_seq = %s, started_at = %s,"
    " answered_at = %s, ended_at = %s, last_received_at = %s, state = %s WHERE call_key = %s"
)
INSERT_EVENT: Final = (
    "INSERT INTO events (seq, received_at, api, event_type, call_id, call_key, event_time, dkey,"
    " fmt, fact, body, origin) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_REJECT: Final = (
    "INSERT INTO rejects (id, received_at, status, error, detail, content_type, path, size,"
    " truncated, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
LOCK_HEAD: Final = (
    "SELECT seq, call_key, reject_id, epoch FROM tracker_head WHERE id = 1 FOR UPDATE"
)

_Call = tuple[int, CallState, tuple[Any, ...] | None]
_Head = tuple[int, int, int, int]


class Appender:
    """The write path on one connection (one thread at a time)."""

    def __init__(self, outcomes: Mapping[str, str], quarantine_max_bytes: int) -> None:
        self.outcomes = outcomes
        self.quarantine_max_bytes = quarantine_max_bytes
        self._cache: dict[str, _Call] = {}
        self._head: _Head | None = None  # the head row as our last commit left it

    def forget(self) -> None:
        self._cache.clear()
        self._head = None

    def write_batch(
        self,
        conn: psycopg.Connection[Any],
        groups: Sequence[Sequence[Entry]],
        rejects: Sequence[Reject] = (),
    ) -> list[list[Appended]]:
        """Everything in one transaction; raises ``psycopg.Error`` with nothing written."""
        touched: dict[str, _Call] = {}
        try:
            for attempt in range(2):
                touched.clear()
                try:
                    with conn.transaction():
                        out, head = self._write(conn, groups, rejects, touched)
                    break
                except psycopg.errors.UniqueViolation:
                    # a copy of one of ours committed by a writer that skipped the head row:
                    # nothing was written; once more, the check inside finds it
                    self.forget()
                    if attempt:
                        raise
        except BaseException:
            self.forget()
            raise
        self._head = head
        cache = self._cache
        for cid, item in touched.items():
            cache.pop(cid, None)
            cache[cid] = item
        if len(cache) > CACHE_CALLS:
            for cid in list(islice(cache, len(cache) - CACHE_CALLS // 2)):
                del cache[cid]
        return out

    def _write(
        self,
        conn: psycopg.Connection[Any],
        groups: Sequence[Sequence[Entry]],
        rejects: Sequence[Reject],
        touched: dict[str, _Call],
    ) -> tuple[list[list[Appended]], _Head]:
        row = conn.execute(LOCK_HEAD).fetchone()
        assert row is not None
        seq, call_key, reject_id, epoch = (int(v) for v in row)
        last = self._head
        if last is None or last[:2] != (seq, call_key) or last[3] != epoch:
            self._cache.clear()  # another host (or a replay) wrote since our last commit
        entries = [e for g in groups for e in g]
        known: dict[bytes, int] = {}
        if entries:
            dkeys = list({e.dkey for e in entries})
            for dkey, found in conn.execute(
                "SELECT dkey, seq FROM events WHERE dkey = ANY(%s)", (dkeys,)
            ):
                known[bytes(dkey)] = int(found)
        cache = self._cache
        missing = {e.call_id for e in entries if e.call_id is not None and e.call_id not in cache}
        loaded: dict[str, _Call] = {}
        if missing:
            for got in conn.execute(_SELECT_CALLS, (list(missing),)):
                loaded[got[1]] = (int(got[0]), _state_dec.decode(got[-1]), tuple(got[1:]))
        rows: list[tuple[Any, ...]] = []
        results: list[list[Appended]] = []
        for group in groups:
            res: list[Appended] = []
            for e in group:
                found = known.get(e.dkey)
                if found is not None:
                    res.append(Appended(found, True))
                    continue
                seq += 1
                known[e.dkey] = seq
                cid = e.call_id
                key = None
                if cid is not None:
                    cur = touched.get(cid) or cache.get(cid) or loaded.get(cid)
                    if cur is None:
                        call_key += 1
                        cur = (call_key, initial_state(cid), None)
                    key = cur[0]
                    touched[cid] = (key, evolve(cur[1], e.fact, seq, e.received_at), cur[2])
                rows.append(
                    (
                        seq,
                        e.received_at,
                        e.api,
                        e.event_type,
                        cid,
                        key,
                        e.event_time,
                        e.dkey,
                        e.fmt,
                        e.fact_blob,
                        e.body,
                        e.origin,
                    )
                )
                res.append(Appended(seq, False))
            results.append(res)
        with conn.cursor() as c:
            if rows:
                c.executemany(INSERT_EVENT, rows)
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            for cid, (key, state, before) in touched.items():
                call_row = row_of(state, self.outcomes)
                if before is None:
                    inserts.append((key, *call_row))
                else:
                    updates.append((*call_row[1:], key))
                touched[cid] = (key, state, call_row)
            if inserts:
                c.executemany(INSERT_CALL, inserts)
            if updates:
                c.executemany(_UPDATE_CALL, updates)
            reject_rows = []
            for r in rejects:
                reject_id += 1
                reject_rows.append(self._reject_row(reject_id, r))
            if reject_rows:
                c.executemany(INSERT_REJECT, reject_rows)
            c.execute(
                "UPDATE tracker_head SET seq = %s, call_key = %s, reject_id = %s WHERE id = 1",
                (seq, call_key, reject_id),
            )
            if rows:
                c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))
        return results, (seq, call_key, reject_id, epoch)

    def _reject_row(self, rid: int, r: Reject) -> tuple[Any, ...]:
        body, truncated = quarantine_cap(r.body, self.quarantine_max_bytes)
        return (
            rid,
            r.received_at,
            r.status,
            r.error,
            r.detail,
            r.content_type,
            r.path,
            len(r.body) if r.size is None else max(r.size, len(r.body)),
            int(truncated or (r.size is not None and r.size > len(body))),
            body,
        )
