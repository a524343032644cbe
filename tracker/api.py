"""The tracker as a Python library: the same log, projection and rules, without HTTP.

::

    from tracker.api import Tracker

    with Tracker.open("data/tracker.db") as t:
        t.ingest({"eventType": "initiate", "callId": "c-1", ...})   # -> [Appended(seq, duplicate)]
        t.call("c-1")           # the call's state, as GET /calls/{callId} shows it, or None
        t.events("c-1")         # a page of its timeline, as GET /calls/{callId}/events, or None
        t.iter_events("c-1")    # every event of its timeline, a page at a time
        t.replay(check=True)    # drift between the projection and the log ([] when none)

``ingest`` goes through the server's code paths (:func:`tracker.ingest.parse_entries`,
:meth:`tracker.storage.Storage.write_batch`): the same validation, content-based dedupe and
all-or-nothing batches. A refused body is quarantined (``GET /rejects`` lists it) and the
:class:`tracker.errors.TrackerError` is raised. The file may be served by ``tracker serve`` at the
same time (SQLite WAL; the two take turns for the write lock). A ``Tracker`` may be shared between
threads: calls are serialised.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from tracker.config import Settings
from tracker.errors import StorageUnavailable, TrackerError
from tracker.ingest import check_size, parse_entries, quarantine
from tracker.records import Appended, Drift, format_place, parse_place
from tracker.render import call_json, event_rows
from tracker.storage import Storage, StorageError, open_storage

__all__ = ["Appended", "Tracker"]

_encode = msgspec.json.Encoder().encode
REJECT_PATH = "api:ingest"  # the quarantine's ``path`` for bodies refused through this API


class Tracker:
    """One tracker database, opened for reading and writing. Use :meth:`open`."""

    def __init__(self, store: Storage, settings: Settings) -> None:
        self._store: Storage | None = store
        self.settings = settings
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | Path, *, settings: Settings | None = None) -> Tracker:
        """Open (creating when needed) the database at ``path``; ``settings`` for the rest
        (synchronous mode, outcome mappings, ingest limits); its ``storage.path`` is ignored."""
        base = settings or Settings()
        s = base.storage
        settings = msgspec.structs.replace(base, storage=msgspec.structs.replace(s, path=str(path)))
        return cls(open_storage(settings), settings)  # raises StorageError (503) when it cannot

    @property
    def path(self) -> str:
        return self.settings.storage.path

    def _open_store(self) -> Storage:
        if self._store is None:
            raise StorageUnavailable("the tracker is closed")
        return self._store

    # -- writing ---------------------------------------------------------------------------------

    def ingest(self, body: bytes | dict[str, Any] | list[Any]) -> list[Appended]:
        """Record one event (a JSON object, as bytes or a dict) or a batch (a JSON array, as bytes
        or a list). Returns one :class:`Appended` per event (``duplicate`` for one already in the
        log). Raises the :mod:`tracker.errors` error the server would answer with, after
        quarantining the body; :class:`StorageUnavailable` when nothing could be written."""
        raw = body if isinstance(body, bytes) else _encode(body)
        ingest = self.settings.ingest
        with self._lock:
            store = self._open_store()
            try:
                check_size(raw, ingest.max_body_bytes)
                entries, _batch = parse_entries(raw, "json", ingest.max_batch)
            except TrackerError as err:
                self._quarantine(store, raw, err)
                raise
            try:
                return store.append(entries)
            except StorageError as err:
                raise self._unavailable(store, err) from None

    def _quarantine(self, store: Storage, raw: bytes, err: TrackerError) -> None:
        try:
            store.reject(quarantine(err, raw, "application/json", REJECT_PATH))
        except StorageError as failure:
            raise self._unavailable(store, failure) from err

    def _unavailable(self, store: Storage, err: StorageError) -> StorageUnavailable:
        with contextlib.suppress(Exception):  # a read-only or broken handle does not heal itself
            store.recover()
        return StorageUnavailable(err.detail)

    # -- reading ---------------------------------------------------------------------------------

    def call(self, call_id: str) -> dict[str, Any] | None:
        """The call's state (``GET /calls/{callId}``'s JSON), or ``None`` for an unknown call."""
        with self._lock:
            found = self._open_store().call(call_id)
        if found is None:
            return None
        view: dict[str, Any] = msgspec.json.decode(call_json(found))
        return view

    def events(
        self, call_id: str, *, after: str | None = None, limit: int = 100
    ) -> dict[str, Any] | None:
        """A page of the call's timeline, as ``GET /calls/{callId}/events?after=&limit=`` gives
        it (``{"callId", "events", "next"}``; pass ``next`` as ``after`` for the next page,
        ``None`` on the last), or ``None`` for an unknown call. ``ValueError`` for a bad
        ``after`` or a ``limit`` outside 1-1000."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        place = None if after is None else parse_place(after)
        with self._lock:
            found = self._open_store().timeline(call_id, after=place, limit=limit)
        if found is None:
            return None
        rows, nxt = found
        page = {
            "callId": call_id,
            "events": event_rows(rows),
            "next": None if nxt is None else format_place(nxt),
        }
        out: dict[str, Any] = msgspec.json.decode(_encode(page))
        return out

    def iter_events(self, call_id: str) -> Iterator[dict[str, Any]]:
        """Every event of the call's timeline in its order (none for an unknown call), read a
        page at a time, so a long timeline is never held whole."""
        after: str | None = None
        while True:
            page = self.events(call_id, after=after, limit=1000)
            if page is None:
                return
            yield from page["events"]
            after = page["next"]
            if after is None:
                return

    def replay(self, check: bool = False) -> list[Drift]:
        """Rebuild the projection from the log (``tracker replay``); with ``check``, only compare
        and return each differing call with its differing fields (``[]``: no drift)."""
        with self._lock:
            return self._open_store().replay(check=check)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the WAL and close. Idempotent."""
        with self._lock:
            store, self._store = self._store, None
            if store is not None:
                store.close()

    @property
    def closed(self) -> bool:
        return self._store is None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Tracker {self.path!r} ({state})>"
