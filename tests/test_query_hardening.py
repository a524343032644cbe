"""Hardening of the query side: what a hostile client can make the service hold or show.

Through Starlette's TestClient on a real SQLite file (the lifespan runs), like
``tests/test_api_query.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.callbacks import v1
from tests.test_api_query import post, serving
from tracker.events import V1_TYPES, V2_TYPES


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with serving(tmp_path / "tracker.db") as c:
        yield c


def test_unknown_event_types_are_counted_under_one_metrics_label(tmp_path: Path) -> None:
    with serving(tmp_path / "t.db") as c:
        post(c, v1("incomingcall", "c-1", "2024-05-01T10:00:00Z"))
        huge = "x" * 200_000
        post(c, v1(huge, "c-1", "2024-05-01T10:00:01Z"))
        for n in range(300):
            post(c, v1(f"made-up-{n}", "c-1", f"2024-05-01T10:00:{n % 60:02d}Z", n=str(n)))
        text = c.get("/metrics").text
    assert len(text) < 20_000
    labels = {
        line.split('event_type="')[1].split('"')[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("tracker_events_ingested_total{")
    }
    assert labels == {"incomingcall": 1, "other": 301}
    assert set(labels) <= V1_TYPES | V2_TYPES | {"other"}


@pytest.mark.parametrize(
    "value", ["9223372036854775808", "99999999999999999999999", "1_0", " 3 ", "-1", "+3", "0x1", ""]
)
def test_a_last_event_id_that_is_not_a_canonical_seq_gets_400_naming_the_header(
    client: TestClient, value: str
) -> None:
    r = client.get("/events/stream", headers={"Last-Event-ID": value})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_parameter"
    assert "Last-Event-ID" in r.json()["detail"]


def test_readyz_shows_no_counts_without_the_token_when_one_is_set(tmp_path: Path) -> None:
    with serving(tmp_path / "t.db", query={"token": "s3cr3t"}) as c:
        post(c, v1("incomingcall", "c-1", "2024-05-01T10:00:00Z"))
        for headers in ({}, {"authorization": "Bearer wrong"}):
            r = c.get("/readyz", headers=headers)
            assert (r.status_code, r.json()) == (200, {"status": "ready"})
            assert c.get("/healthz", headers=headers).json() == {"status": "ok"}
        r = c.get("/readyz", headers={"authorization": "Bearer s3cr3t"})
        assert r.json() == {"status": "ready", "lastSeq": 1}


def test_readyz_shows_the_last_seq_to_a_browser_signed_in_to_the_dashboard(tmp_path: Path) -> None:
    with serving(tmp_path / "t.db", query={"token": "s3cr3t"}) as c:
        post(c, v1("incomingcall", "c-1", "2024-05-01T10:00:00Z"))
        assert c.get("/readyz").json() == {"status": "ready"}
        c.get("/?token=wrong")  # a wrong token sets no session
        assert c.get("/readyz").json() == {"status": "ready"}
        c.get("/?token=s3cr3t")  # the sign-in link: the session cookie from now on
        assert c.cookies, "signing in set no cookie"
        assert c.get("/readyz").json() == {"status": "ready", "lastSeq": 1}


# --------------------------------------------------------------------------------------------
# GET /calls/{callId}/events is paged


def _timeline_events(cid: str) -> list[dict[str, str]]:
    """Events of one call with ties in event time, untimed events, and arrival order unlike
    the timeline's order."""
    out = []
    for i in range(7):  # seven events at the same instant (a tie broken by seq)
        out.append(v1("dtmf", cid, "2024-05-01T10:00:05Z", dtmfDigit=str(i)))
    for i in range(4):  # untimed: last, by seq
        out.append(v1("recording", cid, None, recordingUri=f"r-{i}"))
    out.append(v1("incomingcall", cid, "2024-05-01T10:00:00Z"))  # earliest, posted late
    for i in range(3):
        out.append(v1("speak", cid, f"2024-05-01T10:00:0{i + 6}Z", n=str(i)))
    out.append(v1("hangup", cid, "2024-05-01T09:59:59.999Z", cause="NORMAL_CLEARING"))
    return out


