"""Shared fixtures. Each group sits under its own header; add new groups below the last one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import fresh_pg_database

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
