"""The commit wake-ups: one connection that ``LISTEN``\\s on the commit channel, in a thread.

A notification is only a wake-up (they are not a delivery guarantee): whoever waits reads the
head again after each. When the connection drops, the thread reconnects and wakes everyone, so a
commit missed meanwhile is still found by that read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final

import psycopg

from tracker.storage.postgres.schema import CHANNEL

RETRY_SECONDS: Final = 0.5  # between attempts to reconnect
POLL_SECONDS: Final = 1.0  # the thread looks at its stop flag this often


class Listener:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._cond = threading.Condition()
        self.generation = 0  # bumped by every wake-up
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="tracker-listen", daemon=True)
        self._thread.start()

    def wait(self, seen: int, timeout: float) -> None:
        """Until a wake-up after generation ``seen``, or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.generation != seen, timeout)

    def _wake(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(POLL_SECONDS * 3)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except psycopg.Error:
                self._stop.wait(RETRY_SECONDS)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}".encode())
                self._wake()  # (re)connected: whatever was missed, the waiters read the head
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                        self._wake()
            except psycopg.Error:
                self._wake()
                self._stop.wait(RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
