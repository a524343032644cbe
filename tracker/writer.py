"""Group commit: one thread owns the write connection; requests queue, batches commit together.

The event loop never touches storage for writes. A request puts its entries on the queue and awaits
a future; the writer thread takes everything queued at that moment (up to ``max_events``), writes
it in one transaction (append + projection + quarantine), commits, and resolves every future of the
batch with one hop back to the loop. There is no timer: a batch is whatever arrived while the
previous one was committing, so no request waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracker.errors import StorageUnavailable
from tracker.records import Appended, Entry, Reject
from tracker.storage import Storage, StorageError


@dataclass(slots=True)
class _Job:
    entries: Sequence[Entry]
    rejects: Sequence[Reject]
    future: asyncio.Future[list[Appended]]
    loop: asyncio.AbstractEventLoop = field(repr=False)


_STOP = object()
_UPKEEP = object()  # the storage asks for the writer's turn (start_maintenance's ``ask``)


class Writer:
    """The single writer. ``start`` in the app's lifespan, ``stop`` drains and closes."""

    def __init__(
        self,
        store: Storage,
        *,
        max_events: int = 2000,
        on_commit: Callable[[int, list[tuple[Sequence[Entry], list[Appended]]], float], None]
        | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.max_events = max_events
        self.on_commit = on_commit
        self.on_error = on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0
        try:
            self.last_seq = store.head()
        except StorageError:  # a database server not reachable yet: the writes will say so
            self.last_seq = 0
        self.healthy = True
        self.last_error: str | None = None
        self._asked = threading.Event()  # an _UPKEEP is on the queue

    def start(self) -> None:
        self.store.start_maintenance(self._ask_upkeep)
        self._thread = threading.Thread(target=self._run, name="tracker-writer", daemon=True)
        self._thread.start()

    def _ask_upkeep(self) -> None:
        if not self._asked.is_set():
            self._asked.set()
            self._queue.put(_UPKEEP)

    def _upkeep(self, *, asked: bool = False) -> None:
        with contextlib.suppress(Exception):  # upkeep never stops the writer
            self.store.upkeep(asked=asked)

    async def submit(
        self, entries: Sequence[Entry], rejects: Sequence[Reject] = ()
    ) -> list[Appended]:
        """Append ``entries`` (and quarantine ``rejects``); returns after the commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Appended]] = loop.create_future()
        self._queue.put(_Job(entries, rejects, fut, loop))
        return await fut

    def stop(self) -> None:
        """Commit what is queued, then stop the thread and close the storage."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self.store.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        stopping = False
        while not stopping:
            item = q.get()
            if item is _STOP:
                break
            if item is _UPKEEP:
                self._asked.clear()
                self._upkeep(asked=True)
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
                if nxt is _UPKEEP:
                    self._asked.clear()  # the upkeep after this commit does it
                    continue
                jobs.append(nxt)
                n += len(nxt.entries) + len(nxt.rejects)
            self._commit(jobs)
            self._upkeep()  # between two group commits, after this one's answers went out

    def _commit(self, jobs: list[_Job]) -> None:
        groups = [j.entries for j in jobs]
        rejects = [r for j in jobs for r in j.rejects]
        t0 = time.perf_counter()
        try:
            results = self.store.write_batch(groups, rejects)
        except StorageError as err:
            self.healthy = False
            self.last_error = err.detail
            # a read-only or broken handle does not heal by itself: reopen for next time
            with contextlib.suppress(Exception):
                self.store.recover()
            self._resolve(jobs, None, err, 0.0)
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
