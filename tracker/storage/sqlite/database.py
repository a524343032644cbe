""":class:`SqliteStorage`: the SQLite implementation of :class:`tracker.storage.Storage`.

Like datasette's ``Database``, one object owns its connections: the write connection (used by
one thread at a time: the group-commit writer or a command), one read connection per reading
thread (memory-mapped, ``read_mmap_mb``), and the WAL checkpointer thread of a server.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

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
from tracker.storage.errors import OpenFailed, StorageError
from tracker.storage.interface import Progress
from tracker.storage.sqlite import queries
from tracker.storage.sqlite.backup import backup
from tracker.storage.sqlite.errors import commit_failed, read_failed
from tracker.storage.sqlite.lock import WriterLock
from tracker.storage.sqlite.replay import replay
from tracker.storage.sqlite.schema import check_file, check_version, connect, migrate
from tracker.storage.sqlite.watch import HeadWatch
from tracker.storage.sqlite.writes import Appender

CHECKPOINT_SECONDS: Final = 0.2  # how often the checkpointer copies committed WAL pages over
WAL_CHECKPOINT_BYTES: Final = 4 << 20  # storage.wal_checkpoint_mb's default: SQLite's 1000 pages
P = ParamSpec("P")
T = TypeVar("T")


class SqliteStorage:
    """One SQLite file. ``read_only``: for ``export``, ``show`` and ``backup`` (the file must
    exist and hold our schema; nothing is created, migrated or written)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        outcomes: Mapping[str, str] | None = None,
        busy_ms: int = 5000,
        quarantine_max_bytes: int = 65536,
        read_mmap_mb: int = 0,
        must_exist: bool = False,
        read_only: bool = False,
        wal_checkpoint_bytes: int = WAL_CHECKPOINT_BYTES,
    ) -> None:
        self.path = str(path)
        self._wal = WalBound(self, wal_checkpoint_bytes)
        self.synchronous = synchronous
        self.outcomes = dict(outcomes or {})
        self.busy_ms = busy_ms
        self.read_mmap_mb = read_mmap_mb
        self.read_only = read_only
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._checkpointer: Checkpointer | None = None
        self.commits = 0
        self._closed = False
        check_file(self.path, must_exist=must_exist or read_only)
        try:
            conn = connect(self.path, synchronous=synchronous, busy_ms=busy_ms)
        except (sqlite3.Error, OSError) as err:
            raise OpenFailed(f"cannot open the database {self.path}: {err}") from err
        try:
            if read_only:
                check_version(conn, self.path)
            else:
                migrate(conn)
        except sqlite3.Error as err:
            conn.close()
            raise OpenFailed(f"cannot open the database {self.path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        #: The write connection (also a read-only command's connection).
        self.conn = conn
        #: Held around each write transaction: one writer at a time across processes.
        self.writer_lock = WriterLock(self.path)
        self._appender = Appender(conn, self.outcomes, quarantine_max_bytes, self.writer_lock)
        self._watch = HeadWatch(lambda: connect(self.path, busy_ms=self.busy_ms))

    # -- the writer --------------------------------------------------------------------------

    def head(self) -> int:
        try:
            return queries.head(self.conn)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def _writable(self) -> Appender:
        if self.read_only:
            raise StorageError(f"{self.path} is open for reading only")
        return self._appender

    def write_batch(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject] = ()
    ) -> list[list[Appended]]:
        try:
            out = self._writable().write_batch(groups, rejects)
        except sqlite3.Error as err:
            raise commit_failed(err) from err
        self.commits += 1
        return out

    def append(self, entries: Sequence[Entry]) -> list[Appended]:
        return self.write_batch([entries])[0]

    def reject(self, reject: Reject) -> None:
        self.write_batch([], [reject])

    def recover(self) -> None:
        """Drop and reopen the write connection (after a read-only or I/O fault)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._appender.forget()
        try:
            self.conn = connect(self.path, synchronous=self.synchronous, busy_ms=self.busy_ms)
            migrate(self.conn)
        except sqlite3.Error as err:
            raise commit_failed(err) from err
        self._appender.conn = self.conn

    def probe(self, *, write: bool) -> None:
        with self.writer_lock.held():  # not to wait in SQLite's busy handler for another worker
            _probe(self._reader(), write=write)

    def start_maintenance(self, ask: Callable[[], None] | None = None) -> None:
        self._checkpointer = self._checkpointer or self._wal.start(ask)

    def upkeep(self, *, asked: bool = False) -> None:
        self._wal.maybe_truncate(force=asked)

    def wait_for_head(self, after: int, timeout: float) -> int:
        try:
            return self._watch.wait(after, timeout)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    # -- the queries -------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, busy_ms=self.busy_ms, mmap_mb=self.read_mmap_mb)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """``fn`` on this thread's read connection, SQLite's errors as ours."""
        try:
            return fn(self._reader(), *args, **kw)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def call(self, call_id: str) -> CallRecord | None:
        return self._read(queries.get_call, call_id)

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> TimelinePage | None:
        return self._read(queries.timeline, call_id, after=after, limit=limit)

    def calls(self, filters: Mapping[str, str], **kw: Any) -> tuple[list[CallRecord], int | None]:
        """:meth:`Storage.calls`, its keyword arguments as there."""
        return self._read(queries.list_calls, filters, **kw)

    def stats(
        self, *, since: int | None = None, until: int | None = None, stale_before: int | None = None
    ) -> Counts:
        return self._read(queries.stats, since=since, until=until, stale_before=stale_before)

    def stale_count(self, stale_before: int) -> int:
        return self._read(queries.stale_count, stale_before)

    def claim_stale(self, limit: int, now: int, until: int, stale_before: int) -> list[CallRecord]:
        return self._read(queries.claim_stale, limit, now, until, stale_before)

    def time_bounds(self) -> tuple[int | None, int | None]:
        return self._read(queries.time_bounds)

    def series(self, *, since: int, until: int, step_ms: int) -> dict[str, list[int]]:
        return self._read(queries.series, since=since, until=until, step_ms=step_ms)

    def events_after(self, after: int, limit: int) -> list[LoggedEvent]:
        return self._read(queries.events_after, after, limit)

    def rejects(self, after: int, limit: int) -> tuple[list[StoredReject], int | None]:
        return self._read(queries.list_rejects, after, limit)

    # -- the commands ------------------------------------------------------------------------

    def replay(
        self,
        *,
        check: bool = False,
        progress: Progress | None = None,
        rebuild: bool = False,
        jobs: int = 1,
    ) -> list[Drift]:
        appender = self._writable()
        appender.forget()  # replay rewrites calls through this very connection
        try:
            with contextlib.closing(connect(self.path, busy_ms=self.busy_ms)) as r:
                return replay(self.conn, r, self.outcomes, check, progress, rebuild, jobs)
        except sqlite3.Error as err:
            raise read_failed(err) from err
        finally:
            appender.forget()

    def counts(self) -> tuple[int, int]:
        try:
            return queries.counts(self.conn)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        """A read-only connection of its own inside one read transaction: a consistent view that
        never blocks a server writing the same file (WAL)."""
        try:
            conn = connect(self.path, busy_ms=self.busy_ms)
        except sqlite3.Error as err:
            raise read_failed(err) from err
        try:
            try:
                check_version(conn, self.path)
                conn.execute("PRAGMA query_only = ON")
                conn.execute("BEGIN")
            except sqlite3.Error as err:
                raise read_failed(err) from err
            yield SqliteSnapshot(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
        finally:
            conn.close()

    def backup(self, dest: str) -> int:
        try:
            with contextlib.closing(connect(self.path, busy_ms=self.busy_ms)) as src:
                return backup(src, Path(dest))
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def close(self) -> None:
        """Stop the checkpointer, checkpoint the WAL into the file, close every connection."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._closed:
            return
        self._closed = True
        self._watch.close()
        self.writer_lock.close()
        with contextlib.suppress(sqlite3.Error):
            if not self.read_only:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        self._local = threading.local()


