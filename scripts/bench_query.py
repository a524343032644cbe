"""Benchmark 4: the query API on a 300,000-call database versus constant-JSON Starlette routes.

* ``GET /calls/{callId}`` with ids picked at random (wrk Lua, from a file of every call id),
  against the bare app's ``GET /calls/{call_id}`` route (a path parameter) answering a constant
  JSON body: a real view of the same database, so the bytes on the wire match;
* ``GET /calls?outcome=busy`` pages (keyset cursors: every page boundary, picked at random),
  against the bare app's ``GET /calls`` answering a real first page.

The database is a working copy of scripts/gen_db.py's cached 1M-event / ~300k-call file. Both
servers stay up for the whole benchmark (reads change nothing); each endpoint is warmed up once,
then runs are interleaved (bare id, tracker id, bare list, tracker list, ...). Every answer must
be a 200.

    .venv/bin/python scripts/bench_query.py            # 5 runs x 10 s per side
    .venv/bin/python scripts/bench_query.py --smoke    # tiny database, a few seconds

A third server, ``nolookup`` (scripts/whatif_serve.py constview), is ``tracker serve`` with the
lookup and the rendering of ``GET /calls/{callId}`` switched off (it answers the same view for
every id): the ceiling of the by-id route, i.e. what is left for SQLite and the render.

``--before DIR`` adds ``tracker serve`` from another checkout (by id only), same run.

Target (issue 14): by id >= 0.70x the constant-JSON route's req/s (the list has no target:
shown for scale).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any
from urllib.parse import quote

import bench_common as bc


def main() -> int:
    parser = bc.wrk_parser(__doc__, "tiny database, one short run", warmup=2.0)
    parser.add_argument("--events", type=int, default=bc.DB_EVENTS)
    parser.add_argument("--calls", type=int, default=bc.DB_CALLS)
    parser.add_argument("--outcome", default="busy", help="the list filter (outcome=...)")
    parser.add_argument("--before", metavar="DIR", help="also by id from this checkout's tracker")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.warmup = 1, 1.0, 0.0
        args.events, args.calls = bc.SMOKE_DB_EVENTS, bc.SMOKE_DB_CALLS
    bc.need_wrk()
    src = bc.ensure_db(args.events, args.calls, quiet=args.smoke)
    work = bc.workdir("query")
    db = bc.copy_db(src, work / "query.db")

    conn = sqlite3.connect(db)
    ids = [r[0] for r in conn.execute("SELECT call_id FROM calls")]
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT last_seq FROM calls WHERE outcome = ? ORDER BY last_seq DESC", (args.outcome,)
        )
    ]
    conn.close()
    id_paths = work / "ids.txt"
    id_paths.write_text("".join(f"/calls/{quote(i, safe='')}\n" for i in ids))
    base = f"/calls?outcome={args.outcome}"
    pages = [base] + [f"{base}&cursor={seqs[k]}" for k in range(99, len(seqs) - 1, 100)]
    page_paths = work / "pages.txt"
    page_paths.write_text("".join(p + "\n" for p in pages))

    tracker = bc.start_tracker(db)
    bare = nolookup = before = None
    try:
        # the bare routes answer real bodies of this database: the median-sized view, page one
        by_len = sorted(ids[:: max(1, len(ids) // 2000)], key=len)
        status, view = bc.http_get(tracker.port, f"/calls/{quote(by_len[len(by_len) // 2])}")
        status2, page = bc.http_get(tracker.port, base)
        assert status == 200 and status2 == 200, (status, status2)
        (work / "view.json").write_bytes(view)
        (work / "page.json").write_bytes(page)
        bare = bc.start_bare(view_file=work / "view.json", page_file=work / "page.json")
        nolookup = bc.start_whatif("constview", db, WHATIF_VIEW_FILE=str(work / "view.json"))
        servers = {"bare": bare, "tracker": tracker, "nolookup": nolookup}
        if args.before:
            before = bc.start_tracker(db, tree=args.before)
            servers["before"] = before
        endpoints = {"id": id_paths, "list": page_paths}
        if args.warmup > 0:
            for ep, paths in endpoints.items():
                for name, srv in servers.items():
                    if name in ("nolookup", "before") and ep != "id":
                        continue
                    bc.log(f"warm-up: {name} {ep}")
                    bc.run_wrk(
                        srv.url,
                        "get_random.lua",
                        [str(paths)],
                        duration=args.warmup,
                        connections=args.connections,
                        threads=args.threads,
                    )
        load0 = os.getloadavg()
        sides = [
            f"{name}-{ep}"
            for ep in endpoints
            for name in servers
            if not (name in ("nolookup", "before") and ep != "id")
        ]
        results: dict[str, list[bc.WrkResult]] = {s: [] for s in sides}
        memory: dict[str, list[dict[str, float]]] = {s: [] for s in sides if "tracker-" in s}
        for i, side in bc.interleave(sides, args.runs):
            name, ep = side.split("-")
            bc.log(f"run {i + 1}/{args.runs}: {side}")
            results[side].append(
                bc.run_wrk(
                    servers[name].url,
                    "get_random.lua",
                    [str(endpoints[ep])],
                    duration=args.duration,
                    connections=args.connections,
                    threads=args.threads,
                )
            )
            if name == "tracker":
                memory[side].append(tracker.memory())
        load1 = os.getloadavg()
    finally:
        tracker.stop()
        for srv in (bare, nolookup, before):
            if srv is not None:
                srv.stop()

    def col(side: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in results[side]]

    bad = {
        s: sum(
            r.non2xx + r.socket_errors + sum(n for c, n in r.codes.items() if c != 200) for r in rs
        )
        for s, rs in results.items()
    }
    rows = [
        [
            side,
            bc.spread(col(side, "rps")),
            bc.spread(col(side, "p50_ms"), "{:.2f}"),
            bc.spread(col(side, "p99_ms"), "{:.2f}"),
            sum(col(side, "requests")),
            bad[side],
        ]
        for side in sides
    ]
    summary: dict[str, Any] = {}
    ratio_rows = []
    for ep, target in (("id", 0.70), ("list", None)):
        r = bc.med(col(f"tracker-{ep}", "rps")) / bc.med(col(f"bare-{ep}", "rps"))
        paired = [
            a / b
            for a, b in zip(col(f"tracker-{ep}", "rps"), col(f"bare-{ep}", "rps"), strict=False)
        ]
        p99 = bc.med(col(f"tracker-{ep}", "p99_ms")) / bc.med(col(f"bare-{ep}", "p99_ms"))
        summary[ep] = {"rps_ratio": r, "p99_ratio": p99}
        what = "GET /calls/{id}" if ep == "id" else f"GET {base}&cursor="
        ratio_rows.append(
            [
                f"{what}: req/s tracker / bare",
                f"{r:.2f} ({bc.spread(paired, '{:.2f}')} per round)",
                f">= {target:.2f}" if target else "(none)",
                bc.verdict(r >= target) if target else "-",
            ]
        )
        ratio_rows.append([f"{what}: p99 tracker / bare", f"{p99:.1f}", "(none)", "-"])
        if ep == "id":
            ceiling = bc.med(col("nolookup-id", "rps")) / bc.med(col("bare-id", "rps"))
            summary["id"]["nolookup_ratio"] = ceiling
            if args.before:
                r0 = bc.med(col("before-id", "rps")) / bc.med(col("bare-id", "rps"))
                summary["id"]["before_ratio"] = r0
                ratio_rows.append([f"{what}: before / bare", f"{r0:.2f}", "(none)", "-"])
            ratio_rows.append(
                [
                    f"{what}: nolookup / bare (the ceiling: no SQLite, no render)",
                    f"{ceiling:.2f}",
                    "(none)",
                    "-",
                ]
            )
    print(
        f"## Query: {len(ids):,} calls, {args.connections} connections, {args.duration:g} s x "
        f"{args.runs} runs per side (median (min-max))"
    )
    print()
    print(
        f"Bodies: a view is {len(view)} bytes, a page of {args.outcome} calls {len(page):,} "
        f"bytes; {len(pages)} pages of {len(seqs):,} {args.outcome} calls."
    )
    print()
    print(bc.table(["side", "req/s", "p50 ms", "p99 ms", "requests", "non-200"], rows))
    print()
    print(bc.table(["ratio (medians)", "value", "target", "verdict"], ratio_rows))
    print()
    mem_rows = []
    for side, ms in memory.items():
        mem_rows.append(
            [
                side,
                " / ".join(f"{m['rss_mb']:,.0f}" for m in ms),
                " / ".join(f"{m['anon_mb']:,.0f}" for m in ms),
                f"{max(m['hwm_mb'] for m in ms):,.0f}",
                max(int(m["threads"]) for m in ms),
            ]
        )
    print("Tracker memory after each run (MB; the server stays up across runs, in run order):")
    print()
    print(bc.table(["after", "RSS", "of which anonymous", "peak RSS", "threads"], mem_rows))
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_results(
        "query-smoke" if args.smoke else "query",
        {
            "machine": bc.machine(),
            "args": vars(args),
            "db": str(src),
            "load": [load0, load1],
            "runs": {
                s: [r.__dict__ | {"seqs": 0, "raw": ""} for r in rs] for s, rs in results.items()
            },
            "summary": summary,
            "memory": memory,
        },
    )
    return 0 if not any(bad.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
