"""Benchmark 1: ingest throughput and latency of ``POST /callbacks`` against a bare Starlette app.

wrk (64 keep-alive connections, one thread) posts unique, realistic Bandwidth callbacks (v1 and
v2 call flows, pre-generated into bench-out/bodies/) - every request a different event - to

* ``tracker serve`` (one worker, a fresh empty database per run, ``synchronous`` normal and/or
  full), and
* ``scripts/bare_app.py``: Starlette on the same uvicorn settings, answering 204 unread,

interleaved (bare, tracker, tracker-full, bare, ...), each run after a short warm-up with other
bodies. After every tracker run the server is stopped and the database checked: each seq
acknowledged with a 200 is a distinct new row, and the rows added are the 200s plus at most the
requests that were in flight when wrk stopped (no silent loss); no non-2xx, no socket errors.

    .venv/bin/python scripts/bench_ingest.py                 # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_ingest.py --synchronous full
    .venv/bin/python scripts/bench_ingest.py --smoke         # a few seconds: does it all work

Targets (issue 14, same run): tracker >= 0.35x bare req/s and p99 <= 2.5x bare p99; full >= 0.30x
bare req/s. ``--before DIR`` adds another checkout's tracker (normal), same run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bench_common as bc


def main() -> int:
    parser = bc.wrk_parser(__doc__, "one short run per side")
    parser.add_argument("--bodies", type=int, default=250_000, help="unique bodies in the file")
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full", "both"],
        default="both",
        help="the tracker's storage.synchronous (both: interleave the two)",
    )
    parser.add_argument(
        "--before", metavar="DIR", help="also this checkout's tracker (synchronous normal)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.warmup, args.bodies = 1, 1.0, 0.0, 20_000
    bc.need_wrk()
    load0 = os.getloadavg()
    bodies = bc.bodies_file(args.bodies)
    warm = bc.bodies_file(20_000, seed="warmup")
    work = bc.workdir("ingest")
    modes = ["normal", "full"] if args.synchronous == "both" else [args.synchronous]
    sides = ["bare", *(f"tracker-{m}" for m in modes)]
    if args.before:
        sides.append("before-normal")
    results: dict[str, list[Any]] = {s: [] for s in sides}
    checks: dict[str, list[dict[str, Any]]] = {s: [] for s in sides if s != "bare"}
    wal: dict[str, list[tuple[float, float]]] = {s: [] for s in sides if s != "bare"}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        if side == "bare":
            res = bc.bare_ingest_run(
                bodies,
                duration=args.duration,
                warmup=args.warmup,
                connections=args.connections,
                threads=args.threads,
            )
            results[side].append(res)
            continue
        db = work / f"{side}-{i}.db"
        run = bc.tracker_ingest_run(
            db,
            bodies,
            warm,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            threads=args.threads,
            synchronous=side.split("-")[1],
            tree=args.before if side.startswith("before") else None,
        )
        bc.remove_db(db)
        results[side].append(run.wrk)
        checks[side].append(run.check)
        wal[side].append((run.wal_peak_mb, run.wal_end_mb))
        if not run.check["ok"]:
            bc.log(f"  CHECK FAILED: {run.check['problems']}")
    load1 = os.getloadavg()

    def col(side: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in results[side]]

    rows = []
    for side in sides:
        rows.append(
            [
                side,
                bc.spread(col(side, "rps")),
                bc.spread(col(side, "p50_ms"), "{:.2f}"),
                bc.spread(col(side, "p99_ms"), "{:.2f}"),
                sum(col(side, "requests")),
            ]
        )
    ratio_rows = []
    summary: dict[str, Any] = {}
    targets = {"normal": 0.35, "full": 0.30}
    if args.before:
        rps0 = bc.med(col("before-normal", "rps")) / bc.med(col("bare", "rps"))
        ratio_rows.append(["normal: req/s before / bare", f"{rps0:.2f}", "(none)", "-"])
        summary["before-normal"] = {"rps_ratio": rps0}
    for m in modes:
        t = f"tracker-{m}"
        rps = bc.med(col(t, "rps")) / bc.med(col("bare", "rps"))
        paired = [a / b for a, b in zip(col(t, "rps"), col("bare", "rps"), strict=False)]
        p99 = bc.med(col(t, "p99_ms")) / bc.med(col("bare", "p99_ms"))
        paired99 = [a / b for a, b in zip(col(t, "p99_ms"), col("bare", "p99_ms"), strict=False)]
        ratio_rows.append(
            [
                f"{m}: req/s tracker / bare",
                f"{rps:.2f} ({bc.spread(paired, '{:.2f}')} per round)",
                f">= {targets[m]:.2f}",
                bc.verdict(rps >= targets[m]),
            ]
        )
        ratio_rows.append(
            [
                f"{m}: p99 tracker / bare",
                f"{p99:.1f} ({bc.spread(paired99, '{:.1f}')} per round)",
                "<= 2.5" if m == "normal" else "(none)",
                bc.verdict(p99 <= 2.5) if m == "normal" else "-",
            ]
        )
        summary[m] = {"rps_ratio": rps, "p99_ratio": p99}
    check_rows = []
    all_ok = True
    for side, cs in checks.items():
        ok = all(c["ok"] for c in cs)
        all_ok &= ok
        check_rows.append(
            [
                side,
                sum(c["n200"] for c in cs),
                sum(c["added"] for c in cs),
                sum(c["in_flight_at_stop"] for c in cs),
                sum(c["non2xx"] for c in cs),
                sum(c["socket_errors"] for c in cs),
                "ok" if ok else "; ".join(p for c in cs for p in c["problems"]),
            ]
        )
    title = (
        f"## Ingest: POST /callbacks, {args.connections} connections, "
        f"{args.duration:g} s x {args.runs} runs per side (median (min-max))"
    )
    print(title)
    print()
    print(bc.table(["side", "req/s", "p50 ms", "p99 ms", "requests"], rows))
    print()
    print(bc.table(["ratio (medians)", "value", "target", "verdict"], ratio_rows))
    print()
    print(
        bc.table(
            [
                "no silent loss",
                "200s",
                "rows added",
                "in flight at stop",
                "non-2xx",
                "socket errors",
                "check",
            ],
            check_rows,
        )
    )
    print()
    wal_rows = [
        [
            side,
            bc.spread([w[0] for w in ws], "{:.1f}"),
            bc.spread([w[1] for w in ws], "{:.1f}"),
        ]
        for side, ws in wal.items()
    ]
    print(bc.table(["-wal file (sampled)", "peak MB", "at the end of the run MB"], wal_rows))
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_wrk_results(
        "ingest", args, [load0, load1], results, checks=checks, summary=summary, wal=wal
    )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
