"""Benchmark 3: ``tracker replay`` of 1,000,000 events versus reading and decoding the same log.

* tracker: ``python -m tracker replay --db COPY`` (folds the log, compares it with the stored
  projection and rewrites what differs: on the benchmark's healthy copy, nothing). ``--direct``
  calls ``Store.replay()`` in a subprocess instead (for a tree whose CLI is not ready).
* ``--rebuild``: also ``tracker replay --rebuild`` (every call folded into a new table, indexes
  built once at the end, swapped in: what a replay does when many calls differ).
* ``--one``: also ``tracker replay --jobs 1`` (the comparing pass in one process; the default
  shares a large log's between two, see BENCHMARKS.md). The CPU seconds of every side include
  its child processes' (``os.wait4``); peak RSS is the largest single process's.
* ``--before DIR``: also the same command run from another checkout (``git worktree`` or
  ``git archive`` of an older commit), same run, for a before/after.
* baseline: a subprocess that reads every row with plain sqlite3 (``SELECT body FROM events
  ORDER BY seq``) and decodes each body with msgspec into a Struct holding the fields of a typical
  callback: the least any replay has to do.

Both run on the same working copy of the cached gen_db database, each in its own subprocess,
interleaved (baseline, replay, baseline, ...). Wall time from spawn to exit, and the child's peak
RSS (``ru_maxrss`` from ``os.wait4``).

    .venv/bin/python scripts/bench_replay.py            # 5 runs per side
    .venv/bin/python scripts/bench_replay.py --smoke    # tiny database, a few seconds

Targets (issue 14): replay time <= 3x the baseline's; replay peak RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc
import msgspec


class TypicalEvent(msgspec.Struct):
    """The fields of a typical Bandwidth callback (v1 and v2), as a replay would need them."""

    eventType: str
    callId: str | None = None
    time: str | None = None
    eventTime: str | None = None
    callState: str | None = None
    direction: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    startTime: str | None = None
    answerTime: str | None = None
    endTime: str | None = None
    cause: str | None = None
    errorMessage: str | None = None
    tag: str | None = None
    parentCallId: str | None = None


def baseline_worker(db: str) -> None:
    decode = msgspec.json.Decoder(TypicalEvent).decode
    conn = sqlite3.connect(db)
    n = 0
    t0 = time.perf_counter()
    for (body,) in conn.execute("SELECT body FROM events ORDER BY seq"):
        decode(body)
        n += 1
    conn.close()
    print(f"baseline: decoded {n} events in {time.perf_counter() - t0:.2f}s")


def direct_worker(db: str) -> None:
    sys.path.insert(0, str(bc.ROOT))
    from tracker.storage.sqlite import SqliteStorage as Store

    store = Store(db)
    t0 = time.perf_counter()
    try:
        store.replay()
        n, _events = store.counts()
    finally:
        store.close()
    print(f"replay: rebuilt {n} calls in {time.perf_counter() - t0:.2f}s")


def run_child(cmd: list[str], out: Path, cwd: str | None = None) -> dict[str, Any]:
    """Spawn, wait with ``os.wait4`` (this child's own rusage), time it."""
    env = bc.clean_env()
    if cwd is not None:  # that checkout's tracker package, not this one's
        env["PYTHONPATH"] = cwd
    with out.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    m = re.search(r"in ([\d.]+)s", text)
    return {
        "wall_s": wall,
        "inner_s": float(m.group(1)) if m else None,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rc": proc.returncode,
        "output": text.strip()[-500:],
    }


def cli_ready() -> bool:
    probe = subprocess.run(
        [bc.PY, "-m", "tracker", "replay", "--help"], capture_output=True, env=bc.clean_env()
    )
    return probe.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny database, one run per side")
    parser.add_argument("--runs", type=int, default=5, help="runs per side (>= 5)")
    parser.add_argument("--events", type=int, default=bc.DB_EVENTS)
    parser.add_argument("--calls", type=int, default=bc.DB_CALLS)
    parser.add_argument("--direct", action="store_true", help="Store.replay(), not the CLI")
    parser.add_argument("--rebuild", action="store_true", help="also `tracker replay --rebuild`")
    parser.add_argument("--before", metavar="DIR", help="also replay from this checkout")
    parser.add_argument(
        "--one", action="store_true", help="also `tracker replay --jobs 1` (one process)"
    )
    parser.add_argument("--worker-baseline", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--worker-direct", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_baseline:
        baseline_worker(args.worker_baseline)
        return 0
    if args.worker_direct:
        direct_worker(args.worker_direct)
        return 0
    if args.smoke:
        args.runs, args.events, args.calls = 1, bc.SMOKE_DB_EVENTS, bc.SMOKE_DB_CALLS
    src = bc.ensure_db(args.events, args.calls, quiet=args.smoke)
    work = bc.workdir("replay")
    db = bc.copy_db(src, work / "replay.db")
    n_events, _ = bc.count_events(db)
    direct = args.direct or not cli_ready()
    me = str(Path(__file__).resolve())
    cmds = {
        "baseline": [bc.PY, me, "--worker-baseline", str(db)],
        "replay": [bc.PY, me, "--worker-direct", str(db)]
        if direct
        else [bc.PY, "-m", "tracker", "replay", "--db", str(db)],
    }
    cwds: dict[str, str | None] = {"baseline": None, "replay": None}
    if args.rebuild:
        cmds["rebuild"] = [bc.PY, "-m", "tracker", "replay", "--rebuild", "--db", str(db)]
        cwds["rebuild"] = None
    if args.one:
        cmds["replay-jobs1"] = [bc.PY, "-m", "tracker", "replay", "--jobs", "1", "--db", str(db)]
        cwds["replay-jobs1"] = None
    if args.before:
        cmds["before"] = [bc.PY, "-m", "tracker", "replay", "--db", str(db)]
        cwds["before"] = str(Path(args.before).resolve())
    sides = list(cmds)
    load0 = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for i, side in bc.interleave(sides, args.runs):
        bc.log(f"run {i + 1}/{args.runs}: {side}")
        r = run_child(cmds[side], work / f"{side}-{i}.out", cwds[side])
        if r["rc"] != 0:
            print(f"{side} failed (exit {r['rc']}):\n{r['output']}", file=sys.stderr)
            return 1
        results[side].append(r)
    load1 = os.getloadavg()

    def col(side: str, key: str) -> list[float]:
        return [r[key] for r in results[side]]

    ratio = bc.med(col("replay", "wall_s")) / bc.med(col("baseline", "wall_s"))
    paired = [
        a / b for a, b in zip(col("replay", "wall_s"), col("baseline", "wall_s"), strict=False)
    ]
    rss = bc.med(col("replay", "maxrss_mb"))
    how = "Store.replay() in a subprocess" if direct else "python -m tracker replay"
    print(f"## Replay: {n_events:,} events ({how}) vs read + msgspec decode (median (min-max))")
    print()
    print(
        bc.table(
            ["side", "wall s", "CPU s", "peak RSS MB", "its own timer s"],
            [
                [
                    side,
                    bc.spread(col(side, "wall_s"), "{:.2f}"),
                    bc.spread(col(side, "cpu_s"), "{:.2f}"),
                    bc.spread(col(side, "maxrss_mb"), "{:.1f}"),
                    bc.spread([x for x in col(side, "inner_s") if x is not None], "{:.2f}"),
                ]
                for side in sides
            ],
        )
    )
    print()

    def vs_baseline(side: str) -> list[str]:
        r = bc.med(col(side, "wall_s")) / bc.med(col("baseline", "wall_s"))
        per = [a / b for a, b in zip(col(side, "wall_s"), col("baseline", "wall_s"), strict=False)]
        return [f"{side} / baseline wall time", f"{r:.2f} ({bc.spread(per, '{:.2f}')} per round)"]

    print(
        bc.table(
            ["measure", "value", "target", "verdict"],
            [
                [
                    "replay / baseline wall time",
                    f"{ratio:.2f} ({bc.spread(paired, '{:.2f}')} per round)",
                    "<= 3",
                    bc.verdict(ratio <= 3),
                ],
                *[[*vs_baseline(side), "", ""] for side in sides[2:]],
                *[
                    [
                        f"{side} / baseline CPU time (steadier than wall on a loaded host)",
                        f"{bc.med(col(side, 'cpu_s')) / bc.med(col('baseline', 'cpu_s')):.2f}",
                        "",
                        "",
                    ]
                    for side in sides[1:]
                ],
                ["replay peak RSS (MB)", f"{rss:.1f}", "<= 200", bc.verdict(rss <= 200)],
                ["replay events/s", f"{n_events / bc.med(col('replay', 'wall_s')):,.0f}", "", ""],
            ],
        )
    )
    print()
    print(f"_{bc.load_note(load0, load1)}_")
    bc.save_results(
        "replay-smoke" if args.smoke else "replay",
        {
            "machine": bc.machine(),
            "args": vars(args),
            "db": str(src),
            "events": n_events,
            "load": [load0, load1],
            "runs": results,
            "summary": {"time_ratio": ratio, "replay_maxrss_mb": rss},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
