"""Shared fixtures. Each group sits under its own header; add new groups below the last one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker.storage.sqlite import SqliteStorage as Store

# --------------------------------------------------------------------------------------------
# Core (events, state, store)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path (not yet created) in the test's temporary directory."""
    return tmp_path / "tracker.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """A :class:`Store` on ``db_path``, closed after the test."""
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# Backends: every behaviour test that takes ``backend`` runs on SQLite and on PostgreSQL

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_unavailable(why: str) -> None:
    """Outside CI a missing server skips the PostgreSQL tests; in CI it fails them."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required in CI: {why}")
    pytest.skip(f"PostgreSQL not available: {why}")


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (``t_<uuid>``), dropped afterwards; yields its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE DATABASE {name}".encode())
    except psycopg.OperationalError as err:
        _pg_unavailable(" ".join(str(err).split()))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database of this test's own."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_target(backend: str, tmp_path: Path) -> Iterator[str]:
    """What ``--db`` takes for this test's backend: a fresh file path or a fresh database URL."""
    if backend == "sqlite":
        yield str(tmp_path / "tracker.db")
        return
    with fresh_pg_database() as url:
        yield url
