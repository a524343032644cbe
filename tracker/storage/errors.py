"""Storage failures as our own types: whatever the backend, the rest of the code sees these.

Each is a :class:`~tracker.errors.StorageUnavailable` (a 503 over HTTP), so a failure nobody
handles specially is still answered as "nothing was stored, retry later".
"""

from __future__ import annotations

from tracker.errors import StorageUnavailable


class StorageError(StorageUnavailable):
    """Storage failed; ``detail`` says why, in a sentence a person can act on."""


class CommitFailed(StorageError):
    """A write did not commit (full disk, read-only or locked database, I/O error): nothing of
    it was stored."""


class ReadFailed(StorageError):
    """A read failed (the database cannot be read)."""


class OpenFailed(StorageError):
    """The database cannot be opened (or created)."""


class NoDatabase(StorageError):
    """A command that needs an existing database found none."""


class NotATrackerDatabase(StorageError):
    """The database belongs to another program, or has no schema yet."""


class SchemaTooNew(StorageError):
    """The database was written by a newer release."""


__all__ = [
    "CommitFailed",
    "NoDatabase",
    "NotATrackerDatabase",
    "OpenFailed",
    "ReadFailed",
    "SchemaTooNew",
    "StorageError",
    "StorageUnavailable",
]
