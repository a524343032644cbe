"""Online backup: SQLite's backup API in steps, verified, renamed into place when complete."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Final

from tracker.storage.errors import StorageError

BACKUP_PAGES: Final = 1024  # pages per backup step
BACKUP_PAUSE: Final = 0.001  # seconds between steps, so a live server gets the file in between
BACKUP_MAX_RESTARTS: Final = 3  # a busy server restarts a stepped copy; then copy in one step


class _Restarted(Exception):
    pass


class CopyFailed(StorageError):
    """The copy failed its integrity check."""


def _copy_database(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """Online copy in steps with pauses between them. Each write by another connection restarts
    a stepped copy, so under steady writes it finishes in one step instead: in WAL mode that is
    one read transaction, which does not block the writer either."""
    last: list[int] = []

    def step(status: int, remaining: int, total: int) -> None:
        if last and remaining > last[-1]:
            last.append(-1)  # a restart; -1 entries count them
            if last.count(-1) > BACKUP_MAX_RESTARTS:
                raise _Restarted
        last.append(remaining)
        time.sleep(BACKUP_PAUSE)

    try:
        src.backup(dst, pages=BACKUP_PAGES, progress=step)
    except _Restarted:
        src.backup(dst, pages=-1)


def backup(src: sqlite3.Connection, dest: Path) -> int:
    """Copy ``src``'s database to ``dest`` (one self-contained file, verified with ``PRAGMA
    integrity_check`` before it replaces ``dest``); returns its number of events."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        dst = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            _copy_database(src, dst)
        finally:
            dst.close()
        check = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            problems = [r[0] for r in check.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise CopyFailed(f"the copy failed its integrity check: {'; '.join(problems[:5])}")
            events = int(check.execute("SELECT count(*) FROM events").fetchone()[0])
            check.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            check.close()
        for stale in (Path(f"{dest}-wal"), Path(f"{dest}-shm"), Path(f"{dest}-journal")):
            stale.unlink(missing_ok=True)  # an old WAL would be replayed into the new file
        os.replace(tmp, dest)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    return events
