"""``tracker serve`` with parts of a request's path switched off: the benchmarks' ceilings.

    .venv/bin/python scripts/whatif_serve.py nostore  serve --port 0 --db X.db
    .venv/bin/python scripts/whatif_serve.py httponly serve --port 0 --db X.db
    WHATIF_VIEW_FILE=view.json .venv/bin/python scripts/whatif_serve.py constview serve ...

* ``nostore``: every request is read and parsed as usual (decode, validation, content key,
  fact), but the writer answers at once with a made-up seq: no SQLite, no fold, no commit.
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
import tracker.writer


def main() -> int:
    what, args = sys.argv[1], sys.argv[2:]
    if what not in ("nostore", "httponly", "constview", "plain-http"):
        sys.exit(f"unknown what-if {what!r}: nostore, httponly, constview or plain-http")
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