def _probe(conn: sqlite3.Connection, *, write: bool) -> None:
    """:meth:`SqliteStorage.probe` on a read connection."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if write:
            # Taking the lock writes nothing, so it passes on a full disk: only a real
            # (one-page) write shows whether the fault is gone.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        else:
            conn.execute("ROLLBACK")
    except sqlite3.Error as err:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise commit_failed(err) from err


class WalBound:
    """Keeps the ``-wal`` file near ``bound`` bytes under sustained ingest.

    The :class:`Checkpointer` copies committed WAL pages into the file beside the writer, but a
    PASSIVE checkpoint beside a writer that keeps appending never completes, and SQLite starts
    the WAL over only after a complete one: alone, it let the file grow for as long as ingest
    went on. So the writer itself, between two group commits (:meth:`maybe_truncate`, through
    ``upkeep``), runs a TRUNCATE checkpoint once the file passes the bound: nothing appends
    meanwhile, so it completes. The checkpointer has copied all but the last moments by then,
    and the writer waits for a pass in progress, so this is a short copy and the fsyncs.

    Readers on old WAL pages (a long export) are not waited for (busy timeout 0): while the
    checkpointer cannot copy most of the WAL the writer does not try, and after a busy attempt
    the mark moves up by half a bound so that a reader does not make every commit try."""

    def __init__(self, storage: SqliteStorage, bound: int) -> None:
        self.storage = storage
        self.bound = bound
        self.tuned: sqlite3.Connection | None = None  # the write connection given our pragmas
        self.path = f"{storage.path}-wal"
        self.truncate_at = self.bound  # the -wal size that calls for a truncation
        self.lock = threading.Lock()  # one checkpoint at a time (checkpointer or writer)
        # WAL bytes the checkpointer could not copy at its last pass (a reader still needs them)
        self.lag_bytes = 0
        self.truncations = 0

    def start(self, ask: Callable[[], None] | None) -> Checkpointer:
        self.tune()
        return Checkpointer(self.storage, ask)

    def tune(self) -> None:
        self.tuned = conn = self.storage.conn
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # a WAL that restarts without our truncation (another process's checkpoint) is cut back
        conn.execute(f"PRAGMA journal_size_limit = {int(self.bound)}")

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def maybe_truncate(self, *, force: bool = False) -> None:
        """In the writer's thread, between two commits."""
        if self.tuned not in (None, self.storage.conn):  # reopened after a fault: pragmas again
            self.tune()
        size = self.size()
        if size <= self.bound:  # emptied, or restarted and cut back by journal_size_limit
            self.truncate_at = self.bound
        if size <= self.truncate_at and not force:
            return
        if self.lag_bytes > self.bound // 2:
            return  # a reader holds much of it: the checkpointer copies it first
        storage = self.storage
        conn = storage.conn
        busy = 1
        # the writer lock too: another worker's writer then waits in the kernel, not polling
        with storage.writer_lock.held(), self.lock, contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(storage.busy_ms)}")
        if busy == 0:
            self.truncations += 1
            self.truncate_at = self.bound
        else:
            self.truncate_at = max(size, self.bound) + self.bound // 2