def _pages(c: TestClient, cid: str, limit: int) -> list[dict[str, Any]]:
    pages, after = [], None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        r = c.get(f"/calls/{cid}/events", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        after = page["next"]
        if after is None:
            return pages
        assert len(pages) < 100


def test_a_calls_timeline_pages_in_its_order_across_ties_and_untimed_events(
    client: TestClient,
) -> None:
    cid = "c-paged"
    for ev in _timeline_events(cid):
        post(client, ev)
    whole = client.get(f"/calls/{cid}/events", params={"limit": 1000}).json()
    assert whole["next"] is None and whole["callId"] == cid
    events = whole["events"]
    assert len(events) == 16
    # the order, computed here: event time (untimed last), then seq
    want = sorted(events, key=lambda e: (e["time"] is None, e["time"] or "", e["seq"]))
    assert [e["seq"] for e in events] == [e["seq"] for e in want]
    assert events[0]["eventType"] == "hangup" and events[-1]["eventType"] == "recording"
    for limit in (1, 2, 3, 5, 7, 8, 15, 16):
        pages = _pages(client, cid, limit)
        assert all(len(p["events"]) == limit for p in pages[:-1])
        assert 1 <= len(pages[-1]["events"]) <= limit
        assert [e for p in pages for e in p["events"]] == events, limit
    default = client.get(f"/calls/{cid}/events").json()
    assert default["events"] == events and default["next"] is None  # 100 by default


def test_a_timeline_page_stops_before_4_mib_of_payloads(tmp_path: Path) -> None:
    cid = "c-big"
    blob = "x" * 900_000
    with serving(tmp_path / "t.db") as c:
        for i in range(12):
            post(c, v1("speak", cid, f"2024-05-01T10:00:{i:02d}Z", text=blob, n=str(i)))
        pages = _pages(c, cid, 100)
        sizes = [len(p["events"]) for p in pages]
        assert sizes == [4, 4, 4]  # 4 x ~0.9 MB fit in 4 MiB, a fifth does not
        seen = [e["payload"]["n"] for p in pages for e in p["events"]]
        assert seen == [str(i) for i in range(12)]


def test_a_single_event_larger_than_a_page_still_comes_alone(tmp_path: Path) -> None:
    from tracker.storage.sqlite import queries
    from tracker.storage.sqlite.schema import connect

    db = tmp_path / "t.db"
    with serving(db) as c:
        for i in range(3):
            post(c, v1("speak", "c-1", f"2024-05-01T10:00:0{i}Z", text="y" * 1000, n=str(i)))
    conn = connect(db)
    try:
        found = queries.timeline(conn, "c-1", limit=100, max_bytes=10)
        assert found is not None
        rows, nxt = found
        assert len(rows) == 1 and nxt is not None
        found = queries.timeline(conn, "c-1", after=nxt, limit=100, max_bytes=10)
        assert found is not None and len(found[0]) == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"after": "17"}, "after"),
        ({"after": "x.1"}, "after"),
        ({"after": "1.-1"}, "after"),
        ({"after": "1.99999999999999999999"}, "after"),
        ({"after": " 1.2"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "1"}, "cursor"),
    ],
)
def test_bad_timeline_paging_parameters_get_400_naming_them(
    client: TestClient, params: dict[str, str], name: str
) -> None:
    post(client, v1("incomingcall", "c-1", "2024-05-01T10:00:00Z"))
    r = client.get("/calls/c-1/events", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_parameter" and name in r.json()["detail"]


def test_the_timeline_of_an_unknown_call_is_404_even_with_a_cursor(client: TestClient) -> None:
    r = client.get("/calls/c-none/events", params={"after": "u.5"})
    assert r.status_code == 404


# --------------------------------------------------------------------------------------------
# Bandwidth's v1 GET example: numbers with an unencoded "+"

# The query string of a v1 GET-mode callback in the shape of Bandwidth's example page, with the
# numbers as that page shows them: "+" not percent-encoded, so form decoding reads a space.
GET_EXAMPLE = (
    "callState=active&to=+19192223333&withholdCallerNumber=false&time=2016-02-20T16%3A22%3A29Z"
    "&applicationId=a-ktp3mmi4n35wdqmrwqosqpa&from=+19105553333&eventType=incomingcall"
    "&withholdCallerName=false&callId=c-get-example"
    "&callUri=https%3A%2F%2Fapi.catapult.inetwork.com%2Fv1%2Fusers%2Fu-1%2Fcalls%2Fc-get-example"
)


def test_an_unencoded_plus_in_a_get_callbacks_from_and_to_reads_as_e164(tmp_path: Path) -> None:
    import sqlite3
    from urllib.parse import parse_qsl

    db = tmp_path / "t.db"
    with serving(db) as c:
        first = c.get("/callbacks?" + GET_EXAMPLE)
        assert first.status_code == 200, first.text
        seq = first.json()["seq"]
        view = c.get("/calls/c-get-example").json()
        assert (view["from"], view["to"]) == ("+19105553333", "+19192223333")
        for query in ("from=+19105553333", "from=%2B19105553333", "to=+19192223333"):
            found = c.get("/calls?" + query).json()["calls"]
            assert [v["callId"] for v in found] == ["c-get-example"], query
        assert c.get("/calls?from=19105553333").json()["calls"] == []
        # the same event as a JSON POST (every value a string, numbers with their "+"): a duplicate
        fields = dict(parse_qsl(GET_EXAMPLE.replace("+", "%2B")))
        again = c.post("/callbacks", json=fields)
        assert again.json() == {"seq": seq, "duplicate": True}
        # and as a form POST with the same unencoded "+"
        form = c.post(
            "/callbacks",
            content=GET_EXAMPLE.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.json() == {"seq": seq, "duplicate": True}
        payload = c.get("/calls/c-get-example/events").json()["events"][0]["payload"]
        assert (payload["from"], payload["to"]) == ("+19105553333", "+19192223333")
    with sqlite3.connect(db) as conn:
        [(body, fmt)] = conn.execute("SELECT body, fmt FROM events").fetchall()
    assert (bytes(body).decode(), fmt) == (GET_EXAMPLE, "query")  # the log keeps what came


@pytest.mark.parametrize("value", ["+1 919", " 1 919", "  1919", " +1919", " ", " 1919a", "1919"])
def test_a_from_that_is_not_a_space_then_digits_is_kept_as_decoded(
    client: TestClient, value: str
) -> None:
    from urllib.parse import quote

    r = client.get(
        "/callbacks?eventType=incomingcall&callId=c-x&time=2016-02-20T16%3A22%3A29Z&from="
        + quote(value, safe="")
        + "&tag=+1919"  # only from and to are numbers: another field keeps what was decoded
    )
    assert r.status_code == 200, r.text
    assert client.get("/calls/c-x").json()["from"] == value
    assert client.get("/calls/c-x").json()["tag"] == " 1919"
    # JSON is exact: a space-led number posted as JSON stays as it is
    post(client, v1("answer", "c-j", "2016-02-20T16:22:30Z", **{"from": " 19105553333"}))
    assert client.get("/calls/c-j").json()["from"] == " 19105553333"
