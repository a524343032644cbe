"""The SQLite log and projection, against real files (no mocks)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlite_utils import Database

from tracker.errors import StorageUnavailable
from tracker.events import decode_object, parse_json, parse_time
from tracker.ingest import make_entry
from tracker.records import Entry, Reject
from tracker.render import EventRow, RejectRow, call_json, event_rows, reject_row, stats_json, view
from tracker.state import CallState, fact_of, fold
from tracker.storage.errors import CommitFailed
from tracker.storage.sqlite import SqliteStorage as Store
from tracker.storage.sqlite import queries
from tracker.storage.sqlite import replay as sqlite_replay
from tracker.storage.sqlite.schema import SCHEMA_VERSION, connect, create_calls_table

# The SQLite implementation's reads on a connection, rendered as the API shows them.


def get_view(conn: sqlite3.Connection, call_id: str) -> bytes | None:
    found = queries.get_call(conn, call_id)
    return None if found is None else call_json(found)


def render_row(state: bytes, outcome: str | None) -> bytes:
    return call_json(queries.record(state, outcome))


def call_events(conn: sqlite3.Connection, call_id: str) -> tuple[list[EventRow], Any] | None:
    """A page of the timeline as the API shows it, and where the next page starts."""
    found = queries.timeline(conn, call_id)
    return None if found is None else (event_rows(found[0]), found[1])


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[EventRow]:
    return event_rows(queries.events_after(conn, after, limit))


def list_calls(conn: sqlite3.Connection, filters: Any, **kw: Any) -> tuple[list[bytes], Any]:
    found, nxt = queries.list_calls(conn, filters, **kw)
    return [call_json(c) for c in found], nxt


def stats(conn: sqlite3.Connection, **kw: Any) -> dict[str, Any]:
    return stats_json(queries.stats(conn, **kw))


def list_rejects(conn: sqlite3.Connection, after: int, limit: int) -> tuple[list[RejectRow], Any]:
    found, nxt = queries.list_rejects(conn, after, limit)
    return [reject_row(r) for r in found], nxt


URI = "https://api.catapult.inetwork.com/v1/users/u-1/calls/"


def t(second: int) -> str:
    return f"2012-11-14T15:{55 + second // 60:02d}:{second % 60:02d}.000Z"


def ms(second: int) -> int:
    value = parse_time(t(second))
    assert value is not None
    return value


def entry(obj: dict[str, Any] | None = None, *, body: bytes | None = None, fmt: str = "json"):
    if body is None:
        body = msgspec.json.encode(obj)
    if obj is None:
        obj = parse_json(body)
    return make_entry(decode_object(obj), body, fmt, received_at=1_700_000_000_000)


def v1(event_type: str, call_id: str, second: int | None, **fields: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"eventType": event_type, "callId": call_id, "callUri": URI + call_id}
    if second is not None:
        d["time"] = t(second)
    return {**d, **fields}


def a_call(call_id: str, start: int = 0, cause: str = "NORMAL_CLEARING", **fields: Any):
    return [
        v1("incomingcall", call_id, start, **fields),
        v1("answer", call_id, start + 3),
        v1("hangup", call_id, start + 70, cause=cause),
    ]


def views(conn: sqlite3.Connection) -> dict[str, Any]:
    return {
        cid: msgspec.json.decode(render_row(state, outcome))
        for cid, state, outcome in conn.execute("SELECT call_id, state, outcome FROM calls")
    }


def expected_view(conn: sqlite3.Connection, call_id: str) -> Any:
    """The view folded from the log's bodies (not its stored facts), with the logged seqs."""
    facts = [
        fact_of(decode_object(parse_json(body)), seq)
        for seq, body in conn.execute(
            "SELECT seq, body FROM events WHERE call_id = ? ORDER BY seq", (call_id,)
        )
    ]
    return msgspec.json.decode(msgspec.json.encode(view(fold(facts, call_id))))


# --------------------------------------------------------------------------------------------
# Append, read back, dedupe


def test_an_appended_event_reads_back_byte_for_byte(store):
    body = (
        b'{ "eventType" : "hangup",\n  "callId":"c-1", "time":"2012-11-14T15:56:12.636Z",'
        b' "cause":"NORMAL_CLEARING", "note":"caf\\u00e9 \xc3\xa9", "n": 1.50 }'
    )
    [res] = store.append([entry(body=body)])
    assert (res.seq, res.duplicate) == (1, False)
    assert bytes(store.conn.execute("SELECT body FROM events").fetchone()[0]) == body
    [row] = events_after(store.conn, 0, 10)
    assert row.payload == msgspec.Raw(body)
    assert body in msgspec.json.encode(row)


