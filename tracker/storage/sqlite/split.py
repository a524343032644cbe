"""Replay's compare pass over a range of ``call_key``s, and the same in a second process: with
``jobs = 2`` the upper half of the keys is folded and compared by a fresh interpreter
(:func:`child`) while this one does the lower half. Wall time, not CPU: both halves together
cost what one pass does, plus the second interpreter's start (BENCHMARKS.md).

The child opens a connection of its own (never one inherited across a fork: SQLite forbids it)
and works in one snapshot of its own, as consistent as the parent's; it sends back its snapshot's
last ``seq`` and its differences, or ``None`` beyond ``limit``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from tracker.state import CallState
from tracker.storage.interface import Progress
from tracker.storage.projection import CALL_COLUMNS, Difference, differences, fold_rows
from tracker.storage.sqlite.schema import connect

#: Below this many calls the second interpreter's start costs more than half a pass saves.
SPLIT_MIN: Final = 50_000
KEY_MIN: Final = -(1 << 63)
KEY_MAX: Final = (1 << 63) - 1

_EVENTS = (
    "SELECT call_key, seq, call_id, fact, received_at FROM events"
    " WHERE call_key BETWEEN ? AND ? AND seq <= ? ORDER BY call_key, seq"
)
_STORED = (
    f"SELECT call_key, {CALL_COLUMNS} FROM calls WHERE call_key BETWEEN ? AND ? ORDER BY call_key"
)

# (the child's snapshot's max seq, its differences or None: too many)
_Found = tuple[int, list[tuple[int, CallState | None, list[Any] | None, list[Any] | None]] | None]
_enc = msgspec.msgpack.Encoder()
_found_dec = msgspec.msgpack.Decoder(_Found)


def range_differences(
    reader: Any,
    max_seq: int,
    outcomes: Mapping[str, str],
    lo: int = KEY_MIN,
    hi: int = KEY_MAX,
    progress: Progress | None = None,
    total: int = 0,
) -> Iterator[Difference]:
    """The differing calls with ``lo <= call_key <= hi``, in ``call_key`` order, in ``reader``'s
    snapshot (an open read transaction)."""
    folded = fold_rows(reader.execute(_EVENTS, (lo, hi, max_seq)))
    stored = reader.execute(_STORED, (lo, hi))
    return differences(folded, stored, outcomes, progress, total)


def split_key(reader: Any, total: int) -> int:
    """The ``call_key`` that starts the upper half of the stored calls."""
    row = reader.execute(
        "SELECT call_key FROM calls ORDER BY call_key LIMIT 1 OFFSET ?", (total // 2,)
    ).fetchone()
    return int(row[0]) if row is not None else KEY_MAX


def file_of(conn: Any) -> str:
    """The file ``conn`` has open ("" for an in-memory database)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return str(file or "")
    return ""


def busy_ms_of(conn: Any) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


class Half:
    """The upper half's pass in a second interpreter: started at once, read by :meth:`result`."""

    def __init__(
        self, path: str, busy_ms: int, outcomes: Mapping[str, str], lo: int, limit: int | None
    ) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])  # this very tracker package, not another
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tracker.storage.sqlite.split import child; child()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None
        try:  # a few hundred bytes: the pipe holds them, the child starts at once
            self.proc.stdin.write(_enc.encode((path, busy_ms, dict(outcomes), lo, limit)))
            self.proc.stdin.close()
        except OSError:
            pass  # it died: result() says so

    def result(self) -> tuple[int, list[Difference] | None] | None:
        """(its snapshot's max seq, its differences or None: too many), or None if it failed."""
        try:
            assert self.proc.stdout is not None
            out = self.proc.stdout.read()
            self.proc.stdout.close()
            self.proc.wait()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        if self.proc.returncode != 0:
            return None
        try:
            max_seq, found = _found_dec.decode(out)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if found is None:
            return max_seq, None
        return max_seq, [
            (k, s, None if w is None else tuple(w), None if g is None else tuple(g))
            for k, s, w, g in found
        ]

    def stop(self) -> None:
        """End it if it still runs (its answer no longer needed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def child() -> None:
    """The second process: its request on stdin, its answer on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this one
    path, busy_ms, outcomes, lo, limit = msgspec.msgpack.decode(sys.stdin.buffer.read())
    conn = connect(path, busy_ms=busy_ms)
    conn.execute("BEGIN")  # one snapshot for the whole pass
    max_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    found: list[Difference] | None = []
    for d in range_differences(conn, max_seq, outcomes, lo, KEY_MAX):
        assert found is not None
        found.append(d)
        if limit is not None and len(found) > limit:
            found = None
            break
    conn.execute("COMMIT")
    conn.close()
    sys.stdout.buffer.write(_enc.encode((max_seq, found)))
