"""The storage interface's contract, through :func:`open_storage` and the ``Storage`` methods
only (no SQL): every backend must pass these. Parametrized by backend (SQLite today)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tracker.config import Settings, load_settings
from tracker.events import decode_object
from tracker.ingest import make_entry, parse_entries, parse_event
from tracker.records import Entry, Reject
from tracker.render import call_json
from tracker.storage import Storage, StorageError, open_storage
from tracker.storage.errors import NoDatabase

URI = "https://api.catapult.inetwork.com/v1/users/u-1/calls/"


def settings_for(target: str) -> Settings:
    key = "path" if target.startswith("/") else "url"
    return load_settings(env={}, overrides={"storage": {key: target}})


@pytest.fixture
def settings(db_target: str) -> Settings:
    return settings_for(db_target)


@pytest.fixture
def storage(settings: Settings) -> Iterator[Storage]:
    s = open_storage(settings)
    try:
        yield s
    finally:
        s.close()


def event(event_type: str, call_id: str, second: int, **fields: Any) -> Entry:
    obj = {
        "eventType": event_type,
        "callId": call_id,
        "callUri": URI + call_id,
        "time": f"2012-11-14T15:55:{second:02d}.000Z",
        **fields,
    }
    return make_entry(decode_object(obj), msgspec.json.encode(obj), "json")


def a_call(call_id: str, cause: str = "NORMAL_CLEARING") -> list[Entry]:
    return [
        event("incomingcall", call_id, 0),
        event("answer", call_id, 3),
        event("hangup", call_id, 50, cause=cause),
    ]


def test_seqs_are_gap_free_and_a_duplicate_gets_its_original_seq(storage: Storage) -> None:
    assert storage.head() == 0
    first = storage.write_batch([a_call("c-1"), a_call("c-2")])
    assert [[r.seq for r in g] for g in first] == [[1, 2, 3], [4, 5, 6]]
    again = storage.append([a_call("c-1")[1], event("dtmf", "c-1", 9, dtmfDigit="1")])
    assert [(r.seq, r.duplicate) for r in again] == [(2, True), (7, False)]
    assert storage.head() == 7


def test_the_projection_is_readable_after_the_append(storage: Storage) -> None:
    storage.append(a_call("c-1", cause="USER_BUSY"))
    found = storage.call("c-1")
    assert found is not None
    view = msgspec.json.decode(call_json(found))
    assert (view["status"], view["outcome"], view["eventCount"]) == ("ended", "busy", 3)
    assert storage.call("nobody") is None
    timeline = storage.timeline("c-1")
    assert timeline is not None and [e.seq for e in timeline[0]] == [1, 2, 3]
    assert timeline[1] is None  # the last page
    first = storage.timeline("c-1", limit=2)
    assert first is not None and [e.seq for e in first[0]] == [1, 2] and first[1] is not None
    rest = storage.timeline("c-1", after=first[1], limit=2)
    assert rest is not None and [e.seq for e in rest[0]] == [3] and rest[1] is None
    assert storage.timeline("nobody") is None


def test_calls_page_by_filters_and_cursor(storage: Storage) -> None:
    for i in range(5):
        storage.append(a_call(f"c-{i}", cause="USER_BUSY" if i % 2 else "NORMAL_CLEARING"))
    page, cursor = storage.calls({}, limit=2)
    assert [c.state.call_id for c in page] == ["c-4", "c-3"] and cursor is not None
    rest, end = storage.calls({}, limit=10, before_seq=cursor)
    assert [c.state.call_id for c in rest] == ["c-2", "c-1", "c-0"] and end is None
    busy, _ = storage.calls({"outcome": "busy"})
    assert {c.state.call_id for c in busy} == {"c-1", "c-3"}
    counts = storage.stats()
    assert (counts.total, counts.by_outcome) == (5, {"busy": 2, "normal": 3})


def test_stats_sum_the_ended_calls_times_and_the_series_buckets_them(storage: Storage) -> None:
    storage.append(a_call("c-1"))  # answered after 3 s, talked 47 s
    storage.append([event("incomingcall", "c-2", 10), event("hangup", "c-2", 20, cause="x")])
    storage.append([event("incomingcall", "c-3", 30)])  # still up
    kpis = storage.stats().kpis
    assert (kpis.attempts, kpis.answered) == (2, 1)
    assert (kpis.talk_ms, kpis.talk_n, kpis.ring_ms, kpis.ring_n) == (47000, 1, 3000, 1)
    lo, hi = storage.time_bounds()
    assert lo is not None and hi is not None and hi - lo == 30_000
    buckets = storage.series(since=lo, until=hi + 1, step_ms=20_000)
    assert buckets == {"normal": [1, 0], "error": [1, 0], "in_progress": [0, 1]}


def test_events_after_a_seq_and_the_quarantine(storage: Storage) -> None:
    storage.append(a_call("c-1"))
    assert [e.seq for e in storage.events_after(1, 10)] == [2, 3]
    refused = Reject(1, 422, "invalid_event", "no", b"{}", "application/json", "/callbacks")
    storage.write_batch([[event("ringing", "c-2", 1)]], [refused, refused])
    rows, nxt = storage.rejects(0, 1)
    assert [r.error for r in rows] == ["invalid_event"] and nxt == rows[0].id
    assert storage.rejects(nxt, 10)[0][0].body == b"{}"


def test_replay_check_finds_no_drift_and_replay_keeps_the_calls(storage: Storage) -> None:
    for i in range(3):
        storage.append(a_call(f"c-{i}"))
    before = [call_json(c) for c in storage.calls({})[0]]
    assert storage.replay(check=True) == []
    assert storage.replay() == []
    assert [call_json(c) for c in storage.calls({})[0]] == before
    assert storage.counts() == (3, 9)


def test_a_snapshot_streams_calls_and_events(storage: Storage) -> None:
    storage.append(a_call("c-1"))
    storage.append(a_call("c-2"))
    with storage.snapshot() as snap:
        assert [c.state.call_id for c in snap.calls()] == ["c-1", "c-2"]
        assert [e.seq for e in snap.events(after=4)] == [5, 6]
        assert snap.call("c-2") is not None and snap.timeline("c-3") is None


def test_the_probe_passes_on_a_healthy_storage(storage: Storage) -> None:
    storage.probe(write=False)
    storage.probe(write=True)


def test_a_command_that_needs_a_database_gets_no_database(settings: Settings) -> None:
    with pytest.raises(NoDatabase):
        open_storage(settings, must_exist=True)
    with pytest.raises(StorageError):
        open_storage(settings, read_only=True)


def test_an_import_line_becomes_the_same_entry_as_its_http_body(storage: Storage) -> None:
    body = b'{"eventType":"answer","callId":"c-1","time":"2012-11-14T15:55:03Z"}'
    [appended] = storage.append([parse_event(body, 1000)])
    other = b'{ "time": "2012-11-14T15:55:03Z", "callId": "c-1", "eventType": "answer" }'
    entries, batch = parse_entries(other, "json", 10)  # the same content, other bytes
    [again] = storage.append(entries)
    assert (batch, again.seq, again.duplicate) == (False, appended.seq, True)
