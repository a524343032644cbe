"""Shared pieces of the benchmark suite (scripts/bench_*.py).

* a generator of unique, realistic Bandwidth callbacks (v1 Catapult and v2 Voice API call flows,
  interleaved in time as concurrent calls are),
* starting ``tracker serve`` and ``scripts/bare_app.py`` on a free loopback port, measuring the
  time to ``/readyz`` 200 and the RSS,
* running ``wrk`` with a Lua script and parsing its output (req/s, p50, p99, status counts),
* statistics (median, min-max over runs) and Markdown tables.

Everything is loopback only and bounded in time. Outputs go to ``bench-out/`` (gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
WRK_DIR = SCRIPTS / "wrk"
OUT = ROOT / "bench-out"
PY = sys.executable
LISTENING = re.compile(r"listening on (http://[\d.]+:(\d+))")

# The databases of benchmarks 2-4: 1,000,000 events for ~300,000 calls (the smoke mode's is tiny).
DB_EVENTS = 1_000_000
DB_CALLS = 300_000
SMOKE_DB_EVENTS = 3_000
SMOKE_DB_CALLS = 900

# --------------------------------------------------------------------------------------------
# Realistic, unique Bandwidth callbacks

GEN_VERSION = 1  # bump when the generator's output changes (invalidates cached files)
EPOCH_DB = 1_704_067_200_000  # 2024-01-01T00:00:00Z: the generated database's calls
EPOCH_INGEST = 1_706_745_600_000  # 2024-02-01T00:00:00Z: new calls posted by the benchmarks

_enc = msgspec.json.Encoder()
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"

V1_CAUSES = (
    ("NORMAL_CLEARING", 62),
    ("USER_BUSY", 10),
    ("NO_ANSWER", 8),
    ("ORIGINATOR_CANCEL", 7),
    ("CALL_REJECTED", 4),
    ("UNALLOCATED_NUMBER", 2),
    ("NORMAL_TEMPORARY_FAILURE", 2),
    ("NORMAL_UNSPECIFIED", 2),
    ("SWITCH_CONGESTION", 1),
    ("error-event", 2),  # ends with a v1 `error` event instead of a hangup
)
V2_CAUSES = (
    ("hangup", 62),
    ("busy", 10),
    ("timeout", 8),
    ("cancel", 7),
    ("rejected", 4),
    ("callback-error", 1),
    ("invalid-bxml", 1),
    ("application-error", 2),
    ("account-limit", 1),
    ("node-capacity-exceeded", 1),
    ("error", 2),
    ("unknown", 1),
)


def _expand(table: Sequence[tuple[str, int]]) -> list[str]:
    return [name for name, weight in table for _ in range(weight)]


_V1_CAUSE_BAG = _expand(V1_CAUSES)
_V2_CAUSE_BAG = _expand(V2_CAUSES)


def iso_ms(ms: int) -> str:
    """``2024-01-01T00:00:00.000Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class CallGen:
    """Unique call flows. ``events_per_call`` steers the optional events so that a stream of N
    events covers about N / events_per_call calls (B-legs of transfers count as calls)."""

    def __init__(
        self,
        seed: str,
        start_ms: int,
        *,
        mean_gap_ms: float = 1000.0,
        events_per_call: float = DB_EVENTS / DB_CALLS,
    ) -> None:
        self.rng = random.Random(seed)
        self.clock = start_ms
        self.mean_gap_ms = mean_gap_ms
        self.target = events_per_call
        self.calls = 0
        self.events = 0
        r = self.rng
        self.v1_users = [f"u-{self._b36(r.getrandbits(64), 13)}" for _ in range(8)]
        self.v1_apps = [f"a-{self._b36(r.getrandbits(100), 20)}" for _ in range(8)]
        self.v2_accounts = [str(r.randrange(5_000_000, 9_999_999)) for _ in range(8)]
        self.v2_apps = [self._uuid() for _ in range(8)]

    # -- ids and values -----------------------------------------------------------------------

    @staticmethod
    def _b36(n: int, width: int) -> str:
        out = []
        for _ in range(width):
            n, d = divmod(n, 36)
            out.append(_B36[d])
        return "".join(out)

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def _number(self) -> str:
        return f"+1{self.rng.randrange(2_000_000_000, 9_999_999_999)}"

    def _v1_time(self, ms: int) -> str:
        """v1 ``time`` as Catapult sends it: mostly ``.mmmZ``, sometimes no fraction or an
        offset (``-02:00``), rarely an hour-only offset (``-03``)."""
        x = self.rng.random()
        if x < 0.85:
            return iso_ms(ms)
        if x < 0.95:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
        hours = self.rng.choice((2, 3, 5))
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000 - hours * 3600))
        frac = f".{ms % 1000:03d}"
        return f"{local}{frac}-{hours:02d}:00" if x < 0.98 else f"{local}{frac}-{hours:02d}"

    def _extras(self) -> int:
        """How many optional mid-call events this call gets (steers events per call)."""
        if self.calls and self.events / self.calls > self.target:
            return 0
        return self.rng.choice((1, 2, 3, 3, 4, 5))

    # -- flows ----------------------------------------------------------------------------------

    def call(self, start: int) -> list[tuple[int, dict[str, Any]]]:
        """One call's events as ``(delivery time ms, payload)``, in time order."""
        flow = self._v1_call(start) if self.rng.random() < 0.5 else self._v2_call(start)
        self.events += len(flow)
        flow.sort(key=lambda e: e[0])
        return flow

    def _v1_call(self, t: int) -> list[tuple[int, dict[str, Any]]]:
        r = self.rng
        self.calls += 1
        cid = f"c-{self._b36(r.getrandbits(130), 25)}"
        user = r.choice(self.v1_users)
        uri = f"https://api.catapult.inetwork.com/v1/users/{user}/calls/{cid}"
        frm, to = self._number(), self._number()
        inbound = r.random() < 0.7
        cause = r.choice(_V1_CAUSE_BAG)
        tag = f"order-{r.getrandbits(32):08x}" if r.random() < 0.3 else None
        out: list[tuple[int, dict[str, Any]]] = []

        def ev(ms: int, event_type: str, **fields: Any) -> None:
            obj: dict[str, Any] = {"eventType": event_type, "from": frm, "to": to}
            obj["callId"] = cid
            obj["callUri"] = uri
            obj.update(fields)
            obj["time"] = self._v1_time(ms)
            out.append((ms, obj))

        if inbound:
            ev(t, "incomingcall", callState="started", applicationId=r.choice(self.v1_apps))
        if cause == "NORMAL_CLEARING":
            t += r.randrange(1_000, 9_000)
            fields: dict[str, Any] = {"callState": "active"}
            if tag:
                fields["tag"] = tag
            ev(t, "answer", **fields)
            for _ in range(self._extras()):
                t += r.randrange(500, 20_000)
                kind = r.random()
                if kind < 0.3:
                    ev(t, "speak", callState="active", state="PLAYBACK_START", status="started")
                elif kind < 0.5:
                    ev(t, "playback", callState="active", status="done")
                elif kind < 0.75:
                    digit = r.choice("0123456789*#")
                    ev(t, "dtmf", callState="active", dtmfDigit=digit, dtmfDuration="100")
                else:
                    digits = str(r.randrange(1, 9999))
                    ev(
                        t,
                        "gather",
                        gatherId=f"g-{r.getrandbits(60):015x}",
                        digits=digits,
                        reason="max-digits",
                        state="completed",
                    )
            t += r.randrange(5_000, 300_000)
            ev(t, "hangup", callState="completed", cause="NORMAL_CLEARING")
            if r.random() < 0.15:  # v1 recording: no `time`, delivered after the hangup
                rid = f"rec-{self._b36(r.getrandbits(100), 20)}"
                obj = {
                    "eventType": "recording",
                    "callId": cid,
                    "recordingId": rid,
                    "recordingUri": f"https://api.catapult.inetwork.com/v1/users/{user}/recordings/{rid}",
                    "state": "complete",
                    "status": "complete",
                    "startTime": iso_ms(t - 60_000),
                    "endTime": iso_ms(t),
                }
                out.append((t + 2_000, obj))
        elif cause == "error-event":
            t += r.randrange(500, 5_000)
            ev(t, "error", callState="completed", message="Call failed: media timeout")
        elif cause == "NO_ANSWER" and r.random() < 0.4:
            t += r.randrange(20_000, 60_000)
            ev(t, "timeout")
        else:
            t += r.randrange(1_000, 30_000)
            ev(t, "hangup", callState="completed", cause=cause)
        return out

    def _v2_call(self, t: int) -> list[tuple[int, dict[str, Any]]]:
        r = self.rng
        self.calls += 1
        acct = r.choice(self.v2_accounts)
        app = r.choice(self.v2_apps)
        cid = f"c-{r.getrandbits(32):08x}-{r.getrandbits(32):08x}-{self._uuid()}"
        frm, to = self._number(), self._number()
        inbound = r.random() < 0.6
        direction = "inbound" if inbound else "outbound"
        cause = r.choice(_V2_CAUSE_BAG)
        tag = f"session-{r.getrandbits(40):010x}" if r.random() < 0.3 else None
        start = t
        answered = cause == "hangup" or (cause.endswith("error") and r.random() < 0.5)
        answer_t: int | None = None
        out: list[tuple[int, dict[str, Any]]] = []

        def ev(ms: int, event_type: str, call_id: str = cid, **fields: Any) -> None:
            obj: dict[str, Any] = {
                "eventType": event_type,
                "eventTime": iso_ms(ms),
                "accountId": acct,
                "applicationId": app,
                "from": frm,
                "to": to,
                "direction": direction,
                "callId": call_id,
                "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/{acct}/calls/{call_id}",
            }
            if not inbound:
                obj["enqueuedTime"] = iso_ms(start - 150)
            obj["startTime"] = iso_ms(start)
            if answer_t is not None:
                obj["answerTime"] = iso_ms(answer_t)
            obj.update(fields)
            if tag is not None and event_type != "initiate":
                obj["tag"] = tag
            out.append((ms, obj))

        if inbound:
            ev(t, "initiate", diversion={"reason": "unconditional", "privacy": "off"})
        if answered:
            t += r.randrange(1_000, 9_000)
            answer_t = t
            ev(t, "answer")
            if not inbound and r.random() < 0.3:
                t += r.randrange(2_000, 5_000)
                ev(
                    t,
                    "machineDetectionComplete",
                    machineDetectionResult={"value": "human", "duration": "PT4.9891528S"},
                )
            for _ in range(self._extras()):
                t += r.randrange(500, 20_000)
                kind = r.random()
                if kind < 0.35:
                    ev(t, "gather", digits=str(r.randrange(1, 99999)), terminatingDigit="#")
                elif kind < 0.6:
                    ev(
                        t,
                        "dtmf",
                        digit=r.choice("0123456789*#"),
                        parentCallId=None,
                        transferCallerId=None,
                        transferTo=None,
                    )
                elif kind < 0.8:
                    ev(t, "redirect")
                else:  # a transfer: the B-leg is a call of its own
                    self.calls += 1
                    bleg = f"c-{r.getrandbits(32):08x}-{r.getrandbits(32):08x}-{self._uuid()}"
                    b_at = t + r.randrange(2_000, 8_000)
                    ev(
                        b_at,
                        "transferAnswer",
                        call_id=bleg,
                        parentCallId=cid,
                        transferCallerId=frm,
                        transferTo=self._number(),
                    )
                    t = b_at + r.randrange(5_000, 120_000)
                    ev(
                        t,
                        "transferDisconnect",
                        call_id=bleg,
                        parentCallId=cid,
                        endTime=iso_ms(t),
                        cause="hangup",
                        errorMessage=None,
                        errorId=None,
                    )
                    ev(t + 20, "transferComplete", cause="hangup", errorMessage=None, errorId=None)
                    t += 20
        t += r.randrange(2_000, 300_000) if answered else r.randrange(1_000, 30_000)
        failed = cause not in ("hangup", "busy", "timeout", "cancel", "rejected")
        ev(
            t,
            "disconnect",
            endTime=iso_ms(t),
            cause=cause,
            errorMessage=f"Call ended: {cause}" if failed else None,
            errorId=self._uuid() if failed else None,
        )
        if answered and r.random() < 0.12:
            ev(
                t + 3_000,
                "recordingAvailable",
                recordingId=f"r-{self._uuid()}",
                mediaUrl=f"https://voice.bandwidth.com/api/v2/accounts/{acct}/calls/{cid}/recordings/x/media",
                endTime=iso_ms(t),
                duration="PT13.67S",
                fileFormat="wav",
                channels=1,
                status="complete",
            )
        return out

    def stream(self, n: int) -> Iterator[tuple[int, bytes]]:
        """Exactly ``n`` events as ``(delivery ms, JSON body)``, calls overlapping in time."""
        heap: list[tuple[int, int, bytes]] = []
        emitted = 0
        order = 0
        while True:
            start = self.clock
            self.clock += max(1, int(self.rng.expovariate(1.0 / self.mean_gap_ms)))
            while heap and heap[0][0] < start:
                ms, _, body = heapq.heappop(heap)
                yield ms, body
                emitted += 1
                if emitted >= n:
                    return
            for ms, obj in self.call(start):
                heapq.heappush(heap, (ms, order, _enc.encode(obj)))
                order += 1


