"""The SQLite schema: connections with our pragmas, the tables, and migrations.

Tables (created and migrated with sqlite-utils; ``PRAGMA user_version`` is the version):

* ``events`` — the append-only log. ``seq`` is the log position. ``dkey`` (UNIQUE) is the
  dedupe key: 8 bytes of event time then the 16-byte content digest, so the index grows at its
  right edge like the log instead of at random places. ``fact`` is what the fold needs (msgpack),
  so replay never re-parses JSON; ``body`` holds the exact bytes received; ``origin`` is NULL for
  a received event, ``reconcile`` for the tracker's own. Never updated or deleted.
* ``calls`` — the projection, one row per call, written in the same transaction as the append.
  ``call_key`` is given to a call when it is first seen, so it grows with time too; the log keeps
  it, so a replay streams the log call by call (``ORDER BY call_key, seq``) in bounded memory.
  ``last_received_at`` (the latest receipt of a distinct event) with ``status`` makes the stale
  calls one index range; ``claimed_until`` is the reconciler's claim on a stale call (not state:
  a replay starts it over).
* ``rejects`` — the quarantine of refused bodies (capped in size), for repair and re-ingest.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tracker.storage.errors import NoDatabase, NotATrackerDatabase, SchemaTooNew
from tracker.storage.projection import state_times, with_received

if TYPE_CHECKING:  # imported where a table is created: a tenth of a second at start-up
    from sqlite_utils import Database

# 2: the started_at, answered_at, ended_at columns of calls
# 3: events.origin; calls.last_received_at (stale calls) and calls.claimed_until (reconciliation)
SCHEMA_VERSION: Final = 3

#: The projection's column of each filter of ``GET /calls``.


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


def connect_existing(path: str, busy_ms: int) -> sqlite3.Connection:
    """A connection to a database file that must exist (never creates one), autocommit, for
    reading: replay's second process."""
    conn = sqlite3.connect(
        f"{Path(path).resolve().as_uri()}?mode=rw",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    conn.execute("PRAGMA cache_size = -16384")
    return conn


def check_file(path: str, *, must_exist: bool) -> None:
    """Refuse a file that is missing (when it must exist) or holds another program's tables,
    before we add our schema to it."""
    p = Path(path)
    if path == ":memory:" or not p.is_file():
        if must_exist:
            raise NoDatabase(
                f"no database at {path} (give --db PATH, TRACKER_STORAGE_PATH or storage.path)"
            )
        return
    if p.stat().st_size == 0:
        return
    conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    finally:
        conn.close()
    if version == 0 and tables:
        raise NotATrackerDatabase(f"{path} is not a tracker database (it holds other tables)")


def check_version(conn: sqlite3.Connection, path: str) -> None:
    """For a reader that does not migrate: the schema is there and not newer than ours."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        raise NotATrackerDatabase(f"{path} is not a tracker database (it has no schema)")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade tracker"
        )


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
        "started_at": int,
        "answered_at": int,
        "ended_at": int,
        "last_received_at": int,
        "state": bytes,
        "claimed_until": int,
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
    create_stale_index(db, name, suffix)


def create_stale_index(db: Database, name: str, suffix: str) -> None:
    """Schema 3: the calls not ended, by last receipt: ``stale=true`` is one range a status."""
    db.table(name).create_index(
        ["status", "last_received_at"], index_name=f"calls_stale_{suffix}", if_not_exists=True
    )


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade tracker"
        )
    if version == SCHEMA_VERSION:
        return
    from sqlite_utils import Database

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
        if version < 2:
            _add_time_columns(conn)
        if version < 3:
            _add_stale_columns(conn, db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _add_time_columns(conn: sqlite3.Connection) -> None:
    """Schema 2: a call's start, answer and end times as columns (the KPIs of ``/stats`` are
    then one SQL aggregate), filled from each stored state."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
    if "answered_at" in have:  # created at version 2 already
        return
    for column in ("started_at", "answered_at", "ended_at"):
        conn.execute(f"ALTER TABLE calls ADD COLUMN {column} INTEGER")
    rows = conn.execute("SELECT call_key, state FROM calls").fetchall()
    conn.executemany(
        "UPDATE calls SET started_at = ?, answered_at = ?, ended_at = ? WHERE call_key = ?",
        ((*state_times(blob), key) for key, blob in rows),
    )


def _add_stale_columns(conn: sqlite3.Connection, db: Database) -> None:
    """Schema 3: ``events.origin``, and each call's last receipt time (from the log: the latest
    ``received_at`` of its events, also written into its stored state) and reconciler claim."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if "origin" not in have:
        conn.execute("ALTER TABLE events ADD COLUMN origin TEXT")
    have = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
    if "last_received_at" in have:  # created at version 3 already
        return
    conn.execute("ALTER TABLE calls ADD COLUMN last_received_at INTEGER")
    conn.execute("ALTER TABLE calls ADD COLUMN claimed_until INTEGER")
    rows = conn.execute(
        "SELECT c.call_key, c.state, (SELECT max(e.received_at) FROM events e"
        " WHERE e.call_key = c.call_key) FROM calls c"
    ).fetchall()
    conn.executemany(
        "UPDATE calls SET last_received_at = ?, state = ? WHERE call_key = ?",
        ((received, with_received(blob, received), key) for key, blob, received in rows),
    )
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    create_stale_index(db, "calls", "b" if "calls_id_b" in indexes else "a")