def test_seqs_are_consecutive_and_returned_in_order(store):
    results = store.append([entry(e) for e in a_call("c-1")])
    assert [(r.seq, r.duplicate) for r in results] == [(1, False), (2, False), (3, False)]
    assert [r.seq for r in store.append([entry(e) for e in a_call("c-2")])] == [4, 5, 6]


def test_a_redelivered_event_is_a_duplicate_after_reopening(db_path):
    e = entry(v1("hangup", "c-1", 70, cause="NORMAL_CLEARING"))
    s = Store(db_path)
    first = s.append([entry(v1("incomingcall", "c-1", 0)), e])
    s.close()
    s = Store(db_path)
    try:
        [again] = s.append([e])
        assert again.seq == first[1].seq
        assert again.duplicate is True
        assert s.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        assert msgspec.json.decode(get_view(s.conn, "c-1"))["eventCount"] == 2
    finally:
        s.close()


def test_the_same_json_value_with_different_key_order_is_a_duplicate(store):
    a = b'{"eventType":"answer","callId":"c-1","time":"2012-11-14T15:55:03Z"}'
    b = b'{ "time": "2012-11-14T15:55:03Z",\n "callId": "c-1", "eventType": "answer" }'
    [first] = store.append([entry(body=a)])
    [second] = store.append([entry(body=b)])
    assert (second.seq, second.duplicate) == (first.seq, True)
    # the log keeps the bytes of the first delivery
    assert bytes(store.conn.execute("SELECT body FROM events").fetchone()[0]) == a


def test_a_get_delivery_is_a_duplicate_of_a_post_of_the_same_string_fields(store):
    fields = {"eventType": "answer", "callId": "c-1", "time": t(3)}
    [post] = store.append([entry(fields)])
    query = b"eventType=answer&callId=c-1&time=2012-11-14T15%3A55%3A03.000Z"
    get = make_entry(decode_object(dict(fields), lenient=True), query, "query")
    [again] = store.append([get])
    assert (again.seq, again.duplicate) == (post.seq, True)


def test_duplicates_inside_one_batch_are_recognised(store):
    e = entry(v1("answer", "c-1", 3))
    out = store.write_batch([[e, e], [e]])
    assert [[(r.seq, r.duplicate) for r in g] for g in out] == [
        [(1, False), (1, True)],
        [(1, True)],
    ]
    assert msgspec.json.decode(get_view(store.conn, "c-1"))["eventCount"] == 1


def test_events_without_a_call_id_are_logged_but_make_no_call(store):
    store.append([entry({"eventType": "conference", "conferenceId": "f-1", "time": t(1)})])
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert store.conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
    [row] = events_after(store.conn, 0, 10)
    assert (row.callId, row.eventType, row.time) == (None, "conference", t(1))


def test_an_unknown_event_type_with_a_call_id_joins_the_call(store):
    store.append([entry(v1("incomingcall", "c-1", 0)), entry(v1("holdStarted", "c-1", 9))])
    v = msgspec.json.decode(get_view(store.conn, "c-1"))
    assert (v["eventCount"], v["lastEventType"]) == (2, "holdStarted")


# --------------------------------------------------------------------------------------------
# The projection


def test_the_projection_after_each_append_equals_folding_the_log(store, db_path):
    events = [
        *a_call("c-1", 0),
        *a_call("c-2", 10, cause="USER_BUSY", tag="x"),
        v1("dtmf", "c-1", 90, dtmfDigit="5"),  # after the end: an anomaly
        v1("timeout", "c-3", 5),
        v1("recording", "c-2", None),
    ]
    reader = connect(db_path)
    try:
        for e in events:
            store.append([entry(e)])
            # a read on another connection right after the commit sees the new state
            for cid in ("c-1", "c-2", "c-3"):
                got = get_view(reader, cid)
                if got is not None:
                    assert msgspec.json.decode(got) == expected_view(reader, cid)
    finally:
        reader.close()
    v1_state = msgspec.json.decode(get_view(store.conn, "c-1"))
    assert (v1_state["firstSeq"], v1_state["lastSeq"]) == (1, 7)
    assert v1_state["anomalies"] == ["event_after_end"]


