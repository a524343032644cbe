"""The committed head, followed cheaply: ``PRAGMA data_version`` on one connection.

``data_version`` changes when any other connection, in this process or another, has committed
to the file; reading it touches no table. So a waiter looks at it every :data:`POLL_SECONDS` and
reads ``max(seq)`` only when it moved: the live streams of a worker see what the other workers
committed within that, at the cost of one pragma per poll per process (one watcher per process
serves all its streams, :class:`tracker.http.stream.HeadWatcher`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Final

from tracker.storage.sqlite.queries import head

POLL_SECONDS: Final = 0.05


class HeadWatch:
    """:meth:`wait` for a head past a ``seq`` on a connection of its own (opened when first
    needed, closed by :meth:`close`)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._head = 0
        self._closed = False

    def _poll(self) -> int:
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the storage is closed")
            if self._conn is None:
                self._conn = self._connect()
                self._version = None
            conn = self._conn
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            if version != self._version:  # someone committed: read the head (version first)
                self._head = head(conn)
                self._version = version
            return self._head

    def wait(self, after: int, timeout: float) -> int:
        """Block up to ``timeout`` seconds until the committed head is > ``after``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            now = self._poll()
            left = deadline - time.monotonic()
            if now > after or left <= 0:
                return now
            time.sleep(min(POLL_SECONDS, left))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
