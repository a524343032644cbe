"""The storage interface: the domain operations the rest of the code needs, not SQL.

Modelled on the ``eventsourcing`` library's recorders (an application recorder that appends with
a gap-free position and answers "what came after position n") and datasette's ``Database`` (one
object owns its connections, its write path and its reads). :mod:`tracker.storage.sqlite` is one
implementation; :func:`tracker.storage.open_storage` builds one from settings.

Rules for every implementation:

* ``seq`` is 1, 2, 3, ... with no gaps and no repeats, in commit order (SPEC §9).
* :meth:`Storage.write_batch` is all or nothing: the log, the dedupe and the projection (and the
  quarantined bodies) in one transaction. A duplicate gets its original ``seq``.
* Failures are raised as :mod:`tracker.storage.errors` types, never the driver's.
* The write methods are called from one thread at a time (the group-commit writer, or a
  command); the query methods from any thread, concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from tracker.records import (
    Appended,
    CallRecord,
    Counts,
    Drift,
    Entry,
    LoggedEvent,
    Reject,
    StoredReject,
    TimelinePlace,
)

Progress = Callable[[int, int], None]


class Snapshot(Protocol):
    """One consistent, read-only view of the database (``export``, ``show``): it never blocks
    a server writing at the same time. Iterators stream (bounded memory)."""

    def calls(self) -> Iterator[CallRecord]:
        """Every call, lowest ``lastSeq`` first."""
        ...

    def events(self, after: int = 0) -> Iterator[LoggedEvent]:
        """The whole log after ``after``, in ``seq`` order."""
        ...

    def call(self, call_id: str) -> CallRecord | None: ...

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> tuple[list[LoggedEvent], TimelinePlace | None] | None:
        """A page of a call's timeline, as :meth:`Storage.timeline`."""
        ...


class Storage(Protocol):
    """An event log with its call projection and its quarantine."""

    # -- the writer --------------------------------------------------------------------------

    def head(self) -> int:
        """The highest committed ``seq`` (0 for an empty log)."""
        ...

    def write_batch(
        self, groups: Sequence[Sequence[Entry]], rejects: Sequence[Reject] = ()
    ) -> list[list[Appended]]:
        """Append every group's entries (dedupe by content key; a duplicate gets its original
        ``seq``), update the projection, and quarantine ``rejects``, all in one transaction.
        Returns each group's results in order. Raises ``CommitFailed`` with nothing written."""
        ...

    def append(self, entries: Sequence[Entry]) -> list[Appended]:
        """:meth:`write_batch` of one group (``import``, the Python API, tests)."""
        ...

    def reject(self, reject: Reject) -> None:
        """Quarantine one refused body (capped in size) in a transaction of its own."""
        ...

    def recover(self) -> None:
        """After a failed commit: drop and reopen what the failure may have left broken (a
        read-only or faulty handle does not heal by itself)."""
        ...

    def probe(self, *, write: bool) -> None:
        """Raise ``StorageError`` unless a write could commit now (``/readyz``); ``write``: make
        a real, empty write (after a failed commit, taking the lock alone proves nothing)."""
        ...

    def start_maintenance(self, ask: Callable[[], None] | None = None) -> None:
        """A long-running process begins (``serve``): start background upkeep, if any (SQLite:
        the WAL checkpointer). :meth:`close` stops it. ``ask``: how the upkeep asks for a
        writer's turn while nothing is being written (the writer then calls :meth:`upkeep`
        with ``asked``)."""
        ...

    def upkeep(self, *, asked: bool = False) -> None:
        """Called by the writer between two group commits, in its thread: upkeep that must not
        overlap a write (SQLite: emptying the WAL once it passes its bound). Never raises."""
        ...

    def wait_for_head(self, after: int, timeout: float) -> int:
        """Block up to timeout seconds until the committed head is > after; return the head."""
        ...

    # -- the queries (any thread) ------------------------------------------------------------

    def call(self, call_id: str) -> CallRecord | None:
        """One call by id, or ``None``."""
        ...

    def timeline(
        self, call_id: str, *, after: TimelinePlace | None = None, limit: int = 100
    ) -> tuple[list[LoggedEvent], TimelinePlace | None] | None:
        """A page of a call's events by event time (untimed last), then ``seq``, after the
        place ``after``: at most ``limit`` events, and fewer once their bodies pass
        :data:`tracker.records.TIMELINE_PAGE_BYTES` (never none); returns the page and the
        place the next page starts after (``None``: the end). ``None``: no such call."""
        ...

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
        """A page of calls, highest ``lastSeq`` first, by equality ``filters`` (names in
        :data:`tracker.records.FILTERS`), first event time in ``[since, until)``, the cursor
        ``before_seq`` and, unless ``stale`` is ``None``, whether the call is stale (not ended,
        nothing received before ``stale_before`` ms); returns the page and the next cursor
        (``None`` on the last page)."""
        ...

    def stats(
        self, *, since: int | None = None, until: int | None = None, stale_before: int | None = None
    ) -> Counts:
        """Calls counted by status, outcome and cause, and the sums behind the KPIs (first event
        time in ``[since, until)``); with ``stale_before``, the stale calls among them."""
        ...

    def stale_count(self, stale_before: int) -> int:
        """How many calls are stale: not ended, nothing received before ``stale_before`` ms."""
        ...

    def claim_stale(self, limit: int, now: int, until: int, stale_before: int) -> list[CallRecord]:
        """Atomically claim up to ``limit`` stale calls that no one holds a claim on at ``now``
        (ms), until ``until``, and return them: with any number of processes or hosts, each
        stale call is claimed by one of them per interval (SPEC §11)."""
        ...

    def time_bounds(self) -> tuple[int | None, int | None]:
        """The earliest and latest first event time of any call (``None`` with no calls)."""
        ...

    def series(self, *, since: int, until: int, step_ms: int) -> dict[str, list[int]]:
        """Calls with a first event time in ``[since, until)``, counted per ``step_ms`` bucket
        from ``since`` and by outcome (``in_progress``: not ended): ``{outcome: [counts]}``,
        each list as long as the buckets (outcomes with no call left out)."""
        ...

    def events_after(self, after: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` events with ``seq > after``, in ``seq`` order."""
        ...

    def rejects(self, after: int, limit: int) -> tuple[list[StoredReject], int | None]:
        """A page of the quarantine by id after ``after``, and the next cursor."""
        ...

    # -- the commands ------------------------------------------------------------------------

    def replay(
        self,
        *,
        check: bool = False,
        progress: Progress | None = None,
        rebuild: bool = False,
        jobs: int = 1,
    ) -> list[Drift]:
        """Make the projection what the log folds to, atomically while writes go on: the calls
        that differ are rewritten in place, or, when many do (or with ``rebuild``), the whole
        projection is rebuilt into a new table and swapped in. With ``check``, change nothing
        and return each call that differs from its log. ``jobs``: processes that may share the
        comparing pass (SQLite; a second one for a large log)."""
        ...

    def counts(self) -> tuple[int, int]:
        """How many calls and events there are."""
        ...

    def snapshot(self) -> AbstractContextManager[Snapshot]:
        """A consistent read-only view for ``export`` and ``show``."""
        ...

    def backup(self, dest: str) -> int:
        """Write a consistent, verified copy to ``dest`` while in use (replacing it only when
        complete); returns the number of events in the copy."""
        ...

    def close(self) -> None:
        """Stop the upkeep and release everything. Idempotent."""
        ...