def bodies_file(n: int, seed: str = "ingest", start_ms: int = EPOCH_INGEST) -> Path:
    """NDJSON of ``n`` unique request bodies (cached under bench-out/; built atomically)."""
    path = OUT / "bodies" / f"{seed}-{n}-g{GEN_VERSION}.ndjson"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        for _, body in CallGen(seed, start_ms).stream(n):
            fh.write(body)
            fh.write(b"\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# The cached benchmark database (scripts/gen_db.py builds it)


def format_key() -> str:
    """A short hash of what a cached database depends on: the tracker's stored formats (the
    Fact and CallState encodings, the schema) and the generator's version."""
    sys.path.insert(0, str(ROOT))
    import sqlite3

    from tracker.state import CallState, Fact
    from tracker.storage.sqlite.schema import SCHEMA_VERSION, migrate

    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        ddl = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master ORDER BY name")]
    finally:
        conn.close()
    blob = json.dumps(
        [
            GEN_VERSION,
            SCHEMA_VERSION,
            ddl,
            msgspec.json.schema(Fact),
            msgspec.json.schema(CallState),
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def cached_db_path(events: int, calls: int) -> Path:
    return OUT / "db" / f"tracker-{events}e-{calls}c-{format_key()}.db"


def ensure_db(events: int, calls: int, *, quiet: bool = False) -> Path:
    """The cached database of that size, built by scripts/gen_db.py when missing."""
    path = cached_db_path(events, calls)
    if not path.exists():
        cmd = [PY, str(SCRIPTS / "gen_db.py"), "--events", str(events), "--calls", str(calls)]
        if not quiet:
            log(f"building {path.name} (cached for reruns): {' '.join(cmd[1:])}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
    return path


def copy_db(src: Path, dest: Path) -> Path:
    """A private working copy (the cache is never written to)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Processes


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def workdir(name: str) -> Path:
    """A scratch directory under bench-out/tmp, removed at exit."""
    base = OUT / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    import atexit

    atexit.register(shutil.rmtree, path, True)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(extra)
    return env


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile (kB) and Threads of a live process."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the live processes ``pids`` have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def scrape_metrics(url: str) -> dict[str, float]:
    """Every sample of ``GET {url}/metrics``, by its name with labels."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key and not line.startswith("#"):
            values[key] = float(value)
    return values


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A server process on a free loopback port, started and ready."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    ready_s: float  # process start -> /readyz 200
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        return proc_status(self.proc.pid).get("VmRSS", 0) / 1024

    def hwm_mb(self) -> float:
        return proc_status(self.proc.pid).get("VmHWM", 0) / 1024

    def memory(self) -> dict[str, float]:
        """RSS, peak, anonymous and file-backed RSS in MB, and the thread count."""
        st = proc_status(self.proc.pid)
        return {
            "rss_mb": st.get("VmRSS", 0) / 1024,
            "hwm_mb": st.get("VmHWM", 0) / 1024,
            "anon_mb": st.get("RssAnon", 0) / 1024,
            "file_mb": st.get("RssFile", 0) / 1024,
            "threads": st.get("Threads", 0),
        }

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: the tracker commits what is queued), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def start_server(
    name: str, cmd: list[str], env: dict[str, str], *, timeout: float = 60.0
) -> Server:
    """Start ``cmd``, parse ``listening on http://127.0.0.1:PORT``, wait for /readyz 200."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    seen: list[str] = []
    port = 0
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = LISTENING.search(line)
        if m:
            port = int(m.group(2))
            break
    if not port:
        proc.kill()
        raise RuntimeError(f"{name} did not start ({cmd}):\n" + "".join(seen))

    def pump() -> None:  # keep reading so a full pipe never blocks the server
        assert proc.stdout is not None
        for out_line in proc.stdout:
            if len(seen) < 200:
                seen.append(out_line)

    threading.Thread(target=pump, daemon=True).start()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, "/readyz")[0] == 200:
                return Server(name, proc, port, time.perf_counter() - t0, seen)
        time.sleep(0.005)
    proc.kill()
    raise RuntimeError(f"{name} never became ready:\n" + "".join(seen))


def _serve_args(db: Path) -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db)]


def start_tracker(db: Path, *, synchronous: str = "normal", tree: str | None = None) -> Server:
    """``tracker serve`` on ``db``; ``tree``: another checkout's ``tracker`` package (a before)."""
    cmd = [PY, "-m", "tracker", *_serve_args(db)]
    env = clean_env(TRACKER_STORAGE_SYNCHRONOUS=synchronous)
    if tree is not None:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    return start_server(f"tracker({synchronous})", cmd, env)


def start_whatif(what: str, db: Path, **env: str) -> Server:
    """``tracker serve`` with part of its path switched off (scripts/whatif_serve.py)."""
    cmd = [PY, str(SCRIPTS / "whatif_serve.py"), what, *_serve_args(db)]
    return start_server(what, cmd, clean_env(**env))


def start_bare(*, view_file: Path | None = None, page_file: Path | None = None) -> Server:
    cmd = [PY, str(SCRIPTS / "bare_app.py"), "--port", "0"]
    if view_file is not None:
        cmd += ["--view-file", str(view_file)]
    if page_file is not None:
        cmd += ["--page-file", str(page_file)]
    return start_server("bare", cmd, clean_env())


# --------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    codes: dict[int, int]
    sent: int
    wrapped: int
    duplicates: int
    seqs: list[int]
    raw: str

    def ok_count(self) -> int:
        return sum(n for code, n in self.codes.items() if 200 <= code < 300)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def run_wrk(
    url: str,
    script: str,
    args: Sequence[str],
    *,
    duration: float,
    connections: int = 64,
    threads: int = 1,
    keep_seqs: bool = False,
) -> WrkResult:
    """One wrk run (keep-alive, ``connections`` concurrent) with ``scripts/wrk/<script>``."""
    (OUT / "tmp").mkdir(parents=True, exist_ok=True)
    fd, result = tempfile.mkstemp(prefix="wrk-", suffix=".txt", dir=OUT / "tmp")
    os.close(fd)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(WRK_DIR / script),
        url,
        "--",
        *args,
        str(threads),
    ]
    env = dict(os.environ, BENCH_WRK_RESULT=result, BENCH_WRK_SEQS="1" if keep_seqs else "0")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration + 120, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        out = proc.stdout
        extra = Path(result).read_text()
    finally:
        Path(result).unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.M))

    def pct(p: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", lat[p])
        assert m is not None
        return _ms(m.group(1), m.group(2))

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(x) for x in m.groups()) if m else 0
    codes: dict[int, int] = {}
    sent = wrapped = dups = 0
    seqs: list[int] = []
    for line in extra.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "code":
            codes[int(parts[1])] = codes.get(int(parts[1]), 0) + int(parts[2])
        elif parts[0] == "sent":
            sent += int(parts[1])
        elif parts[0] == "wrapped":
            wrapped += int(parts[1])
        elif parts[0] == "dups":
            dups += int(parts[1])
        elif parts[0] == "seqs":
            seqs.extend(int(x) for x in parts[1:])
    return WrkResult(
        rps, pct("50"), pct("99"), requests, non2xx, sock, codes, sent, wrapped, dups, seqs, out
    )


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")


