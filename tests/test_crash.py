"""Crash safety against a real server: ``kill -9`` under concurrent load loses nothing acknowledged.

Client threads post unique events (JSON objects, batches, GET query strings, form bodies) to a
real ``tracker serve`` process; the process is killed with SIGKILL at a random moment, restarted
on the same SQLite file, and the log is compared byte for byte with every body that got a 200.
``tracker replay --check`` must find the projection in agreement with the log, on the crashed
file and after the restart. Three kills per file, for ``synchronous = "normal"`` and ``"full"``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest

from tests.server import Server, run_tracker, start_server, write_config

pytestmark = pytest.mark.slow

CLIENTS = 8
ROUNDS = 3
CLI_TIMEOUT = 60


def run_cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run_tracker(*args, timeout=timeout)


def finish(server: Server, *, graceful: bool = False) -> int | None:
    """Stop the server (SIGTERM and wait, or SIGKILL) and close its output pipe."""
    code = server.terminate() if graceful else (server.kill9() or server.proc.returncode)
    time.sleep(0.1)  # tests/server.py's output pump reads to EOF first
    if server.proc.stdout is not None:
        server.proc.stdout.close()
    return code


# --------------------------------------------------------------------------------------------
# The load: unique events in every delivery form, each remembered with the bytes the log must hold


@dataclass
class Acked:
    """What got a 200: seq -> (fmt, the exact bytes the log must hold)."""

    rows: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    call_ids: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seq: int, fmt: str, body: bytes, call_id: str) -> None:
        with self.lock:
            if seq in self.rows and self.rows[seq] != (fmt, body):
                self.failures.append(f"seq {seq} acknowledged for two different bodies")
            self.rows[seq] = (fmt, body)
            self.call_ids.add(call_id)


V1_STEPS = ("incomingcall", "answer", "hangup")
V2_STEPS = ("initiate", "answer", "disconnect")


def _event(tag: str, n: int) -> dict[str, str]:
    """The n-th event of client ``tag``: calls of three steps, v1 and v2 alternating."""
    call, step = divmod(n, 3)
    call_id = f"crash-{tag}-{call}"
    t = f"2024-05-01T10:{call % 60:02d}:{step * 7:02d}.{n % 1000:03d}Z"
    if call % 2:
        ev = {"eventType": V2_STEPS[step], "callId": call_id, "eventTime": t, "n": str(n)}
        if step == 2:
            ev["cause"] = "hangup"
            ev["endTime"] = t
        return ev
    ev = {"eventType": V1_STEPS[step], "callId": call_id, "time": t, "n": str(n)}
    if step == 0:
        ev.update({"from": "+15550001111", "to": "+15550002222", "callState": "active"})
    if step == 2:
        ev["cause"] = "NORMAL_CLEARING"
    return ev


def _json_bytes(ev: dict[str, str], rng: random.Random) -> bytes:
    items = list(ev.items())
    rng.shuffle(items)
    sep = rng.choice([(",", ":"), (", ", ": "), (",\n  ", " : ")])
    return json.dumps(dict(items), separators=sep, ensure_ascii=rng.random() < 0.5).encode()


def client_loop(url: str, tag: str, acked: Acked, stop: threading.Event, seed: int) -> None:
    """Post until the server dies (a transport error) or ``stop`` is set."""
    rng = random.Random(seed)
    n = 0
    with httpx.Client(base_url=url, timeout=10.0) as c:
        while not stop.is_set():
            kind = rng.choice(("json", "json", "batch", "query", "form"))
            try:
                if kind == "batch":
                    events = [_event(tag, n + i) for i in range(rng.randint(2, 4))]
                    n += len(events)
                    parts = [_json_bytes(ev, rng) for ev in events]
                    body = b"[" + b" ,\n ".join(parts) + b"]"
                    r = c.post("/callbacks", content=body)
                    if r.status_code == 200:
                        results = r.json()["results"]
                        for ev, part, res in zip(events, parts, results, strict=True):
                            acked.add(res["seq"], "json", part, ev["callId"])
                    else:
                        acked.failures.append(f"batch: {r.status_code} {r.text}")
                    continue
                ev = _event(tag, n)
                n += 1
                if kind == "json":
                    body = _json_bytes(ev, rng)
                    r = c.post("/callbacks", content=body)
                elif kind == "query":
                    body = urlencode(ev, quote_via=quote).encode()
                    r = c.get("/callbacks?" + body.decode())
                else:
                    body = urlencode(ev).encode()
                    r = c.post(
                        "/callbacks/crash/form",
                        content=body,
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                if r.status_code == 200:
                    res = r.json()
                    if res["duplicate"]:
                        acked.failures.append(f"unique event answered as a duplicate: {body!r}")
                    acked.add(res["seq"], kind, body, ev["callId"])
                else:
                    acked.failures.append(f"{kind}: {r.status_code} {r.text}")
            except httpx.TransportError:
                return  # the server was killed: whatever was not answered was not acknowledged


# --------------------------------------------------------------------------------------------
# Checks


def check_log(db: Path, acked: Acked, when: str) -> None:
    """Every acknowledged body is in the log at its seq, byte for byte, and the file is sound."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", when
        stored = {
            seq: (fmt, bytes(body))
            for seq, fmt, body in conn.execute("SELECT seq, fmt, body FROM events")
        }
        seqs = sorted(stored)
        assert seqs == list(range(1, len(seqs) + 1)), f"{when}: the log has holes"
        missing = [seq for seq in acked.rows if seq not in stored]
        assert not missing, f"{when}: {len(missing)} acknowledged events lost, seqs {missing[:10]}"
        wrong = [seq for seq, row in acked.rows.items() if stored[seq] != row]
        assert not wrong, (
            f"{when}: {len(wrong)} events differ from what was acknowledged, e.g. seq {wrong[0]}: "
            f"stored {stored[wrong[0]]!r}, posted {acked.rows[wrong[0]]!r}"
        )
        known = {cid for (cid,) in conn.execute("SELECT call_id FROM calls")}
        assert acked.call_ids <= known, f"{when}: acknowledged calls missing from the projection"
    finally:
        conn.close()


