"""Several hosts, one tracker (SPEC §9), and PostgreSQL's faults, for real: two ``tracker serve``
processes on one PostgreSQL database, a TCP relay that can cut the database away,
``pg_terminate_backend`` of the server's connections, and ``kill -9`` of a host under load."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import psycopg
from server import Server, running

from tests.callbacks import v1
from tracker.events import content_key
from tracker.storage.postgres.schema import SCHEMA_VERSION


def new_id() -> str:
    return f"c-{uuid.uuid4().hex[:16]}"


def a_call(cid: str, n: int) -> list[dict[str, str]]:
    sec = n % 50
    return [
        v1("incomingcall", cid, f"2012-11-14T15:55:{sec:02d}.000Z", **{"from": "+1555000"}),
        v1("answer", cid, f"2012-11-14T15:55:{sec:02d}.500Z"),
        v1("hangup", cid, f"2012-11-14T15:56:{sec:02d}.000Z", cause="NORMAL_CLEARING"),
    ]


def sse_frames(response: httpx.Response) -> Iterator[dict[str, str]]:
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "id" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            frame[field] = value.removeprefix(" ")


def stored(url: str) -> dict[bytes, int]:
    """The log as committed: content digest -> seq, read from this process."""
    out: dict[bytes, int] = {}
    with psycopg.connect(url) as conn:
        for dkey, seq in conn.execute("SELECT dkey, seq FROM events ORDER BY seq"):
            out[bytes(dkey)[8:]] = seq
    return out


def replay_check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", "replay", "--check", "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Load:
    """Threads posting calls to some hosts; records what each 2xx acknowledged."""

    def __init__(self, hosts: Callable[[], list[Server]], calls: int, dup_rate: float) -> None:
        self.hosts = hosts
        self.calls = calls
        self.dup_rate = dup_rate
        self.acked: list[tuple[bytes, int, bool]] = []
        self.refused: list[int] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self.rng = random.Random(9)

    def deliveries(self) -> list[dict[str, str]]:
        events = [e for n in range(self.calls) for e in a_call(new_id(), n)]
        out = []
        for e in events:
            out.append(e)
            if self.rng.random() < self.dup_rate:
                out.append(e)  # a retry, to any host
        return out

    def post(self, event: dict[str, str]) -> None:
        hosts = self.hosts()
        server = hosts[
            hash(event["callId"] + event["eventType"] + str(time.monotonic())) % len(hosts)
        ]
        clients: dict[str, httpx.Client] = self._local.__dict__.setdefault("clients", {})
        c = clients.get(server.url)
        if c is None:
            c = clients[server.url] = server.client(timeout=30.0)
            with self._lock:
                self._clients.append(c)
        try:
            r = c.post("/callbacks", json=event)
        except httpx.TransportError:
            with self._lock:
                self.errors += 1
            return
        with self._lock:
            if r.status_code == 200:
                got = r.json()
                self.acked.append((content_key(event)[1], got["seq"], got["duplicate"]))
            else:
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "unavailable"
                self.refused.append(r.status_code)

    def run(self, events: list[dict[str, str]], workers: int = 8) -> None:
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(self.post, events))
        finally:
            for c in self._clients:
                c.close()


def assert_every_ack_is_stored_gap_free(url: str, load: Load) -> dict[bytes, int]:
    log = stored(url)
    assert sorted(log.values()) == list(range(1, len(log) + 1))  # gap-free, no repeats
    for key, seq, _dup in load.acked:
        assert log.get(key) == seq  # every 2xx is committed, at the seq it was told
    return log


# --------------------------------------------------------------------------------------------
# Two hosts, one order


def test_two_hosts_under_concurrent_load_give_one_gap_free_order_and_copies_their_original_seq(
    pg_url: str,
) -> None:
    with running(pg_url) as a, running(pg_url) as b:
        load = Load(lambda: [a, b], calls=120, dup_rate=0.3)
        load.run(load.deliveries())
        assert load.refused == [] and load.errors == 0
        log = assert_every_ack_is_stored_gap_free(pg_url, load)
        seqs: dict[bytes, set[int]] = defaultdict(set)
        fresh: dict[bytes, int] = defaultdict(int)
        for key, seq, dup in load.acked:
            seqs[key].add(seq)
            fresh[key] += not dup
        assert len(log) == 360 and set(seqs) == set(log)
        assert all(len(s) == 1 for s in seqs.values())  # a copy on the other host: same seq
        assert all(n == 1 for n in fresh.values())  # exactly one copy was new
        for host in (a, b):  # both hosts page the same log
            with host.client() as c:
                page = c.get("/events", params={"after": 0, "limit": 1000}).json()
                assert [e["seq"] for e in page["events"]] == list(range(1, 361))
                assert c.get("/stats").json()["total"] == 120
    assert replay_check(pg_url).returncode == 0


def test_a_read_after_a_2xx_on_one_host_sees_it_on_the_other_and_its_stream_carries_it(
    pg_url: str,
) -> None:
    with running(pg_url) as a, running(pg_url) as b:
        timeout = httpx.Timeout(5.0, read=5.0)
        with (
            a.client() as ca,
            b.client(timeout=timeout) as cb,
            cb.stream("GET", "/events/stream") as s,
        ):
            frames = sse_frames(s)
            for n in range(5):
                cid = new_id()
                event = a_call(cid, n)[0]
                t0 = time.monotonic()
                seq = ca.post("/callbacks", json=event).json()["seq"]
                got = cb.get("/calls/" + quote(cid, safe=""))  # read after the 2xx
                assert got.status_code == 200 and got.json()["lastSeq"] == seq
                frame = next(frames)
                assert time.monotonic() - t0 < 1.0  # SPEC §9: within a second
                assert int(frame["id"]) == seq


def test_two_hosts_starting_at_once_on_an_empty_database_create_the_schema_once(
    pg_url: str,
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tracker", "import", "-", "--db", pg_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    body = "".join(json.dumps(e) + "\n" for e in a_call("c-1", 1))
    outs = [p.communicate(body, timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert sorted(o[0].split(",")[0] for o in outs).count("imported 3 new") == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM tracker_schema").fetchall() == [(SCHEMA_VERSION,)]
        stale = "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'calls_stale_%'"
        assert conn.execute(stale).fetchone() == (1,)  # each step ran once
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)


# --------------------------------------------------------------------------------------------
# Faults


class Relay:
    """A TCP relay to PostgreSQL on a loopback port of its own: ``down()`` cuts every relayed
    connection and refuses new ones (the database is unreachable), ``up()`` relays again."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.is_up = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db_url: str) -> str:
        return db_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def up(self) -> None:
        self.is_up = True

    def down(self) -> None:
        self.is_up = False
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def close(self) -> None:
        self.down()
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.is_up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


