"""``tracker copy DEST`` (SPEC §9): from SQLite to PostgreSQL and back, every event with its seq,
receivedAt and exact body, and the quarantine; the same ``export`` output on all three; a DEST
that is not empty is refused with nothing written."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import psycopg
from server import run_tracker

from tracker.config import load_settings
from tracker.ingest import parse_entries
from tracker.records import Reject
from tracker.storage import open_storage

CALL = [
    b'{"eventType":"incomingcall","callId":"c-1","time":"2012-11-14T15:55:01.000Z",'
    b'"from":"+13233326955","to":"+13865245000"}',
    b'{ "eventType" : "answer",  "callId": "c-1", "time": "2012-11-14T15:55:04Z" }',
    b'{"eventType":"hangup","callId":"c-1","time":"2012-11-14T15:56:12.636Z",'
    b'"cause":"NORMAL_CLEARING","x":[1, 2.50, {"y": null}]}',
]
FORM = b"eventType=hangup&callId=c+2&time=2012-11-14T15%3A57%3A00Z&cause=USER_BUSY"
QUERY = b"eventType=dtmf&callId=c-3&time=2012-11-14T15%3A58%3A00Z&dtmfDigit=5"
NO_CALL = b'{"eventType":"sms","time":"2012-11-14T15:59:00Z"}'


def fill(path: Path) -> None:
    """A SQLite log of every kind of body (JSON, form, query string), with the quarantine."""
    settings = load_settings(env={}, overrides={"storage": {"path": str(path)}})
    store = open_storage(settings)
    try:
        received = 1_352_908_501_000
        for i, (body, fmt) in enumerate(
            [*((b, "json") for b in CALL), (FORM, "form"), (QUERY, "query"), (NO_CALL, "json")]
        ):
            entries, _ = parse_entries(body, fmt, 10)
            store.append([entries[0]._replace(received_at=received + i * 1111)])
        big = b"x" * 70_000  # over the quarantine cap: kept truncated, with its full size
        store.write_batch(
            [],
            [
                Reject(5, 422, "invalid_event", "no callId", b"{}", "application/json", "/cb"),
                Reject(6, 413, "too_large", "too big", big, "application/json", "/callbacks"),
            ],
        )
    finally:
        store.close()


def export(db: str, what: str, fmt: str = "ndjson") -> str:
    proc = run_tracker("export", what, "--format", fmt, "--db", db)
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def rejects(db: str) -> list[tuple[object, ...]]:
    key = "url" if db.startswith("postgresql://") else "path"
    store = open_storage(load_settings(env={}, overrides={"storage": {key: db}}), read_only=True)
    try:
        page, _ = store.rejects(0, 100)
    finally:
        store.close()
    return [(r.received_at, r.status, r.error, r.detail, r.size, r.truncated, r.body) for r in page]


def test_a_copy_from_sqlite_to_postgresql_and_back_exports_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    src = str(tmp_path / "src.db")
    fill(Path(src))
    there = run_tracker("copy", pg_url, "--db", src)
    assert there.returncode == 0, there.stderr
    assert "6 events" in there.stdout and "2 rejects" in there.stdout
    back = str(tmp_path / "back.db")
    again = run_tracker("copy", back, "--db", pg_url)
    assert again.returncode == 0, again.stderr
    for what in ("calls", "events"):
        for fmt in ("ndjson", "csv"):
            want = export(src, what, fmt)
            assert export(pg_url, what, fmt) == want
            assert export(back, what, fmt) == want
    events = [json.loads(line) for line in export(pg_url, "events").splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[1]["receivedAt"] != events[0]["receivedAt"]
    assert rejects(pg_url) == rejects(src) == rejects(back)
    assert rejects(src)[1][4:6] == (70_000, True)
    assert run_tracker("replay", "--check", "--db", pg_url).returncode == 0
    query = "SELECT seq, received_at, fmt, body, dkey FROM events ORDER BY seq"
    with contextlib.closing(sqlite3.connect(src)) as a, psycopg.connect(pg_url) as b:
        want_rows = a.execute(query).fetchall()
        assert [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in b.execute(query)
        ] == want_rows
    assert want_rows[3][2:4] == ("form", FORM) and want_rows[4][2:4] == ("query", QUERY)


def test_a_copy_into_a_database_that_is_not_empty_is_refused_and_writes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    src = str(tmp_path / "src.db")
    fill(Path(src))
    other = tmp_path / "other.ndjson"
    other.write_text(CALL[0].decode() + "\n")
    assert run_tracker("import", str(other), "--db", pg_url).returncode == 0
    before = export(pg_url, "events")
    refused = run_tracker("copy", pg_url, "--db", src)
    assert refused.returncode == 1
    assert "not empty" in refused.stderr and "1 events" in refused.stderr
    assert export(pg_url, "events") == before
    # and the other way: a SQLite DEST with a log is refused too
    dest = str(tmp_path / "dest.db")
    assert run_tracker("import", str(other), "--db", dest).returncode == 0
    assert run_tracker("copy", dest, "--db", pg_url).returncode == 1
    assert run_tracker("copy", src, "--db", src).returncode == 2
