"""The ``tracker`` command line, run as a real subprocess against real SQLite files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from databases import module_db

CALL_1 = [
    {
        "eventType": "incomingcall",
        "callId": "c-1",
        "time": "2012-11-14T15:55:01.000Z",
        "from": "+13233326955",
        "to": "+13865245000",
    },
    {"eventType": "answer", "callId": "c-1", "time": "2012-11-14T15:55:04Z"},
    {
        "eventType": "hangup",
        "callId": "c-1",
        "time": "2012-11-14T15:56:12.636Z",
        "cause": "NORMAL_CLEARING",
    },
]
CALL_2 = [
    {
        "eventType": "initiate",
        "callId": "c-2",
        "eventTime": "2024-01-02T03:04:05.000Z",
        "startTime": "2024-01-02T03:04:05.000Z",
        "direction": "outbound",
        "from": "+15551230000",
        "to": "+15559870000",
    },
    {
        "eventType": "disconnect",
        "callId": "c-2",
        "eventTime": "2024-01-02T03:04:15.000Z",
        "endTime": "2024-01-02T03:04:15.000Z",
        "cause": "busy",
    },
]
HOSTILE_ID = 'c "quoted", with, commas\nand a newline =1+1'
HOSTILE = [
    {"eventType": "incomingcall", "callId": HOSTILE_ID, "time": "2020-01-01T00:00:00Z"},
    {
        "eventType": "answer",
        "callId": HOSTILE_ID,
        "time": "2020-01-01T00:00:01Z",
        "tag": "=SUM(A1)",
    },
]
EVENTS = CALL_1 + CALL_2 + HOSTILE
NO_CALL_ID = {"eventType": "hangup", "time": "2012-11-14T15:56:12.636Z"}
#: An exported event's fields: GET /events's row, then the log's origin.
EVENT_FIELDS = ["seq", "receivedAt", "eventType", "callId", "time", "payload", "origin"]


def ndjson(events: list[Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m tracker ARGS`` with no TRACKER_* variables but those given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Target(NamedTuple):
    """A database for ``--db``: run commands in ``parent`` with ``--db name`` (a file name
    there, or a PostgreSQL URL)."""

    parent: Path
    name: str

    @property
    def is_pg(self) -> bool:
        return self.name.startswith("postgresql://")


def load(tmp: Path, events: list[Any], name: str = "t.db") -> Target:
    src = tmp / "load.ndjson"
    src.write_text(ndjson(events))
    proc = run(tmp, "import", str(src), "--db", name)
    assert proc.returncode == 0, proc.stderr
    return Target(tmp, name)


def execute(db: Target, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run SQL on the database directly (``?`` placeholders), from this process."""
    if db.is_pg:
        import psycopg

        with psycopg.connect(db.name, autocommit=True) as pg:
            cur = pg.execute(sql.replace("?", "%s").encode(), args)
            return cur.fetchall() if cur.description else []
    with contextlib.closing(sqlite3.connect(db.parent / db.name)) as conn, conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A loaded database per backend for the tests that only read it (they must not change it)."""
    tmp = tmp_path_factory.mktemp("shared")
    with module_db(request.param, tmp_path_factory) as target:
        yield load(tmp, EVENTS, "t.db" if request.param == "sqlite" else target)


@pytest.fixture
def db(tmp_path: Path, shared: Target, db_target: str) -> Target:
    """A private copy of the loaded database (of ``shared``'s backend)."""
    if not shared.is_pg:
        shutil.copy(shared.parent / shared.name, tmp_path / "t.db")
        return Target(tmp_path, "t.db")
    return load(tmp_path, EVENTS, db_target)


@pytest.fixture
def backend(shared: Target) -> str:
    """This module's tests follow ``shared``'s backend (one parametrization, not two)."""
    return "postgresql" if shared.is_pg else "sqlite"


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Target:
    """A loaded SQLite file (``backup`` copies SQLite files)."""
    return load(tmp_path, EVENTS)


# --------------------------------------------------------------------------------------------
# import


def test_import_of_ndjson_counts_new_duplicate_and_rejected_lines_and_exits_1(
    tmp_path: Path, db_target: str
) -> None:
    text = ndjson([*CALL_1, CALL_1[0], NO_CALL_ID]) + "\n   \n{not json\n"
    (tmp_path / "in.ndjson").write_text(text)
    proc = run(tmp_path, "import", "in.ndjson", "--db", db_target)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "imported 3 new, 1 duplicate, 2 rejected"
    assert "in.ndjson:5" in proc.stderr and "callId is required for hangup" in proc.stderr
    assert "in.ndjson:8" in proc.stderr
    assert "\r" not in proc.stderr  # no progress line when stderr is not a terminal


def test_import_of_a_clean_file_exits_0_and_a_second_import_finds_only_duplicates(
    tmp_path: Path, db_target: str
) -> None:
    (tmp_path / "in.ndjson").write_text(ndjson(EVENTS))
    first = run(tmp_path, "import", "in.ndjson", "--db", db_target)
    second = run(tmp_path, "import", "in.ndjson", "--db", db_target)
    assert (first.returncode, first.stdout.strip()) == (
        0,
        "imported 7 new, 0 duplicate, 0 rejected",
    )
    assert (second.returncode, second.stdout.strip()) == (
        0,
        "imported 0 new, 7 duplicate, 0 rejected",
    )


def test_import_of_a_json_array_keeps_each_elements_exact_bytes(
    tmp_path: Path, db_target: str
) -> None:
    spaced = '{ "eventType" : "answer",  "callId": "c-1", "time": "2012-11-14T15:55:04Z" }'
    text = "  [\n" + json.dumps(CALL_1[0]) + ",\n" + spaced + ",\n  42\n]\n"
    (tmp_path / "in.json").write_text(text)
    proc = run(tmp_path, "import", "in.json", "--db", db_target)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "imported 2 new, 0 duplicate, 1 rejected"
    assert "in.json:[2]" in proc.stderr
    out = run(tmp_path, "export", "events", "--db", db_target)
    assert spaced in out.stdout.splitlines()[1]


def test_import_treats_an_array_and_ndjson_of_the_same_events_as_duplicates(
    tmp_path: Path, db_target: str
) -> None:
    (tmp_path / "in.json").write_text(json.dumps(CALL_1, indent=2))
    (tmp_path / "in.ndjson").write_text(ndjson(CALL_1))
    assert run(tmp_path, "import", "in.json", "--db", db_target).stdout.startswith("imported 3 new")
    again = run(tmp_path, "import", "in.ndjson", "--db", db_target)
    assert again.stdout.strip() == "imported 0 new, 3 duplicate, 0 rejected"


def test_import_reads_stdin_when_the_file_is_a_dash(tmp_path: Path, db_target: str) -> None:
    proc = run(tmp_path, "import", "-", "--db", db_target, stdin=ndjson(CALL_2))
    assert (proc.returncode, proc.stdout.strip()) == (0, "imported 2 new, 0 duplicate, 0 rejected")


def test_rejected_lines_are_quarantined_with_their_reason_location_and_body(
    tmp_path: Path, db_target: str
) -> None:
    body = json.dumps(NO_CALL_ID)
    (tmp_path / "in.ndjson").write_text(ndjson(CALL_2) + body + "\n[1,\n")
    assert run(tmp_path, "import", "in.ndjson", "--db", db_target).returncode == 1
    target = Target(tmp_path, db_target)
    rows = execute(target, "SELECT status, error, detail, path, body FROM rejects ORDER BY id")
    assert [r[:2] for r in rows] == [(422, "invalid_event"), (400, "invalid_json")]
    assert rows[0][2] == "callId is required for hangup"
    assert rows[0][3] == "import:in.ndjson:3"
    assert bytes(rows[0][4]) == body.encode()
    assert rows[1][3] == "import:in.ndjson:4"


def test_a_malformed_json_array_is_quarantined_whole(tmp_path: Path, db_target: str) -> None:
    (tmp_path / "in.json").write_text('[{"eventType": "answer", "callId": "c-1"},')
    proc = run(tmp_path, "import", "in.json", "--db", db_target)
    assert (proc.returncode, proc.stdout.strip()) == (1, "imported 0 new, 0 duplicate, 1 rejected")
    assert execute(Target(tmp_path, db_target), "SELECT status, path FROM rejects") == [
        (400, "import:in.json")
    ]


def test_import_refuses_to_add_its_schema_to_another_programs_database(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    (tmp_path / "in.ndjson").write_text(ndjson(CALL_1))
    proc = run(tmp_path, "import", "in.ndjson", "--db", "other.db")
    assert proc.returncode == 1 and "not a tracker database" in proc.stderr
    with sqlite3.connect(tmp_path / "other.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]
    conn.close()


def test_import_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run(tmp_path, "import", "nope.ndjson", "--db", "t.db")
    assert proc.returncode == 2
    assert "nope.ndjson" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# export


def test_export_calls_as_ndjson_gives_every_call_view_by_last_seq(shared: Target) -> None:
    proc = run(shared.parent, "export", "calls", "--db", shared.name)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [c["callId"] for c in calls] == ["c-1", "c-2", HOSTILE_ID]
    assert calls[0]["outcome"] == "normal" and calls[1]["outcome"] == "busy"


def test_export_events_as_ndjson_gives_the_log_in_seq_order_with_payloads(shared: Target) -> None:
    proc = run(shared.parent, "export", "events", "--db", shared.name)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, len(EVENTS) + 1))
    assert [r["payload"] for r in rows] == EVENTS
    assert list(rows[0]) == EVENT_FIELDS
    assert {r["origin"] for r in rows} == {None}


def test_export_as_csv_has_the_json_field_names_as_its_header(shared: Target) -> None:
    calls = run(shared.parent, "export", "calls", "--format", "csv", "--db", shared.name)
    ndjson_calls = run(shared.parent, "export", "calls", "--db", shared.name)
    events = run(shared.parent, "export", "events", "--format", "csv", "--db", shared.name)
    header = next(csv.reader(io.StringIO(calls.stdout)))
    assert header == list(json.loads(ndjson_calls.stdout.splitlines()[0]))
    assert header[-1] == "anomalies"
    assert next(csv.reader(io.StringIO(events.stdout))) == EVENT_FIELDS


def test_a_call_id_with_quotes_commas_and_a_newline_round_trips_through_csv(
    shared: Target,
) -> None:
    calls = run(shared.parent, "export", "calls", "--format", "csv", "--db", shared.name)
    events = run(shared.parent, "export", "events", "--format", "csv", "--db", shared.name)
    call_rows = list(csv.DictReader(io.StringIO(calls.stdout, newline="")))
    event_rows = list(csv.DictReader(io.StringIO(events.stdout, newline="")))
    hostile = call_rows[-1]
    assert hostile["callId"] == HOSTILE_ID
    assert hostile["tag"] == "'=SUM(A1)"  # defused by default (--raw: exact)
    assert hostile["outcome"] == "" and hostile["eventCount"] == "2"
    assert [r["callId"] for r in event_rows][-2:] == [HOSTILE_ID, HOSTILE_ID]
    assert [json.loads(r["payload"]) for r in event_rows] == EVENTS


FORMULAS = {
    '=HYPERLINK("http://evil.example","x")': '\'=HYPERLINK("http://evil.example","x")',
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "\t=1": "'\t=1",
    "\r=1": "'\r=1",
    "+13233326955": "+13233326955",
    "-3.5": "-3.5",
    "+.5e-3": "+.5e-3",
    "-": "'-",
    "+": "'+",
    "plain = text": "plain = text",
}


def test_csv_export_defuses_formula_cells_but_not_signed_numbers(tmp_path: Path) -> None:
    events = [
        v
        for i, tag in enumerate(FORMULAS)
        for v in [
            {
                "eventType": "incomingcall",
                "callId": f"c-f{i}",
                "time": f"2020-01-01T00:00:{i:02d}Z",
                "from": "+13233326955",
                "tag": tag,
            }
        ]
    ]
    events.append({"eventType": "=cmd()", "callId": "@c-evil", "time": "2020-01-01T00:01:00Z"})
    db = load(tmp_path, events)

    def export(*args: str) -> list[dict[str, str]]:
        out = tmp_path / "out.csv"  # a file, read with newline="": CR cells stay CR
        proc = run(tmp_path, "export", *args, "--format", "csv", "-o", str(out), "--db", db.name)
        assert proc.returncode == 0, proc.stderr
        with out.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    rows = export("calls")
    assert [r["tag"] for r in rows[:-1]] == list(FORMULAS.values())
    assert {r["from"] for r in rows[:-1]} == {"+13233326955"}
    assert rows[-1]["callId"] == "'@c-evil"
    last = export("events")[-1]
    assert (last["eventType"], last["callId"]) == ("'=cmd()", "'@c-evil")
    assert json.loads(last["payload"])["eventType"] == "=cmd()"  # JSON text: starts with {
    raw_rows = export("calls", "--raw")
    assert [r["tag"] for r in raw_rows[:-1]] == list(FORMULAS)
    assert raw_rows[-1]["callId"] == "@c-evil"


RECONCILED = {
    "eventType": "reconciled",
    "callId": "c-r",
    "source": "https://voice.bandwidth.com/api/v2/accounts/a/calls/c-r",
    "checkedAt": "2026-01-05T15:00:00.000Z",
    "response": {"state": "disconnected", "endTime": "2026-01-05T10:05:00.000Z"},
}


def with_a_reconciled_event(tmp_path: Path, db_target: str) -> Target:
    """CALL_2, the RECONCILED body posted as a callback (a received, unknown event), then the
    same body appended by the tracker as its own ``reconciled`` event (SPEC §11)."""
    from tracker.config import load_settings
    from tracker.ingest import reconciled_entry
    from tracker.storage import open_storage

    db = load(tmp_path, [*CALL_2, RECONCILED], db_target)
    key = "url" if db.is_pg else "path"
    where = db.name if db.is_pg else str(tmp_path / db.name)
    store = open_storage(load_settings(env={}, overrides={"storage": {key: where}}))
    try:
        store.append([reconciled_entry(json.dumps(RECONCILED).encode())])
    finally:
        store.close()
    return db


def test_exported_events_end_with_their_origin_null_when_received_and_reconcile_when_the_trackers(
    tmp_path: Path, db_target: str
) -> None:
    db = with_a_reconciled_event(tmp_path, db_target)
    proc = run(db.parent, "export", "events", "--db", db.name)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert list(rows[0]) == EVENT_FIELDS
    assert [r["origin"] for r in rows] == [None, None, None, "reconcile"]
    posted, own = rows[2:]
    assert posted["payload"] == own["payload"] == RECONCILED
    assert posted["eventType"] == own["eventType"] == "reconciled"


def test_exported_events_keep_the_query_apis_bytes_for_every_other_field(
    tmp_path: Path, db_target: str
) -> None:
    from starlette.testclient import TestClient

    from tracker.app import create_app
    from tracker.config import load_settings

    db = with_a_reconciled_event(tmp_path, db_target)
    lines = run(db.parent, "export", "events", "--db", db.name).stdout.splitlines()
    key = "url" if db.is_pg else "path"
    where = db.name if db.is_pg else str(tmp_path / db.name)
    with TestClient(create_app(load_settings(env={}, overrides={"storage": {key: where}}))) as c:
        page = c.get("/events").text
    for line, origin in zip(lines, ["null", "null", "null", '"reconcile"'], strict=True):
        suffix = f',"origin":{origin}}}'
        assert line.endswith(suffix)
        assert line[: -len(suffix)] + "}" in page  # the row GET /events shows, byte for byte


def test_csv_export_of_events_has_an_origin_column_last_empty_for_received_events(
    tmp_path: Path, db_target: str
) -> None:
    db = with_a_reconciled_event(tmp_path, db_target)
    events = run(db.parent, "export", "events", "--format", "csv", "--db", db.name)
    as_json = run(db.parent, "export", "events", "--db", db.name)
    assert events.returncode == 0, events.stderr
    rows = list(csv.reader(io.StringIO(events.stdout, newline="")))
    assert rows[0] == list(json.loads(as_json.stdout.splitlines()[0]))
    assert rows[0][-1] == "origin"
    assert [r[-1] for r in rows[1:]] == ["", "", "", "reconcile"]
    assert [json.loads(r[5]) for r in rows[1:]] == [*CALL_2, RECONCILED, RECONCILED]


def test_export_to_a_file_writes_it_and_leaves_stdout_empty(shared: Target, tmp_path: Path) -> None:
    out = tmp_path / "calls.ndjson"
    proc = run(shared.parent, "export", "calls", "--db", shared.name, "--output", str(out))
    assert (proc.returncode, proc.stdout) == (0, "")
    assert len(out.read_text().splitlines()) == 3


def test_export_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    many = [
        {
            "eventType": "answer",
            "callId": f"c-{i}",
            "time": "2020-01-01T00:00:00Z",
            "pad": "x" * 200,
        }
        for i in range(1500)
    ]
    load(tmp_path, many)
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    with subprocess.Popen(
        [sys.executable, "-m", "tracker", "export", "events", "--db", "t.db"],
        cwd=tmp_path,
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert err == b""


# --------------------------------------------------------------------------------------------
# show


def test_show_prints_a_known_calls_state_as_json(shared: Target) -> None:
    proc = run(shared.parent, "show", "c-1", "--db", shared.name)
    assert proc.returncode == 0
    view = json.loads(proc.stdout)
    assert view["callId"] == "c-1" and view["status"] == "ended"
    assert view["talkSeconds"] == 68.636


def test_show_with_events_adds_the_calls_timeline(shared: Target) -> None:
    proc = run(shared.parent, "show", "c-2", "--events", "--db", shared.name)
    doc = json.loads(proc.stdout)
    assert doc["call"]["callId"] == "c-2"
    assert [e["eventType"] for e in doc["events"]] == ["initiate", "disconnect"]
    assert doc["events"][1]["payload"] == CALL_2[1]


def test_show_with_events_writes_a_timeline_longer_than_a_page_in_order(tmp_path: Path) -> None:
    events = [
        {"eventType": "dtmf", "callId": "c-long", "time": "2024-05-01T10:00:00Z", "d": str(i)}
        for i in range(1100)  # all tied in time: seq decides, across the 1000-event pages
    ]
    events += [{"eventType": "recording", "callId": "c-long", "n": str(i)} for i in range(3)]
    events.insert(0, {"eventType": "hangup", "callId": "c-long", "time": "2024-05-01T10:00:01Z"})
    db = load(tmp_path, events)
    proc = run(tmp_path, "show", "c-long", "--events", "--db", db.name)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["call"]["eventCount"] == 1104
    payloads = [e["payload"] for e in doc["events"]]
    assert payloads == [*events[1:1101], events[0], *events[1101:]]
    assert [e["seq"] for e in doc["events"][:1100]] == list(range(2, 1102))
    assert proc.stdout.startswith('{\n  "call": {\n    "callId": "c-long",')


def test_show_of_an_unknown_call_exits_1_with_a_message(shared: Target) -> None:
    proc = run(shared.parent, "show", "c-404", "--db", shared.name)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert "c-404" in proc.stderr and "Traceback" not in proc.stderr


def test_reading_commands_refuse_a_database_that_does_not_exist(tmp_path: Path) -> None:
    for args in (["show", "c-1"], ["export", "calls"], ["replay"], ["backup", "b.db"]):
        proc = run(tmp_path, *args, "--db", "missing.db")
        assert proc.returncode == 2, args
        assert "missing.db" in proc.stderr
    assert not (tmp_path / "missing.db").exists()


# --------------------------------------------------------------------------------------------
# replay


def tamper(db: Target, call_id: str, status: str, outcome: str | None) -> None:
    """Give a call stored columns its log does not support (as a bug or a hand edit would)."""
    execute(
        db, "UPDATE calls SET status = ?, outcome = ? WHERE call_id = ?", (status, outcome, call_id)
    )


def test_replay_check_finds_no_drift_in_a_fresh_database(db: Target) -> None:
    proc = run(db.parent, "replay", "--check", "--db", db.name)
    assert proc.returncode == 0
    assert "no drift" in proc.stdout


def test_replay_check_reports_a_tampered_call_and_replay_repairs_it(db: Target) -> None:
    tamper(db, "c-2", status="answered", outcome=None)
    check = run(db.parent, "replay", "--check", "--db", db.name)
    assert check.returncode == 1
    assert '"c-2"' in check.stdout
    assert '[status]: "answered" -> "ended"' in check.stdout  # a stored column
    assert 'outcome: null -> "busy"' in check.stdout
    assert '"c-1"' not in check.stdout
    replay = run(db.parent, "replay", "--db", db.name)
    assert replay.returncode == 0
    assert "3 calls" in replay.stdout and "7 events" in replay.stdout
    after = run(db.parent, "replay", "--check", "--db", db.name)
    assert (after.returncode, "no drift" in after.stdout) == (0, True)
    assert json.loads(run(db.parent, "show", "c-2", "--db", db.name).stdout)["status"] == "ended"


def test_replay_check_reports_a_call_missing_from_the_projection(db: Target) -> None:
    execute(db, "DELETE FROM calls WHERE call_id = 'c-1'")
    check = run(db.parent, "replay", "--check", "--db", db.name)
    assert check.returncode == 1 and '"c-1"' in check.stdout


def test_replay_repairs_two_calls_whose_ids_were_swapped(db: Target) -> None:
    execute(db, "UPDATE calls SET call_id = 'swap' WHERE call_id = 'c-1'")
    execute(db, "UPDATE calls SET call_id = 'c-1' WHERE call_id = 'c-2'")
    execute(db, "UPDATE calls SET call_id = 'c-2' WHERE call_id = 'swap'")
    assert run(db.parent, "replay", "--db", db.name).returncode == 0
    after = run(db.parent, "replay", "--check", "--db", db.name)
    assert (after.returncode, "no drift" in after.stdout) == (0, True)


def test_replay_rebuild_folds_every_call_into_a_new_table_and_repairs_too(db: Target) -> None:
    tamper(db, "c-2", status="answered", outcome=None)
    replay = run(db.parent, "replay", "--rebuild", "--db", db.name)
    assert replay.returncode == 0, replay.stderr
    after = run(db.parent, "replay", "--check", "--db", db.name)
    assert (after.returncode, "no drift" in after.stdout) == (0, True)
    assert json.loads(run(db.parent, "show", "c-2", "--db", db.name).stdout)["status"] == "ended"


# --------------------------------------------------------------------------------------------
# backup


def test_backup_writes_a_valid_copy_with_the_same_events(sqlite_db: Target, tmp_path: Path) -> None:
    dest = tmp_path / "backups" / "b.db"
    proc = run(sqlite_db.parent, "backup", str(dest), "--db", sqlite_db.name)
    assert proc.returncode == 0, proc.stderr
    assert "7 events" in proc.stdout and str(dest.stat().st_size) in proc.stdout
    with sqlite3.connect(dest) as copy, sqlite3.connect(sqlite_db.parent / sqlite_db.name) as orig:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        query = "SELECT seq, dkey, body FROM events ORDER BY seq"
        assert copy.execute(query).fetchall() == orig.execute(query).fetchall()
    copy.close()
    orig.close()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b.db"]  # no temp or WAL files
    shown = run(tmp_path, "show", "c-1", "--db", str(dest))
    assert json.loads(shown.stdout)["callId"] == "c-1"


def test_backup_refuses_to_overwrite_unless_forced(sqlite_db: Target, tmp_path: Path) -> None:
    dest = tmp_path / "b.db"
    dest.write_bytes(b"precious")
    refused = run(sqlite_db.parent, "backup", str(dest), "--db", sqlite_db.name)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert dest.read_bytes() == b"precious"
    forced = run(sqlite_db.parent, "backup", str(dest), "--force", "--db", sqlite_db.name)
    assert forced.returncode == 0
    assert dest.read_bytes().startswith(b"SQLite format 3\x00")


def test_backup_never_overwrites_the_database_itself(sqlite_db: Target) -> None:
    proc = run(sqlite_db.parent, "backup", sqlite_db.name, "--force", "--db", sqlite_db.name)
    assert proc.returncode == 2
    assert run(sqlite_db.parent, "show", "c-1", "--db", sqlite_db.name).returncode == 0


# --------------------------------------------------------------------------------------------
# configuration


def test_an_unknown_key_in_the_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[storage]\npath = "x.db"\nbogus_key = 1\n')
    proc = run(tmp_path, "show", "c-1", "--config", "c.toml")
    assert proc.returncode == 2
    assert "storage.bogus_key" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_value_in_the_environment_exits_2(tmp_path: Path) -> None:
    proc = run(tmp_path, "show", "c-1", env={"TRACKER_STORAGE_SYNCHRONOUS": "sometimes"})
    assert proc.returncode == 2 and "storage.synchronous" in proc.stderr


def test_the_config_file_comes_from_tracker_config_when_no_flag_is_given(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[nope]\n")
    proc = run(tmp_path, "show", "c-1", env={"TRACKER_CONFIG": "c.toml"})
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_a_basic_username_with_a_colon_stops_serve_at_start_up_naming_the_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "c.toml").write_text('[ingest]\nusername = "b:w"\npassword = "pw"\n')
    proc = run(tmp_path, "serve", "--port", "0", "--config", "c.toml", "--db", "t.db")
    assert proc.returncode == 2, proc.stderr
    assert "ingest.username" in proc.stderr and "':'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "t.db").exists()


@pytest.mark.parametrize("token", [" secret", "secret ", "sec\nret", "sec\tret"])
def test_a_query_token_no_header_could_carry_is_a_configuration_error(token: str) -> None:
    from tracker.config import load_settings
    from tracker.errors import ConfigError

    with pytest.raises(ConfigError, match=r"query\.token"):
        load_settings(env={"TRACKER_QUERY_TOKEN": token})


def test_a_negative_busy_timeout_is_a_configuration_error() -> None:
    from tracker.config import load_settings
    from tracker.errors import ConfigError

    with pytest.raises(ConfigError, match=r"storage\.busy_timeout_ms"):
        load_settings(env={"TRACKER_STORAGE_BUSY_TIMEOUT_MS": "-1"})
    assert load_settings(env={"TRACKER_QUERY_TOKEN": "a b:c"}).query.token == "a b:c"


def test_storage_path_precedence_is_flag_then_environment_then_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[storage]\npath = "file.db"\n')
    (tmp_path / "in.ndjson").write_text(ndjson(CALL_1))
    env = {"TRACKER_STORAGE_PATH": "env.db"}
    run(tmp_path, "import", "in.ndjson", "--config", "c.toml", "--db", "flag.db", env=env)
    assert [p.exists() for p in (tmp_path / "flag.db", tmp_path / "env.db")] == [True, False]
    run(tmp_path, "import", "in.ndjson", "--config", "c.toml", env=env)
    assert [p.exists() for p in (tmp_path / "env.db", tmp_path / "file.db")] == [True, False]
    run(tmp_path, "import", "in.ndjson", "--config", "c.toml")
    assert (tmp_path / "file.db").exists()


def test_an_unknown_tracker_variable_is_only_a_warning(shared: Target) -> None:
    proc = run(shared.parent, "show", "c-1", "--db", shared.name, env={"TRACKER_NOPE": "1"})
    assert proc.returncode == 0
    assert "TRACKER_NOPE" in proc.stderr


# --------------------------------------------------------------------------------------------
# usage


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["replay"], ["import"], ["export"], ["show"], ["backup"]]
)
def test_help_works_for_every_command_and_names_the_common_options(
    tmp_path: Path, command: list[str]
) -> None:
    proc = run(tmp_path, *command, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: tracker")
    if command:
        assert "--db PATH" in proc.stdout and "--config PATH" in proc.stdout


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    assert run(tmp_path).returncode == 2
    assert run(tmp_path, "export", "calls", "--format", "xml").returncode == 2
    assert run(tmp_path, "frobnicate").returncode == 2


# --------------------------------------------------------------------------------------------
# serve


def wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while needle not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no {needle!r} within {timeout}s: {seen!r}")
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"exited {proc.wait()}: {seen!r}")
            seen += chunk
    finally:
        sel.close()
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_on_port_0_prints_its_port_serves_and_exits_0_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    with subprocess.Popen(
        [sys.executable, "-m", "tracker", "serve", "--port", "0", "--db", "s.db"],
        cwd=tmp_path,
        env=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            line = wait_for_line(proc, b")\n", timeout=20).decode()
            assert "listening on http://127.0.0.1:" in line
            assert str(tmp_path / "s.db") in line
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            assert port > 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
            proc.send_signal(sig)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (tmp_path / "s.db").exists()


def test_a_negative_read_mmap_size_exits_2_naming_it(tmp_path: Path) -> None:
    proc = run(tmp_path, "show", "c-1", env={"TRACKER_STORAGE_READ_MMAP_MB": "-1"})
    assert proc.returncode == 2 and "storage.read_mmap_mb" in proc.stderr


def test_backup_on_postgresql_refuses_naming_pg_dump_and_tracker_copy(
    pg_url: str, tmp_path: Path
) -> None:
    tmp = tmp_path
    load(tmp, CALL_1, pg_url)
    proc = run(tmp, "backup", "b.db", "--db", pg_url)
    assert proc.returncode == 1, proc.stderr
    assert "pg_dump" in proc.stderr and "tracker copy" in proc.stderr
    assert not (tmp / "b.db").exists()