# --------------------------------------------------------------------------------------------
# Statistics and tables


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median (min-max)``."""
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "git": git_state(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg(),
    }


def git_state() -> str:
    """``<commit>`` of the tree measured, ``+dirty`` when tracker/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tracker"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "?"
    return head + ("+dirty(tracker/)" if dirty else "")


def load_note(before: Sequence[float], after: Sequence[float]) -> str:
    return (
        f"tracker at {git_state()}; load average (1/5/15 min) before: "
        f"{before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f}, "
        f"after: {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} on {os.cpu_count()} CPUs"
    )


def save_results(name: str, data: dict[str, Any]) -> Path:
    path = OUT / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def save_wrk_results(
    name: str,
    args: argparse.Namespace,
    loads: Sequence[Sequence[float]],
    results: Mapping[str, Sequence[WrkResult]],
    **extra: Any,
) -> Path:
    """Save a wrk benchmark's runs (without the collected seqs) under ``name`` (``-smoke``)."""
    return save_results(
        f"{name}-smoke" if args.smoke else name,
        {
            "machine": machine(),
            "args": vars(args),
            "load": [list(x) for x in loads],
            "runs": {
                s: [r.__dict__ | {"seqs": len(r.seqs), "raw": ""} for r in rs]
                for s, rs in results.items()
            },
            **extra,
        },
    )


