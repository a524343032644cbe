"""``GET /events/stream``: the log as server-sent events, live.

Each stream reads the log from its own ``seq`` and then waits for the next commit (the writer's
``on_commit`` calls :meth:`LiveStream.notify`); a commit wakes every stream, which reads what came
after its ``seq``. The server's shutdown ends the streams first (:meth:`LiveStream.stop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tracker.errors import StorageUnavailable
from tracker.http.queries import MAX_SEQ, Queries, int_param, only, query_params
from tracker.records import LoggedEvent
from tracker.render import event_rows, one_line
from tracker.storage import Storage

_json = msgspec.json.Encoder()
BATCH = 500  # events per read of a stream


def _events_after(storage: Storage, after: int) -> list[LoggedEvent]:
    return storage.events_after(after, BATCH)


class LiveStream:
    """The live streams of one app."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self._changed: asyncio.Event | None = None
        self._closing = False
        self.clients = 0

    def start(self) -> None:
        self._changed = asyncio.Event()
        self._closing = False

    def stop(self) -> None:
        """End the live streams (the server is shutting down, or the app closes)."""
        self._closing = True
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
        return StreamingResponse(
            self._sse(after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, after: int) -> AsyncIterator[bytes]:
        last = after
        self.clients += 1
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
