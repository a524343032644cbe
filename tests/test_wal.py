"""The write-ahead log stays bounded under sustained ingest, and shrinks back after a long reader.

A real ``tracker serve`` on a real file, posted to by several clients at once (so the writer
makes many small group commits, the case where the WAL used to grow without end), while a thread
samples the size of the ``-wal`` file.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.callbacks import v1
from tests.server import running, write_config

pytestmark = pytest.mark.slow

MB = 1 << 20
THRESHOLD_MB = 1
# the writer checks the WAL after every group commit, so it passes the threshold by at most the
# pages of one commit (a few events here) before it is emptied
BOUND = 2 * THRESHOLD_MB * MB


class WalSampler:
    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}-wal")
        self.sizes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.sizes.append(self.size())

    @contextmanager
    def sampling(self) -> Iterator[WalSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.sizes, default=0)


_ids = itertools.count()


def ingest(url: str, events: int, clients: int = 8) -> None:
    """``events`` distinct single-event callbacks from ``clients`` concurrent connections."""
    per = events // clients
    errors: list[BaseException] = []

    def post(n: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=30.0) as c:
                for _ in range(per):
                    i = next(_ids)
                    ev = v1("answer", f"c-wal-{i}", "2024-05-01T10:00:00Z", callState="active")
                    r = c.post("/callbacks", json=ev)
                    assert r.status_code == 200, r.text
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", {"storage": {"wal_checkpoint_mb": THRESHOLD_MB}})


def wait_until_under(wal: WalSampler, limit: int, seconds: float = 30.0) -> int:
    deadline = time.monotonic() + seconds
    while (size := wal.size()) > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    return size


def test_the_wal_stays_within_its_bound_under_sustained_ingest(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with running(db, config=_config(tmp_path)) as srv:
        wal = WalSampler(db)
        with wal.sampling():
            ingest(srv.url, 4000)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 4000
        # several thresholds' worth of log went through the WAL, which never held it all
        assert wal.peak <= BOUND, f"the -wal file reached {wal.peak / MB:.1f} MB"
        assert wal.peak > 0


def test_the_wal_returns_under_its_bound_after_a_long_reader_ends(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with running(db, config=_config(tmp_path)) as srv:
        ingest(srv.url, 200)
        # a long reader (as an export is): its snapshot pins the WAL, which must grow meanwhile
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        held = reader.execute("SELECT count(*) FROM events").fetchone()[0]
        ingest(srv.url, 3000)
        grown = WalSampler(db).size()
        assert grown > BOUND, "the reader should have kept the WAL from being emptied"
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == held
        reader.execute("COMMIT")
        reader.close()
        # nothing is posted now: the WAL is emptied all the same
        assert wait_until_under(WalSampler(db), BOUND) <= BOUND
        # and stays bounded when ingest goes on
        wal = WalSampler(db)
        with wal.sampling():
            ingest(srv.url, 2000)
        assert wal.peak <= BOUND, f"the -wal file reached {wal.peak / MB:.1f} MB"
