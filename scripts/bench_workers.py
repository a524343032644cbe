"""Benchmark: ingest with ``tracker serve --workers 2`` against ``--workers 1``, same run.

wrk (64 keep-alive connections, one thread) posts unique, realistic callbacks (as
bench_ingest.py) to ``tracker serve`` with one worker and with two, on a fresh empty SQLite file
and on a private copy of the 1M-event database (scripts/gen_db.py, cached in bench-out/db/),
interleaved (w1-empty, w2-empty, w1-1M, w2-1M, w1-empty, ...). Where the time goes: CPU seconds
of the tracker's processes (main and workers) during the measured run, and the group commits
from ``/metrics`` (all workers together): events per commit and ms per commit (with two
workers, this includes the wait for the other worker's commit: the writer lock is one).
After every run the server is stopped (SIGTERM) and the log checked as bench_ingest.py does:
every 200's seq a distinct new row, nothing else added but requests in flight, no non-2xx.

    .venv/bin/python scripts/bench_workers.py                  # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_workers.py --db-events 200000 --db-calls 60000
    .venv/bin/python scripts/bench_workers.py --smoke          # does it all work

Targets (issue 12, same run): w2 >= 1.6x w1 req/s on each database; w2 p99 <= w1 p99.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc


def family(pid: int) -> list[int]:
    """``pid`` and its children (the workers, and multiprocessing's resource tracker)."""
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def run_side(side: str, db: Path, bodies: Path, warm: Path, args: Any) -> dict[str, Any]:
    workers = int(side[1])
    cmd = [bc.PY, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--db", str(db), "--workers", str(workers)]
    srv = bc.start_server(side, cmd, bc.clean_env(), timeout=120)
    try:
        if args.warmup > 0:
            bc.ingest_wrk(srv, warm, args.warmup, connections=args.connections, threads=1)
            time.sleep(0.3)
        before = bc.count_events(db)
        pids = family(srv.proc.pid)
        m0, cpu0 = bc.scrape_metrics(srv.url), bc.cpu_seconds(pids)
        res = bc.ingest_wrk(
            srv, bodies, args.duration, connections=args.connections, threads=1, keep_seqs=True
        )
        m1, cpu1 = bc.scrape_metrics(srv.url), bc.cpu_seconds(pids)
    finally:
        rc = srv.stop()
    check = bc.verify_ingest(db, before, res)
    if rc != 0:
        check["ok"] = False
        check["problems"].append(f"tracker serve exited {rc}")

    def moved(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    commits = moved("tracker_batch_events_count") or 1.0
    return {
        "wrk": res,
        "check": check,
        "cpu_s": cpu1 - cpu0,
        "events_per_commit": moved("tracker_batch_events_sum") / commits,
        "ms_per_commit": 1000 * moved("tracker_commit_seconds_sum") / commits,
        "commit_busy": moved("tracker_commit_seconds_sum") / args.duration,
    }


def main() -> int:
    parser = bc.wrk_parser(__doc__, "one short run per side, tiny database")
    parser.add_argument("--bodies", type=int, default=400_000, help="unique bodies in the file")
    parser.add_argument("--db-events", type=int, default=bc.DB_EVENTS)
    parser.add_argument("--db-calls", type=int, default=bc.DB_CALLS)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.warmup, args.bodies = 1, 2.0, 0.5, 40_000
        args.db_events, args.db_calls = bc.SMOKE_DB_EVENTS, bc.SMOKE_DB_CALLS
    bc.need_wrk()
    load0 = os.getloadavg()
    bodies = bc.bodies_file(args.bodies)
    warm = bc.bodies_file(20_000, seed="warmup")
    big = bc.ensure_db(args.db_events, args.db_calls)
    work = bc.workdir("workers")
    label = f"{args.db_events // 1000}k" if args.db_events < 1_000_000 else "1M"
    sides = ["w1-empty", "w2-empty", f"w1-{label}", f"w2-{label}"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        db = work / f"{side}-{i}.db"
        if not side.endswith("empty"):
            bc.copy_db(big, db)
        run = run_side(side, db, bodies, warm, args)
        bc.remove_db(db)
        runs[side].append(run)
        if not run["check"]["ok"]:
            bc.log(f"  CHECK FAILED: {run['check']['problems']}")
    load1 = os.getloadavg()

    def col(side: str, key: str) -> list[float]:
        return [
            getattr(r["wrk"], key) if key in ("rps", "p50_ms", "p99_ms") else r[key]
            for r in runs[side]
        ]

    rows = [
        [
            side,
            bc.spread(col(side, "rps")),
            bc.spread(col(side, "p50_ms"), "{:.2f}"),
            bc.spread(col(side, "p99_ms"), "{:.2f}"),
            bc.spread(col(side, "cpu_s"), "{:.1f}"),
            bc.spread(col(side, "events_per_commit"), "{:.1f}"),
            bc.spread(col(side, "ms_per_commit"), "{:.2f}"),
            bc.spread(col(side, "commit_busy"), "{:.2f}"),
        ]
        for side in sides
    ]
    ratio_rows = []
    summary: dict[str, Any] = {}
    for db in ("empty", label):
        one, two = f"w1-{db}", f"w2-{db}"
        rps = bc.med(col(two, "rps")) / bc.med(col(one, "rps"))
        p99 = bc.med(col(two, "p99_ms")) / bc.med(col(one, "p99_ms"))
        paired = [a / b for a, b in zip(col(two, "rps"), col(one, "rps"), strict=False)]
        ratio_rows.append(
            [
                f"{db}: req/s w2 / w1",
                f"{rps:.2f} ({bc.spread(paired, '{:.2f}')} per round)",
                ">= 1.60",
                bc.verdict(rps >= 1.6),
            ]
        )
        ratio_rows.append([f"{db}: p99 w2 / w1", f"{p99:.2f}", "<= 1.00", bc.verdict(p99 <= 1.0)])
        summary[db] = {"rps_ratio": rps, "p99_ratio": p99}
    all_ok = all(r["check"]["ok"] for rs in runs.values() for r in rs)
    problems = sorted({p for rs in runs.values() for r in rs for p in r["check"]["problems"]})
    print(
        f"## Workers: POST /callbacks, {args.connections} connections, "
        f"{args.duration:g} s x {args.runs} runs per side (median (min-max))"
    )
    print()
    print(
        bc.table(
            [
                "side",
                "req/s",
                "p50 ms",
                "p99 ms",
                "CPU s (all processes)",
                "events/commit",
                "ms/commit",
                "commit s per s",
            ],
            rows,
        )
    )
    print()
    print(bc.table(["ratio (medians)", "value", "target", "verdict"], ratio_rows))
    print()
    print(f"No silent loss: {'every run checked ok' if all_ok else '; '.join(problems)}")
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_wrk_results(
        "workers",
        args,
        [load0, load1],
        {s: [r["wrk"] for r in rs] for s, rs in runs.items()},
        checks={s: [r["check"] for r in rs] for s, rs in runs.items()},
        summary=summary,
        detail={
            s: [{k: v for k, v in r.items() if k != "wrk"} for r in rs] for s, rs in runs.items()
        },
    )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
