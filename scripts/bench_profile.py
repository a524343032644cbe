"""Profile the tracker under a benchmark's load with py-spy, and summarise where the time goes.

    .venv/bin/pip install py-spy
    .venv/bin/python scripts/bench_profile.py ingest            # POST /callbacks, empty db
    .venv/bin/python scripts/bench_profile.py ingest --big      # on the 1M-event database
    .venv/bin/python scripts/bench_profile.py query             # GET /calls/{id}, 300k calls
    .venv/bin/python scripts/bench_profile.py list              # GET /calls?outcome=busy pages
    .venv/bin/python scripts/bench_profile.py replay            # tracker replay, 1M events
    .venv/bin/python scripts/bench_profile.py summarize FILE.raw
    .venv/bin/python scripts/bench_profile.py micro             # cost per stage, no HTTP

Writes bench-out/profiles/<name>.raw (collapsed stacks) and <name>.svg (a flame graph), and
prints, per thread, the share of samples by line (self) and by function (inclusive). py-spy
samples running threads only (``--idle`` adds waiting ones); ``--gil`` keeps only the thread
holding the GIL, which shows what serialises the event loop and the writer.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bench_common as bc

PROFILES = bc.OUT / "profiles"


def pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(bc.PY).with_name("py-spy"))
    if not Path(found).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def summarize(raw: Path, top: int = 25) -> str:
    threads: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[tuple[str, str]] = collections.Counter()
    incl: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(\d+\)", "", frames[0]).replace("thread ", "").strip()
        frames = frames[1:]
        threads[thread] += n
        total += n
        if frames:
            self_[(thread, frames[-1])] += n
            seen = set()
            for f in frames:
                key = (thread, re.sub(r":\d+\)$", ")", f))
                if key not in seen:
                    seen.add(key)
                    incl[key] += n
    out = [f"{total} samples"]
    out += [f"  thread {t}: {100 * n / total:.1f}%" for t, n in threads.most_common()]
    out.append("\nself, by line (share of all samples):")
    out += [f"{100 * n / total:5.1f}%  [{t[:14]}] {f}" for (t, f), n in self_.most_common(top)]
    out.append("\ninclusive, by function:")
    out += [f"{100 * n / total:5.1f}%  [{t[:14]}] {f}" for (t, f), n in incl.most_common(2 * top)]
    return "\n".join(out)


class TimedConn:
    """A stand-in for the writer's sqlite3 connection that times every statement by its SQL."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.times: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def execute(self, sql: str, args: Any = ()) -> Any:
        t0 = time.perf_counter()
        cur = self._conn.execute(sql, args)
        key = " ".join(sql.split())[:48]
        self.times[key] += time.perf_counter() - t0
        self.calls[key] += 1
        return cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def micro(
    events: int,
    group: int,
    *,
    autocheckpoint: int | None = None,
    drop: Sequence[str] = (),
    lean_upsert: bool = False,
) -> str:
    """Microseconds per event for each stage of the ingest path, outside HTTP (one thread)."""
    import asyncio

    import uvloop

    sys.path.insert(0, str(bc.ROOT))
    from tracker import ingest as tingest
    from tracker import render as trender
    from tracker import state as tstate
    from tracker.events import content_key, decode_object, parse_json
    from tracker.storage.sqlite import SqliteStorage
    from tracker.storage.sqlite import writes as tstore

    bodies = bc.bodies_file(250_000).read_bytes().splitlines()[:events]
    n = len(bodies)
    out = [f"{n:,} events (benchmark bodies), groups of {group} per transaction; us per event"]
    if lean_upsert:  # what-if: SET only what changes on most events (not a correct upsert)
        sql = tstore._UPSERT_CALL
        head, _, _ = sql.partition("DO UPDATE SET")
        tstore._UPSERT_CALL = (
            head + "DO UPDATE SET status = excluded.status, outcome = excluded.outcome, "
            "cause = excluded.cause, last_seq = excluded.last_seq, state = excluded.state"
        )
    if autocheckpoint is not None or drop or lean_upsert:
        out.append(
            f"what-if: wal_autocheckpoint={autocheckpoint}, dropped indexes: {list(drop)}, "
            f"upsert without direction/from/to/tag/first_event_at in SET: {lean_upsert}"
        )

    def timed(label: str, fn: Any, count: int = n) -> Any:
        t0 = time.perf_counter()
        result = fn()
        out.append(f"  {label:<58} {1e6 * (time.perf_counter() - t0) / count:8.2f}")
        return result

    out.append("request side (event loop thread):")
    objs = timed("parse_json(body)", lambda: [parse_json(b) for b in bodies])
    decs = timed(
        "decode_object(obj, raw=body)",
        lambda: [decode_object(o, raw=b) for o, b in zip(objs, bodies, strict=True)],
    )
    timed(
        "  of which content_key (canonical JSON + blake2b)", lambda: [content_key(o) for o in objs]
    )
    timed("fact_of(decoded)  (times parsed, reduced)", lambda: [tstate.fact_of(d) for d in decs])
    entries = timed(
        "make_entry(decoded, body)  (fact_of + msgpack + Entry)",
        lambda: [tingest.make_entry(d, b, "json", 0) for d, b in zip(decs, bodies, strict=True)],
    )

    async def timeouts() -> None:
        for _ in range(n):
            async with asyncio.timeout(30.0):
                pass

    timed("async with asyncio.timeout(30)  (uvloop)", lambda: uvloop.run(timeouts()))

    out.append("writer side (Store.write_batch), per statement:")
    work = bc.workdir("micro")
    big = bc.cached_db_path(bc.DB_EVENTS, bc.DB_CALLS)
    dbs = [("empty db", None)] + ([("1M-event db", big)] if big.exists() else [])
    for label, src in dbs:
        db = work / f"{label.split()[0]}.db"
        if src is not None:
            bc.copy_db(src, db)
        store = SqliteStorage(db)
        for column in drop:  # what-if: the projection without these (column, last_seq) indexes
            for (index,) in store.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls' "
                "AND name GLOB ?",
                (f"calls_{column}_*",),
            ).fetchall():
                store.conn.execute(f'DROP INDEX "{index}"')
        if autocheckpoint is not None:
            store.conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
        wal = Path(f"{db}-wal")
        tc = TimedConn(store.conn)
        store.conn = store._appender.conn = tc  # type: ignore[assignment]
        t0 = time.perf_counter()
        for i in range(0, n, group):
            store.write_batch([entries[i : i + group]])
        total = time.perf_counter() - t0
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        store.conn = store._appender.conn = tc._conn
        store.close()
        bc.remove_db(db)
        sql = sum(tc.times.values())
        out.append(f"  {label}: write_batch total {1e6 * total / n:8.2f} us/event")
        if autocheckpoint == 0:
            out.append(f"    WAL written: {wal_bytes / n:,.0f} bytes/event")
        for key, secs in tc.times.most_common():
            out.append(f"    {key:<56} {1e6 * secs / n:8.2f}  ({tc.calls[key]:,} calls)")
        out.append(
            f"    {'Python in _append (fold, view, encode, loop)':<56} "
            f"{1e6 * (total - sql) / n:8.2f}"
        )

    out.append("fold and view, per event / per touched call:")
    facts = [e.fact for e in entries]
    states: dict[str, Any] = {}

    def fold() -> None:
        for e, f in zip(entries, facts, strict=True):
            if e.call_id is not None:
                cur = states.get(e.call_id) or tstate.initial_state(e.call_id)
                states[e.call_id] = tstate.evolve(cur, f, 1)

    timed("evolve(state, fact, seq)", fold)
    vals = list(states.values())
    timed("view(state)", lambda: [trender.view(s) for s in vals], len(vals))
    row_of = getattr(tstore, "row_of", None)
    if row_of is not None:
        timed(
            "row_of(state)  (view + msgpack state + JSON view)",
            lambda: [row_of(s, None) for s in vals],
            len(vals),
        )
    return "\n".join(out)


