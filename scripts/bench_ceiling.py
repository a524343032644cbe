"""What-if ceilings of ingest: how much of the bare app's speed each stage of the path leaves.

Same load as benchmark 1 (wrk, 64 keep-alive connections, unique realistic callbacks), in one
run, interleaved, against:

* ``bare``: scripts/bare_app.py (Starlette, 204, body unread), the baseline;
* ``httponly``: ``tracker serve`` reading each body and answering ``{"seq":0,...}`` without
  parsing or storing it (scripts/whatif_serve.py);
* ``nostore``: the same, parsing as usual (JSON, typed decode, content key, fact) but storing
  nothing;
* ``nosql``: ``tracker serve`` as built up to SQLite: the writer thread, the fold and each
  call's row, the futures and metrics, but no statement and no commit;
* ``tracker``: ``tracker serve`` as built (synchronous normal).

    .venv/bin/python scripts/bench_ceiling.py                 # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_ceiling.py --smoke

Not a target of its own: it shows that the ingest target (0.80x bare) is out of reach of any
storage design once the event is parsed (BENCHMARKS.md, "Ceilings").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bench_common as bc

SIDES = ("bare", "httponly", "nostore", "nosql", "tracker")


def start(side: str, db: Path) -> bc.Server:
    if side == "bare":
        return bc.start_bare()
    if side == "tracker":
        return bc.start_tracker(db)
    return bc.start_whatif(side, db)


def main() -> int:
    parser = bc.wrk_parser(__doc__, "one short run per side")
    parser.add_argument("--bodies", type=int, default=250_000, help="unique bodies in the file")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.warmup, args.bodies = 1, 1.0, 0.0, 20_000
    bc.need_wrk()
    sides = [s for s in args.sides.split(",") if s]
    if "bare" not in sides or any(s not in SIDES for s in sides):
        sys.exit(f"--sides: a subset of {','.join(SIDES)} with bare in it")
    load0 = os.getloadavg()
    bodies = bc.bodies_file(args.bodies)
    work = bc.workdir("ceiling")
    results: dict[str, list[bc.WrkResult]] = {s: [] for s in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        db = work / f"{side}-{i}.db"
        srv = start(side, db)
        try:
            wrk = {"connections": args.connections, "threads": args.threads}
            if args.warmup > 0:
                bc.ingest_wrk(srv, bodies, args.warmup, **wrk)
            res = bc.ingest_wrk(srv, bodies, args.duration, **wrk)
        finally:
            srv.stop()
            bc.remove_db(db)
        if res.non2xx or res.socket_errors:
            bc.log(f"  {side}: {res.non2xx} non-2xx, {res.socket_errors} socket errors")
        results[side].append(res)
    load1 = os.getloadavg()
    bare = [r.rps for r in results["bare"]]
    rows = []
    summary: dict[str, Any] = {}
    for side in sides:
        rps = [r.rps for r in results[side]]
        per_round = [a / b for a, b in zip(rps, bare, strict=False)]
        ratio = bc.med(rps) / bc.med(bare)
        rows.append(
            [
                side,
                bc.spread(rps),
                bc.spread([r.p50_ms for r in results[side]], "{:.2f}"),
                bc.spread([r.p99_ms for r in results[side]], "{:.2f}"),
                f"{ratio:.2f} ({bc.spread(per_round, '{:.2f}')})",
                f"{1e6 / bc.med(rps):.0f}",
            ]
        )
        summary[side] = {"rps": bc.med(rps), "ratio": ratio}
    print(
        f"## Ingest ceilings: {args.connections} connections, "
        f"{args.duration:g} s x {args.runs} runs per side (median (min-max))"
    )
    print()
    header = ["side", "req/s", "p50 ms", "p99 ms", "/ bare (per round)", "µs per request"]
    print(bc.table(header, rows))
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_wrk_results("ceiling", args, [load0, load1], results, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
