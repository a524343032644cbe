"""PostgreSQL's errors, read once here and raised as :mod:`tracker.storage.errors` types."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from tracker.storage.errors import CommitFailed, ReadFailed


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _why(err: psycopg.Error) -> str:
    if isinstance(err, psycopg.errors.LockNotAvailable):
        return "another host holds the write lock too long (lock_timeout)"
    if isinstance(err, psycopg.errors.QueryCanceled):
        return "a statement ran too long (statement_timeout)"
    if isinstance(err, psycopg.errors.DiskFull):
        return "the database server's disk is full"
    if isinstance(err, psycopg.errors.ReadOnlySqlTransaction):
        return "the database is read-only (a standby, or a failover in progress)"
    if isinstance(err, psycopg.OperationalError):
        return "the database cannot be reached"
    return "the database cannot be written"


def _text(err: psycopg.Error) -> str:
    return " ".join(str(err).split())


def commit_failed(err: psycopg.Error) -> CommitFailed:
    return CommitFailed(
        f"storage cannot commit ({_why(err)}: {_text(err)}); nothing was stored, retry later"
    )


def read_failed(err: Exception) -> ReadFailed:
    text = _text(err) if isinstance(err, psycopg.Error) else str(err)
    return ReadFailed(f"database error: {text}")
