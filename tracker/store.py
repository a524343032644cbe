"""The SQLite event log and the call projection: schema, append with dedupe, reads, replay.

Tables (schema created and migrated with sqlite-utils; ``PRAGMA user_version`` is the version):

* ``events`` — the append-only log. ``seq`` is the log position. ``dkey`` (UNIQUE) is the
  dedupe key: 8 bytes of event time then the 16-byte content digest, so the index grows at its
  right edge like the log instead of at random places. ``fact`` is what the fold needs (msgpack),
  so replay never re-parses JSON; ``body`` holds the exact bytes received. Never updated or deleted.
* ``calls`` — the projection, one row per call, written in the same transaction as the append.
  ``call_key`` is given to a call when it is first seen, so it grows with time too; the log keeps
  it, so a replay streams the log call by call (``ORDER BY call_key, seq``) in bounded memory.
* ``rejects`` — the quarantine of refused bodies (capped in size), for repair and re-ingest.
"""

from __future__ import annotations

import base64
import contextlib
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl

import msgspec
from sqlite_utils import Database

from tracker.errors import StorageUnavailable
from tracker.events import Decoded, format_time, restore_plus
from tracker.state import (
    CallState,
    CallView,
    Fact,
    direction_of,
    evolve,
    fact_of,
    fold_distinct,
    initial_state,
    outcome_for,
    render,
    status_of,
    view,
)

SCHEMA_VERSION: Final = 1
CACHE_CALLS: Final = 20_000  # calls whose state the writer keeps in memory

_fact_enc = msgspec.msgpack.Encoder()
_fact_dec = msgspec.msgpack.Decoder(Fact)
_state_dec = msgspec.msgpack.Decoder(CallState)
_state_enc = msgspec.msgpack.Encoder()
_json_enc = msgspec.json.Encoder()

