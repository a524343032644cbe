"""The connections of one PostgreSQL database: the write connection (reconnected on demand,
the schema checked or migrated each time), the pool of read connections, and new connections
for commands and the listener."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from tracker.storage.errors import OpenFailed, ReadFailed, StorageError
from tracker.storage.postgres.errors import read_failed, redact
from tracker.storage.postgres.schema import check_version, connect, migrate

P = ParamSpec("P")
T = TypeVar("T")
Conn = psycopg.Connection[Any]


class Connections:
    def __init__(
        self,
        url: str,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        pool_size: int,
        must_exist: bool,
        read_only: bool,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.pool_size = pool_size
        self.must_exist = must_exist
        self.read_only = read_only
        self._conn: Conn | None = None
        self._pool: ConnectionPool[Conn] | None = None
        self._lock = threading.Lock()
        self._connecting = threading.Lock()
        self._closed = False

    def open(self, *, timeouts: bool = True) -> Conn:
        return connect(
            self.url,
            lock_timeout_ms=self.lock_timeout_ms,
            statement_timeout_ms=self.statement_timeout_ms if timeouts else 0,
        )

    def connect(self) -> Conn:
        """The write connection, (re)connected and the schema checked or migrated."""
        with self._connecting:
            return self._connect_locked()

    def _connect_locked(self) -> Conn:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise StorageError(f"the storage {self.where} is closed")
        try:
            conn = self.open()
        except psycopg.Error as err:
            raise OpenFailed(f"cannot connect to the database {self.where}: {err}") from err
        try:
            if self.read_only or self.must_exist:
                check_version(conn, self.where, must_exist=True)
            if not self.read_only:
                migrate(conn, self.where)
        except psycopg.Error as err:
            conn.close()
            raise OpenFailed(f"cannot open the database {self.where}: {err}") from err
        except BaseException:
            conn.close()
            raise
        self.must_exist = False  # checked once; a later reconnect finds the same database
        self._conn = conn
        return conn

    def readers(self) -> ConnectionPool[Conn]:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self.url,
                        min_size=1,
                        max_size=self.pool_size,
                        kwargs={
                            "autocommit": True,
                            "connect_timeout": 5,
                            "options": f"-c statement_timeout={self.statement_timeout_ms}",
                        },
                        timeout=3.0,
                        name="tracker-read",
                        open=True,
                    )
                pool = self._pool
        return pool

    def read(self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``fn`` on a pooled read connection, the driver's errors as ours."""
        if self._closed:
            raise StorageError(f"the storage {self.where} is closed")
        if self._conn is None:  # never connected, or the connection was lost: fail fast
            try:
                self.connect()
            except OpenFailed as err:
                raise ReadFailed(err.detail) from err
        for attempt in (1, 2):
            try:
                with self.readers().connection() as conn:
                    return fn(conn, *args, **kw)
            except psycopg.OperationalError as err:
                # a pooled connection the server dropped (a restart, a failover, a terminated
                # backend): drop every dead one, then once more on a live one
                if attempt == 2:
                    raise read_failed(err) from err
                self.check_pool()
            except psycopg.Error as err:
                raise read_failed(err) from err
            except PoolTimeout as err:
                raise read_failed(err) from err
        raise AssertionError("unreachable")

    def check_pool(self) -> None:
        """Drop every pooled connection the server closed."""
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.check()

    def drop(self) -> None:
        """Drop the write connection; the next write connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close()
            self._pool = None
        self.drop()
