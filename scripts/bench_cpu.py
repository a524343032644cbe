"""CPU per ingested event: ``tracker serve`` under the ingest load, its CPU seconds per request
and how many of the 2 CPUs it kept busy, against another checkout's tracker, alternating.

req/s alone cannot tell a change that saves CPU from noise on a shared 2-CPU host, and a server
that is not CPU-bound (a closed loop of 64 connections waiting on group commits) turns saved CPU
into idle time rather than throughput. This shows both. Each run waits until nothing niced (a
helper's benchmark or test run) used more than 5% of a CPU for a second, and is repeated if
something did during it.

    .venv/bin/python scripts/bench_cpu.py --before DIR [--runs 3] [--duration 6]
    .venv/bin/python scripts/bench_cpu.py --smoke
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc

TICK = os.sysconf("SC_CLK_TCK")


def niced_cpu() -> float:
    """CPU seconds spent by niced processes on the whole host (other helpers' runs)."""
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[2]) / TICK


def wait_quiet(max_wait: float = 300.0) -> None:
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = niced_cpu()
        time.sleep(1.0)
        if niced_cpu() - before < 0.05:
            return


def one_run(
    tree: str | None, db: Path, bodies: Path, warm: Path, seconds: float, warmup: float, conns: int
) -> dict[str, Any]:
    for _attempt in range(10):
        wait_quiet()
        bc.remove_db(db)
        srv = bc.start_tracker(db, tree=tree)
        try:
            if warmup > 0:
                bc.ingest_wrk(srv, warm, warmup, connections=conns, threads=1)
            n0, c0, t0 = niced_cpu(), bc.cpu_seconds([srv.proc.pid]), time.monotonic()
            res = bc.ingest_wrk(srv, bodies, seconds, connections=conns, threads=1)
            c1, t1, n1 = bc.cpu_seconds([srv.proc.pid]), time.monotonic(), niced_cpu()
        finally:
            srv.stop()
            bc.remove_db(db)
        if n1 - n0 < 0.05 * (t1 - t0):
            break
        bc.log(f"  others used {(n1 - n0) / (t1 - t0):.2f} CPUs meanwhile: again")
    return {
        "rps": res.rps,
        "us_per_request": (c1 - c0) / max(1, res.requests) * 1e6,
        "cpus": (c1 - c0) / (t1 - t0),
    }


def main() -> int:
    parser = bc.wrk_parser(__doc__, "one short run per side")
    parser.add_argument("--before", metavar="DIR", help="the other checkout's tracker")
    args = parser.parse_args()
    if args.smoke:  # both paths, this checkout on each side
        args.runs, args.duration, args.warmup = 1, 1.0, 0.0
        args.before = args.before or str(bc.ROOT)
    bc.need_wrk()
    load0 = os.getloadavg()
    bodies = bc.bodies_file(20_000 if args.smoke else 250_000)
    warm = bc.bodies_file(20_000, seed="warmup")
    work = bc.workdir("cpu")
    sides = ["now", "before"] if args.before else ["now"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        tree = args.before if side == "before" else None
        run = one_run(
            tree, work / f"{side}.db", bodies, warm, args.duration, args.warmup, args.connections
        )
        results[side].append(run)
    load1 = os.getloadavg()
    rows = []
    for side in sides:
        rs = results[side]
        rows.append(
            [
                side,
                bc.spread([r["rps"] for r in rs]),
                bc.spread([r["us_per_request"] for r in rs], "{:.1f}"),
                bc.spread([r["cpus"] for r in rs], "{:.2f}"),
            ]
        )
    print(
        f"## CPU per ingested event: {args.connections} connections, "
        f"{args.duration:g} s x {args.runs} runs per side (median (min-max))"
    )
    print()
    print(bc.table(["side", "req/s", "server CPU µs per request", "CPUs busy"], rows))
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_results("cpu", {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
