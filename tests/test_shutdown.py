"""Graceful shutdown of a real ``tracker serve``: SIGTERM under load loses nothing acknowledged."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import Server, start_server
from tracker.api import Tracker

ROOT = Path(__file__).resolve().parent.parent


def event(call_id: str) -> dict[str, Any]:
    return {
        "eventType": "initiate",
        "eventTime": "2024-03-01T12:00:00.000Z",
        "from": "+15554443333",
        "to": "+15553334444",
        "direction": "inbound",
        "callId": call_id,
        "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/1/calls/{call_id}",
        "startTime": "2024-03-01T12:00:00.000Z",
    }


class Load:
    """Client threads posting unique events as fast as they can, until the server is gone."""

    def __init__(self, server: Server, threads: int) -> None:
        self.server = server
        self.acked: dict[str, int] = {}  # callId -> seq, for every 200
        self.unanswered = 0  # requests that got no answer (connection refused, reset, ...)
        self.other: list[int] = []  # answers that were not 200 (e.g. 503 while closing)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.post, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a client thread hung"

    def post(self, worker: int) -> None:
        n = 0
        with httpx.Client(base_url=self.server.url, timeout=10.0) as client:
            while not self.stop.is_set():
                n += 1
                cid = f"w{worker}-{n}"
                try:
                    r = client.post("/callbacks", json=event(cid))
                except httpx.TransportError:
                    with self.lock:
                        self.unanswered += 1
                    if self.server.proc.poll() is not None:
                        return
                    time.sleep(0.005)
                    continue
                with self.lock:
                    if r.status_code == 200:
                        body = r.json()
                        assert body["duplicate"] is False
                        self.acked[cid] = body["seq"]
                    else:
                        self.other.append(r.status_code)


def logged(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT call_id, seq FROM events").fetchall())


def assert_checkpointed(db: Path) -> None:
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal} holds {wal.stat().st_size} bytes"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_under_load_exits_zero_and_keeps_every_acknowledged_event(
    db_path: Path, sig: signal.Signals
) -> None:
    server = start_server(db_path)
    load = Load(server, threads=6)
    try:
        load.start()
        deadline = time.monotonic() + 20
        while len(load.acked) < 300:  # well under way
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.01)
        code = server.terminate(sig, timeout=30)
        load.stop.set()
        load.join()
    finally:
        load.stop.set()
        if server.proc.poll() is None:
            server.kill9()
    assert code == 0
    assert_checkpointed(db_path)
    stored = logged(db_path)
    missing = {cid: seq for cid, seq in load.acked.items() if stored.get(cid) != seq}
    assert missing == {}, f"{len(missing)} acknowledged events are not in the log as acknowledged"
    assert set(load.other) <= {503}, load.other
    assert len(stored) >= len(load.acked)  # unanswered requests may or may not be stored
    with Tracker.open(db_path) as t:  # and the projection agrees with the log
        assert t.replay(check=True) == []
        for cid in list(load.acked)[:50]:
            assert t.call(cid) is not None


def test_an_idle_server_exits_zero_promptly_on_sigterm_with_the_wal_checkpointed(
    db_path: Path,
) -> None:
    server = start_server(db_path)
    try:
        with server.client() as c:
            assert c.post("/callbacks", json=event("c-1")).status_code == 200
        t0 = time.monotonic()
        code = server.terminate(signal.SIGTERM)
        elapsed = time.monotonic() - t0
    finally:
        if server.proc.poll() is None:
            server.kill9()
    assert code == 0
    assert elapsed < 5
    assert_checkpointed(db_path)
    assert logged(db_path) == {"c-1": 1}


def test_an_open_event_stream_does_not_keep_the_server_from_exiting(db_path: Path) -> None:
    server = start_server(db_path)
    got: list[bytes] = []

    def follow() -> None:
        try:
            with (
                httpx.Client(base_url=server.url, timeout=30.0) as c,
                c.stream("GET", "/events/stream") as r,
            ):
                for chunk in r.iter_bytes():
                    got.append(chunk)
        except httpx.HTTPError:
            pass  # the server went away: that is the point

    follower = threading.Thread(target=follow, daemon=True)
    try:
        follower.start()
        deadline = time.monotonic() + 10
        while not got:
            assert time.monotonic() < deadline, "the stream never started"
            time.sleep(0.01)
        t0 = time.monotonic()
        code = server.terminate(signal.SIGTERM, timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if server.proc.poll() is None:
            server.kill9()
    follower.join(10)
    assert code == 0
    assert elapsed < 12  # the graceful period, then open streams are cut
    assert_checkpointed(db_path)


def test_the_startup_benchmark_runs_in_smoke_mode() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_startup.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "readyz" in proc.stdout
    assert "RSS" in proc.stdout
