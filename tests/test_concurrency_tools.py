"""The command-line tools run safely next to a real server that is taking a steady stream.

While client threads post events, ``tracker replay``, ``replay --check``, ``export calls`` and
``export events`` (NDJSON and CSV) and ``backup DEST`` run as subprocesses on the same file. Each
must finish within a bound, no client request may fail or stall, nothing acknowledged may be lost,
the backup must be a sound database whose projection agrees with its own log, and once the stream
stops the live file's projection must agree with its log.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.server import Server, run_tracker, start_server

pytestmark = pytest.mark.slow

TOOL_TIMEOUT = 30.0  # seconds for each tool
SLOW_REQUEST = 2.0  # seconds: no client request may take longer
CLIENTS = 3
PRELOAD_CALLS = 4000


def run_cli(
    *args: str, timeout: float = TOOL_TIMEOUT
) -> tuple[subprocess.CompletedProcess[bytes], float]:
    t0 = time.monotonic()
    done = run_tracker(*args, timeout=timeout, text=False)
    return done, time.monotonic() - t0


def preload(client: httpx.Client) -> None:
    """Calls with a few events each, posted as batches, so the tools have something to chew."""
    batch = []
    for i in range(PRELOAD_CALLS):
        call_id = f"pre-{i}"
        t = f"2023-03-{1 + i % 28:02d}T{i % 24:02d}:00:00"
        batch += [
            {
                "eventType": "incomingcall",
                "callId": call_id,
                "time": t + "Z",
                "from": "+1555",
                "to": "+1666",
            },
            {"eventType": "answer", "callId": call_id, "time": t + ".500Z"},
            {
                "eventType": "hangup",
                "callId": call_id,
                "time": t[:-2] + "59Z",
                "cause": "USER_BUSY",
            },
        ]
        if len(batch) >= 900:
            r = client.post("/callbacks", content=json.dumps(batch).encode())
            assert r.status_code == 200, r.text
            batch = []
    if batch:
        assert client.post("/callbacks", content=json.dumps(batch).encode()).status_code == 200


@dataclass
class Stream:
    """Client threads posting unique events until stopped; every answer is recorded."""

    url: str
    acked: dict[int, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for k in range(CLIENTS):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a client thread hung"

    def _run(self, k: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=10.0) as c:
            while not self.stop.is_set():
                step = ("initiate", "answer", "disconnect")[n % 3]
                ev = {
                    "eventType": step,
                    "callId": f"live-{k}-{n // 3}",
                    "eventTime": f"2024-06-01T12:{n // 3 % 60:02d}:{n % 3 * 10:02d}.000Z",
                    "n": n,
                }
                if step == "disconnect":
                    ev["cause"] = "hangup"
                    ev["endTime"] = ev["eventTime"]
                body = json.dumps(ev).encode()
                t0 = time.monotonic()
                try:
                    r = c.post("/callbacks", content=body)
                except httpx.HTTPError as err:
                    with self.lock:
                        self.failures.append(f"{type(err).__name__}: {err}")
                    continue
                elapsed = time.monotonic() - t0
                with self.lock:
                    self.requests += 1
                    self.slowest = max(self.slowest, elapsed)
                    if r.status_code == 200:
                        self.acked[r.json()["seq"]] = body
                    else:
                        self.failures.append(f"{r.status_code} {r.text}")
                n += 1
                time.sleep(0.002)


def events_in(db: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {seq: bytes(body) for seq, body in conn.execute("SELECT seq, body FROM events")}
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "live.db")
    try:
        with s.client(timeout=30.0) as c:
            preload(c)
        yield s
    finally:
        code = s.terminate() if s.proc.poll() is None else s.proc.wait(10)
        time.sleep(0.1)  # tests/server.py's output pump reads to EOF first
        if s.proc.stdout is not None:
            s.proc.stdout.close()
        assert code == 0


def test_replay_export_and_backup_run_safely_while_the_server_takes_a_steady_stream(
    server: Server, tmp_path: Path
) -> None:
    db = str(server.db)
    stream = Stream(server.url)
    stream.start()
    try:
        time.sleep(0.3)
        timings: dict[str, float] = {}

        done, timings["replay"] = run_cli("replay", "--db", db)
        assert done.returncode == 0, done.stderr.decode()
        assert b"rebuilt" in done.stdout

        done, timings["replay --check"] = run_cli("replay", "--check", "--db", db)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

        done, timings["export calls"] = run_cli("export", "calls", "--db", db)
        assert done.returncode == 0, done.stderr.decode()
        calls = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(calls) >= PRELOAD_CALLS
        assert len({c["callId"] for c in calls}) == len(calls)
        by_id = {c["callId"]: c for c in calls}
        assert by_id["pre-7"]["outcome"] == "busy"
        assert by_id["pre-7"]["eventCount"] == 3

        done, timings["export calls csv"] = run_cli(
            "export", "calls", "--format", "csv", "--db", db
        )
        assert done.returncode == 0, done.stderr.decode()
        rows = list(csv.DictReader(io.StringIO(done.stdout.decode(), newline="")))
        assert len(rows) >= len(calls)  # a later snapshot: never fewer

        done, timings["export events"] = run_cli("export", "events", "--db", db)
        assert done.returncode == 0, done.stderr.decode()
        seqs = [json.loads(line)["seq"] for line in done.stdout.splitlines()]
        assert seqs == list(range(1, len(seqs) + 1)), "the export is not one consistent snapshot"
        assert len(seqs) >= PRELOAD_CALLS * 3

        done, timings["export events csv"] = run_cli(
            "export", "events", "--format", "csv", "--db", db
        )
        assert done.returncode == 0, done.stderr.decode()

        backup = tmp_path / "backup" / "copy.db"
        done, timings["backup"] = run_cli("backup", str(backup), "--db", db)
        assert done.returncode == 0, done.stderr.decode()
        assert b"integrity ok" in done.stdout

        time.sleep(0.3)
    finally:
        stream.join()

    assert not stream.failures, stream.failures[:5]
    assert stream.requests > 100, "the stream barely ran"
    assert stream.slowest < SLOW_REQUEST, f"a client request took {stream.slowest:.2f}s"
    for tool, seconds in timings.items():
        assert seconds < TOOL_TIMEOUT, f"{tool} took {seconds:.1f}s"

    # nothing acknowledged is lost, byte for byte
    live = events_in(server.db)
    lost = [seq for seq, body in stream.acked.items() if live.get(seq) != body]
    assert not lost, f"{len(lost)} acknowledged events missing or altered, e.g. seq {lost[0]}"

    # the backup: a sound, self-contained database, a prefix of the live log, consistent
    assert not Path(f"{backup}-wal").exists()
    copied = events_in(backup)
    assert len(copied) >= PRELOAD_CALLS * 3
    assert sorted(copied) == list(range(1, len(copied) + 1))
    assert all(live[seq] == body for seq, body in copied.items())
    conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    done, _ = run_cli("replay", "--check", "--db", str(backup))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    # the stream has stopped: the live projection agrees with the live log
    done, _ = run_cli("replay", "--check", "--db", db)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/calls/pre-7").json()["outcome"] == "busy"
        assert c.post("/callbacks", content=b'{"eventType":"x","callId":"end"}').status_code == 200


def test_a_replay_killed_midway_leaves_the_served_projection_intact(
    server: Server, tmp_path: Path
) -> None:
    db = str(server.db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    stream = Stream(server.url)
    stream.start()
    codes = []
    try:
        # while it starts, builds the new table, or swaps it in (a replay of this log is quick)
        for delay in (0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.6):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tracker", "replay", "--db", db],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            time.sleep(delay)
            proc.kill()
            codes.append(proc.wait(10))
            done, _ = run_cli("replay", "--check", "--db", db)
            assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        done, _ = run_cli("replay", "--db", db)  # the next one completes
        assert done.returncode == 0, done.stderr.decode()
    finally:
        stream.join()
    assert -signal.SIGKILL in codes, "every replay finished before it could be killed"
    assert not stream.failures, stream.failures[:5]
    assert stream.slowest < SLOW_REQUEST, f"a client request took {stream.slowest:.2f}s"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert not [t for t in tables if t.startswith("calls_rebuild_")], tables
    live = events_in(server.db)
    assert all(live.get(seq) == body for seq, body in stream.acked.items())
    done, _ = run_cli("replay", "--check", "--db", db)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    with server.client() as c:
        assert c.get("/calls/pre-11").json()["outcome"] == "busy"
