"""Replay's second process (tracker/storage/sqlite/split.py), for real: one that fails, answers
garbage or hangs is replaced by the parent comparing that half itself; a ``tracker`` package in
the current directory is never the one it runs; it dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_store import populate, views
from tracker.storage.sqlite import SqliteStorage as Store
from tracker.storage.sqlite import replay as sqlite_replay
from tracker.storage.sqlite import split

ROOT = Path(__file__).resolve().parent.parent


def tamper(store: Store) -> set[str]:
    """Two calls drift, one in each half (keys run 1..20, the split is at 11)."""
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_id IN ('c-3', 'c-17')")
    return {"c-3", "c-17"}


@pytest.mark.parametrize(
    "program",
    [
        "import sys; sys.exit('the second process failed')",
        "import sys; sys.stdout.buffer.write(b'not msgpack at all')",
        "import time; time.sleep(30)",
    ],
    ids=["fails", "answers-garbage", "hangs"],
)
def test_replay_compares_the_second_half_itself_when_its_process_fails_answers_garbage_or_hangs(
    store: Store, monkeypatch: pytest.MonkeyPatch, program: str
) -> None:
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)
    monkeypatch.setattr(split, "_PROGRAM", program)
    monkeypatch.setattr(split, "TIMEOUT_MIN", 1.0)
    populate(store, 20)
    good = views(store.conn)
    want = tamper(store)
    started = time.monotonic()
    assert {cid for cid, _ in store.replay(check=True, jobs=2)} == want
    store.replay(jobs=2)
    assert time.monotonic() - started < 10  # a hung one is given up on, not waited for
    assert views(store.conn) == good
    assert store.replay(check=True, jobs=1) == []


def test_replay_never_runs_a_tracker_package_from_the_current_directory(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ``tracker/`` in the directory replay is run from must not answer for the second half
    (here one that would say nothing differs)."""
    fake = tmp_path / "cwd"
    pkg = fake / "tracker" / "storage" / "sqlite"
    pkg.mkdir(parents=True)
    for d in (fake / "tracker", fake / "tracker" / "storage", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "split.py").write_text(
        textwrap.dedent(
            """
            import sys, msgspec
            def child():
                sys.stdout.buffer.write(msgspec.msgpack.encode((10**9, [], [])))
            """
        )
    )
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)
    monkeypatch.chdir(fake)
    populate(store, 20)
    want = tamper(store)
    assert {cid for cid, _ in store.replay(check=True, jobs=2)} == want


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_second_process_ends_when_replay_is_killed(db_path: Path, sig: int) -> None:
    """Its half would otherwise run on for nothing, holding a read snapshot of the database."""
    s = Store(db_path)
    populate(s, 20)
    s.close()
    script = textwrap.dedent(
        f"""
        from tracker.storage.sqlite import SqliteStorage, replay, split
        replay.SPLIT_MIN = 1
        split._PROGRAM = split._PROGRAM.replace(
            "child()", "import time; child(); time.sleep(60)"
        )
        s = SqliteStorage({str(db_path)!r})
        print("replaying", flush=True)
        s.replay(jobs=2)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "replaying"
        deadline = time.monotonic() + 10
        kids: list[int] = []
        while not kids and time.monotonic() < deadline:
            kids = children_of(parent.pid)
            time.sleep(0.05)
        assert len(kids) == 1, "the second process did not start"
        time.sleep(0.5)  # it runs its pass, then sleeps: the parent waits for its answer
        assert alive(kids[0])
        os.kill(parent.pid, sig)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while alive(kids[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(kids[0]), "the second process outlived replay"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
