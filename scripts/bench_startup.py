#!/usr/bin/env python
"""Startup time and idle memory of ``tracker serve``.

Each run starts ``python -m tracker serve --port 0`` on a fresh database (and, with ``--events``,
on one holding that many events), measures the time from spawning the process to the first
``GET /readyz`` answering 200, then lets it idle and reads its resident memory (VmRSS), and
stops it with SIGTERM (which must exit 0). Reports the median over ``--runs``.

    .venv/bin/python scripts/bench_startup.py            # 5 runs
    .venv/bin/python scripts/bench_startup.py --smoke    # 1 run
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (Linux ``/proc``; ``ps`` elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
        return int(out.stdout.strip())
    except (OSError, ValueError):
        return None


def ready(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def one_run(db: Path, idle: float) -> tuple[float, float, int | None, int]:
    """(seconds to listening, seconds to first ready, idle RSS KiB, exit code)."""
    cmd = [sys.executable, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--db", str(db)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    )
    try:
        assert proc.stdout is not None
        seen = []
        while True:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("tracker serve did not start:\n" + "".join(seen))
            seen.append(line)
            m = LISTENING.search(line)
            if m:
                break
        listening = time.perf_counter() - t0
        host, port = m.group(1), int(m.group(2))
        out = proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
        while not ready(host, port):
            if time.perf_counter() - t0 > 30:
                raise SystemExit("tracker serve never became ready")
            time.sleep(0.002)
        first_ready = time.perf_counter() - t0
        time.sleep(idle)
        rss = rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return listening, first_ready, rss, code


def fill(db: Path, events: int) -> None:
    from tracker.api import Tracker

    batch = []
    with Tracker.open(db) as t:
        for i in range(events):
            cid = f"c-{i // 4}"
            kind = ("initiate", "answer", "gather", "disconnect")[i % 4]
            batch.append(
                {
                    "eventType": kind,
                    "eventTime": f"2024-03-01T12:{(i % 4):02d}:00.000Z",
                    "callId": cid,
                    "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/1/calls/{cid}",
                    "cause": "hangup",
                    "startTime": "2024-03-01T12:00:00.000Z",
                }
            )
            if len(batch) == 1000:
                t.ingest(batch)
                batch = []
        if batch:
            t.ingest(batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS")
    parser.add_argument("--events", type=int, default=0, help="events in the database first")
    parser.add_argument("--smoke", action="store_true", help="one short run")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.idle = 1, 0.2
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        db = Path(tmp) / "tracker.db"
        if args.events:
            fill(db, args.events)
        for i in range(args.runs):
            if not args.events:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            listening, first_ready, rss, code = one_run(db, args.idle)
            if code != 0:
                raise SystemExit(f"run {i + 1}: tracker serve exited {code} on SIGTERM")
            rows.append((listening, first_ready, rss))
            shown = "?" if rss is None else f"{rss / 1024:.1f}"
            print(
                f"run {i + 1}/{args.runs}: listening {listening * 1e3:.0f} ms, ready "
                f"{first_ready * 1e3:.0f} ms, idle RSS {shown} MiB",
                file=sys.stderr,
            )
    med = statistics.median
    rss_values = [r[2] for r in rows if r[2] is not None]
    what = f"{args.events} events in the database" if args.events else "a new database"
    print(f"\n{args.runs} run(s), {what} (medians)\n")
    print(f"{'spawn to listening':<28} {med(r[0] for r in rows) * 1e3:>8.0f} ms")
    print(f"{'spawn to first /readyz 200':<28} {med(r[1] for r in rows) * 1e3:>8.0f} ms")
    if rss_values:
        print(f"{'idle RSS':<28} {med(rss_values) / 1024:>8.1f} MiB")
    else:
        print(f"{'idle RSS':<28} {'unknown':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
