"""``tracker serve --workers N`` (SPEC §9), for real: worker processes on one port and one log,
under concurrent load, with ``kill -9`` of a worker and SIGTERM to the main process.

Which worker serves a connection is the kernel's choice, so the tests find out instead of
choosing: a connection's worker is the process holding the server end of its socket
(``/proc``), and what each worker ingested is in its own metrics file."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from server import Server, running, write_config

from tests.callbacks import v1
from tracker.events import content_key


def new_id() -> str:
    return f"c-{uuid.uuid4().hex[:16]}"


def an_event(n: int) -> dict[str, str]:
    return v1("incomingcall", new_id(), f"2012-11-14T15:55:{n % 60:02d}.000Z", n=str(n))


def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def workers(db: str, n: int = 2, **kw: Any) -> Iterator[Server]:
    with running(db, args=["--workers", str(n)], timeout=60.0, **kw) as server:
        wait_until(lambda: len(worker_pids(server)) == n)
        try:
            yield server
        finally:  # gracefully: the main process then removes its metrics directory
            if server.proc.poll() is None:
                server.terminate(timeout=60.0)


def worker_pids(server: Server) -> list[int]:
    """The live worker processes of a ``tracker serve --workers N``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == server.proc.pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            out.append(int(name))
    return sorted(out)


def worker_of(server: Server, client_port: int) -> int | None:
    """The worker holding the server end of the connection from ``client_port``."""
    port = int(server.url.rsplit(":", 1)[1])
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote = parts[1], parts[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inode = parts[9]
    if inode is None:
        return None
    for pid in worker_pids(server):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def ingested_by(pid: int) -> float:
    """What one worker counted in ``tracker_events_ingested_total`` (its own metrics file)."""
    files = [os.path.join(_multiproc_dir(pid), f"counter_{pid}.db")]
    total = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=True):
        if metric.name == "tracker_events_ingested":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def _multiproc_dir(pid: int) -> str:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return item.split(b"=", 1)[1].decode()
    raise AssertionError("no PROMETHEUS_MULTIPROC_DIR in the worker's environment")


