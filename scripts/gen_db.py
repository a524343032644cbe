"""Build a tracker database of N realistic events through the tracker's own write path, fast.

Events come from the benchmark generator (v1 and v2 call flows, interleaved in time); each is
decoded with ``tracker.events.decode_object``, turned into an entry with
``tracker.ingest.make_entry`` and appended with ``SqliteStorage.write_batch`` in large groups (one
transaction per ``--group`` events), so the log, the dedupe index and the projection are exactly
what ``POST /callbacks`` would have written. Only the build connection runs without a journal,
with ``synchronous = OFF`` and a 1 GiB page cache (a crash while building leaves no cached file:
the result is renamed into place when complete).

    python scripts/gen_db.py --events 1000000 --calls 300000          # cached in bench-out/db/
    python scripts/gen_db.py --events 20000 --calls 6000 --out x.db   # a file of your own

The cache file name holds the size and a hash of the stored formats (see
``bench_common.format_key``), so reruns reuse it and a format change rebuilds it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc

sys.path.insert(0, str(bc.ROOT))

from tracker.events import decode_object, parse_json
from tracker.ingest import make_entry
from tracker.storage.sqlite import SqliteStorage as Store


def build(
    path: Path,
    events: int,
    calls: int,
    *,
    group: int = 5000,
    seed: str = "db",
    cache_mb: int = 1024,
) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    gen = bc.CallGen(seed, bc.EPOCH_DB, events_per_call=events / calls)
    store = Store(tmp)
    try:
        # the build only: no journal, no fsync, every index page in memory (the file is renamed
        # into place when complete, so a crash leaves nothing behind)
        store.conn.execute("PRAGMA journal_mode = OFF")
        store.conn.execute("PRAGMA synchronous = OFF")
        store.conn.execute(f"PRAGMA cache_size = {-cache_mb * 1024}")
        batch = []
        done = 0
        for ms, body in gen.stream(events):
            entry = make_entry(decode_object(parse_json(body)), body, "json", ms + 120)
            batch.append(entry)
            if len(batch) >= group:
                store.write_batch([batch])
                done += len(batch)
                batch = []
                if sys.stderr.isatty():
                    print(f"\rgen_db: {done:,} / {events:,}", end="", file=sys.stderr)
        if batch:
            store.write_batch([batch])
        n_events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        n_calls = store.conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    finally:
        store.close()  # checkpoints the WAL into the file
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file to copy
    conn.close()
    os.replace(tmp, path)
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr)
    return {
        "path": str(path),
        "events": n_events,
        "calls": n_calls,
        "seconds": round(time.perf_counter() - t0, 1),
        "bytes": path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=bc.DB_EVENTS)
    parser.add_argument("--calls", type=int, default=bc.DB_CALLS, help="about this many calls")
    parser.add_argument("--group", type=int, default=5000, help="events per transaction")
    parser.add_argument("--out", type=Path, help="write here instead of the bench-out/ cache")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args()
    path = args.out or bc.cached_db_path(args.events, args.calls)
    if path.exists() and not args.force:
        print(f"gen_db: {path} exists (cached); --force rebuilds it")
        return
    info = build(path, args.events, args.calls, group=args.group)
    if args.out is None:  # the same size cached for an older stored format is stale now
        for stale in path.parent.glob(f"tracker-{args.events}e-{args.calls}c-*.db"):
            if stale != path:
                stale.unlink(missing_ok=True)
    print(
        f"gen_db: {info['events']:,} events, {info['calls']:,} calls in {info['seconds']}s "
        f"-> {info['path']} ({info['bytes'] / 1e6:.0f} MB)"
    )


if __name__ == "__main__":
    main()
