"""Benchmark 2 (+ footprint): ingest on a database holding 1,000,000 events for ~300,000 calls
versus an empty database, in the same run; the server's RSS and its time to ready.

The large database is built once by scripts/gen_db.py through the tracker's own write path and
cached in bench-out/db/ (keyed by size and stored format); every run works on a fresh copy.
The ingest is benchmark 1's (wrk, 64 keep-alive connections, unique realistic callbacks, a
warm-up, the no-silent-loss check), interleaved: empty, 1M, empty, 1M, ...

Footprint, per run: RSS once ready (idle), RSS after the run and the peak (VmHWM), and the time
from process start to the first ``/readyz`` 200.

    .venv/bin/python scripts/bench_scale.py            # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_scale.py --smoke    # tiny database, a few seconds

Targets: 1M >= 0.90x the empty database's req/s; idle RSS <= 60 MB, <= 120 MB under this
benchmark; ready <= 1.5 s.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bench_common as bc


def main() -> int:
    parser = bc.wrk_parser(__doc__, "tiny database, one short run")
    parser.add_argument("--bodies", type=int, default=250_000, help="unique bodies in the file")
    parser.add_argument("--events", type=int, default=bc.DB_EVENTS, help="events in the big db")
    parser.add_argument("--calls", type=int, default=bc.DB_CALLS, help="calls in the big db")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.warmup, args.bodies = 1, 1.0, 0.0, 20_000
        args.events, args.calls = bc.SMOKE_DB_EVENTS, bc.SMOKE_DB_CALLS
    bc.need_wrk()
    big = bc.ensure_db(args.events, args.calls, quiet=args.smoke)
    big_events, _ = bc.count_events(big)
    load0 = os.getloadavg()
    bodies = bc.bodies_file(args.bodies)
    warm = bc.bodies_file(20_000, seed="warmup")
    work = bc.workdir("scale")
    label = f"{big_events / 1e6:g}M" if big_events >= 1_000_000 else f"{big_events:,}"
    sides = ["empty", label]
    runs: dict[str, list[bc.IngestRun]] = {s: [] for s in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side} database")
        db = work / f"{i}.db"
        if side != "empty":
            bc.copy_db(big, db)
        run = bc.tracker_ingest_run(
            db,
            bodies,
            warm,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            threads=args.threads,
        )
        bc.remove_db(db)
        runs[side].append(run)
        if not run.check["ok"]:
            bc.log(f"  CHECK FAILED: {run.check['problems']}")
    load1 = os.getloadavg()

    def col(side: str, attr: str) -> list[float]:
        return [getattr(r.wrk, attr) for r in runs[side]]

    def fp(side: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in runs[side]]

    rows = [
        [
            f"{side} database",
            bc.spread(col(side, "rps")),
            bc.spread(col(side, "p50_ms"), "{:.2f}"),
            bc.spread(col(side, "p99_ms"), "{:.2f}"),
            "ok" if all(r.check["ok"] for r in runs[side]) else "FAILED",
        ]
        for side in sides
    ]
    ratio = bc.med(col(label, "rps")) / bc.med(col("empty", "rps"))
    paired = [a / b for a, b in zip(col(label, "rps"), col("empty", "rps"), strict=False)]
    p99 = bc.med(col(label, "p99_ms")) / bc.med(col("empty", "p99_ms"))
    fp_rows = []
    for side in sides:
        idle, rss, hwm, ready = (
            bc.med(fp(side, "idle_rss_mb")),
            bc.med(fp(side, "rss_mb")),
            bc.med(fp(side, "hwm_mb")),
            bc.med(fp(side, "ready_s")),
        )
        fp_rows += [
            [
                f"idle RSS, {side} db (MB)",
                bc.spread(fp(side, "idle_rss_mb"), "{:.1f}"),
                "<= 60",
                bc.verdict(idle <= 60),
            ],
            [
                f"RSS after the run, {side} db (MB)",
                bc.spread(fp(side, "rss_mb"), "{:.1f}"),
                "<= 120",
                bc.verdict(rss <= 120),
            ],
            [
                f"peak RSS (VmHWM), {side} db (MB)",
                bc.spread(fp(side, "hwm_mb"), "{:.1f}"),
                "<= 120",
                bc.verdict(hwm <= 120),
            ],
            [
                f"start -> /readyz 200, {side} db (s)",
                bc.spread(fp(side, "ready_s"), "{:.2f}"),
                "<= 1.5",
                bc.verdict(ready <= 1.5),
            ],
        ]
    print(
        f"## Scale: ingest on a {big_events:,}-event database vs an empty one, "
        f"{args.connections} connections, {args.duration:g} s x {args.runs} runs per side "
        "(median (min-max))"
    )
    print()
    print(bc.table(["database", "req/s", "p50 ms", "p99 ms", "no silent loss"], rows))
    print()
    print(
        bc.table(
            ["ratio (medians)", "value", "target", "verdict"],
            [
                [
                    f"req/s {label} / empty",
                    f"{ratio:.2f} ({bc.spread(paired, '{:.2f}')} per round)",
                    ">= 0.90",
                    bc.verdict(ratio >= 0.90),
                ],
                [f"p99 {label} / empty", f"{p99:.2f}", "(none)", "-"],
            ],
        )
    )
    print()
    print("## Footprint (tracker serve, one worker)")
    print()
    print(bc.table(["measure", "median (min-max)", "target", "verdict"], fp_rows))
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    ok = all(r.check["ok"] for rs in runs.values() for r in rs)
    summary: dict[str, Any] = {
        "rps_ratio": ratio,
        "p99_ratio": p99,
        **{
            side: {k: bc.med(fp(side, k)) for k in ("idle_rss_mb", "rss_mb", "hwm_mb", "ready_s")}
            for side in sides
        },
    }
    bc.save_results(
        "scale-smoke" if args.smoke else "scale",
        {
            "machine": bc.machine(),
            "args": vars(args),
            "db": str(big),
            "load": [load0, load1],
            "runs": {
                s: [
                    {
                        "rps": r.wrk.rps,
                        "p50_ms": r.wrk.p50_ms,
                        "p99_ms": r.wrk.p99_ms,
                        "ready_s": r.ready_s,
                        "idle_rss_mb": r.idle_rss_mb,
                        "rss_mb": r.rss_mb,
                        "hwm_mb": r.hwm_mb,
                        "check": r.check,
                    }
                    for r in rs
                ]
                for s, rs in runs.items()
            },
            "summary": summary,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
