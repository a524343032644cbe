"""The PostgreSQL schema: connections with our timeouts, the tables, and versioned migrations.

Tables (``tracker_schema.version`` is the version; migrations run under an advisory lock, so
several hosts starting at once migrate once):

* ``tracker_head`` — one row: the last ``seq``, ``call_key`` and reject id given out, and the
  projection's ``epoch`` (bumped by a replay's swap). Every write transaction locks it
  ``FOR UPDATE`` first (commanded/eventstore's ``$all`` row): writers on any number of hosts
  take turns, so ``seq`` is gap-free and in commit order, never a bare ``bigserial`` whose
  values commit out of order.
* ``events`` — the append-only log, the exact bytes received in ``body`` (``bytea``). ``dkey``
  (UNIQUE, a btree) is the dedupe key: 8 bytes of event time then a 16-byte digest.
* ``calls`` — the projection, written in the same transaction as the append. ``(status,
  last_received_at)`` makes the stale calls an index range; ``claimed_until`` is the
  reconciler's claim on a stale call (not state: a replay starts it over).
* ``rejects`` — the quarantine of refused bodies.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Final

import psycopg

from tracker.storage.errors import NoDatabase, NotATrackerDatabase, SchemaTooNew
from tracker.storage.projection import with_received

SCHEMA_VERSION: Final = 2  # 2: events.origin, calls.last_received_at and claimed_until
#: ``pg_advisory_xact_lock`` key of schema changes (any constant shared by every host).
MIGRATION_LOCK: Final = 0x747261636B6572  # "tracker"
#: The channel of the commit notifications (``LISTEN``/``NOTIFY``).
CHANNEL: Final = "tracker_head"


def connect(
    url: str,
    *,
    lock_timeout_ms: int = 5000,
    statement_timeout_ms: int = 30_000,
    connect_timeout: int = 5,
) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are explicit) with our timeouts.

    ``lock_timeout``: a write waits that long for a lock another host holds, then fails (503).
    ``statement_timeout``: no statement runs longer (0 = no limit, for commands).
    ``idle_in_transaction_session_timeout``: a host stuck inside a transaction (paused, its
    network gone) loses its session, and its locks, after that long. TCP keepalives find a
    dead peer in seconds instead of the kernel's two hours."""
    idle = max(lock_timeout_ms, 10_000)
    options = (
        f"-c lock_timeout={int(lock_timeout_ms)} -c statement_timeout={int(statement_timeout_ms)}"
        f" -c idle_in_transaction_session_timeout={idle}"
    )
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=connect_timeout,
        options=options,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        application_name="tracker",
    )


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """Our schema's version; ``None``: the database has no tracker schema."""
    # a scan of the catalog (MVCC: it sees a schema another host committed while we waited
    # for the advisory lock), not to_regclass (its cache may still say there is none)
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_tables"
        " WHERE schemaname = current_schema() AND tablename = 'tracker_schema')"
    ).fetchone()
    if row is None or not row[0]:
        return None
    got = conn.execute("SELECT version FROM tracker_schema").fetchone()
    return int(got[0]) if got is not None else 0


def _foreign_tables(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
    ).fetchone()
    return int(row[0]) if row is not None else 0


def check_version(conn: psycopg.Connection[Any], where: str, *, must_exist: bool) -> None:
    """For a reader that does not migrate (or a command that needs data): the schema is there
    and not newer than ours."""
    version = schema_version(conn)
    if version is None:
        if _foreign_tables(conn):
            raise NotATrackerDatabase(f"{where} is not a tracker database (it holds other tables)")
        if must_exist:
            raise NoDatabase(f"no tracker database at {where} (it has no tracker schema yet)")
        raise NotATrackerDatabase(f"{where} is not a tracker database (it has no schema)")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{where} has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade tracker"
        )


def calls_ddl(name: str) -> str:
    return f"""
CREATE TABLE {name} (
    call_key bigint PRIMARY KEY,
    call_id text NOT NULL,
    status text,
    outcome text,
    cause text,
    direction text,
    from_number text,
    to_number text,
    tag text,
    first_event_at bigint,
    last_seq bigint,
    started_at bigint,
    answered_at bigint,
    ended_at bigint,
    state bytea,
    last_received_at bigint,
    claimed_until bigint
)"""