def all_events(c: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.get("/events", params={"after": after, "limit": 1000}).json()
        out += page["events"]
        if page["next"] is None:
            return out
        after = page["next"]


class Load:
    """Threads posting events, each over a new connection now and then (so both workers get
    some); records what each 2xx acknowledged."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.acked: list[tuple[dict[str, str], int, bool]] = []
        self.other: list[int] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def post(self, event: dict[str, str]) -> None:
        c: httpx.Client | None = getattr(self._local, "client", None)
        n = getattr(self._local, "n", 0) + 1
        self._local.n = n
        if c is None or n % 5 == 0:  # a fresh connection: the kernel picks a worker again
            if c is not None:
                c.close()
            c = self._local.client = self.server.client(timeout=30.0)
            with self._lock:
                self._clients.append(c)
        try:
            r = c.post("/callbacks", json=event)
        except httpx.TransportError:
            with self._lock:
                self.errors += 1
            self._local.client = None
            return
        with self._lock:
            if r.status_code == 200:
                got = r.json()
                self.acked.append((event, got["seq"], got["duplicate"]))
            else:
                self.other.append(r.status_code)

    def run(self, events: list[dict[str, str]], threads: int = 8) -> None:
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(self.post, events))
        finally:
            for c in self._clients:
                c.close()


def assert_acked_are_logged_gap_free(c: httpx.Client, load: Load) -> list[dict[str, Any]]:
    log = all_events(c)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))  # gap-free, no repeats
    by_seq = {e["seq"]: e for e in log}
    for event, seq, _dup in load.acked:  # every 2xx is in the log, at the seq it was told
        assert by_seq[seq]["callId"] == event["callId"]
        assert by_seq[seq]["eventType"] == event["eventType"]
    return log


# --------------------------------------------------------------------------------------------
# One order across workers (SQLite and PostgreSQL)


def test_concurrent_duplicates_over_many_connections_get_one_seq_whichever_worker_saw_them(
    db_target: str,
) -> None:
    events = [an_event(n) for n in range(30)]
    with workers(db_target) as server:
        load = Load(server)
        load.run([e for e in events for _ in range(12)], threads=12)  # 12 copies of each
        assert load.other == [] and load.errors == 0
        seqs: dict[bytes, set[int]] = defaultdict(set)
        fresh: dict[bytes, int] = defaultdict(int)
        for event, seq, dup in load.acked:
            key = content_key(event)[1]
            seqs[key].add(seq)
            fresh[key] += not dup
        assert len(seqs) == 30 and all(len(s) == 1 for s in seqs.values())
        assert all(n == 1 for n in fresh.values())  # exactly one copy was new
        with server.client() as c:
            log = all_events(c)
        assert [e["seq"] for e in log] == list(range(1, 31))


def test_seq_is_gap_free_in_commit_order_under_concurrent_load_served_by_both_workers(
    db_target: str,
) -> None:
    with workers(db_target) as server:
        pids = worker_pids(server)
        load = Load(server)
        load.run([an_event(n) for n in range(600)])
        assert load.other == [] and load.errors == 0 and len(load.acked) == 600
        assert all(ingested_by(pid) > 0 for pid in pids)  # both workers committed some
        with server.client() as c:
            log = assert_acked_are_logged_gap_free(c, load)
        assert len(log) == 600
        assert sorted(seq for _e, seq, _d in load.acked) == list(range(1, 601))


def test_a_read_on_the_other_worker_right_after_a_2xx_sees_the_event(db_target: str) -> None:
    with workers(db_target) as server:
        host, port = server.url.removeprefix("http://").split(":")
        opened: list[http.client.HTTPConnection] = []
        held: dict[int, http.client.HTTPConnection] = {}
        while len(held) < 2:  # a keep-alive connection on each worker (the kernel decides)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/healthz")  # answered: the connection is accepted
            assert conn.getresponse().read() == b'{"status":"ok"}'
            opened.append(conn)
            pid = worker_of(server, conn.sock.getsockname()[1])
            assert pid is not None
            held.setdefault(pid, conn)
            assert len(opened) < 30
        first, second = held.values()
        for n in range(20):
            writer, reader = (first, second) if n % 2 else (second, first)
            event = an_event(n)
            writer.request(
                "POST", "/callbacks", json.dumps(event), {"Content-Type": "application/json"}
            )
            answer = writer.getresponse()
            assert answer.status == 200
            seq = json.loads(answer.read())["seq"]
            reader.request("GET", f"/calls/{event['callId']}")
            got = reader.getresponse()
            assert got.status == 200
            assert json.loads(got.read())["lastSeq"] == seq
        for conn in opened:
            conn.close()


# --------------------------------------------------------------------------------------------
# The live stream, the metrics and the cap on streams


class RawStream:
    """``GET /events/stream`` on a socket of its own (so its client port, hence its worker,
    is known); collects the ``id``s it receives and when."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.port = self.sock.getsockname()[1]
        self.sock.sendall(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.seen: dict[int, float] = {}
        self.order: list[int] = []
        self.head = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            if not self.head and b"\r\n\r\n" in buf:
                self.head = buf.split(b"\r\n\r\n", 1)[0]
            now = time.monotonic()
            for m in re.finditer(rb"id: (\d+)\n", buf):
                seq = int(m.group(1))
                if seq not in self.seen:
                    self.seen[seq] = now
                    self.order.append(seq)
            buf = buf[buf.rfind(b"\n") + 1 :] if b"id:" in buf else buf[-64:]

    def close(self) -> None:
        self.sock.close()


def test_a_stream_on_either_worker_carries_every_event_of_both_in_order_within_a_second(
    db_target: str,
) -> None:
    with workers(db_target) as server:
        streams: list[RawStream] = []
        held: dict[int, RawStream] = {}
        while len(held) < 2:  # a stream on each worker (the kernel decides which gets one)
            s = RawStream(server)
            wait_until(lambda s=s: bool(s.head))
            assert s.head.startswith(b"HTTP/1.1 200")
            streams.append(s)
            pid = worker_of(server, s.port)
            assert pid is not None
            held.setdefault(pid, s)
            assert len(streams) < 30
        acked: list[tuple[int, float]] = []
        for n in range(40):
            with server.client() as c:  # a new connection each: both workers commit some
                t0 = time.monotonic()
                r = c.post("/callbacks", json=an_event(n))
                assert r.status_code == 200
                acked.append((r.json()["seq"], t0))
        assert all(ingested_by(pid) > 0 for pid in held)
        last = acked[-1][0]
        wait_until(lambda: all(last in s.seen for s in streams), timeout=5)
        for s in streams:
            assert s.order == list(range(1, last + 1))  # every event, in seq order
            for seq, t0 in acked:
                assert s.seen[seq] - t0 < 1.0  # SPEC §9: within a second of its commit
            s.close()


def test_metrics_count_what_every_worker_did_together(tmp_path: Path) -> None:
    with workers(str(tmp_path / "t.db")) as server:
        pids = worker_pids(server)
        load = Load(server)
        load.run([an_event(n) for n in range(200)])
        assert len(load.acked) == 200
        assert all(ingested_by(pid) > 0 for pid in pids)
        for _ in range(6):  # whichever worker answers the scrape
            with server.client() as c:
                text = c.get("/metrics").text
            values = {
                line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            assert values['tracker_events_ingested_total{event_type="incomingcall"}'] == 200
            assert values["tracker_ingest_seconds_count"] == 200
            assert values["tracker_batch_events_sum"] == 200
            assert values["tracker_log_last_seq"] == 200


def test_streams_beyond_max_streams_get_503_too_many_streams(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {"query": {"max_streams": 2}})
    with running(str(tmp_path / "t.db"), config=config) as server:
        streams = [RawStream(server) for _ in range(2)]
        for s in streams:
            wait_until(lambda s=s: bool(s.head))
            assert s.head.startswith(b"HTTP/1.1 200")
        with server.client() as c:
            r = c.get("/events/stream")
            assert r.status_code == 503
            assert r.json()["error"] == "too_many_streams"
            assert "query.max_streams" in r.json()["detail"]
            streams[0].close()

            def room() -> bool:
                with c.stream("GET", "/events/stream") as s:
                    return s.status_code == 200

            wait_until(room, timeout=10)
        streams[1].close()


# --------------------------------------------------------------------------------------------
# Faults: kill -9 of a worker, SIGTERM to the main process


def test_kill_9_of_a_worker_under_load_loses_nothing_acknowledged_and_it_is_replaced(
    db_target: str,
) -> None:
    with workers(db_target) as server:
        before = worker_pids(server)
        load = Load(server)

        def kill_soon() -> None:
            wait_until(lambda: len(load.acked) > 200)
            os.kill(before[0], signal.SIGKILL)

        t = threading.Thread(target=kill_soon, daemon=True)
        t.start()
        load.run([an_event(n) for n in range(800)])
        t.join(30)
        assert set(load.other) <= {503}
        wait_until(lambda: len(worker_pids(server)) == 2 and before[0] not in worker_pids(server))
        after = worker_pids(server)
        assert after != before and before[1] in after  # the other one served on
        with server.client() as c:
            assert c.post("/callbacks", json=an_event(1)).status_code == 200
            log = assert_acked_are_logged_gap_free(c, load)
        assert len(log) >= len(load.acked) + 1
        assert any("died" in line for line in server.output)


def test_sigterm_to_the_main_process_under_load_stops_every_worker_and_exits_0(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "t.db")
    with workers(db) as server:
        pids = worker_pids(server)
        load = Load(server)

        def stop_soon() -> None:
            wait_until(lambda: len(load.acked) > 150)
            server.proc.send_signal(signal.SIGTERM)

        t = threading.Thread(target=stop_soon, daemon=True)
        t.start()
        load.run([an_event(n) for n in range(600)])
        t.join(30)
        assert server.proc.wait(30) == 0
        for pid in pids:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1]
            )
    with running(db) as again, again.client() as c:  # what was acknowledged was committed
        assert_acked_are_logged_gap_free(c, load)


def test_a_worker_count_below_one_is_refused_naming_the_key(tmp_path: Path) -> None:
    from server import run_tracker

    r = run_tracker("serve", "--workers", "0", "--db", str(tmp_path / "t.db"))
    assert r.returncode == 2 and "server.workers" in r.stderr


def test_workers_whose_main_process_is_killed_stop_by_themselves(tmp_path: Path) -> None:
    with workers(str(tmp_path / "t.db")) as server:
        pids = worker_pids(server)
        shared = _multiproc_dir(pids[0])
        with server.client() as c:
            assert c.post("/callbacks", json=an_event(1)).status_code == 200
        server.kill9()  # the main process cannot stop its workers: they notice and stop

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in pids)

        wait_until(gone, timeout=30)
        shutil.rmtree(shared)  # the main process could not remove it
