"""``tracker serve`` with parts of a request's path switched off: the benchmarks' ceilings.

    .venv/bin/python scripts/whatif_serve.py nostore  serve --port 0 --db X.db
    .venv/bin/python scripts/whatif_serve.py httponly serve --port 0 --db X.db
    WHATIF_VIEW_FILE=view.json .venv/bin/python scripts/whatif_serve.py constview serve ...

* ``nostore``: every request is read and parsed as usual (decode, validation, content key,
  fact), but the writer answers at once with a made-up seq: no SQLite, no fold, no commit.
* ``nosql``: everything as usual up to SQLite: the writer thread takes the batches, folds every
  event into its call's state and builds each touched call's row, and the answers go back
  through the same futures and metrics, but no statement runs (seq and call keys are counted
  in memory): what the tracker would cost if SQLite were free.
* ``httponly``: the body is read, nothing is parsed or stored.
* ``constview``: ``GET /calls/{callId}`` answers the bytes of ``$WHATIF_VIEW_FILE`` for every id,
  without the SQLite lookup and the rendering (scripts/bench_query.py's ceiling).
* ``plain-http``: everything as usual, but on uvicorn's own httptools protocol, without the
  limits on request heads and connections of ``tracker/http/protocol.py`` (scripts/attack_heads.py).

Never a way to run the service: it acknowledges events it does not keep. It exists to measure
how much of the bare app's speed each stage of the real paths leaves (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tracker.cli
import tracker.http.callbacks
import tracker.http.protocol
import tracker.http.queries
import tracker.records
import tracker.storage.sqlite.database
import tracker.storage.sqlite.writes
import tracker.writer
from tracker.state import evolve, initial_state
from tracker.storage.projection import row_of


def _no_sql(self: Any, groups: Sequence[Sequence[Any]], rejects: Sequence[Any]) -> Any:
    """The writer's transaction without SQLite: the fold and the rows, seq counted here."""
    states: dict[str, Any] = self.__dict__.setdefault("_whatif_states", {})
    seq = self.__dict__.get("_whatif_seq", 0)
    touched: dict[str, Any] = {}
    out = []
    for group in groups:
        res = []
        for e in group:
            seq += 1
            cid = e.call_id
            if cid is not None:
                cur = touched.get(cid) or states.get(cid) or initial_state(cid)
                touched[cid] = evolve(cur, e.fact, seq, e.received_at)
            res.append(tracker.records.Appended(seq, False))
        out.append(res)
    for cid, state in touched.items():
        row_of(state, self.outcomes)
        states[cid] = state
    if len(states) > 20_000:  # as the writer's own cache of calls
        states.clear()
    self._whatif_seq = seq
    return out


def main() -> int:
    what, args = sys.argv[1], sys.argv[2:]
    if what not in ("nostore", "nosql", "httponly", "constview", "plain-http"):
        sys.exit(f"unknown what-if {what!r}: nostore, nosql, httponly, constview or plain-http")
    if what == "plain-http":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        tracker.http.protocol.protocol_class = lambda server: HttpToolsProtocol  # type: ignore[assignment,return-value]
        return tracker.cli.main(args)
    if what == "constview":  # GET /calls/{id}: no lookup, no render; the body of a real call
        view = Path(os.environ["WHATIF_VIEW_FILE"]).read_bytes()
        storage = tracker.storage.sqlite.database.SqliteStorage
        storage.call = lambda self, call_id: True  # type: ignore[assignment,method-assign,return-value]
        tracker.http.queries.call_json = lambda record: view  # type: ignore[assignment]
        return tracker.cli.main(args)

    if what == "nosql":
        tracker.storage.sqlite.writes.Appender._transaction = _no_sql  # type: ignore[method-assign]
        return tracker.cli.main(args)

    async def submit(self: Any, entries: Sequence[Any], rejects: Sequence[Any] = ()) -> Any:
        return [tracker.records.Appended(0, False)] * len(entries)

    tracker.writer.Writer.submit = submit  # type: ignore[method-assign]
    if what == "httponly":

        def parse_entries(body: bytes, kind: str, max_batch: int) -> Any:
            return [None], False

        tracker.http.callbacks.parse_entries = parse_entries  # type: ignore[assignment]
    return tracker.cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
