"""Storage: the interface (:mod:`~tracker.storage.interface`), its errors
(:mod:`~tracker.storage.errors`), its implementations (:mod:`~tracker.storage.sqlite`), and
:func:`open_storage`, the one place storage is built from settings.

Nothing outside this package imports a database driver (a test reads every module's imports).
"""

from __future__ import annotations

from tracker.config import Settings
from tracker.storage.errors import StorageError
from tracker.storage.interface import Snapshot, Storage


def describe(settings: Settings) -> str:
    """Where the data lives, for messages: the file path, or the URL without its password."""
    if settings.storage.url:
        from tracker.storage.postgres.errors import redact

        return redact(settings.storage.url)
    return settings.storage.path


def open_storage(
    settings: Settings, *, must_exist: bool = False, read_only: bool = False, deferred: bool = False
) -> Storage:
    """The storage ``settings`` name, opened (and created and migrated, unless ``read_only`` or
    ``must_exist`` forbid it). ``must_exist``: refuse a database that does not exist yet;
    ``read_only``: also never write (``export``, ``show``, ``backup``). ``deferred`` (a server):
    a database server that cannot be reached yet is not an error; every operation fails (503)
    until it can be reached.

    A ``[storage] url`` (``postgresql://``) selects PostgreSQL, else the SQLite file at ``path``."""
    s = settings.storage
    if s.url:
        from tracker.storage.postgres import PostgresStorage

        return PostgresStorage(
            s.url,
            outcomes=settings.outcomes,
            lock_timeout_ms=s.busy_timeout_ms,
            quarantine_max_bytes=settings.ingest.quarantine_max_bytes,
            must_exist=must_exist,
            read_only=read_only,
            deferred=deferred,
        )
    from tracker.storage.sqlite import SqliteStorage

    return SqliteStorage(
        s.path,
        synchronous=s.synchronous,
        outcomes=settings.outcomes,
        busy_ms=s.busy_timeout_ms,
        quarantine_max_bytes=settings.ingest.quarantine_max_bytes,
        read_mmap_mb=s.read_mmap_mb,
        must_exist=must_exist,
        read_only=read_only,
        wal_checkpoint_bytes=s.wal_checkpoint_mb << 20,
    )


__all__ = ["Snapshot", "Storage", "StorageError", "describe", "open_storage"]
