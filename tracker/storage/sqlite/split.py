"""Replay's compare pass over a range of ``call_key``s, and the same in a second process: with
``jobs = 2`` the upper half of the keys is folded and compared by a fresh interpreter
(:func:`child`) while this one does the lower half. Wall time, not CPU: both halves together
cost what one pass does, plus the second interpreter's start (BENCHMARKS.md).

The child opens a connection of its own (never one inherited across a fork: SQLite forbids it)
and works in one snapshot of its own, as consistent as the parent's; it sends back its snapshot's
last ``seq`` and its differences, or ``None`` beyond ``limit``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from tracker.records import Drift
from tracker.state import CallState
from tracker.storage.interface import Progress
from tracker.storage.projection import CALL_COLUMNS, Difference, differences, drifts, fold_rows
from tracker.storage.sqlite.schema import connect_existing

#: Below this many calls the second interpreter's start costs more than half a pass saves.
SPLIT_MIN: Final = 50_000
KEY_MIN: Final = -(1 << 63)
KEY_MAX: Final = (1 << 63) - 1
#: The least the parent waits for the second process's answer once its own half is done
#: (else three times as long as its own half took), before it compares that half itself.
TIMEOUT_MIN: Final = 60.0
_PR_SET_PDEATHSIG: Final = 1

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
_drift_dec = msgspec.msgpack.Decoder(tuple[int, list[Drift], list[Drift]])


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
    """The upper half's pass in a second interpreter: started at once, read by :meth:`result`.

    The child runs this very ``tracker`` package (``-P``: never a ``tracker/`` or any other
    module in the current directory), in a session of its own (a terminal's Ctrl-C is the
    parent's to handle), and dies with the parent (``PR_SET_PDEATHSIG``: a parent killed by
    SIGTERM or SIGKILL leaves no pass running). Its stderr is kept, not shown: on any failure
    the parent compares that half itself. It opens the same file (device and inode checked)
    read-write without creating one. In ``--check`` it sends the drift it found, not the
    differences (a state and two rows each), so memory stays what one process needs."""

    def __init__(
        self, path: str, busy_ms: int, outcomes: Mapping[str, str], lo: int, limit: int | None
    ) -> None:
        st = os.stat(path)
        self.started = time.monotonic()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop(), always called)
        root = str(Path(__file__).resolve().parents[3])  # the directory holding this package
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _PROGRAM, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        request = (path, st.st_dev, st.st_ino, busy_ms, dict(outcomes), lo, limit, os.getpid())
        try:  # a few hundred bytes: the pipe holds them, the child starts at once
            self.proc.stdin.write(_enc.encode(request))
            self.proc.stdin.close()
        except OSError:
            pass  # it died: result() says so
        self.proc.stdin = None
        self.error: str | None = None  # why its answer was not used

    def _answer(self) -> bytes | None:
        """Its output, or None when it failed or took far longer than this process's half."""
        wait = max(TIMEOUT_MIN, 3 * (time.monotonic() - self.started))
        try:
            out, _ = self.proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            self.error = f"no answer within {wait:.0f} s"
            self.stop()
            return None
        except BaseException:
            self.stop()
            raise
        if self.proc.returncode != 0:
            self._err.seek(0)
            lines = self._err.read().decode("utf-8", "replace").strip().splitlines()
            self.error = lines[-1] if lines else f"exit status {self.proc.returncode}"
            return None
        return out

    def result(self) -> tuple[int, list[Difference] | None] | None:
        """(its snapshot's max seq, its differences or None: too many), or None if it failed."""
        out = self._answer()
        if out is None:
            return None
        try:
            max_seq, found = _found_dec.decode(out)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.error = "an answer that could not be read"
            return None
        if found is None:
            return max_seq, None
        return max_seq, [
            (k, s, None if w is None else tuple(w), None if g is None else tuple(g))
            for k, s, w, g in found
        ]

    def drift(self) -> tuple[list[Drift], list[Drift]] | None:
        """``--check``: (the drifting calls, the orphans) of its half, or None if it failed."""
        out = self._answer()
        if out is None:
            return None
        try:
            _, drift, orphans = _drift_dec.decode(out)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.error = "an answer that could not be read"
            return None
        return drift, orphans

    def stop(self) -> None:
        """End it if it still runs (its answer no longer needed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self._err):
            if f is not None and not f.closed:
                f.close()


_PROGRAM = """import sys
if sys.argv[1] not in sys.path:
    sys.path.insert(0, sys.argv[1])
from tracker.storage.sqlite.split import child
child()
"""


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends (Linux), and at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def child() -> None:
    """The second process: its request on stdin, its answer on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this one
    request = msgspec.msgpack.decode(sys.stdin.buffer.read())
    path, dev, ino, busy_ms, outcomes, lo, limit, parent = request
    _die_with(parent)
    st = os.stat(path)  # the parent's file, not another one moved to its name since
    if (st.st_dev, st.st_ino) != (dev, ino):
        sys.exit(f"{path} is no longer the file replay opened")
    conn = connect_existing(path, busy_ms)
    conn.execute("BEGIN")  # one snapshot for the whole pass
    max_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    diffs = range_differences(conn, max_seq, outcomes, lo, KEY_MAX)
    answer: Any
    if limit is None:  # --check: the drift, not the differences
        answer = (max_seq, *drifts(diffs, outcomes))
    else:
        found: list[Difference] | None = []
        for d in diffs:
            assert found is not None
            found.append(d)
            if len(found) > limit:
                found = None
                break
        answer = (max_seq, found)
    conn.execute("COMMIT")
    conn.close()
    sys.stdout.buffer.write(_enc.encode(answer))
