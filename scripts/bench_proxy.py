#!/usr/bin/env python
"""Latency the record-and-forward proxy adds in front of an application.

Starts, on loopback and in the same run: a minimal application (raw ASGI on uvicorn, answering a
small BXML document), a ``tracker serve`` forwarding to it, and a ``tracker serve`` that only
records. Then sends sequential keep-alive POSTs of unique v2 callbacks, ``--requests`` per
target per run, targets interleaved in blocks so drift hits all alike, and reports the median
over ``--runs`` of each run's p50 and p99, and what the proxy adds over calling the application
directly.

    .venv/bin/python scripts/bench_proxy.py            # 5 runs x 2000 requests per target
    .venv/bin/python scripts/bench_proxy.py --smoke    # a few requests: does it work at all
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
BXML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><SpeakSentence>Hello'
    b"</SpeakSentence><Hangup/></Response>\n"
)


# --------------------------------------------------------------------------------------------
# The application (run in a subprocess with --serve-upstream)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/xml"),
                (b"content-length", str(len(BXML)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BXML})


def serve_upstream() -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        application,
        log_level="warning",
        lifespan="off",
        loop="uvloop",
        http="httptools",
        ws="none",
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------------------------
# Processes


class Proc:
    def __init__(self, cmd: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")},
        )
        seen = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            m = LISTENING.search(line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.proc.kill()
        raise SystemExit(f"{what} did not start:\n{''.join(seen)}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tracker(tmp: Path, name: str, forward: str | None) -> Proc:
    config = tmp / f"{name}.toml"
    lines = ['[server]\nlog_level = "warning"\n']
    if forward:
        lines.append(f'[forward]\nurl = "{forward}"\ntimeout_seconds = 10.0\n')
    config.write_text("".join(lines))
    cmd = [sys.executable, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--db", str(tmp / f"{name}.db"), "--config", str(config)]
    return Proc(cmd, f"tracker ({name})")


def wait_ready(host: str, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{host}:{port} never became ready")


# --------------------------------------------------------------------------------------------
# Measuring


class Target:
    def __init__(self, name: str, host: str, port: int, path: str) -> None:
        self.name = name
        self.path = path
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = {"Content-Type": "application/json"}

    def post(self, body: bytes) -> float:
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, body, self.headers)
        r = self.conn.getresponse()
        data = r.read()
        elapsed = time.perf_counter() - t0
        if r.status != 200 or (self.name != "record only" and data != BXML):
            raise SystemExit(f"{self.name}: unexpected answer {r.status} {data[:200]!r}")
        return elapsed


_n = 0


def body() -> bytes:
    global _n
    _n += 1
    cid = f"c-{os.getpid()}-{_n}"
    return (
        b'{"eventType":"initiate","eventTime":"2024-03-01T12:00:00.000Z","accountId":"9900000",'
        b'"applicationId":"04e88489-df02-4e34-a0ee-27a91849555f","from":"+15554443333",'
        b'"to":"+15553334444","direction":"inbound","callId":"%s",'
        b'"callUrl":"https://voice.bandwidth.com/api/v2/accounts/9900000/calls/%s",'
        b'"startTime":"2024-03-01T12:00:00.000Z"}' % (cid.encode(), cid.encode())
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(targets: list[Target], requests: int, block: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {t.name: [] for t in targets}
    done = 0
    while done < requests:
        n = min(block, requests - done)
        for t in targets:
            sink = times[t.name]
            for _ in range(n):
                sink.append(t.post(body()))
        done += n
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per target per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300, help="per target, not measured")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (1 x 30 requests)")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return 0
    if args.smoke:
        args.requests, args.runs, args.warmup = 30, 1, 10

    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            app = Proc([sys.executable, __file__, "--serve-upstream"], "the application")
            procs.append(app)
            app_url = f"http://{app.host}:{app.port}"
            proxy = tracker(tmp, "proxy", app_url + "/voice")
            procs.append(proxy)
            plain = tracker(tmp, "record", None)
            procs.append(plain)
            for p in (proxy, plain):
                wait_ready(p.host, p.port)
            targets = [
                Target("direct", app.host, app.port, "/voice/initiate"),
                Target("via proxy", proxy.host, proxy.port, "/callbacks/initiate"),
                Target("record only", plain.host, plain.port, "/callbacks/initiate"),
            ]
            run(targets, args.warmup, 50)
            p50s: dict[str, list[float]] = {t.name: [] for t in targets}
            p99s: dict[str, list[float]] = {t.name: [] for t in targets}
            added50: list[float] = []
            added99: list[float] = []
            for i in range(args.runs):
                times = run(targets, args.requests, 100)
                for name, values in times.items():
                    p50s[name].append(percentile(values, 0.50))
                    p99s[name].append(percentile(values, 0.99))
                added50.append(p50s["via proxy"][-1] - p50s["direct"][-1])
                added99.append(p99s["via proxy"][-1] - p99s["direct"][-1])
                print(
                    f"run {i + 1}/{args.runs}: added p50 {added50[-1] * 1e3:.3f} ms, "
                    f"p99 {added99[-1] * 1e3:.3f} ms",
                    file=sys.stderr,
                )
        finally:
            for p in reversed(procs):
                p.stop()

    med = statistics.median
    print(
        f"\n{args.runs} run(s) x {args.requests} sequential keep-alive POSTs per target "
        "(medians over runs)\n"
    )
    print(f"{'target':<28} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'application directly':<28} {med(p50s['direct']) * 1e3:>8.3f} "
        f"{med(p99s['direct']) * 1e3:>8.3f}"
    )
    print(
        f"{'tracker: record + forward':<28} {med(p50s['via proxy']) * 1e3:>8.3f} "
        f"{med(p99s['via proxy']) * 1e3:>8.3f}"
    )
    print(
        f"{'tracker: record only':<28} {med(p50s['record only']) * 1e3:>8.3f} "
        f"{med(p99s['record only']) * 1e3:>8.3f}"
    )
    print(f"{'added by the proxy':<28} {med(added50) * 1e3:>8.3f} {med(added99) * 1e3:>8.3f}")
    goal = "met" if med(added50) < 0.002 else "NOT met"
    print(f"\ngoal: < 2 ms added at p50: {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
