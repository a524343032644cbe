"""Embedding the tracker: mounted in another Starlette app, and as a Python library."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.server import running
from tracker.api import Tracker
from tracker.app import TrackerApp, create_app
from tracker.config import Ingest, Settings, Storage
from tracker.errors import EventRejected, InvalidJson, StorageUnavailable, TooLarge
from tracker.http.asgi import raw_route_path, route_path
from tracker.records import Appended

ODD_ID = "c-a/b c?d%e#f"  # needs percent-encoding in a URL path


def initiate(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": "initiate",
        "eventTime": "2024-03-01T12:00:00.000Z",
        "accountId": "9900000",
        "applicationId": "app",
        "from": "+15554443333",
        "to": "+15553334444",
        "direction": "inbound",
        "callId": call_id,
        "callUrl": "https://voice.bandwidth.com/api/v2/accounts/9900000/calls/x",
        "startTime": "2024-03-01T12:00:00.000Z",
        **extra,
    }


def disconnect(call_id: str) -> dict[str, Any]:
    return {
        **initiate(call_id),
        "eventType": "disconnect",
        "eventTime": "2024-03-01T12:01:00.000Z",
        "endTime": "2024-03-01T12:01:00.000Z",
        "cause": "busy",
    }


def settings_for(db: Path) -> Settings:
    return Settings(storage=Storage(path=str(db)))


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the parent app")


# --------------------------------------------------------------------------------------------
# Mounted in a Starlette application


def test_a_mounted_tracker_records_and_serves_calls_when_the_parent_runs_its_lifespan(
    db_path: Path,
) -> None:
    tracker = create_app(settings_for(db_path))
    parent = Starlette(
        routes=[Route("/", home), Mount("/tracker", app=tracker)],
        lifespan=lambda app: tracker.lifespan(app),
    )
    with TestClient(parent) as client:
        assert client.get("/").text == "the parent app"
        r = client.post("/tracker/callbacks", json=initiate(ODD_ID))
        assert r.status_code == 200
        assert r.json() == {"seq": 1, "duplicate": False}
        r = client.post("/tracker/callbacks/voice/disconnect", json=disconnect(ODD_ID))
        assert r.json() == {"seq": 2, "duplicate": False}
        encoded = quote(ODD_ID, safe="")
        state = client.get(f"/tracker/calls/{encoded}").json()
        assert state["callId"] == ODD_ID
        assert state["outcome"] == "busy"
        events = client.get(f"/tracker/calls/{encoded}/events").json()
        assert [e["eventType"] for e in events["events"]] == ["initiate", "disconnect"]
        assert client.get("/tracker/calls", params={"status": "ended"}).json()["calls"][0][
            "callId"
        ] == (ODD_ID)
        assert client.get("/tracker/readyz").json()["lastSeq"] == 2
        assert client.get("/tracker/nothing-here").json()["error"] == "not_found"
        assert client.get("/calls/x").status_code == 404  # the parent's, not the tracker's


def test_a_mounted_tracker_combines_with_the_parents_own_lifespan(db_path: Path) -> None:
    tracker = create_app(settings_for(db_path))
    log: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[None]:
        log.append("parent up")
        yield
        log.append("parent down")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(tracker.lifespan(app))
            await stack.enter_async_context(own(app))
            yield

    parent = Starlette(routes=[Mount("/tracker", app=tracker)], lifespan=lifespan)
    with TestClient(parent) as client:
        assert log == ["parent up"]
        assert client.post("/tracker/callbacks", json=initiate("c-1")).status_code == 200
        assert client.get("/tracker/calls/c-1").json()["status"] == "started"
    assert log == ["parent up", "parent down"]
    assert tracker.writer is None  # drained and closed
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_a_mounted_tracker_without_its_lifespan_answers_503_instead_of_crashing(
    db_path: Path,
) -> None:
    tracker = create_app(settings_for(db_path))
    parent = Starlette(routes=[Route("/", home), Mount("/tracker", app=tracker)])
    with TestClient(parent, raise_server_exceptions=True) as client:
        assert client.get("/").status_code == 200
        for method, path in [
            ("POST", "/tracker/callbacks"),
            ("GET", "/tracker/calls/c-1"),
            ("GET", "/tracker/calls/c-1/events"),
            ("GET", "/tracker/calls"),
            ("GET", "/tracker/readyz"),
        ]:
            r = client.request(method, path, json=initiate("c-1"))
            assert r.status_code == 503, path
            assert r.json()["error"] == "unavailable"
            assert "lifespan" in r.json()["detail"]
        assert client.get("/tracker/healthz").status_code == 200
    assert not db_path.exists()  # nothing was opened


def test_a_tracker_mounted_under_a_prefix_that_needs_escaping_finds_its_routes(
    db_path: Path,
) -> None:
    tracker = create_app(settings_for(db_path))
    parent = Starlette(
        routes=[Mount("/my apps/tracker", app=tracker)],
        lifespan=lambda app: tracker.lifespan(app),
    )
    with TestClient(parent) as client:
        assert client.post("/my%20apps/tracker/callbacks", json=initiate(ODD_ID)).status_code == 200
        r = client.get(f"/my%20apps/tracker/calls/{quote(ODD_ID, safe='')}")
        assert r.status_code == 200
        assert r.json()["callId"] == ODD_ID


@pytest.mark.parametrize(
    ("path", "raw", "root", "want", "want_raw"),
    [
        ("/tracker/calls/a%2Fb", b"/tracker/calls/a%252Fb", "/tracker", "/calls/a%2Fb",
         b"/calls/a%252Fb"),
        ("/my app/calls/x", b"/my%20app/calls/x", "/my app", "/calls/x", b"/calls/x"),
        ("/trackers/calls", b"/trackers/calls", "/tracker", "/trackers/calls",
         b"/trackers/calls"),
        ("/calls/x", b"/calls/x", "/tracker", "/calls/x", b"/calls/x"),  # already stripped
        ("/tracker", b"/tracker", "/tracker", "/", b"/"),
        ("/calls/x", b"/calls/x", "", "/calls/x", b"/calls/x"),
    ],
)  # fmt: skip
def test_route_paths_drop_the_root_path_only_at_a_segment_boundary(
    path: str, raw: bytes, root: str, want: str, want_raw: bytes
) -> None:
    scope = {"path": path, "raw_path": raw, "root_path": root}
    assert route_path(scope) == want
    assert raw_route_path(scope) == want_raw


def test_the_lifespan_docstring_shows_the_mounting_pattern() -> None:
    doc = TrackerApp.lifespan.__doc__ or ""
    assert 'Mount("/tracker", app=tracker_app)' in doc
    assert "AsyncExitStack" in doc


# --------------------------------------------------------------------------------------------
# The Python API


def test_the_api_records_an_event_and_reads_the_call_back(db_path: Path) -> None:
    with Tracker.open(db_path) as t:
        assert t.ingest(initiate("c-1")) == [Appended(1, False)]
        assert t.ingest(disconnect("c-1")) == [Appended(2, False)]
        state = t.call("c-1")
        assert state is not None
        assert state["status"] == "ended"
        assert state["outcome"] == "busy"
        assert state["eventCount"] == 2
        page = t.events("c-1")
        assert page is not None and page["next"] is None
        events = page["events"]
        assert [e["eventType"] for e in events] == ["initiate", "disconnect"]
        assert events[0]["payload"] == initiate("c-1")
        first = t.events("c-1", limit=1)
        assert first is not None and [e["eventType"] for e in first["events"]] == ["initiate"]
        rest = t.events("c-1", after=first["next"], limit=1)
        assert rest is not None and [e["eventType"] for e in rest["events"]] == ["disconnect"]
        assert rest["next"] is None
        assert list(t.iter_events("c-1")) == events
        assert t.call("c-unknown") is None
        assert t.events("c-unknown") is None
        assert list(t.iter_events("c-unknown")) == []


def test_the_api_accepts_bytes_a_dict_and_a_list_alike(db_path: Path) -> None:
    raw = b'{"callId": "c-1", "eventType": "initiate", "eventTime": "2024-03-01T12:00:00Z"}'
    with Tracker.open(db_path) as t:
        [first] = t.ingest(raw)
        again = {"eventTime": "2024-03-01T12:00:00Z", "eventType": "initiate", "callId": "c-1"}
        assert t.ingest(again) == [Appended(first.seq, True)]  # same JSON value: a duplicate
        assert t.ingest([again, disconnect("c-1")]) == [
            Appended(first.seq, True),
            Appended(first.seq + 1, False),
        ]


def test_duplicates_are_recognised_across_reopening(db_path: Path) -> None:
    with Tracker.open(db_path) as t:
        [first] = t.ingest(initiate("c-1"))
    with Tracker.open(db_path) as t:
        assert t.ingest(initiate("c-1")) == [Appended(first.seq, True)]
        assert t.call("c-1")["eventCount"] == 1  # type: ignore[index]


def test_a_refused_body_is_quarantined_and_the_error_raised(db_path: Path) -> None:
    with Tracker.open(db_path) as t:
        with pytest.raises(InvalidJson, match="not valid JSON"):
            t.ingest(b'{"eventType": ')
        bad = initiate("c-1")
        del bad["callId"]
        with pytest.raises(EventRejected, match="callId"):
            t.ingest(bad)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT status, error, path, body FROM rejects ORDER BY id").fetchall()
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (400, "invalid_json", "api:ingest"),
        (422, "invalid_event", "api:ingest"),
    ]
    assert rows[0][3] == b'{"eventType": '


def test_a_batch_through_the_api_is_all_or_nothing(db_path: Path) -> None:
    bad = initiate("c-2")
    del bad["callId"]
    with Tracker.open(db_path) as t:
        with pytest.raises(EventRejected, match="element 1"):
            t.ingest([initiate("c-1"), bad, initiate("c-3")])
        assert t.call("c-1") is None
        assert t.call("c-3") is None


def test_the_api_applies_the_ingest_limits_of_its_settings(db_path: Path) -> None:
    settings = Settings(ingest=Ingest(max_batch=2, max_body_bytes=2000))
    with Tracker.open(db_path, settings=settings) as t:
        with pytest.raises(TooLarge, match="max_batch"):
            t.ingest([initiate(f"c-{i}") for i in range(3)])
        with pytest.raises(TooLarge, match="max_body_bytes"):
            t.ingest(initiate("c-1", padding="x" * 2000))
        assert t.settings.storage.path == str(db_path)


def test_replay_through_the_api_finds_no_drift_and_rebuilds_the_same_state(
    db_path: Path,
) -> None:
    with Tracker.open(db_path) as t:
        for i in range(20):
            t.ingest([initiate(f"c-{i}"), disconnect(f"c-{i}")] if i % 2 else initiate(f"c-{i}"))
        before = [t.call(f"c-{i}") for i in range(20)]
        assert t.replay(check=True) == []
        assert t.replay() == []
        assert [t.call(f"c-{i}") for i in range(20)] == before


def test_a_closed_tracker_refuses_with_unavailable(db_path: Path) -> None:
    t = Tracker.open(db_path)
    t.close()
    t.close()  # idempotent
    assert t.closed
    with pytest.raises(StorageUnavailable, match="closed"):
        t.ingest(initiate("c-1"))
    with pytest.raises(StorageUnavailable):
        t.call("c-1")


def test_the_api_checkpoints_the_wal_when_closed(db_path: Path) -> None:
    with Tracker.open(db_path) as t:
        t.ingest(initiate("c-1"))
    wal = Path(str(db_path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_data_written_by_the_api_is_visible_to_a_server_on_the_same_file(
    db_path: Path,
) -> None:
    with Tracker.open(db_path) as t:
        t.ingest([initiate(ODD_ID), disconnect(ODD_ID)])
    with running(db_path) as server, server.client() as c:
        r = c.get(f"/calls/{quote(ODD_ID, safe='')}")
        assert r.status_code == 200
        assert r.json()["outcome"] == "busy"
        again = c.post("/callbacks", json=initiate(ODD_ID))
        assert again.json() == {"seq": 1, "duplicate": True}


def test_the_api_and_a_running_server_share_the_file_both_ways(db_path: Path) -> None:
    with running(db_path) as server, server.client() as c, Tracker.open(db_path) as t:
        assert c.post("/callbacks", json=initiate("c-http")).json()["seq"] == 1
        assert t.ingest(initiate("c-api")) == [Appended(2, False)]
        assert t.call("c-http") is not None
        assert c.get("/calls/c-api").json()["status"] == "started"
        assert c.post("/callbacks", json=disconnect("c-api")).json()["seq"] == 3
        assert t.call("c-api")["status"] == "ended"  # type: ignore[index]
