"""``tracker copy DEST``: the log of ``--db`` into an empty DEST (SPEC §9), from SQLite to
PostgreSQL or back: every event with its ``seq``, ``receivedAt`` and exact body, and the
quarantine. DEST's projection is built as the events go in (the same fold as ingest).

The events are appended in ``seq`` order into an empty log, so each gets the ``seq`` it had
(the source's log is gap-free from 1); every chunk's seqs are checked against the source's.
"""

from __future__ import annotations

import argparse
import time
from typing import Final

import msgspec

from tracker.cli.common import EXIT_OK, EXIT_USAGE, CliError, Progress, settings_of, storage_of
from tracker.config import Settings, is_url
from tracker.errors import TrackerError
from tracker.ingest import entry_of
from tracker.records import Entry, LoggedEvent, Reject
from tracker.storage import Storage, describe

CHUNK: Final = 1000  # events per transaction of the copy


def _dest_settings(settings: Settings, dest: str) -> Settings:
    if is_url(dest):
        storage = msgspec.structs.replace(settings.storage, url=dest)
    else:
        storage = msgspec.structs.replace(settings.storage, url="", path=dest)
    return msgspec.structs.replace(settings, storage=storage)


def _entry(event: LoggedEvent) -> Entry:
    """The event as ingest (or the reconciler) made it, from its exact body and its origin (one
    event a body in the log)."""
    try:
        return entry_of(event)
    except TrackerError as err:
        raise CliError(f"event {event.seq} cannot be read again: {err.detail}") from None
    except ValueError as err:
        raise CliError(f"event {event.seq} cannot be read again: {err}") from None


def _check_empty(dest: Storage, where: str) -> None:
    calls, events = dest.counts()
    rejects, _ = dest.rejects(0, 1)
    if events or calls or rejects:
        raise CliError(
            f"{where} is not empty ({events} events, {calls} calls"
            f"{', and a quarantine' if rejects else ''}): copy only into an empty database"
        )


def cmd_copy(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    target = _dest_settings(settings, args.dest)
    src_where, dest_where = describe(settings), describe(target)
    if src_where == dest_where:
        raise CliError(f"{args.dest} is the database itself", EXIT_USAGE)
    start = time.monotonic()
    source = storage_of(settings, read_only=True)
    try:
        dest = storage_of(target)
        try:
            _check_empty(dest, dest_where)
            events = _copy_log(source, dest)
            rejects = _copy_rejects(source, dest)
            calls, _ = dest.counts()
        finally:
            dest.close()
    finally:
        source.close()
    elapsed = time.monotonic() - start
    print(
        f"copy: {events} events, {calls} calls and {rejects} rejects into {dest_where}"
        f" in {elapsed:.2f}s"
    )
    return EXIT_OK


def _copy_log(source: Storage, dest: Storage) -> int:
    progress = Progress("copy: events")
    n = 0
    try:
        with source.snapshot() as snap:
            chunk: list[LoggedEvent] = []
            for event in snap.events():
                chunk.append(event)
                if len(chunk) >= CHUNK:
                    n += _write(dest, chunk)
                    progress(n)
            n += _write(dest, chunk)
    finally:
        progress.done()
    return n


def _write(dest: Storage, chunk: list[LoggedEvent]) -> int:
    if not chunk:
        return 0
    results = dest.append([_entry(e) for e in chunk])
    for event, got in zip(chunk, results, strict=True):
        if got.duplicate or got.seq != event.seq:
            raise CliError(
                f"the copy diverged at seq {event.seq} (it became {got.seq}"
                f"{', a duplicate' if got.duplicate else ''}): the source's log has a gap or a"
                " repeated event"
            )
    n = len(chunk)
    chunk.clear()
    return n


def _copy_rejects(source: Storage, dest: Storage) -> int:
    n = 0
    after = 0
    while True:
        page, nxt = source.rejects(after, CHUNK)
        batch = [
            Reject(
                received_at=r.received_at,
                status=r.status,
                error=r.error,
                detail=r.detail,
                body=r.body,
                content_type=r.content_type or "",
                path=r.path or "",
                size=r.size,
            )
            for r in page
        ]
        if batch:
            dest.write_batch([], batch)
            n += len(batch)
        if nxt is None:
            return n
        after = nxt