def check_replay(db: Path, when: str) -> None:
    done = run_cli("replay", "--check", "--db", str(db))
    assert done.returncode == 0, f"{when}: replay --check found drift:\n{done.stdout}{done.stderr}"


def load_then_kill(server: Server, acked: Acked, delay: float, seed: int) -> int:
    """Run the clients, SIGKILL the server ``delay`` s into the load; returns the acked count."""
    start_acks = len(acked.rows)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(server.url, f"{seed}-{i}", acked, stop, seed * 100 + i),
            daemon=True,
        )
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked.rows) < start_acks + CLIENTS and time.monotonic() < deadline:
        time.sleep(0.005)  # the clients are up and acknowledged: now count the delay
    time.sleep(delay)
    server.kill9()
    stop.set()
    for t in threads:
        t.join(20)
        assert not t.is_alive(), "a client hung after the server was killed"
    return len(acked.rows)


# --------------------------------------------------------------------------------------------
# The test


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_kill_9_at_random_moments_loses_no_acknowledged_event(
    tmp_path: Path, synchronous: str
) -> None:
    db = tmp_path / "crash.db"
    config = write_config(tmp_path / "config.toml", {"storage": {"synchronous": synchronous}})
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # three different moments: early (often mid-batch), middle, late (after WAL checkpoints)
    delays = [rng.uniform(0.0, 0.3), rng.uniform(0.3, 1.0), rng.uniform(1.0, 2.0)]
    acked = Acked()
    for round_no, delay in enumerate(delays):
        when = f"{synchronous}, seed {seed}, kill {round_no + 1} after {delay:.2f}s"
        server = start_server(db, config=config)
        try:
            before = len(acked.rows)
            load_then_kill(server, acked, delay, seed + round_no)
        finally:
            finish(server)
        assert not acked.failures, f"{when}: {acked.failures[:5]}"
        assert len(acked.rows) > before, f"{when}: no event was acknowledged before the kill"
        # the crashed file as it is (hot WAL, no checkpoint): the CLI recovers it
        check_replay(db, f"{when} (crashed file)")
        check_log(db, acked, f"{when} (crashed file)")

    # restarted on the same file: everything is there and new events are taken
    server = start_server(db, config=config)
    try:
        check_log(db, acked, f"{synchronous}, seed {seed}, after the restart")
        with server.client() as c:
            for i in range(20):
                ev = {"eventType": "hangup", "callId": f"after-{i}", "time": "2024-05-02T00:00:00Z"}
                r = c.post("/callbacks", content=json.dumps(ev).encode())
                assert r.status_code == 200, r.text
                assert r.json()["duplicate"] is False
                assert r.json()["seq"] > max(acked.rows)
                got = c.get(f"/calls/after-{i}")
                assert got.status_code == 200
                assert got.json()["status"] == "ended"
            for call_id in sorted(acked.call_ids)[:50]:
                assert c.get(f"/calls/{quote(call_id, safe='')}").status_code == 200
            # the dedupe index survived the kills: a redelivery is the original seq
            for seq, (fmt, body) in sorted(acked.rows.items())[::25]:
                if fmt == "query":
                    r = c.get("/callbacks?" + body.decode())
                else:
                    kind = (
                        "application/x-www-form-urlencoded" if fmt == "form" else "application/json"
                    )
                    r = c.post("/callbacks", content=body, headers={"content-type": kind})
                assert r.status_code == 200, r.text
                assert r.json() == {"seq": seq, "duplicate": True}, (fmt, body)
        check_replay(db, f"{synchronous}, seed {seed}, restarted server")
    finally:
        assert finish(server, graceful=True) == 0