FILTER_COLUMNS: Final = {
    "status": "status",
    "outcome": "outcome",
    "cause": "cause",
    "direction": "direction",
    "from": "from_number",
    "to": "to_number",
    "tag": "tag",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------
# What the shell hands to the store


class Entry(NamedTuple):
    """One accepted event, ready to append: decoded once, on the caller's side.

    (NamedTuples, not frozen dataclasses: these are built per event on the hot path.)"""

    dkey: bytes
    api: int
    event_type: str
    call_id: str | None
    event_time: int | None
    fact: Fact
    fact_blob: bytes
    fmt: str  # "json", "form" or "query": how the body bytes are to be read
    body: bytes
    received_at: int


def make_entry(decoded: Decoded, body: bytes, fmt: str, received_at: int | None = None) -> Entry:
    fact = fact_of(decoded)
    t = fact.t
    prefix = struct.pack(">q", t if t is not None else 0)
    return Entry(
        dkey=prefix + decoded.key,
        api=2 if fact.v2 else 1,
        event_type=fact.event_type,
        call_id=decoded.event.callId or None,  # an empty id names no call
        event_time=t,
        fact=fact,
        fact_blob=_fact_enc.encode(fact),
        fmt=fmt,
        body=body,
        received_at=now_ms() if received_at is None else received_at,
    )


class Appended(NamedTuple):
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Reject:
    received_at: int
    status: int
    error: str
    detail: str
    body: bytes
    content_type: str
    path: str
    size: int | None = None  # the full size when ``body`` is only its head (a 413)


# --------------------------------------------------------------------------------------------
# Schema


def connect(
    path: str | Path, *, synchronous: str = "normal", busy_ms: int = 5000, mmap_mb: int = 0
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, with our pragmas.

    ``mmap_mb`` (the server's read connections, ``storage.read_mmap_mb``): pages are read through
    a memory map of the file (SQLite caps its size, 2 GiB by default) instead of a read() and a
    copy each, which is most of a lookup at a random call (BENCHMARKS.md). The mapped pages are
    the OS page cache's, shared and reclaimable: they count in RSS, not in the process's own
    memory. Nothing here shrinks the file under the map (no VACUUM)."""
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(p), isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    deadline = time.monotonic() + busy_ms / 1000
    while True:  # switching a new file to WAL takes a lock the busy timeout does not cover
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    # 16 MiB a connection: the hot index pages fit; more only grows RSS (measured, BENCHMARKS.md)
    conn.execute("PRAGMA cache_size = -16384")
    conn.execute("PRAGMA foreign_keys = OFF")
    if mmap_mb > 0:
        conn.execute(f"PRAGMA mmap_size = {int(mmap_mb) << 20}")
    return conn


def _calls_columns() -> dict[str, Any]:
    return {
        "call_key": int,
        "call_id": str,
        "status": str,
        "outcome": str,
        "cause": str,
        "direction": str,
        "from_number": str,
        "to_number": str,
        "tag": str,
        "first_event_at": int,
        "last_seq": int,
        "state": bytes,
    }


def create_calls_table(db: Database, name: str, suffix: str, *, indexes: bool = True) -> None:
    """The projection table and its indexes (``suffix`` keeps index names unique across swaps)."""
    db.table(name).create(_calls_columns(), pk="call_key", not_null=["call_id"])
    if indexes:
        create_calls_indexes(db, name, suffix)


def create_calls_indexes(db: Database, name: str, suffix: str) -> None:
    t = db.table(name)
    t.create_index(["call_id"], index_name=f"calls_id_{suffix}", unique=True)
    t.create_index(["last_seq"], index_name=f"calls_seq_{suffix}")
    t.create_index(["first_event_at"], index_name=f"calls_first_{suffix}")
    # Low-cardinality filters match huge sets: (column, last_seq) serves a page without a sort.
    # Numbers and tags match few calls: a plain index is enough, and it is not rewritten on
    # every event (SQLite only touches indexes whose columns change; last_seq always does).
    for column in ("status", "outcome", "cause", "direction"):
        t.create_index([column, "last_seq"], index_name=f"calls_{column}_{suffix}")
    for column in ("from_number", "to_number", "tag"):
        t.create_index([column], index_name=f"calls_{column}_{suffix}")


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageUnavailable(
            f"the database has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade tracker"
        )
    if version == SCHEMA_VERSION:
        return
    db = Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # another connection may have migrated while we waited for the write lock
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            db.table("events").create(
                {
                    "seq": int,
                    "received_at": int,
                    "api": int,
                    "event_type": str,
                    "call_id": str,
                    "call_key": int,
                    "event_time": int,
                    "dkey": bytes,
                    "fmt": str,
                    "fact": bytes,
                    "body": bytes,
                },
                pk="seq",
                not_null=["received_at", "api", "event_type", "dkey", "fmt", "fact", "body"],
            )
            db.table("events").create_index(["dkey"], index_name="events_dkey", unique=True)
            db.table("events").create_index(["call_key", "seq"], index_name="events_call")
            create_calls_table(db, "calls", "a")
            db.table("rejects").create(
                {
                    "id": int,
                    "received_at": int,
                    "status": int,
                    "error": str,
                    "detail": str,
                    "content_type": str,
                    "path": str,
                    "size": int,
                    "truncated": int,
                    "body": bytes,
                },
                pk="id",
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------------------------
# Writing


def _row_of(state: CallState, outcomes: Mapping[str, str] | None) -> tuple[Any, ...]:
    """The calls row of a state: its filter columns and the accumulator (rendered on reads)."""
    return (
        state.call_id,
        status_of(state),
        outcome_for(state, outcomes),
        state.hard[3] if state.hard is not None else None,
        direction_of(state),
        state.from_[2] if state.from_ is not None else None,
        state.to[2] if state.to is not None else None,
        state.tag[2] if state.tag is not None else None,
        state.first[0] if state.first is not None else None,
        state.last_seq,
        _state_enc.encode(state),
    )


def render_row(state: bytes, outcome: str | None) -> bytes:
    """A stored calls row as ``GET /calls/{callId}`` JSON (the stored outcome is kept)."""
    return _json_enc.encode(render(_state_dec.decode(state), outcome))


_CALL_COLUMNS = (
    "call_id, status, outcome, cause, direction, from_number, to_number, tag, first_event_at,"
    " last_seq, state"
)
_SELECT_CALL = f"SELECT call_key, {_CALL_COLUMNS} FROM calls WHERE call_id = ?"
_INSERT_CALL = f"INSERT INTO calls (call_key, {_CALL_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_UPDATE_CALL = (
    "UPDATE calls SET status = ?, outcome = ?, cause = ?, direction = ?, from_number = ?,"
    " to_number = ?, tag = ?, first_event_at = ?, last_seq = ?, state = ? WHERE call_key = ?"
)
_UPDATE_CALL_LEAN = (
    "UPDATE calls SET status = ?, outcome = ?, cause = ?, last_seq = ?, state = ?"
    " WHERE call_key = ?"
)
# (call_key, state, the row as last committed or None for a call not yet in the table)
_Call = tuple[int, CallState, tuple[Any, ...] | None]

_INSERT_EVENT = """
INSERT INTO events (seq, received_at, api, event_type, call_id, call_key, event_time, dkey, fmt,
                    fact, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dkey) DO NOTHING
"""


def quarantine_cap(body: bytes, cap: int) -> tuple[bytes, bool]:
    return (body[:cap], True) if len(body) > cap else (body, False)


class Store:
    """One SQLite file. The write methods belong to exactly one thread at a time (the writer)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        outcomes: Mapping[str, str] | None = None,
        busy_ms: int = 5000,
        quarantine_max_bytes: int = 65536,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self.outcomes = dict(outcomes or {})
        self.busy_ms = busy_ms
        self.quarantine_max_bytes = quarantine_max_bytes
        self.conn = connect(self.path, synchronous=synchronous, busy_ms=busy_ms)
        # The writer's cache of recently touched calls (call id -> (call_key, state)), so an
        # event of an active call needs no SELECT. Valid while no other connection commits
        # (checked with PRAGMA data_version at each write) and cleared on any failure.
        self._cache: dict[str, _Call] = {}
        self._data_version = -1
        self._next: tuple[int, int] | None = None  # next seq and call_key, under the same rule
        try:
            migrate(self.conn)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    def reopen(self) -> None:
        """Drop and reopen the write connection (after a read-only or I/O fault)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._cache.clear()
        self._next = None
        self.conn = connect(self.path, synchronous=self.synchronous, busy_ms=self.busy_ms)
        migrate(self.conn)

    # -- the append transaction --------------------------------------------------------------

    def write_batch(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject] = ()
    ) -> list[list[Appended]]:
        """Append every group's entries and refresh the projection, all in one transaction.

        Returns each group's results in order. Raises ``sqlite3.Error`` with nothing written.
        """
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
                    ),
                ).rowcount
                if not inserted:  # the UNIQUE dkey: the same content is already logged
                    found = execute("SELECT seq FROM events WHERE dkey = ?", (e.dkey,)).fetchone()
                    res.append(Appended(found[0], True))
                    continue
                if cur is not None and cid is not None:
                    if call_key == next_key:
                        next_key += 1
                    touched[cid] = (cur[0], evolve(cur[1], e.fact, next_seq), cur[2])
                res.append(Appended(next_seq, False))
                next_seq += 1
            results.append(res)
        self._next = (next_seq, next_key)  # kept only if the commit succeeds (see write_batch)
        outcomes = self.outcomes
        for cid, (call_key, state, before) in touched.items():
            row = _row_of(state, outcomes)
            if before is None:
                execute(_INSERT_CALL, (call_key, *row))
            elif row[4:9] == before[4:9]:
                # SQLite rewrites only the indexes of the columns a statement sets: leave out
                # those that did not change (direction, numbers, tag, first event time)
                execute(_UPDATE_CALL_LEAN, (*row[1:4], row[9], row[10], call_key))
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

    def append(self, entries: Sequence[Entry]) -> list[Appended]:
        """Append one group in its own transaction (CLI import, Python API, tests)."""
        return self.write_batch([entries])[0]

    def reject(self, r: Reject) -> None:
        self.write_batch([], [r])

    # -- replay ------------------------------------------------------------------------------

    def replay(
        self,
        *,
        check: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[tuple[str, dict[str, tuple[Any, Any]]]]:
        """Rebuild the projection from the log.

        Without ``check``: into a new table, swapped in atomically (new events that arrive while
        it runs are folded in under the write lock just before the swap). With ``check``: compare
        with the current projection and return every differing call with its differing fields.
        """
        self._cache.clear()  # the swap rewrites calls through this very connection
        self._next = None
        try:
            return replay(self, check=check, progress=progress)
        finally:
            self._cache.clear()


# --------------------------------------------------------------------------------------------
# Replay


_CALL_ROWS = "call_key, seq, call_id, fact"


def _fold_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, CallState]]:
    """Fold rows ``(call_key, seq, call_id, fact)`` ordered by call_key: one state per call."""
    decode = _fact_dec.decode
    for call_key, group in groupby(rows, key=itemgetter(0)):
        first = next(group)
        rest = ((decode(r[3]), r[1]) for r in group)  # noqa: B031 (consumed before the next group)
        yield call_key, fold_distinct(chain([(decode(first[3]), first[1])], rest), first[2])


def _iter_calls(conn: sqlite3.Connection, max_seq: int) -> Iterator[tuple[int, CallState]]:
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


_INSERT_COLUMNS = "call_key, " + _CALL_COLUMNS


def replay(
    store: Store,
    *,
    check: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, dict[str, tuple[Any, Any]]]]:
    outcomes = store.outcomes
    reader = connect(store.path, busy_ms=store.busy_ms)
    try:
        reader.execute("BEGIN")  # one snapshot for the whole pass
        total = reader.execute("SELECT count(*) FROM calls").fetchone()[0]
        max_seq = reader.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if check:
            drift = _check(reader, max_seq, outcomes, total, progress)
            reader.execute("COMMIT")
            return drift
        _rebuild(store, reader, max_seq, total, progress)
        return []
    finally:
        reader.close()


def _check(
    reader: sqlite3.Connection,
    max_seq: int,
    outcomes: Mapping[str, str],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[tuple[str, dict[str, tuple[Any, Any]]]]:
    drift: list[tuple[str, dict[str, tuple[Any, Any]]]] = []
    seen: set[int] = set()
    lookup = f"SELECT {_INSERT_COLUMNS} FROM calls WHERE call_key = ?"
    names = _INSERT_COLUMNS.replace(" ", "").split(",")
    for n, (call_key, state) in enumerate(_iter_calls(reader, max_seq), 1):
        seen.add(call_key)
        got = reader.execute(lookup, (call_key,)).fetchone()
        want_row = (call_key, *_row_of(state, outcomes))
        if got is not None and tuple(got) == want_row:
            continue
        want = msgspec.json.decode(_json_enc.encode(view(state, outcomes)))
        if got is None:
            drift.append((state.call_id, _diff(None, want)))
            continue
        try:
            have = msgspec.json.decode(render_row(got[-1], got[3]))
        except (msgspec.DecodeError, msgspec.ValidationError):
            have = {}
        diff = _diff(have, want)
        for i, column in enumerate(names[:-1]):  # the filter columns beside the state
            if got[i] != want_row[i]:
                diff.setdefault(f"[{column}]", (got[i], want_row[i]))
        drift.append((state.call_id, diff or {"[state]": ("differs", "as folded")}))
        if progress and n % 10000 == 0:
            progress(n, total)
    for call_key, call_id in reader.execute("SELECT call_key, call_id FROM calls"):
        if call_key not in seen:
            drift.append((call_id, {"*": ("present", "absent from the log")}))
    return drift


def _rebuild(
    store: Store,
    reader: sqlite3.Connection,
    max_seq: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Fold into a new table (indexes built after the bulk load), catch up, swap atomically."""
    conn = store.conn
    outcomes = store.outcomes
    db = Database(conn)
    # a rebuild table left by a replay that was killed would hold the index names we need
    for (stale,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'calls_rebuild_*'"
    ).fetchall():
        conn.execute(f'DROP TABLE IF EXISTS "{stale}"')
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    suffix = "b" if "calls_id_a" in existing else "a"
    name = f"calls_rebuild_{int(time.time() * 1000)}"
    insert = _INSERT_CALL.replace("INTO calls", f"INTO {name}", 1)
    try:
        conn.execute("BEGIN IMMEDIATE")
        create_calls_table(db, name, suffix, indexes=False)
        conn.execute("COMMIT")
        n = 0
        chunk: list[tuple[Any, ...]] = []
        for n, (call_key, state) in enumerate(_iter_calls(reader, max_seq), 1):
            chunk.append((call_key, *_row_of(state, outcomes)))
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
                conn.execute(insert, (call_key, *_row_of(latest, outcomes)))
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


def _diff(have: Any, want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    if not isinstance(have, dict):
        return {"*": ("absent", "present in the log")}
    return {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}


# --------------------------------------------------------------------------------------------
# Reads (any connection; the app runs them on read connections, never the writer's)


class EventRow(msgspec.Struct, frozen=True):
    """One logged event as the query API shows it."""

    seq: int
    receivedAt: str | None
    eventType: str
    callId: str | None
    time: str | None
    payload: Any


class RejectRow(msgspec.Struct, frozen=True):
    id: int
    receivedAt: str | None
    status: int
    error: str
    detail: str
    contentType: str | None
    path: str | None
    size: int
    truncated: bool
    body: str
    bodyEncoding: str  # "utf-8" or "base64" (bodies that are not valid UTF-8)


def payload_of(fmt: str, body: bytes) -> Any:
    """What was received, as JSON: JSON bodies verbatim, form/query bodies as string fields."""
    if fmt == "json":
        return msgspec.Raw(body)
    return form_fields(body)


def one_line(row: EventRow) -> EventRow:
    """The row with a pretty-printed JSON payload re-emitted without line breaks (tokens
    untouched), for formats of one event per line: SSE frames, NDJSON export."""
    payload = row.payload
    if isinstance(payload, msgspec.Raw):
        raw = bytes(payload)
        if b"\n" in raw or b"\r" in raw:
            return msgspec.structs.replace(
                row, payload=msgspec.Raw(msgspec.json.format(raw, indent=-1))
            )
    return row


def form_fields(body: bytes) -> dict[str, str]:
    """A form-encoded or query-string body as string fields (the last of repeated keys wins)."""
    return restore_plus(dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))


_EVENT_COLUMNS = "seq, received_at, event_type, call_id, event_time, fmt, body"


def _event_row(r: tuple[Any, ...]) -> EventRow:
    return EventRow(
        seq=r[0],
        receivedAt=format_time(r[1]),
        eventType=r[2],
        callId=r[3],
        time=format_time(r[4]),
        payload=payload_of(r[5], r[6]),
    )


def get_view(conn: sqlite3.Connection, call_id: str) -> bytes | None:
    row = conn.execute("SELECT state, outcome FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    return None if row is None else render_row(row[0], row[1])


# A place in a call's timeline: (event time in ms, or None for the untimed events, seq). The
# timeline's order is by event time, untimed last, then seq; a page continues after a place.
TimelinePlace = tuple[int | None, int]
TIMELINE_PAGE_BYTES: Final = 4 << 20  # a page stops before this many payload bytes (1 event min)
_PLACE = re.compile(r"(-?[0-9]{1,19}|u)\.([0-9]{1,19})")
_INT64 = (1 << 63) - 1


def format_place(place: TimelinePlace) -> str:
    """The cursor text of a place: ``<event time ms>.<seq>``, or ``u.<seq>`` when untimed."""
    at, seq = place
    return f"{'u' if at is None else at}.{seq}"


def parse_place(text: str) -> TimelinePlace:
    """The place a cursor names; ``ValueError`` for anything :func:`format_place` cannot give."""
    m = _PLACE.fullmatch(text)
    if m is None:
        raise ValueError(text)
    at = None if m[1] == "u" else int(m[1])
    seq = int(m[2])
    if (at is not None and not -_INT64 - 1 <= at <= _INT64) or not 0 <= seq <= _INT64:
        raise ValueError(text)
    return at, seq


def call_events(
    conn: sqlite3.Connection,
    call_id: str,
    *,
    after: TimelinePlace | None = None,
    limit: int = 100,
    max_bytes: int = TIMELINE_PAGE_BYTES,
) -> tuple[list[EventRow], TimelinePlace | None] | None:
    """One page of a call's timeline (by event time, untimed last, then seq) after ``after``:
    at most ``limit`` events, and fewer when their bodies pass ``max_bytes`` (never none).
    Returns the page and the place to continue after (``None``: the end), or ``None`` for an
    unknown call. The sort reads only the keys; bodies are fetched for the page alone."""
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
    rows = {
        r[0]: r
        for r in conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({','.join('?' * len(seqs))})",
            seqs,
        )
    }
    return [_event_row(rows[s]) for s in seqs], nxt


def iter_call_events(conn: sqlite3.Connection, call_id: str) -> Iterator[EventRow]:
    """Every event of a call's timeline, in its order, a page at a time (bounded memory; run it
    inside one read transaction for a consistent timeline)."""
    after: TimelinePlace | None = None
    while True:
        found = call_events(conn, call_id, after=after, limit=1000)
        if found is None:
            return
        rows, after = found
        yield from rows
        if after is None:
            return


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[EventRow]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
    ).fetchall()
    return [_event_row(r) for r in rows]


def list_calls(
    conn: sqlite3.Connection,
    filters: Mapping[str, str],
    *,
    since: int | None = None,
    until: int | None = None,
    limit: int = 100,
    before_seq: int | None = None,
) -> tuple[list[bytes], int | None]:
    """Rendered views, highest ``lastSeq`` first; returns the page and the next cursor."""
    where: list[str] = []
    args: list[Any] = []
    for name, value in filters.items():
        where.append(f"{FILTER_COLUMNS[name]} = ?")
        args.append(value)
    if since is not None:
        where.append("first_event_at >= ?")
        args.append(since)
    if until is not None:
        where.append("first_event_at < ?")
        args.append(until)
    if before_seq is not None:
        where.append("last_seq < ?")
        args.append(before_seq)
    sql = "SELECT state, outcome, last_seq FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seq DESC LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [render_row(r[0], r[1]) for r in rows], (rows[-1][2] if more and rows else None)


def stats(
    conn: sqlite3.Connection, *, since: int | None = None, until: int | None = None
) -> dict[str, Any]:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("first_event_at >= ?")
        args.append(since)
    if until is not None:
        where.append("first_event_at < ?")
        args.append(until)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    out: dict[str, Any] = {}
    total = 0
    for key, column in (("byStatus", "status"), ("byOutcome", "outcome"), ("byCause", "cause")):
        counts: dict[str, int] = {}
        for value, n in conn.execute(
            f"SELECT {column}, count(*) FROM calls{clause} GROUP BY {column} ORDER BY {column}",
            args,
        ):
            if value is not None:
                counts[value] = n
            if key == "byStatus":
                total += n
        out[key] = counts
    return {"total": total, **out}


def list_rejects(
    conn: sqlite3.Connection, after: int, limit: int
) -> tuple[list[RejectRow], int | None]:
    rows = conn.execute(
        "SELECT id, received_at, status, error, detail, content_type, path, size, truncated, body"
        " FROM rejects WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    out = []
    for r in rows[:limit]:
        raw = bytes(r[9] or b"")
        try:
            text, enc = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(raw).decode("ascii"), "base64"
        out.append(
            RejectRow(
                id=r[0],
                receivedAt=format_time(r[1]),
                status=r[2],
                error=r[3],
                detail=r[4],
                contentType=r[5],
                path=r[6],
                size=r[7],
                truncated=bool(r[8]),
                body=text,
                bodyEncoding=enc,
            )
        )
    return out, (out[-1].id if more and out else None)


# --------------------------------------------------------------------------------------------
# Streaming reads (CLI export): one cursor each, so memory stays bounded. Run them inside one
# read transaction (``BEGIN`` on a connection of its own) for a consistent snapshot.


def iter_views(conn: sqlite3.Connection) -> Iterator[bytes]:
    """Every call's rendered view (``CallView`` JSON), lowest ``lastSeq`` first."""
    for state, outcome in conn.execute("SELECT state, outcome FROM calls ORDER BY last_seq"):
        yield render_row(state, outcome)


def iter_events(conn: sqlite3.Connection, after: int = 0) -> Iterator[EventRow]:
    """The whole log after ``after``, in seq order."""
    for r in conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after,)
    ):
        yield _event_row(r)


__all__ = [
    "Appended",
    "CallView",
    "Entry",
    "EventRow",
    "Reject",
    "RejectRow",
    "StorageUnavailable",
    "Store",
    "call_events",
    "events_after",
    "get_view",
    "iter_events",
    "iter_views",
    "list_calls",
    "list_rejects",
    "make_entry",
    "stats",
]
