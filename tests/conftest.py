"""Shared fixtures. Each group sits under its own header; add new groups below the last one."""

from __future__ import annotations

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