def interleave(sides: Sequence[str], runs: int) -> Iterator[tuple[int, str]]:
    """``(round, side)``: side A, side B, side A, side B, ... so noise spreads evenly."""
    for i in range(runs):
        for side in sides:
            yield i, side


Runner = Callable[[int, str], None]


# --------------------------------------------------------------------------------------------
# One ingest run against the tracker, with the no-silent-loss check


@dataclass
class IngestRun:
    wrk: WrkResult
    ready_s: float
    idle_rss_mb: float
    rss_mb: float  # after the run, before stopping
    hwm_mb: float  # peak RSS of the server
    check: dict[str, Any]
    wal_peak_mb: float = 0.0  # largest -wal file seen during the measured run (sampled)
    wal_end_mb: float = 0.0  # the -wal file when the measured run ended (before stopping)


def count_events(db: Path) -> tuple[int, int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        n, top = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
        return int(n), int(top)
    finally:
        conn.close()


def verify_ingest(db: Path, before: tuple[int, int], res: WrkResult) -> dict[str, Any]:
    """After the server stopped: every seq acknowledged with a 200 is a distinct new row, and
    the rows added are the 200s plus at most the requests still in flight when wrk stopped
    (those were committed but their answers were never read)."""
    import sqlite3

    n_before, top_before = before
    n_after, _ = count_events(db)
    added = n_after - n_before
    n200 = res.codes.get(200, 0)
    in_flight = max(0, res.sent - sum(res.codes.values()))
    acked = res.seqs
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("CREATE TEMP TABLE acked (seq INTEGER)")
        conn.executemany("INSERT INTO acked VALUES (?)", ((s,) for s in acked))
        present = conn.execute(
            "SELECT count(*) FROM acked JOIN events USING (seq) WHERE seq > ?", (top_before,)
        ).fetchone()[0]
    finally:
        conn.close()
    problems = []
    if len(acked) != n200:
        problems.append(f"{n200} 200s but {len(acked)} seqs parsed")
    if len(set(acked)) != len(acked):
        problems.append("a seq was acknowledged twice")
    if present != len(acked):
        problems.append(f"{len(acked) - present} acknowledged events are not in the database")
    if not n200 <= added <= n200 + in_flight:
        problems.append(f"{added} rows added for {n200} 200s and {in_flight} requests in flight")
    other = {c: n for c, n in res.codes.items() if c != 200}
    if other or res.non2xx:
        problems.append(f"non-200 answers: {other or res.non2xx}")
    if res.socket_errors:
        problems.append(f"{res.socket_errors} socket errors")
    if res.duplicates or res.wrapped:
        problems.append(
            f"{res.duplicates} duplicates / {res.wrapped} wrapped bodies: use more --bodies"
        )
    return {
        "ok": not problems,
        "problems": problems,
        "n200": n200,
        "added": added,
        "in_flight_at_stop": in_flight,
        "acked_present": present,
        "non2xx": res.non2xx,
        "socket_errors": res.socket_errors,
    }


def tracker_ingest_run(
    db: Path,
    bodies: Path,
    warm_bodies: Path | None,
    *,
    duration: float,
    warmup: float,
    connections: int,
    threads: int,
    synchronous: str = "normal",
    tree: str | None = None,
    on_running: Callable[[Server], None] | None = None,
) -> IngestRun:
    """Start the tracker on ``db``, warm up, measure, stop gracefully, verify."""
    srv = start_tracker(db, synchronous=synchronous, tree=tree)
    try:
        idle = srv.rss_mb()
        if warm_bodies is not None and warmup > 0:
            ingest_wrk(srv, warm_bodies, warmup, connections=connections, threads=threads)
            time.sleep(0.3)  # the last in-flight requests of the warm-up commit
        before = count_events(db)
        if on_running is not None:
            on_running(srv)
        with WalSampler(db) as wal:
            res = ingest_wrk(
                srv, bodies, duration, connections=connections, threads=threads, keep_seqs=True
            )
        rss, hwm = srv.rss_mb(), srv.hwm_mb()
    finally:
        rc = srv.stop()
    check = verify_ingest(db, before, res)
    if rc != 0:
        check["ok"] = False
        check["problems"].append(f"tracker serve exited {rc}")
    return IngestRun(res, srv.ready_s, idle, rss, hwm, check, wal.peak_mb, wal.end_mb)


class WalSampler:
    """Samples the size of ``db``'s ``-wal`` file every 50 ms while the block runs."""

    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}-wal")
        self.peak_mb = 0.0
        self.end_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size_mb(self) -> float:
        try:
            return self.path.stat().st_size / 2**20
        except FileNotFoundError:
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self._size_mb())

    def __enter__(self) -> WalSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end_mb = self._size_mb()
        self.peak_mb = max(self.peak_mb, self.end_mb)


def ingest_wrk(
    srv: Server,
    bodies: Path,
    seconds: float,
    *,
    connections: int,
    threads: int,
    keep_seqs: bool = False,
) -> WrkResult:
    """wrk posting ``bodies`` (scripts/wrk/ingest.lua) to ``srv``'s ``/callbacks``."""
    return run_wrk(
        srv.url,
        "ingest.lua",
        [str(bodies)],
        duration=seconds,
        connections=connections,
        threads=threads,
        keep_seqs=keep_seqs,
    )


def bare_ingest_run(
    bodies: Path, *, duration: float, warmup: float, connections: int, threads: int
) -> WrkResult:
    srv = start_bare()
    try:
        if warmup > 0:
            ingest_wrk(srv, bodies, warmup, connections=connections, threads=threads)
        return ingest_wrk(srv, bodies, duration, connections=connections, threads=threads)
    finally:
        srv.stop()


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def wrk_parser(doc: str | None, smoke_help: str, warmup: float = 1.0) -> argparse.ArgumentParser:
    """The options every wrk benchmark takes (runs, duration, warm-up, connections, threads)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (>= 5)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (2 CPUs: keep 1)")
    return parser