def test_an_unreachable_database_is_503_on_readyz_and_ingest_and_the_server_recovers_by_itself(
    pg_url: str,
) -> None:
    relay = Relay()
    try:
        with running(relay.url(pg_url)) as server, server.client() as c:
            # unreachable at start-up: the server runs, says not ready, stores nothing
            assert c.get("/readyz").status_code == 503
            r = c.post("/callbacks", json=a_call("c-1", 1)[0])
            assert r.status_code == 503 and r.json()["error"] == "unavailable"
            assert c.get("/calls/c-1").status_code == 503
            relay.up()
            wait_until(lambda: c.get("/readyz").status_code == 200)
            first = c.post("/callbacks", json=a_call("c-1", 1)[0])
            assert first.status_code == 200 and first.json()["seq"] == 1
            # lost later: every connection cut
            relay.down()
            r = c.post("/callbacks", json=a_call("c-1", 1)[1])
            assert r.status_code == 503
            assert c.get("/readyz").status_code == 503
            relay.up()
            wait_until(lambda: c.post("/callbacks", json=a_call("c-1", 1)[1]).status_code == 200)
            assert c.get("/calls/c-1").json()["eventCount"] == 2
    finally:
        relay.close()
    assert sorted(stored(pg_url).values()) == [1, 2]


def terminate_backends(url: str) -> int:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_terminated_connections_mid_load_leave_nothing_half_written_and_the_server_recovers(
    pg_url: str,
) -> None:
    with running(pg_url) as server:
        load = Load(lambda: [server], calls=150, dup_rate=0.1)
        events = load.deliveries()
        stop = threading.Event()
        killed: list[int] = []

        def killer() -> None:
            while not stop.wait(0.3):
                with contextlib.suppress(psycopg.OperationalError):
                    killed.append(terminate_backends(pg_url))

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            load.run(events)
        finally:
            stop.set()
            t.join(10)
        assert sum(killed) > 0
        with server.client() as c:
            wait_until(lambda: c.post("/callbacks", json=a_call(new_id(), 1)[0]).status_code == 200)
            assert c.get("/readyz").status_code == 200
    assert load.acked  # most went through
    assert_every_ack_is_stored_gap_free(pg_url, load)
    check = replay_check(pg_url)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kill_9_of_one_host_under_load_loses_nothing_acknowledged_while_the_other_serves(
    pg_url: str,
) -> None:
    with running(pg_url) as a, running(pg_url) as b:
        alive: list[Server] = [a, b]
        load = Load(lambda: alive, calls=200, dup_rate=0.1)
        events = load.deliveries()

        def kill_soon() -> None:
            wait_until(lambda: len(load.acked) > 150)
            a.kill9()
            alive.remove(a)

        t = threading.Thread(target=kill_soon, daemon=True)
        t.start()
        load.run(events)
        t.join(30)
        assert a.proc.returncode is not None and alive == [b]
        with b.client() as c:  # the survivor serves on
            r = c.post("/callbacks", json=a_call(new_id(), 1)[0])
            assert r.status_code == 200
    log = assert_every_ack_is_stored_gap_free(pg_url, load)
    assert len(log) > 150
    check = replay_check(pg_url)
    assert check.returncode == 0, check.stdout + check.stderr