def test_the_projection_columns_match_the_view(store):
    store.append([entry(e) for e in a_call("c-1", 0, cause="USER_BUSY", tag="t-1")])
    row = store.conn.execute(
        "SELECT status, outcome, cause, direction, tag, first_event_at, last_seq FROM calls"
    ).fetchone()
    assert row == ("ended", "busy", "USER_BUSY", "inbound", "t-1", ms(0), 3)


def test_configured_outcomes_reach_the_projection(db_path):
    s = Store(db_path, outcomes={"MEDIA_TIMEOUT": "failed"})
    try:
        s.append([entry(v1("hangup", "c-1", 9, cause="MEDIA_TIMEOUT"))])
        assert msgspec.json.decode(get_view(s.conn, "c-1"))["outcome"] == "failed"
        assert s.replay(check=True) == []
    finally:
        s.close()


def test_a_failed_batch_writes_neither_events_nor_projection(store):
    good = entry(v1("answer", "c-1", 3))
    bad = Entry(**{**{f: getattr(good, f) for f in Entry._fields}, "dkey": b"x", "body": None})
    with pytest.raises(CommitFailed, match="nothing was stored"):
        store.write_batch([[good, bad]])
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert store.conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
    assert not store.conn.in_transaction
    assert store.append([good])[0].seq == 1


# --------------------------------------------------------------------------------------------
# Replay


def populate(store: Store, calls: int, start: int = 0) -> None:
    batch = []
    for i in range(start, start + calls):
        cid = f"c-{i}"
        evs = a_call(cid, i % 50, cause=["NORMAL_CLEARING", "USER_BUSY", "NO_ANSWER"][i % 3])
        if i % 4 == 0:
            evs = evs[:2]  # still answered
        batch.extend(entry(e) for e in evs)
    store.append(batch)


def test_replay_rebuilds_an_identical_projection(store):
    populate(store, 60)
    before = store.conn.execute("SELECT * FROM calls ORDER BY call_key").fetchall()
    assert store.replay(check=True) == []
    assert store.replay() == []
    after = store.conn.execute("SELECT * FROM calls ORDER BY call_key").fetchall()
    assert after == before
    assert store.replay(check=True) == []


def test_replay_check_reports_a_tampered_call_and_replay_repairs_it(store):
    populate(store, 5)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started', outcome = NULL WHERE call_id = 'c-2'")
    drift = store.replay(check=True)
    assert [cid for cid, _ in drift] == ["c-2"]
    assert drift[0][1] == {
        "outcome": (None, "no_answer"),  # the view shows the stored outcome column
        "[status]": ("started", "ended"),
        "[outcome]": (None, "no_answer"),
    }
    assert views(store.conn)["c-2"]["outcome"] is None  # check changes nothing
    store.replay()
    assert store.replay(check=True) == []
    assert views(store.conn) == good


def test_replay_check_reports_a_tampered_state_blob(store):
    populate(store, 3)
    (blob,) = store.conn.execute("SELECT state FROM calls WHERE call_id = 'c-1'").fetchone()
    state = msgspec.msgpack.decode(blob, type=CallState)
    wrong = msgspec.structs.replace(state, hard=None, soft=None)
    store.conn.execute(
        "UPDATE calls SET state = ? WHERE call_id = 'c-1'", (msgspec.msgpack.encode(wrong),)
    )
    drift = dict(store.replay(check=True))
    assert set(drift) == {"c-1"}
    assert drift["c-1"]["status"][1] == "ended"
    store.replay()
    assert store.replay(check=True) == []


def test_replay_check_reports_calls_missing_from_or_absent_in_the_log(store):
    populate(store, 3)
    store.conn.execute("DELETE FROM calls WHERE call_id = 'c-1'")
    store.conn.execute(
        "INSERT INTO calls (call_key, call_id, status, last_seq, state)"
        " VALUES (999, 'ghost', 'started', 999, x'')"
    )
    drift = dict(store.replay(check=True))
    assert set(drift) == {"c-1", "ghost"}
    store.replay()
    assert set(views(store.conn)) == {"c-0", "c-1", "c-2"}
    assert store.replay(check=True) == []


def test_replay_of_a_projection_that_agrees_with_the_log_writes_no_row(store):
    populate(store, 20)
    before = store.conn.total_changes
    assert store.replay() == []
    assert store.conn.total_changes == before
    assert suffixes(store) == {"a"}  # no new table either


