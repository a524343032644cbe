"""The reconciliation loop of ``tracker serve`` (``[reconcile] enabled``): a pass every
``interval_seconds``, on the event loop beside the requests. Its requests are async and its
storage calls run in worker threads, and what it records goes through the group-commit writer
as events: ingest never waits for it. A failed pass is logged and the next interval tries
again; nothing here stops the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tracker.config import Reconcile
from tracker.reconcile.client import CallApi
from tracker.reconcile.sweep import Sweep
from tracker.records import Appended, Entry
from tracker.storage import Storage
from tracker.writer import Writer

log = logging.getLogger("tracker.reconcile")


class Reconciler:
    def __init__(
        self,
        storage: Storage,
        writer: Writer,
        settings: Reconcile,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.api = CallApi(
            settings.username, settings.password, max_per_second=settings.max_requests_per_second
        )
        self.writer = writer
        self.sweep = Sweep(storage, settings, self.api, record=self._record, count=count)
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    async def _record(self, entry: Entry) -> Appended:
        return (await self.writer.submit([entry]))[0]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep.run()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a storage or API failure: the next interval tries again
                log.warning("reconciliation pass failed: %s", type(err).__name__)
            self.passes += 1
            await asyncio.sleep(self.settings.interval_seconds)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.api.close()
