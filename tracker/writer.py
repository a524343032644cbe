"""Group commit: one thread owns the write connection; requests queue, batches commit together.

The event loop never touches SQLite for writes. A request puts its entries on the queue and awaits
a future; the writer thread takes everything queued at that moment (up to ``max_events``), writes
it in one transaction (append + projection + quarantine), commits, and resolves every future of the
batch with one hop back to the loop. There is no timer: a batch is whatever arrived while the
previous one was committing, so no request waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracker.errors import StorageUnavailable
from tracker.store import Appended, Entry, Reject, Store, connect


@dataclass(slots=True)
class _Job:
    entries: Sequence[Entry]
    rejects: Sequence[Reject]
    future: asyncio.Future[list[Appended]]
    loop: asyncio.AbstractEventLoop = field(repr=False)


_STOP = object()
_CHECKPOINT = object()  # the checkpointer asks the writer for a truncating checkpoint (idle WAL)
CHECKPOINT_SECONDS = 0.2  # how often the checkpointer copies committed WAL pages into the file
WAL_CHECKPOINT_BYTES = 4 << 20  # storage.wal_checkpoint_mb's default: SQLite's own 1000 pages


def describe_storage_error(err: sqlite3.Error) -> str:
    text = str(err)
    low = text.lower()
    if "full" in low:
        why = "the disk is full"
    elif "readonly" in low or "read-only" in low:
        why = "the database file is read-only"
    elif "locked" in low or "busy" in low:
        why = "the database is locked by another process"
    elif "i/o error" in low:  # EFBIG (a file-size limit) and EIO land here, not as "full"
        why = "a write to the disk failed (the disk or a file-size limit may be full)"
    else:
        why = "the database cannot be written"
    return f"storage cannot commit ({why}: {text}); nothing was stored, retry later"


class Writer:
    """The single writer. ``start`` in the app's lifespan, ``stop`` drains and closes."""

    def __init__(
        self,
        store: Store,
        *,
        max_events: int = 2000,
        on_commit: Callable[[int, list[tuple[Sequence[Entry], list[Appended]]], float], None]
        | None = None,
        on_error: Callable[[], None] | None = None,
        wal_checkpoint_bytes: int = WAL_CHECKPOINT_BYTES,
    ) -> None:
        self.store = store
        self.max_events = max_events
        self.wal_checkpoint_bytes = wal_checkpoint_bytes
        self._wal_path = f"{store.path}-wal"
        self._truncate_at = wal_checkpoint_bytes  # the -wal size that calls for a checkpoint
        self._ckpt_lock = threading.Lock()  # one checkpoint at a time (thread or writer)
        # WAL bytes the checkpoint thread could not copy at its last pass (a reader still needs
        # them): while that is large, a truncation by the writer would be a long copy, or busy
        self._lag_bytes = 0
        self.truncations = 0  # checkpoints of the writer that emptied the WAL
        self._asked = threading.Event()  # a _CHECKPOINT is on the queue
        self.on_commit = on_commit
        self.on_error = on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self.commits = 0
        self.last_seq = store.conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        self.healthy = True
        self.last_error: str | None = None

    def _tune(self) -> None:
        # Checkpoints (copying the WAL into the database file, with an fsync) would otherwise run
        # inside a commit of the writer every 1000 pages; a thread of their own does most of that
        # copying off the path of the requests that wait for the commit. But a PASSIVE checkpoint
        # running beside a writer that keeps appending never completes, and the WAL only starts
        # over after a complete one: so the writer itself, between two group commits, truncates
        # the WAL once it passes ``wal_checkpoint_bytes`` (``_maybe_truncate``).
        conn = self.store.conn
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # a WAL that restarts without our truncation (another process's checkpoint) is cut back
        conn.execute(f"PRAGMA journal_size_limit = {int(self.wal_checkpoint_bytes)}")

    def start(self) -> None:
        self._tune()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="tracker-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._thread = threading.Thread(target=self._run, name="tracker-writer", daemon=True)
        self._thread.start()

    def _checkpoint_loop(self) -> None:
        conn = connect(self.store.path, busy_ms=self.store.busy_ms)
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        seen = 0
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_SECONDS):
                idle = self.commits == seen
                seen = self.commits
                if not idle or self._lag_bytes:
                    with self._ckpt_lock, contextlib.suppress(sqlite3.Error):  # busy: next time
                        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        self._lag_bytes = max(0, log - done) * page
                if (
                    idle
                    and not self._lag_bytes
                    and not self._asked.is_set()
                    and self._wal_size() > self.wal_checkpoint_bytes
                ):
                    # no commits now, everything copied, and the WAL is still long (a long
                    # reader held it): the writer truncates it in its turn
                    self._asked.set()
                    self._queue.put(_CHECKPOINT)
        finally:
            conn.close()

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _maybe_truncate(self, *, force: bool = False) -> None:
        """In the writer's turn: when the WAL has grown past the mark, checkpoint it completely
        and truncate it (no writer can append meanwhile: this is the writer). The checkpoint
        thread has copied all but the last moments of it, so this is a short copy and an fsync;
        while a reader keeps the thread from copying much of it, the writer does not try.
        Readers still on WAL pages are not waited for (busy timeout 0): what they hold stays,
        and the mark moves up by half a threshold so that they do not make every commit try."""
        size = self._wal_size()
        if size <= self.wal_checkpoint_bytes:  # restarted and cut back by journal_size_limit
            self._truncate_at = self.wal_checkpoint_bytes
        if size <= self._truncate_at and not force:
            return
        if self._lag_bytes > self.wal_checkpoint_bytes // 2:
            return  # a reader holds much of it: the checkpoint thread copies it first
        conn = self.store.conn
        busy = 1
        # when the checkpoint thread is copying, wait for it: it leaves less to copy here
        with self._ckpt_lock, contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.store.busy_ms)}")
        if busy == 0:
            self.truncations += 1
            self._truncate_at = self.wal_checkpoint_bytes
        else:
            self._truncate_at = (
                max(size, self.wal_checkpoint_bytes) + self.wal_checkpoint_bytes // 2
            )

    async def submit(
        self, entries: Sequence[Entry], rejects: Sequence[Reject] = ()
    ) -> list[Appended]:
        """Append ``entries`` (and quarantine ``rejects``); returns after the commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Appended]] = loop.create_future()
        self._queue.put(_Job(entries, rejects, fut, loop))
        return await fut

    def stop(self) -> None:
        """Commit what is queued, then stop the thread and close the store (checkpoints WAL)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
            self._checkpointer = None
        self.store.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        stopping = False
        while not stopping:
            item = q.get()
            if item is _STOP:
                break
            if item is _CHECKPOINT:
                self._maybe_truncate(force=True)
                self._asked.clear()
                continue
            jobs: list[_Job] = [item]
            n = len(item.entries) + len(item.rejects)
            while n < self.max_events:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                if nxt is _CHECKPOINT:
                    self._asked.clear()  # the writer checks the WAL after this commit anyway
                    continue
                jobs.append(nxt)
                n += len(nxt.entries) + len(nxt.rejects)
            self._commit(jobs)
            self._maybe_truncate()

    def _commit(self, jobs: list[_Job]) -> None:
        groups = [j.entries for j in jobs]
        rejects = [r for j in jobs for r in j.rejects]
        t0 = time.perf_counter()
        try:
            results = self.store.write_batch(groups, rejects)
        except sqlite3.Error as err:
            detail = describe_storage_error(err)
            self.healthy = False
            self.last_error = detail
            # a read-only or broken handle does not heal by itself: reopen for next time
            with contextlib.suppress(Exception):
                self.store.reopen()
                self._tune()
            self._resolve(jobs, None, StorageUnavailable(detail), 0.0)
            return
        except Exception as err:  # never leave a request hanging
            self._resolve(jobs, None, StorageUnavailable(f"storage failed: {err!r}"), 0.0)
            return
        self.healthy = True
        self.last_error = None
        self.commits += 1
        elapsed = time.perf_counter() - t0
        for res in results:
            for a in res:
                if not a.duplicate and a.seq > self.last_seq:
                    self.last_seq = a.seq
        self._resolve(jobs, results, None, elapsed)

    def _resolve(
        self,
        jobs: list[_Job],
        results: list[list[Appended]] | None,
        error: Exception | None,
        elapsed: float,
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, list[Appended] | None]]] = {}
        for i, job in enumerate(jobs):
            by_loop.setdefault(job.loop, []).append((job, None if results is None else results[i]))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._deliver, items, error, elapsed)

    def _deliver(
        self,
        items: list[tuple[_Job, list[Appended] | None]],
        error: Exception | None,
        elapsed: float,
    ) -> None:
        for job, res in items:
            if job.future.done():
                continue
            if error is not None or res is None:
                job.future.set_exception(error or StorageUnavailable("storage failed"))
            else:
                job.future.set_result(res)
        if error is not None:
            if self.on_error:
                self.on_error()
        elif self.on_commit is not None:
            self.on_commit(
                self.last_seq,
                [(job.entries, res) for job, res in items if res is not None],
                elapsed,
            )
