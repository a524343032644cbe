""":class:`PostgresStorage`: the PostgreSQL implementation of :class:`tracker.storage.Storage`.

One object owns its connections: the write connection (one thread at a time: the group-commit
writer or a command), a pool of read connections (``psycopg_pool``) for the queries, and a
listening connection for :meth:`PostgresStorage.wait_for_head`. A server (``deferred``) starts
even when the database is unreachable: every operation then fails as ``StorageError`` (503) and
the next one tries to connect again, so it recovers on its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg

from tracker.records import (
    Appended,
    CallRecord,
    Counts,
    Drift,
    Entry,
    LoggedEvent,
    Reject,
    StoredReject,
    TimelinePage,
    TimelinePlace,
)
from tracker.storage.errors import OpenFailed, ReadFailed, StorageError
from tracker.storage.interface import Progress
from tracker.storage.postgres import queries
from tracker.storage.postgres.connections import Connections
from tracker.storage.postgres.errors import commit_failed, read_failed, redact
from tracker.storage.postgres.listener import Listener
from tracker.storage.postgres.replay import replay
from tracker.storage.postgres.schema import check_version
from tracker.storage.postgres.writes import Appender

Conn = psycopg.Connection[Any]

BACKUP_REFUSED = (
    "backup copies a SQLite file; for PostgreSQL use pg_dump (or your provider's backups), "
    "or `tracker copy DEST` to copy the log into a SQLite file or another database"
)


class PostgresStorage:
    """One PostgreSQL database. ``read_only``: never create, migrate or write."""

    def __init__(
        self,
        url: str,
        *,
        outcomes: Mapping[str, str] | None = None,
        lock_timeout_ms: int = 5000,
        statement_timeout_ms: int = 30_000,
        quarantine_max_bytes: int = 65536,
        pool_size: int = 8,
        must_exist: bool = False,
        read_only: bool = False,
        deferred: bool = False,
    ) -> None:
        self.where = redact(url)
        self.outcomes = dict(outcomes or {})
        self.read_only = read_only
        self.db = Connections(
            url,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
            pool_size=pool_size,
            must_exist=must_exist,
            read_only=read_only,
        )
        self._appender = Appender(self.outcomes, quarantine_max_bytes)
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._closed = False
        try:
            self.db.connect()
        except StorageError:
            if not deferred:
                raise

    # -- the writer --------------------------------------------------------------------------

    def head(self) -> int:
        return self.db.read(queries.head)

    def _writable(self) -> Conn:
        if self.read_only:
            raise StorageError(f"{self.where} is open for reading only")
        try:
            return self.db.connect()
        except OpenFailed as err:
            raise StorageError(
                f"storage cannot commit ({err.detail}); nothing was stored, retry later"
            ) from err

    def write_batch(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject] = ()
    ) -> list[list[Appended]]:
        conn = self._writable()
        try:
            return self._appender.write_batch(conn, groups, rejects)
        except psycopg.Error as err:
            if conn.closed or conn.broken:
                self.db.drop()
            raise commit_failed(err) from err

    def append(self, entries: Sequence[Entry]) -> list[Appended]:
        return self.write_batch([entries])[0]

    def reject(self, reject: Reject) -> None:
        self.write_batch([], [reject])

    def recover(self) -> None:
        """Drop the write connection; the next write connects again."""
        self.db.drop()
        self._appender.forget()

    def probe(self, *, write: bool) -> None:
        """On a read connection of its own (the writer's belongs to the writer thread): the
        schema is there (created now if the database was away at start-up), the server is a
        primary, and with ``write`` the head row's lock, which every write takes first, can be
        taken."""
        self._writable()
        try:
            self.db.read(_probe, write)
        except ReadFailed as err:
            raise StorageError(
                f"storage cannot commit ({err.detail}); nothing was stored, retry later"
            ) from err

    def start_maintenance(self, ask: Callable[[], None] | None = None) -> None:
        """Nothing to keep up on PostgreSQL (its autovacuum does); start the read pool."""
        with contextlib.suppress(Exception):
            self.db.readers()

    def upkeep(self, *, asked: bool = False) -> None:
        """Nothing between commits on PostgreSQL."""

    def wait_for_head(self, after: int, timeout: float) -> int:
        """Block up to timeout seconds until the committed head is > after; return the head."""
        with self._lock:
            if self._listener is None:
                self._listener = Listener(self.db.open)
        listener = self._listener
        deadline = time.monotonic() + timeout
        while True:
            seen = listener.generation
            head = self.head()  # a notification is only a wake-up: always read the head
            left = deadline - time.monotonic()
            if head > after or left <= 0:
                return head
            listener.wait(seen, left)

    # -- the queries -------------------------------------------------------------------------

    def call(self, call_id: str) -> CallRecord | None:
        return self.db.read(queries.get_call, call_id)

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> TimelinePage | None:
        return self.db.read(queries.timeline, call_id, after=after, limit=limit)

    def calls(
        self,
        filters: Mapping[str, str],
        *,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
        before_seq: int | None = None,
        stale: bool | None = None,
        stale_before: int = 0,
    ) -> tuple[list[CallRecord], int | None]:
        return self.db.read(
            queries.list_calls,
            filters,
            since=since,
            until=until,
            limit=limit,
            before_seq=before_seq,
            stale=stale,
            stale_before=stale_before,
        )

    def stats(
        self, *, since: int | None = None, until: int | None = None, stale_before: int | None = None
    ) -> Counts:
        return self.db.read(queries.stats, since=since, until=until, stale_before=stale_before)

    def stale_count(self, stale_before: int) -> int:
        return self.db.read(queries.stale_count, stale_before)

    def claim_stale(self, limit: int, now: int, until: int, stale_before: int) -> list[CallRecord]:
        return self.db.read(queries.claim_stale, limit, now, until, stale_before)

    def time_bounds(self) -> tuple[int | None, int | None]:
        return self.db.read(queries.time_bounds)

    def series(self, *, since: int, until: int, step_ms: int) -> dict[str, list[int]]:
        return self.db.read(queries.series, since=since, until=until, step_ms=step_ms)

    def events_after(self, after: int, limit: int) -> list[LoggedEvent]:
        return self.db.read(queries.events_after, after, limit)

    def rejects(self, after: int, limit: int) -> tuple[list[StoredReject], int | None]:
        return self.db.read(queries.list_rejects, after, limit)

    # -- the commands ------------------------------------------------------------------------

    def replay(
        self,
        *,
        check: bool = False,
        progress: Progress | None = None,
        rebuild: bool = False,
        jobs: int = 1,  # one process here: the server does the scanning (SQLite only)
    ) -> list[Drift]:
        if not check:
            self._writable()
        self._appender.forget()
        try:
            conn = self.db.open(timeouts=False)
            reader = self.db.open(timeouts=False)
        except psycopg.Error as err:
            raise read_failed(err) from err
        try:
            return replay(
                conn, reader, self.outcomes, check=check, progress=progress, rebuild=rebuild
            )
        except psycopg.Error as err:
            raise read_failed(err) from err
        finally:
            reader.close()
            conn.close()

    def counts(self) -> tuple[int, int]:
        return self.db.read(queries.counts)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[PostgresSnapshot]:
        """A connection of its own in one REPEATABLE READ, READ ONLY transaction: a consistent
        view that never blocks the writers."""
        try:
            conn = self.db.open(timeouts=False)
        except psycopg.Error as err:
            raise read_failed(err) from err
        try:
            try:
                check_version(conn, self.where, must_exist=True)
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as err:
                raise read_failed(err) from err
            yield PostgresSnapshot(conn)
            with contextlib.suppress(psycopg.Error):
                conn.execute("COMMIT")
        finally:
            conn.close()

    def backup(self, dest: str) -> int:
        raise StorageError(BACKUP_REFUSED)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.db.close()


def _probe(conn: Conn, write: bool) -> None:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is not None and row[0]:
        raise psycopg.errors.ReadOnlySqlTransaction("the server is a standby (read-only)")
    if write:
        with conn.transaction():
            conn.execute("SELECT seq FROM tracker_head WHERE id = 1 FOR UPDATE")
    else:
        conn.execute("SELECT seq FROM tracker_head WHERE id = 1")


class PostgresSnapshot:
    """:class:`tracker.storage.interface.Snapshot` on one connection in one transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def calls(self) -> Iterator[CallRecord]:
        try:
            yield from queries.iter_calls(self.conn)
        except psycopg.Error as err:
            raise read_failed(err) from err

    def events(self, after: int = 0) -> Iterator[LoggedEvent]:
        try:
            yield from queries.iter_events(self.conn, after)
        except psycopg.Error as err:
            raise read_failed(err) from err

    def call(self, call_id: str) -> CallRecord | None:
        try:
            return queries.get_call(self.conn, call_id)
        except psycopg.Error as err:
            raise read_failed(err) from err

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> TimelinePage | None:
        try:
            return queries.timeline(self.conn, call_id, after=after, limit=limit)
        except psycopg.Error as err:
            raise read_failed(err) from err