def test_replay_rewrites_only_the_differing_calls_in_place(store):
    populate(store, 20)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_id = 'c-3'")
    store.conn.execute("DELETE FROM calls WHERE call_id = 'c-7'")
    before = store.conn.total_changes
    store.replay()
    assert store.conn.total_changes - before == 3  # c-3 deleted and written back, c-7 written
    assert suffixes(store) == {"a"}
    assert views(store.conn) == good
    assert store.replay(check=True) == []


def test_replay_rebuilds_into_a_new_table_when_many_calls_differ(store, monkeypatch):
    monkeypatch.setattr(sqlite_replay, "DIFF_MIN", 2)
    populate(store, 20)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_key <= 5")
    store.replay()
    assert suffixes(store) == {"b"}
    assert views(store.conn) == good
    assert store.replay(check=True) == []


def test_replay_in_two_processes_checks_and_repairs_like_one(store, monkeypatch):
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)  # a second process even for 20 calls
    populate(store, 20)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_id IN ('c-3', 'c-17')")
    store.conn.execute("DELETE FROM calls WHERE call_id IN ('c-1', 'c-18')")
    store.conn.execute(
        "INSERT INTO calls (call_key, call_id, status, last_seq, state)"
        " VALUES (999, 'ghost', 'started', 999, x'')"
    )
    want = {"c-1", "c-3", "c-17", "c-18", "ghost"}  # in both halves
    assert {cid for cid, _ in store.replay(check=True, jobs=2)} == want
    assert dict(store.replay(check=True, jobs=2)) == dict(store.replay(check=True, jobs=1))
    before = store.conn.total_changes
    store.replay(jobs=2)
    assert store.conn.total_changes - before == 7  # 2 rewritten (2 each), 2 written, 1 deleted
    assert suffixes(store) == {"a"}
    assert views(store.conn) == good
    assert store.replay(check=True, jobs=2) == []


def test_replay_does_the_second_half_itself_when_its_process_fails(store, monkeypatch):
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)
    monkeypatch.setattr(sqlite_replay.Half, "result", lambda self: None)
    populate(store, 20)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_id IN ('c-3', 'c-17')")
    assert {cid for cid, _ in store.replay(check=True, jobs=2)} == {"c-3", "c-17"}
    store.replay(jobs=2)
    assert views(store.conn) == good
    assert store.replay(check=True) == []


def test_replay_in_two_processes_rebuilds_when_many_calls_differ(store, monkeypatch):
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)
    monkeypatch.setattr(sqlite_replay, "DIFF_MIN", 2)
    populate(store, 20)
    good = views(store.conn)
    store.conn.execute("UPDATE calls SET status = 'started' WHERE call_key > 15")  # upper half
    store.replay(jobs=2)
    assert suffixes(store) == {"b"}
    assert views(store.conn) == good
    assert store.replay(check=True) == []


def suffixes(store: Store) -> set[str]:
    rows = store.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls'"
    ).fetchall()
    return {name.rsplit("_", 1)[1] for (name,) in rows if name.startswith("calls_")}


def test_a_full_rebuild_twice_in_a_row_alternates_index_names(store):
    populate(store, 4)

    def suffixes() -> set[str]:
        rows = store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls'"
        ).fetchall()
        return {name.rsplit("_", 1)[1] for (name,) in rows if name.startswith("calls_")}

    assert suffixes() == {"a"}
    store.replay(rebuild=True)
    assert suffixes() == {"b"}
    store.replay(rebuild=True)
    assert suffixes() == {"a"}
    assert store.replay(check=True) == []
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"events", "calls", "rejects"}


def test_replay_works_after_a_replay_that_was_killed_midway(store):
    populate(store, 4)
    # what a killed replay leaves: its new table, with the index names the next one needs
    create_calls_table(Database(store.conn), "calls_rebuild_1", "b")
    store.replay()
    assert store.replay(check=True) == []
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"events", "calls", "rejects"}


def test_replay_of_an_empty_log_works(store):
    assert store.replay(check=True) == []
    assert store.replay() == []


def test_replay_reports_progress(store):
    populate(store, 3)
    seen: list[tuple[int, int]] = []
    store.replay(progress=lambda n, total: seen.append((n, total)))
    assert seen[-1] == (3, 3)


