#!/usr/bin/env python
"""What slow, huge or idle request heads do to ``tracker serve`` (issue 11, item 2).

Three attacks against a fresh server with the default configuration, each on real sockets:

* ``huge``: three connections each send a 20 MB header, 64 KiB every 50 ms; reports the peak
  RSS of the server, what each connection was answered and when;
* ``trickle``: one connection sends one header line every 0.5 s; reports when it was answered
  (or that it was still open after 30 s);
* ``idle``: 300 connections that send nothing; a valid callback on a new connection must still
  be answered; reports how many of them are still open after ``header_timeout_seconds`` + 1 s.

    .venv/bin/python scripts/attack_heads.py            # all three
    .venv/bin/python scripts/attack_heads.py --smoke    # smaller and shorter

With ``--plain`` the server runs uvicorn's httptools protocol without our limits
(``scripts/whatif_serve.py plain-http``), for the before/after.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

from bench_common import Server, start_tracker, start_whatif


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def answer_of(sock: socket.socket, wait: float) -> str:
    sock.settimeout(wait)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "no answer, still open"
    except ConnectionError as err:
        return f"reset ({err.__class__.__name__})"
    return data.split(b"\r\n", 1)[0].decode() if data else "closed without an answer"


def huge(server: Server, size: int) -> dict[str, object]:
    socks = [connect(server) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    chunk = b"a" * 65536
    t0 = time.monotonic()
    sent = 0
    peak = server.rss_mb()
    open_socks = list(socks)
    while sent < size and open_socks:
        for sock in list(open_socks):
            try:
                sock.sendall(chunk)
            except OSError:
                open_socks.remove(sock)
        sent += len(chunk)
        peak = max(peak, server.rss_mb())
        time.sleep(0.05)
    answers = [answer_of(sock, 2.0) for sock in socks]
    for sock in socks:
        sock.close()
    return {
        "sent_per_connection_mb": round(sent / 1e6, 1),
        "seconds": round(time.monotonic() - t0, 1),
        "peak_rss_mb": round(peak, 1),
        "answers": answers,
    }


def trickle(server: Server, limit: float) -> dict[str, object]:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:
                break
            got = answer_of(sock, 0.5)
            if got != "no answer, still open":
                return {"answer": got, "after_s": round(time.monotonic() - t0, 1)}
        return {"answer": f"still open after {limit:g} s"}


def idle(server: Server, count: int, wait: float) -> dict[str, object]:
    socks = [connect(server) for _ in range(count)]
    time.sleep(0.5)
    body = json.dumps(
        {"eventType": "answer", "callId": "attack-idle", "time": "2024-01-01T00:00:00Z"}
    )
    with connect(server) as sock:
        sock.sendall(
            b"POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        callback = answer_of(sock, 10.0)
    time.sleep(wait)
    still = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1):
                still += 1
        except BlockingIOError:
            still += 1
        except OSError:
            pass
        sock.close()
    return {"valid_callback": callback, f"still_open_after_{wait:g}s": still, "of": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="smaller and shorter")
    parser.add_argument("--plain", action="store_true", help="uvicorn's protocol, no limits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "attack.db"
        server = start_whatif("plain-http", db) if args.plain else start_tracker(db)
        try:
            idle_rss = round(server.rss_mb(), 1)
            results = {
                "server": "uvicorn httptools, no limits" if args.plain else "tracker serve",
                "idle_rss_mb": idle_rss,
                "huge": huge(server, (2 << 20) if args.smoke else (20 << 20)),
                "trickle": trickle(server, 12.0 if args.smoke else 30.0),
                "idle": idle(server, 20 if args.smoke else 300, 11.0),
            }
        finally:
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
