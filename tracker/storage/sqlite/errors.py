"""SQLite's errors, read once here and raised as :mod:`tracker.storage.errors` types."""

from __future__ import annotations

import sqlite3

from tracker.storage.errors import CommitFailed, ReadFailed


def describe_storage_error(err: sqlite3.Error) -> str:
    text = str(err)
    low = text.lower()
    if "full" in low:
        why = "the disk is full"
    elif "readonly" in low or "read-only" in low:
        why = "the database file is read-only"
    elif "locked" in low or "busy" in low:
        why = "the database is locked by another process"
    elif "i/o error" in low:  # EFBIG (a file-size limit) and EIO land here, not as "full"
        why = "a write to the disk failed (the disk or a file-size limit may be full)"
    else:
        why = "the database cannot be written"
    return f"storage cannot commit ({why}: {text}); nothing was stored, retry later"


def commit_failed(err: sqlite3.Error) -> CommitFailed:
    return CommitFailed(describe_storage_error(err))


def read_failed(err: sqlite3.Error) -> ReadFailed:
    return ReadFailed(f"database error: {err}")