def record(pid: int, name: str, seconds: float, extra: list[str]) -> list[subprocess.Popen[bytes]]:
    PROFILES.mkdir(parents=True, exist_ok=True)
    procs = []
    for fmt, suffix in (("raw", "raw"), ("flamegraph", "svg")):
        cmd = [pyspy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        cmd += ["--rate", "250", "--threads", "--nonblocking", "--format", fmt]
        cmd += ["-o", str(PROFILES / f"{name}.{suffix}"), *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        if fmt == "raw":
            time.sleep(0.2)
    return procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["ingest", "query", "list", "replay", "summarize", "micro"])
    parser.add_argument("file", nargs="?", help="summarize: a .raw file")
    parser.add_argument("--big", action="store_true", help="ingest: on the 1M-event database")
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--gil", action="store_true", help="sample the GIL holder only")
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--events", type=int, default=20_000, help="micro: events")
    parser.add_argument("--group", type=int, default=64, help="micro: events per commit")
    parser.add_argument(
        "--autocheckpoint", type=int, help="micro what-if: PRAGMA wal_autocheckpoint (0 = off)"
    )
    parser.add_argument(
        "--lean-upsert",
        action="store_true",
        help="micro what-if: the calls upsert SETs only status/outcome/cause/last_seq/state",
    )
    parser.add_argument(
        "--drop-index",
        action="append",
        default=[],
        metavar="COLUMN",
        help="micro what-if: drop calls' (COLUMN, last_seq) index, e.g. from_number (repeat)",
    )
    args = parser.parse_args()
    if args.what == "micro":
        print(
            micro(
                args.events,
                args.group,
                autocheckpoint=args.autocheckpoint,
                drop=args.drop_index,
                lean_upsert=args.lean_upsert,
            )
        )
        return 0
    if args.what == "summarize":
        print(summarize(Path(args.file), args.top))
        return 0
    extra = (["--gil"] if args.gil else []) + (["--idle"] if args.idle else [])
    name = (
        args.what + ("-big" if args.big else "") + ("-full" if args.synchronous == "full" else "")
    )
    name += "-gil" if args.gil else ""
    work = bc.workdir("profile")
    if args.what == "replay":
        db = bc.copy_db(bc.ensure_db(bc.DB_EVENTS, bc.DB_CALLS), work / "r.db")
        proc = subprocess.Popen([bc.PY, "-m", "tracker", "replay", "--db", str(db)])
        spies = record(proc.pid, name, 3600, extra)
        proc.wait()
    else:
        bc.need_wrk()
        db = work / "p.db"
        if args.big or args.what in ("query", "list"):
            bc.copy_db(bc.ensure_db(bc.DB_EVENTS, bc.DB_CALLS), db)
        srv = bc.start_tracker(db, synchronous=args.synchronous)
        try:
            if args.what == "ingest":
                script, paths = "ingest.lua", bc.bodies_file(250_000)
            else:
                import sqlite3

                conn = sqlite3.connect(db)
                paths = work / "paths.txt"
                if args.what == "query":
                    rows = conn.execute("SELECT call_id FROM calls")
                    paths.write_text("".join(f"/calls/{quote(r[0], safe='')}\n" for r in rows))
                else:
                    rows = conn.execute(
                        "SELECT last_seq FROM calls WHERE outcome = 'busy' ORDER BY last_seq DESC"
                    )
                    seqs = [r[0] for r in rows]
                    pages = [f"/calls?outcome=busy&cursor={s}" for s in seqs[99::100]]
                    paths.write_text("\n".join(["/calls?outcome=busy", *pages]) + "\n")
                conn.close()
                script = "get_random.lua"
            spies = record(srv.proc.pid, name, args.duration, extra)
            time.sleep(0.5)
            res = bc.run_wrk(srv.url, script, [str(paths)], duration=args.duration)
            print(
                f"under py-spy: {res.rps:,.0f} req/s, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f}"
            )
        finally:
            for spy in spies if "spies" in locals() else []:
                spy.wait(60)
            srv.stop()
    for spy in spies:
        spy.wait()
    raw = PROFILES / f"{name}.raw"
    print(f"profile: {raw} and {raw.with_suffix('.svg')}")
    print(summarize(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