@pytest.mark.parametrize("jobs", [1, 2])
def test_replay_while_another_connection_appends_loses_nothing(db_path, monkeypatch, jobs):
    monkeypatch.setattr(sqlite_replay, "SPLIT_MIN", 1)
    main = Store(db_path)
    populate(main, 300)
    writer = Store(db_path)
    errors: list[BaseException] = []
    done = threading.Event()

    def append_more() -> None:
        try:
            for i in range(60):
                # new calls, and new events for calls the rebuild has already folded
                writer.append([entry(e) for e in a_call(f"new-{i}", i)])
                writer.append([entry(v1("dtmf", f"c-{i * 5}", 200, dtmfDigit=str(i % 10)))])
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=append_more)
    try:
        thread.start()
        rounds = 0
        while not done.is_set() or rounds < 2:
            main.replay(jobs=jobs)
            assert main.replay(check=True, jobs=jobs) == []
            rounds += 1
        thread.join()
        assert errors == []
        assert main.replay(check=True) == []
        ids = set(views(main.conn))
        assert ids == {f"c-{i}" for i in range(300)} | {f"new-{i}" for i in range(60)}
        for i in range(60):
            assert msgspec.json.decode(get_view(main.conn, f"c-{i * 5}"))["lastEventType"] == "dtmf"
        assert main.conn.execute("SELECT count(*) FROM events").fetchone()[0] == (
            len([e for i in range(300) for e in (a_call("x")[:2] if i % 4 == 0 else a_call("x"))])
            + 60 * 4
        )
    finally:
        thread.join()
        writer.close()
        main.close()


# --------------------------------------------------------------------------------------------
# Schema


def test_the_schema_version_is_recorded(store):
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_data_and_the_version(db_path):
    s = Store(db_path)
    s.append([entry(e) for e in a_call("c-1")])
    s.close()
    s = Store(db_path)
    try:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert msgspec.json.decode(get_view(s.conn, "c-1"))["status"] == "ended"
    finally:
        s.close()


def test_a_newer_schema_refuses_to_open_with_a_clear_error(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    newer = SCHEMA_VERSION + 1
    with pytest.raises(StorageUnavailable, match=rf"schema version {newer}, newer .* upgrade"):
        Store(db_path)


def test_stores_opened_at_once_on_a_new_file_all_migrate(db_path):
    # the file exists (in WAL mode) but has no schema yet
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            Store(db_path).close()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


# --------------------------------------------------------------------------------------------
# Quarantine


def reject(body: bytes, **kw: Any) -> Reject:
    fields = {
        "received_at": 1_700_000_000_000,
        "status": 422,
        "error": "invalid_event",
        "detail": "callId is required for hangup",
        "body": body,
        "content_type": "application/json",
        "path": "/callbacks",
    }
    return Reject(**{**fields, **kw})


def test_a_rejected_body_is_kept_capped_with_a_truncated_flag(db_path):
    s = Store(db_path, quarantine_max_bytes=16)
    try:
        s.reject(reject(b'{"eventType":"hangup"}'))
        s.reject(reject(b'{"a":1}'))
        s.reject(reject(b"\xff\xfe not utf-8", status=400, error="invalid_json"))
        rows, nxt = list_rejects(s.conn, 0, 10)
    finally:
        s.close()
    assert nxt is None
    big, small, binary = rows
    assert (big.body, big.size, big.truncated) == ('{"eventType":"ha', 22, True)
    assert (big.status, big.error, big.detail) == (
        422,
        "invalid_event",
        "callId is required for hangup",
    )
    assert (big.contentType, big.path, big.receivedAt) == (
        "application/json",
        "/callbacks",
        "2023-11-14T22:13:20.000Z",
    )
    assert (small.body, small.size, small.truncated, small.bodyEncoding) == (
        '{"a":1}',
        7,
        False,
        "utf-8",
    )
    assert binary.bodyEncoding == "base64"
    assert binary.status == 400


def test_a_reject_of_an_oversized_body_records_its_full_size(store):
    store.reject(reject(b'{"eventType":', status=413, error="too_large", size=5_000_000))
    [row], _ = list_rejects(store.conn, 0, 10)
    assert (row.body, row.size, row.truncated) == ('{"eventType":', 5_000_000, True)


def test_rejects_are_paginated_by_id(store):
    for i in range(5):
        store.reject(reject(f"body {i}".encode()))
    first, nxt = list_rejects(store.conn, 0, 2)
    assert [r.body for r in first] == ["body 0", "body 1"]
    second, nxt2 = list_rejects(store.conn, nxt, 2)
    assert [r.body for r in second] == ["body 2", "body 3"]
    last, end = list_rejects(store.conn, nxt2, 2)
    assert ([r.body for r in last], end) == (["body 4"], None)


def test_rejects_can_be_written_in_the_same_transaction_as_events(store):
    store.write_batch([[entry(v1("answer", "c-1", 3))]], [reject(b"{}")])
    assert store.conn.execute("SELECT count(*) FROM rejects").fetchone()[0] == 1
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


# --------------------------------------------------------------------------------------------
# Reads


@pytest.fixture
def calls_db(store):
    store.append([entry(e) for e in a_call("c-0", 0, **{"from": "+1", "to": "+2"}, tag="red")])
    store.append([entry(e) for e in a_call("c-1", 60, cause="USER_BUSY")])
    store.append([entry(v1("incomingcall", "c-2", 120, tag="red"))])
    store.append([entry(e) for e in a_call("c-3", 180, cause="USER_BUSY")[:2]])
    store.append([entry(v1("timeout", "c-4", 240))])
    return store


def ids(page: list[bytes]) -> list[str]:
    return [msgspec.json.decode(v)["callId"] for v in page]


def test_list_calls_returns_the_most_recently_changed_first(calls_db):
    page, nxt = list_calls(calls_db.conn, {})
    assert ids(page) == ["c-4", "c-3", "c-2", "c-1", "c-0"]
    assert nxt is None


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "ended"}, ["c-4", "c-1", "c-0"]),
        ({"status": "answered"}, ["c-3"]),
        ({"status": "started"}, ["c-2"]),
        ({"outcome": "busy"}, ["c-1"]),
        ({"outcome": "no_answer"}, ["c-4"]),
        ({"cause": "NORMAL_CLEARING"}, ["c-0"]),
        ({"direction": "inbound"}, ["c-3", "c-2", "c-1", "c-0"]),
        ({"from": "+1"}, ["c-0"]),
        ({"to": "+2"}, ["c-0"]),
        ({"tag": "red"}, ["c-2", "c-0"]),
        ({"tag": "red", "status": "ended"}, ["c-0"]),
        ({"cause": "nothing"}, []),
    ],
)
def test_list_calls_filters(calls_db, filters, expected):
    page, _ = list_calls(calls_db.conn, filters)
    assert ids(page) == expected


