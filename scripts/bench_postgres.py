"""Benchmark: ingest on PostgreSQL against SQLite, and two hosts against one on PostgreSQL.

wrk posts unique, realistic callbacks (as bench_ingest.py) for the same duration to

* ``sqlite``: one ``tracker serve`` on a fresh SQLite file;
* ``pg-1``: one ``tracker serve`` on a fresh PostgreSQL database;
* ``pg-2``: two ``tracker serve`` processes on one fresh PostgreSQL database, each with half the
  connections from a wrk of its own (their req/s added up),

interleaved (sqlite, pg-1, pg-2, sqlite, ...). Where the time goes: each host's group commits
(events per commit, ms per commit, from ``/metrics``) and the CPU seconds used by the tracker
processes and by the PostgreSQL server's processes during the run. Every run ends with the log
checked: seq gap-free from 1, and as many events as 200s (plus at most those in flight).

    .venv/bin/python scripts/bench_postgres.py               # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_postgres.py --smoke       # does it all work

Needs PostgreSQL 15+ at 127.0.0.1:5432 (trust authentication) and wrk. Target (same run):
``pg-1`` >= 0.5x ``sqlite`` req/s.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import bench_common as bc
import psycopg

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def metric_sum(url: str, name: str) -> tuple[float, float]:
    """``name``'s histogram ``_sum`` and ``_count`` from ``/metrics``."""
    values = bc.scrape_metrics(url)
    return values.get(f"{name}_sum", 0.0), values.get(f"{name}_count", 0.0)


def new_pg() -> str:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}".encode())
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_pg(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def log_check(db: str) -> tuple[int, bool]:
    """(events, seq gap-free from 1)."""
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as c:
            row = c.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
    else:
        with closing(sqlite3.connect(db)) as s:
            row = s.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
    assert row is not None
    return int(row[0]), int(row[0]) == int(row[1])


def run_side(side: str, work: Path, i: int, bodies: list[Path], args: Any) -> dict[str, Any]:
    hosts = 2 if side == "pg-2" else 1
    db = str(work / f"{side}-{i}.db") if side == "sqlite" else new_pg()
    servers = []
    try:
        for _ in range(hosts):
            cmd = [bc.PY, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
            servers.append(bc.start_server(side, [*cmd, "--db", db], bc.clean_env()))
        pids = [s.proc.pid for s in servers]
        pg = postgres_pids()
        cpu0, pg0 = bc.cpu_seconds(pids), bc.cpu_seconds(pg)
        results: list[Any] = [None] * hosts
        conns = max(1, args.connections // hosts)

        def drive(k: int) -> None:
            results[k] = bc.ingest_wrk(
                servers[k], bodies[k], args.duration, connections=conns, threads=args.threads
            )

        threads = [threading.Thread(target=drive, args=(k,)) for k in range(hosts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1, pg1 = bc.cpu_seconds(pids), bc.cpu_seconds(pg)
        commits = [metric_sum(s.url, "tracker_commit_seconds") for s in servers]
        batches = [metric_sum(s.url, "tracker_batch_events") for s in servers]
    finally:
        for s in servers:
            s.stop()
    events, gap_free = log_check(db)
    ok200 = sum(r.ok_count() for r in results)
    n_commits = sum(c[1] for c in commits) or 1
    out = {
        "rps": sum(r.rps for r in results),
        "p99_ms": max(r.p99_ms for r in results),
        "non2xx": sum(r.non2xx for r in results),
        "events_per_commit": sum(b[0] for b in batches) / n_commits,
        "ms_per_commit": 1000 * sum(c[0] for c in commits) / n_commits,
        "tracker_cpu_s": cpu1 - cpu0,
        "postgres_cpu_s": pg1 - pg0 if side != "sqlite" else 0.0,
        "ok": gap_free and ok200 <= events and events - ok200 <= args.connections,
    }
    if side == "sqlite":
        bc.remove_db(Path(db))
    else:
        drop_pg(db)
    return out


def main() -> int:
    parser = bc.wrk_parser(__doc__, "one short run per side", warmup=0.0)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration = 1, 2.0
    bc.need_wrk()
    load0 = os.getloadavg()
    bodies = [bc.bodies_file(100_000, seed=f"pg-{k}") for k in range(2)]
    work = bc.workdir("postgres")
    sides = ["sqlite", "pg-1", "pg-2"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        results[side].append(run_side(side, work, i, bodies, args))
    load1 = os.getloadavg()

    def col(side: str, key: str) -> list[float]:
        return [r[key] for r in results[side]]

    rows = [
        [
            side,
            bc.spread(col(side, "rps")),
            bc.spread(col(side, "p99_ms"), "{:.1f}"),
            bc.spread(col(side, "events_per_commit"), "{:.1f}"),
            bc.spread(col(side, "ms_per_commit"), "{:.2f}"),
            bc.spread(col(side, "tracker_cpu_s"), "{:.1f}"),
            bc.spread(col(side, "postgres_cpu_s"), "{:.1f}"),
            "ok" if all(col(side, "ok")) else "**FAILED**",
        ]
        for side in sides
    ]
    ratio = bc.med(col("pg-1", "rps")) / bc.med(col("sqlite", "rps"))
    two = bc.med(col("pg-2", "rps")) / bc.med(col("pg-1", "rps"))
    print(
        f"## PostgreSQL: POST /callbacks, {args.connections} connections in all, "
        f"{args.duration:g} s x {args.runs} runs per side (median (min-max))\n"
    )
    print(
        bc.table(
            [
                "side",
                "req/s",
                "p99 ms",
                "events/commit",
                "ms/commit",
                "tracker CPU s",
                "postgres CPU s",
                "log check",
            ],
            rows,
        )
    )
    print()
    print(
        bc.table(
            ["ratio", "value", "target", "verdict"],
            [
                ["pg-1 / sqlite req/s", f"{ratio:.2f}", ">= 0.50", bc.verdict(ratio >= 0.5)],
                ["pg-2 / pg-1 req/s", f"{two:.2f}", "(reported)", "-"],
            ],
        )
    )
    print(f"\nload average before/after: {load0[0]:.1f} / {load1[0]:.1f}")
    bc.save_results("postgres", {"results": results, "ratio": ratio, "two_hosts": two})
    return 0 if all(all(col(s, "ok")) for s in sides) else 1


if __name__ == "__main__":
    sys.exit(main())
