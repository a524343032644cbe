"""Fresh databases for the tests: a SQLite file, or a PostgreSQL database of its own.

PostgreSQL is the server at 127.0.0.1:5432 (trust authentication). Outside CI a missing server
skips the PostgreSQL tests; in CI (``CI`` set) it fails them: they never silently skip there.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

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


@contextlib.contextmanager
def module_db(backend: str, factory: pytest.TempPathFactory) -> Iterator[str]:
    """What ``--db`` takes for a module-scoped fixture of ``backend``."""
    if backend == "sqlite":
        yield str(factory.mktemp("db") / "tracker.db")
        return
    with fresh_pg_database() as url:
        yield url