def test_list_calls_bounds_first_event_time(calls_db):
    page, _ = list_calls(calls_db.conn, {}, since=ms(60), until=ms(180))
    assert ids(page) == ["c-2", "c-1"]
    page, _ = list_calls(calls_db.conn, {}, since=ms(180))
    assert ids(page) == ["c-4", "c-3"]


def test_list_calls_keyset_pagination_visits_every_call_once(calls_db):
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = list_calls(calls_db.conn, {}, limit=2, before_seq=cursor)
        seen.extend(ids(page))
        pages += 1
        if cursor is None:
            break
    assert seen == ["c-4", "c-3", "c-2", "c-1", "c-0"]
    assert pages == 3


def test_a_page_stays_stable_when_new_events_arrive(calls_db):
    page, cursor = list_calls(calls_db.conn, {}, limit=2)
    calls_db.append([entry(v1("answer", "c-2", 125))])  # c-2 moves to the front
    rest, _ = list_calls(calls_db.conn, {}, limit=10, before_seq=cursor)
    assert ids(page) == ["c-4", "c-3"]
    assert ids(rest) == ["c-1", "c-0"]


def test_stats_count_calls_by_status_outcome_and_cause(calls_db):
    assert stats(calls_db.conn) == {
        "total": 5,
        "byStatus": {"answered": 1, "ended": 3, "started": 1},
        "byOutcome": {"busy": 1, "no_answer": 1, "normal": 1},
        "byCause": {"NORMAL_CLEARING": 1, "USER_BUSY": 1},
        "stale": 0,
        # c-0 and c-1 answered after 3 s and talked 67 s; c-4 timed out unanswered
        "kpis": {
            "attempts": 3,
            "answered": 2,
            "asr": 0.6667,
            "acd": 67.0,
            "averageRingSeconds": 3.0,
        },
    }
    assert stats(calls_db.conn, since=ms(60), until=ms(180)) == {
        "total": 2,
        "byStatus": {"ended": 1, "started": 1},
        "byOutcome": {"busy": 1},
        "byCause": {"USER_BUSY": 1},
        "stale": 0,
        "kpis": {
            "attempts": 1,
            "answered": 1,
            "asr": 1.0,
            "acd": 67.0,
            "averageRingSeconds": 3.0,
        },
    }