def calls_indexes(name: str, *, stale: bool = True) -> list[str]:
    """The projection's indexes (a random suffix keeps their names unique across swaps)."""
    s = secrets.token_hex(4)
    out = [
        f"CREATE UNIQUE INDEX calls_id_{s} ON {name} (call_id)",
        f"CREATE INDEX calls_seq_{s} ON {name} (last_seq)",
        f"CREATE INDEX calls_first_{s} ON {name} (first_event_at)",
    ]
    for column in ("status", "outcome", "cause", "direction"):
        out.append(f"CREATE INDEX calls_{column}_{s} ON {name} ({column}, last_seq)")
    for column in ("from_number", "to_number", "tag"):
        out.append(f"CREATE INDEX calls_{column}_{s} ON {name} ({column})")
    if stale:
        out.append(stale_index(name, s))
    return out


def stale_index(name: str, suffix: str) -> str:
    return f"CREATE INDEX calls_stale_{suffix} ON {name} (status, last_received_at)"


_V1: Final = [
    "CREATE TABLE tracker_schema (version int NOT NULL)",
    """CREATE TABLE tracker_head (
        id int PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        call_key bigint NOT NULL,
        reject_id bigint NOT NULL,
        epoch bigint NOT NULL
    )""",
    "INSERT INTO tracker_head VALUES (1, 0, 0, 0, 0)",
    """CREATE TABLE events (
        seq bigint PRIMARY KEY,
        received_at bigint NOT NULL,
        api int NOT NULL,
        event_type text NOT NULL,
        call_id text,
        call_key bigint,
        event_time bigint,
        dkey bytea NOT NULL,
        fmt text NOT NULL,
        fact bytea NOT NULL,
        body bytea NOT NULL
    )""",
    "CREATE UNIQUE INDEX events_dkey ON events (dkey)",
    "CREATE INDEX events_call ON events (call_key, seq)",
    calls_ddl("calls"),
    *calls_indexes("calls", stale=False),
    """CREATE TABLE rejects (
        id bigint PRIMARY KEY,
        received_at bigint NOT NULL,
        status int NOT NULL,
        error text NOT NULL,
        detail text NOT NULL,
        content_type text,
        path text,
        size bigint NOT NULL,
        truncated int NOT NULL,
        body bytea NOT NULL
    )""",
    "INSERT INTO tracker_schema VALUES (1)",
]


#: Version 2: the log's origin column, each call's last receipt (filled from the log) and the
#: reconciler's claim. Plain DDL and one UPDATE inside the migration's transaction, under its
#: advisory lock: a host that waited for the lock finds version 2 and runs none of it. A database
#: created at version 2 gets these from version 1's DDL already, hence ``IF NOT EXISTS``.
def _fill_received(conn: psycopg.Connection[Any]) -> None:
    """Each call's last receipt time from its log, into its column and its stored state."""
    rows = conn.execute(
        "SELECT c.call_key, c.state, e.received FROM calls c JOIN (SELECT call_key,"
        " max(received_at) AS received FROM events WHERE call_key IS NOT NULL GROUP BY call_key)"
        " e ON e.call_key = c.call_key WHERE c.last_received_at IS NULL"
    ).fetchall()
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE calls SET last_received_at = %s, state = %s WHERE call_key = %s",
            [(r[2], with_received(bytes(r[1]), r[2]), r[0]) for r in rows],
        )


Step = str | Callable[[psycopg.Connection[Any]], None]

_V2: Final[list[Step]] = [
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS origin text",
    "ALTER TABLE calls ADD COLUMN IF NOT EXISTS last_received_at bigint",
    "ALTER TABLE calls ADD COLUMN IF NOT EXISTS claimed_until bigint",
    _fill_received,
    stale_index("calls", "v2"),
]

#: The steps from each version to the next (index 0: from none to 1).
MIGRATIONS: Final[list[list[Step]]] = [list(_V1), _V2]


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`, under an advisory lock held to
    the end of the transaction: hosts starting together take turns, the later ones find it
    done."""
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version is None and _foreign_tables(conn):
        raise NotATrackerDatabase(f"{where} is not a tracker database (it holds other tables)")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = schema_version(conn) or 0  # another host may have migrated meanwhile
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{where} has schema version {version}, newer than this release's "
                f"{SCHEMA_VERSION}: upgrade tracker"
            )
        for steps in MIGRATIONS[version:SCHEMA_VERSION]:
            for step in steps:
                if isinstance(step, str):
                    conn.execute(step.encode())
                else:
                    step(conn)
        conn.execute("UPDATE tracker_schema SET version = %s", (SCHEMA_VERSION,))
