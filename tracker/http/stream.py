"""``GET /events/stream``: the log as server-sent events, live.

Each stream reads the log from its own ``seq`` and then waits for the next commit (the writer's
``on_commit`` calls :meth:`LiveStream.notify`); a commit wakes every stream, which reads what came
after its ``seq``. One :class:`HeadWatcher` per app (per process) follows the committed head of
the storage, so commits of other worker processes or hosts wake the streams too. The server's
shutdown ends the streams first (:meth:`LiveStream.stop`). At most ``query.max_streams`` are open
per process: a client that stops reading holds its buffers (about 2.5 MB), so more get 503.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tracker.errors import StorageUnavailable, TooManyStreams
from tracker.http.queries import MAX_SEQ, Queries, int_param, only, query_params
from tracker.metrics import Metrics
from tracker.records import LoggedEvent
from tracker.render import event_rows, one_line
from tracker.storage import Storage

_json = msgspec.json.Encoder()
BATCH = 500  # events per read of a stream


def _events_after(storage: Storage, after: int) -> list[LoggedEvent]:
    return storage.events_after(after, BATCH)


class LiveStream:
    """The live streams of one app."""

    def __init__(self, queries: Queries, metrics: Metrics, max_streams: int = 100) -> None:
        self.queries = queries
        self.metrics = metrics
        self.max_streams = max_streams
        self._changed: asyncio.Event | None = None
        self._closing = False
        self._watcher: HeadWatcher | None = None
        self.clients = 0

    def start(self, storage: Storage | None = None) -> None:
        """Ready the streams; with ``storage``, also follow its committed head in a thread, so
        events committed by other processes or hosts (one PostgreSQL database) wake the
        streams too, within a second."""
        self._changed = asyncio.Event()
        self._closing = False
        if storage is not None:
            self._watcher = HeadWatcher(storage, asyncio.get_running_loop(), self.notify)

    def stop(self) -> None:
        """End the live streams (the server is shutting down, or the app closes)."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.notify()

    def notify(self) -> None:
        ev = self._changed
        if ev is not None:
            self._changed = asyncio.Event()
            ev.set()

    async def stream(self, request: Request) -> Response:
        params = query_params(request)
        only(params, {"after"})
        after = int_param(params, "after", 0, 0, MAX_SEQ)
        last_id = request.headers.get("last-event-id")
        if last_id is not None:  # the same strict reading as ?after= (no "1_0", " 3 ", 2**63)
            after = int_param({"Last-Event-ID": last_id}, "Last-Event-ID", 0, 0, MAX_SEQ)
        if self._changed is None:
            raise StorageUnavailable("the service is not started (lifespan not run)")
        if self.clients >= self.max_streams:
            raise TooManyStreams(
                f"{self.clients} live streams are open in this process (query.max_streams): "
                "try again later"
            )
        return StreamingResponse(
            self._sse(after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, after: int) -> AsyncIterator[bytes]:
        last = after
        self.clients += 1
        self.metrics.stream_clients.inc()
        try:
            yield b"retry: 1000\n\n"
            while not self._closing:
                changed = self._changed
                rows = event_rows(await self.queries.read(partial(_events_after, after=last)))
                if rows:
                    parts = []
                    for row in rows:
                        data = _json.encode(one_line(row))
                        parts.append(b"id: %d\nevent: callback\ndata: %s\n\n" % (row.seq, data))
                        last = row.seq
                    yield b"".join(parts)
                    continue
                if changed is None:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self.clients -= 1
            self.metrics.stream_clients.dec()


class HeadWatcher:
    """A thread that waits on :meth:`Storage.wait_for_head` and calls ``wake`` on the loop each
    time the committed head moves (whoever committed). Errors (a database away) are retried."""

    WAIT_SECONDS = 1.0

    def __init__(
        self, storage: Storage, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]
    ) -> None:
        self.storage = storage
        self.loop = loop
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-head", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        known = -1
        while not self._stop.is_set():
            try:
                head = self.storage.wait_for_head(max(known, 0), self.WAIT_SECONDS)
            except StorageUnavailable:
                self._stop.wait(self.WAIT_SECONDS)
                continue
            except Exception:  # a closed storage at shutdown
                if self._stop.wait(self.WAIT_SECONDS):
                    return
                continue
            if head != known:
                known = head
                try:
                    self.loop.call_soon_threadsafe(self.wake)
                except RuntimeError:  # the loop is closed
                    return