class Checkpointer:
    """Checkpoints (copying the WAL into the database file, with an fsync) would otherwise run
    inside a commit of the writer every 1000 pages; a thread of their own keeps most of that
    work off the path of the requests that wait for the commit. Runs after commits (and while
    a reader kept it from copying everything), every 0.2 s. When nothing is being written and
    the WAL is still past its bound (a long reader held it), it ``ask``s for the writer's turn
    to truncate it (:class:`WalBound`)."""

    def __init__(self, storage: SqliteStorage, ask: Callable[[], None] | None) -> None:
        self.storage = storage
        self.ask = ask
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        storage = self.storage
        wal = storage._wal
        conn = connect(storage.path, busy_ms=storage.busy_ms)
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        seen = 0
        try:
            while not self._stop.wait(CHECKPOINT_SECONDS):
                idle = storage.commits == seen
                seen = storage.commits
                if not idle or wal.lag_bytes:
                    with wal.lock, contextlib.suppress(sqlite3.Error):  # busy: next time
                        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        wal.lag_bytes = max(0, log - done) * page
                if idle and not wal.lag_bytes and self.ask and wal.size() > wal.bound:
                    self.ask()
        finally:
            conn.close()


class SqliteSnapshot:
    """:class:`tracker.storage.interface.Snapshot` on one connection in one read transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def calls(self) -> Iterator[CallRecord]:
        try:
            yield from queries.iter_calls(self.conn)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def events(self, after: int = 0) -> Iterator[LoggedEvent]:
        try:
            yield from queries.iter_events(self.conn, after)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def call(self, call_id: str) -> CallRecord | None:
        try:
            return queries.get_call(self.conn, call_id)
        except sqlite3.Error as err:
            raise read_failed(err) from err

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> TimelinePage | None:
        try:
            return queries.timeline(self.conn, call_id, after=after, limit=limit)
        except sqlite3.Error as err:
            raise read_failed(err) from err