def test_stats_of_an_empty_store(store):
    assert stats(store.conn) == {
        "total": 0,
        "byStatus": {},
        "byOutcome": {},
        "byCause": {},
        "stale": 0,
        "kpis": {
            "attempts": 0,
            "answered": 0,
            "asr": None,
            "acd": None,
            "averageRingSeconds": None,
        },
    }


def test_events_after_reads_the_log_in_seq_order(store):
    store.append([entry(e) for e in a_call("c-1")])
    store.append([entry(e) for e in a_call("c-2")])
    assert [r.seq for r in events_after(store.conn, 0, 100)] == [1, 2, 3, 4, 5, 6]
    page = events_after(store.conn, 2, 3)
    assert [(r.seq, r.callId, r.eventType) for r in page] == [
        (3, "c-1", "hangup"),
        (4, "c-2", "incomingcall"),
        (5, "c-2", "answer"),
    ]
    assert page[0].time == t(70)
    assert page[0].receivedAt == "2023-11-14T22:13:20.000Z"
    assert events_after(store.conn, 6, 10) == []


def test_a_form_delivery_reads_back_as_string_fields(store):
    body = b"eventType=answer&callId=c-1&time=2012-11-14T15%3A55%3A03.000Z"
    fields = {"eventType": "answer", "callId": "c-1", "time": t(3)}
    store.append([make_entry(decode_object(fields, lenient=True), body, "form")])
    [row] = events_after(store.conn, 0, 10)
    assert row.payload == fields
    assert bytes(store.conn.execute("SELECT body FROM events").fetchone()[0]) == body


def test_call_events_are_ordered_by_event_time_untimed_last_then_seq(store):
    store.append(
        [
            entry(v1("hangup", "c-1", 70, cause="NORMAL_CLEARING")),  # seq 1
            entry(v1("recording", "c-1", None, recordingUri="r-1")),  # seq 2, untimed
            entry(v1("incomingcall", "c-1", 0)),  # seq 3
            entry(v1("speak", "c-1", 10)),  # seq 4
            entry(v1("playback", "c-1", 10)),  # seq 5, same time as 4
            entry(v1("recording", "c-1", None, recordingUri="r-0")),  # seq 6, untimed
            entry(v1("answer", "c-2", 5)),  # another call
        ]
    )
    found = call_events(store.conn, "c-1")
    assert found is not None
    rows, nxt = found
    assert nxt is None
    assert [(r.seq, r.eventType) for r in rows] == [
        (3, "incomingcall"),
        (4, "speak"),
        (5, "playback"),
        (1, "hangup"),
        (2, "recording"),
        (6, "recording"),
    ]
    assert [r.time for r in rows] == [t(0), t(10), t(10), t(70), None, None]
    assert rows[0].payload == msgspec.Raw(msgspec.json.encode(v1("incomingcall", "c-1", 0)))


def test_call_events_of_an_unknown_call_is_none(store):
    assert call_events(store.conn, "nope") is None
    assert get_view(store.conn, "nope") is None


def test_the_store_file_is_created_with_its_directory(tmp_path: Path):
    path = tmp_path / "deep" / "er" / "tracker.db"
    s = Store(path)
    s.close()
    assert path.exists()


def test_a_mapped_reader_sees_every_commit_before_and_after_checkpoints(store, db_path):
    reader = connect(db_path, mmap_mb=64)
    try:
        assert reader.execute("PRAGMA mmap_size").fetchone()[0] > 0
        for i in range(40):  # enough pages that checkpoints move them into the mapped file
            store.append([entry(e) for e in a_call(f"m-{i}", i)])
            if i % 10 == 9:
                store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            got = get_view(reader, f"m-{i}")
            assert got is not None
            assert msgspec.json.decode(got) == expected_view(store.conn, f"m-{i}")
        store.append([entry(v1("hangup", "m-0", 200, cause="USER_BUSY"))])
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert views(reader) == views(store.conn)
        assert msgspec.json.decode(get_view(reader, "m-0") or b"")["eventCount"] == 4
    finally:
        reader.close()
