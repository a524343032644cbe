"""The HTTP service against a real ``tracker serve`` process: ingest, dedupe, errors, quarantine,
storage faults (503), basic auth, server-sent events and many concurrent clients.

Each test starts its own server when it needs its own configuration or an empty log; the rest
share one server per module and use call ids of their own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import msgspec
import pytest
from server import Server, running, write_config

from tests.callbacks import V1_BASE, v1
from tracker.events import content_key, decode_object
from tracker.render import view
from tracker.state import fact_of, fold

V2_BASE = "https://voice.bandwidth.com/api/v2/accounts/9900000/calls"
APP_ID = "7fc9698a-b04a-468b-9e8f-91238c0d0086"


def new_id(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def v2(event_type: str, call_id: str | None, at: str, **extra: str) -> dict[str, str]:
    """A Voice API (v2) callback as Bandwidth sends it."""
    ev: dict[str, str] = {
        "eventType": event_type,
        "eventTime": at,
        "accountId": "9900000",
        "applicationId": APP_ID,
    }
    if call_id is not None:
        ev["callId"] = call_id
        ev["callUrl"] = f"{V2_BASE}/{call_id}"
    ev.update(extra)
    return ev


def hangup_body(call_id: str) -> dict[str, str]:
    return v1(
        "hangup",
        call_id,
        "2012-11-14T15:56:12.636Z",
        cause="NORMAL_CLEARING",
        callState="completed",
        **{"from": "+13233326955", "to": "+13865245000"},
    )


def rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the server's SQLite file directly, from this process (a fresh connection)."""
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        return conn.execute(sql, args).fetchall()


def all_rejects(client: httpx.Client, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/rejects", params={"after": after, "limit": 1000}, **kw).json()
        out += page["rejects"]
        if page["next"] is None:
            return out
        after = page["next"]


def metric(text: str, sample: str) -> float:
    """The value of one Prometheus sample line, e.g. ``tracker_duplicates_total``; 0 if absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the default configuration, shared by the module."""
    with running(tmp_path_factory.mktemp("srv") / "tracker.db") as server:
        yield server


@pytest.fixture
def client(srv: Server) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


# --------------------------------------------------------------------------------------------
# Ingest


def test_a_posted_event_is_answered_with_its_seq_only_after_it_is_committed(
    srv: Server, client: httpx.Client
) -> None:
    cid = new_id()
    body = (
        b'{ "eventType" : "incomingcall",\n  "from": "+13233326955", "to": "+13865245000",'
        b' "callId": "' + cid.encode() + b'", "callState": "started",'
        b' "time": "2012-11-14T15:55:01.000Z", "unknownField": [1, 2.50, {"x": null}] }'
    )
    r = client.post("/callbacks", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    answer = r.json()
    assert set(answer) == {"seq", "duplicate"}
    assert answer["duplicate"] is False
    # straight after the 200, another process sees the event and the projection
    stored = rows(srv.db, "SELECT body, call_id FROM events WHERE seq = ?", (answer["seq"],))
    assert stored == [(body, cid)]
    assert rows(srv.db, "SELECT status FROM calls WHERE call_id = ?", (cid,)) == [("started",)]


def test_a_sub_path_of_callbacks_is_the_same_endpoint(client: httpx.Client) -> None:
    cid = new_id()
    r = client.post(
        "/callbacks/bandwidth/voice/v1/answer", json=v1("answer", cid, "2012-11-14T15:55:04Z")
    )
    assert r.status_code == 200
    assert r.json()["duplicate"] is False
    again = client.post("/callbacks", json=v1("answer", cid, "2012-11-14T15:55:04Z"))
    assert again.json() == {"seq": r.json()["seq"], "duplicate": True}
    assert client.get(f"/calls/{cid}").json()["status"] == "answered"


def test_a_json_array_is_a_batch_answered_with_one_result_per_element(
    client: httpx.Client,
) -> None:
    cid = new_id()
    first = client.post("/callbacks", json=v1("incomingcall", cid, "2012-11-14T15:55:01Z"))
    batch = [
        v1("incomingcall", cid, "2012-11-14T15:55:01Z"),
        v1("answer", cid, "2012-11-14T15:55:04Z"),
        hangup_body(cid),
    ]
    r = client.post("/callbacks", json=batch)
    assert r.status_code == 200
    results = r.json()["results"]
    assert set(r.json()) == {"results"}
    assert len(results) == 3
    assert results[0] == {"seq": first.json()["seq"], "duplicate": True}
    assert [x["duplicate"] for x in results[1:]] == [False, False]
    assert results[1]["seq"] < results[2]["seq"]
    call = client.get(f"/calls/{cid}").json()
    assert (call["status"], call["outcome"], call["eventCount"]) == ("ended", "normal", 3)


def test_the_same_event_with_other_key_order_and_whitespace_is_a_duplicate(
    srv: Server, client: httpx.Client
) -> None:
    cid = new_id()
    event = v1("answer", cid, "2012-11-14T15:55:04.000Z", callState="active")
    r1 = client.post("/callbacks", content=json.dumps(event))
    reordered = json.dumps(dict(reversed(list(event.items()))), indent=4) + "\n\n"
    r2 = client.post(
        "/callbacks/retry", content=reordered, headers={"content-type": "application/json"}
    )
    assert r1.json()["duplicate"] is False
    assert r2.status_code == 200
    assert r2.json() == {"seq": r1.json()["seq"], "duplicate": True}
    assert rows(srv.db, "SELECT count(*) FROM events WHERE call_id = ?", (cid,)) == [(1,)]
    assert client.get(f"/calls/{cid}").json()["eventCount"] == 1


def test_a_duplicate_is_recognised_after_a_restart_on_the_same_file(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    cid = new_id()
    event = hangup_body(cid)
    with running(db) as server, server.client() as c:
        first = c.post("/callbacks", json=event).json()
        assert first["duplicate"] is False
        assert server.terminate() == 0
    with running(db) as server, server.client() as c:
        again = c.post("/callbacks", content=json.dumps(event, indent=2, sort_keys=True))
        assert again.status_code == 200
        assert again.json() == {"seq": first["seq"], "duplicate": True}
        assert c.get(f"/calls/{cid}").json()["eventCount"] == 1
    assert rows(db, "SELECT count(*) FROM events") == [(1,)]


def test_a_get_delivery_is_the_event_in_its_query_parameters_and_equals_a_post_of_strings(
    client: httpx.Client,
) -> None:
    cid = new_id()
    incoming = v1("incomingcall", cid, "2012-11-14T15:55:01Z", **{"from": "+1 323", "to": "+1"})
    got = client.get("/callbacks", params=incoming)
    assert got.status_code == 200
    assert got.json()["duplicate"] is False
    posted = client.post("/callbacks", json=incoming)
    assert posted.json() == {"seq": got.json()["seq"], "duplicate": True}
    # and the other way round, on a sub-path
    answer = v1("answer", cid, "2012-11-14T15:55:04Z")
    first = client.post("/callbacks", json=answer).json()
    again = client.get("/callbacks/bw", params=answer)
    assert again.json() == {"seq": first["seq"], "duplicate": True}
    call = client.get(f"/calls/{cid}").json()
    assert (call["status"], call["from"], call["direction"]) == ("answered", "+1 323", "inbound")
    timeline = client.get(f"/calls/{cid}/events").json()["events"]
    assert timeline[0]["payload"] == incoming


def test_a_form_encoded_post_is_read_as_string_fields(client: httpx.Client) -> None:
    cid = new_id()
    event = v1("incomingcall", cid, "2012-11-14T15:55:01Z", **{"from": "+1 (323) 332-6955"})
    r = client.post("/callbacks", data=event)
    assert r.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert r.status_code == 200
    assert r.json()["duplicate"] is False
    assert client.post("/callbacks", json=event).json() == {
        "seq": r.json()["seq"],
        "duplicate": True,
    }
    call = client.get(f"/calls/{cid}").json()
    assert call["from"] == "+1 (323) 332-6955"
    assert client.get(f"/calls/{cid}/events").json()["events"][0]["payload"] == event


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/json;charset=UTF-8", "APPLICATION/JSON", None],
)
def test_json_is_accepted_with_any_charset_or_without_a_content_type(
    client: httpx.Client, content_type: str | None
) -> None:
    cid = new_id()
    body = json.dumps(v2("initiate", cid, "2019-06-20T15:54:22.234Z", direction="inbound"))
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/callbacks", content=body.encode(), headers=headers)
    if content_type is None:
        assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    assert client.get(f"/calls/{cid}").json()["api"] == "v2"


def test_call_ids_with_braces_quotes_spaces_unicode_and_slashes_round_trip(
    client: httpx.Client,
) -> None:
    for cid in ["{callId}", "quo\"te's", "with space", "ünï☎-日本", "a/b", "a%2Fb", "?x#y"]:
        posted = client.post("/callbacks", json=v1("incomingcall", cid, "2012-11-14T15:55:01Z"))
        assert posted.status_code == 200, cid
        call = client.get("/calls/" + quote(cid, safe=""))
        assert call.status_code == 200, cid
        assert call.json()["callId"] == cid
        timeline = client.get("/calls/" + quote(cid, safe="") + "/events").json()
        assert timeline["callId"] == cid
        assert [e["seq"] for e in timeline["events"]] == [posted.json()["seq"]]


# --------------------------------------------------------------------------------------------
# Errors and the quarantine


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a small body limit and batch limit."""
    d = tmp_path_factory.mktemp("limited")
    config = write_config(d / "config.toml", {"ingest": {"max_body_bytes": 2048, "max_batch": 3}})
    with running(d / "tracker.db", config=config) as server:
        yield server


def test_every_refused_body_is_answered_with_the_error_shape_and_kept_in_the_quarantine(
    limited: Server,
) -> None:
    cid = new_id()
    good = hangup_body(cid)
    padded = {**good, "padding": "x" * 3000}
    json_ct = {"content-type": "application/json"}
    sent: list[tuple[int, str, bytes, str]] = []  # status, code, body, a word of the detail
    with limited.client() as c:

        def refuse(status: int, code: str, body: bytes, word: str, **kw: Any) -> dict[str, Any]:
            r = c.post("/callbacks/refused", content=body, **kw)
            err = assert_error(r, status, code)
            assert word in err["detail"], err
            sent.append((status, code, body, word))
            return err

        refuse(400, "invalid_json", b'{"eventType": "hangup", "callId": ', "JSON", headers=json_ct)
        refuse(400, "invalid_json", b"", "empty", headers=json_ct)
        refuse(400, "invalid_json", b"  \n", "empty")
        refuse(
            415,
            "unsupported_media_type",
            json.dumps(good).encode(),
            "text/plain",
            headers={"content-type": "text/plain"},
        )
        missing = {k: v for k, v in good.items() if k != "callId"}
        err = refuse(422, "invalid_event", json.dumps(missing).encode(), "callId", headers=json_ct)
        assert err["detail"] == "callId is required for hangup"
        no_type = {k: v for k, v in good.items() if k != "eventType"}
        refuse(422, "invalid_event", json.dumps(no_type).encode(), "eventType")
        refuse(422, "invalid_event", b'"just a string"', "object")
        other = new_id()
        batch = [v1("incomingcall", other, "2012-11-14T15:55:01Z"), missing]
        err = refuse(422, "invalid_event", json.dumps(batch).encode(), "element 1")
        assert err["detail"] == "element 1: callId is required for hangup"
        four = [v1("dtmf", other, f"2012-11-14T15:55:0{i}Z", dtmfDigit=str(i)) for i in range(4)]
        refuse(413, "too_large", json.dumps(four).encode(), "max_batch")
        big = json.dumps(padded).encode()
        refuse(413, "too_large", big, "the limit is 2048", headers=json_ct)
        chunks = [big[i : i + 500] for i in range(0, len(big), 500)]
        r = c.post("/callbacks/chunked", content=iter(chunks), headers=json_ct)
        assert "content-length" not in r.request.headers
        assert "exceeds 2048 bytes" in assert_error(r, 413, "too_large")["detail"]

        # nothing of a refused body is logged: not even the valid element of a refused batch
        assert c.get(f"/calls/{other}").status_code == 404
        assert c.get(f"/calls/{cid}").status_code == 404

        rejects = all_rejects(c)
        for status, code, body, word in sent:
            found = [
                x
                for x in rejects
                if x["status"] == status and x["error"] == code and word in x["detail"]
            ]
            assert found, (status, code, body)
            if status == 413 and word == "the limit is 2048":  # refused unread: its head is kept
                assert any(x["body"] and body.startswith(x["body"].encode()) for x in found)
            else:
                assert body.decode() in [x["body"] for x in found], (status, code, body)
            assert all(x["path"] == "/callbacks/refused" for x in found)
            assert all(x["receivedAt"].endswith("Z") for x in found)
        chunked = [x for x in rejects if x["path"] == "/callbacks/chunked"]
        assert [x["status"] for x in chunked] == [413]
        assert chunked[0]["body"] and big.startswith(chunked[0]["body"].encode())

        # the repaired body is accepted
        r = c.post("/callbacks", json=good)
        assert r.status_code == 200
        assert r.json()["duplicate"] is False
        assert c.get(f"/calls/{cid}").json()["outcome"] == "normal"
        fixed = c.post("/callbacks", json=[*batch[:1], good])
        assert [x["duplicate"] for x in fixed.json()["results"]] == [False, True]
        # and after the quarantine, a connection that was closed still leaves the server usable
        assert c.get("/healthz").status_code == 200


def test_a_body_of_exactly_max_body_bytes_and_a_batch_of_exactly_max_batch_are_accepted(
    limited: Server,
) -> None:
    cid = new_id()
    body = json.dumps(hangup_body(cid)).encode()
    exact = body + b" " * (2048 - len(body))
    with limited.client() as c:
        r = c.post("/callbacks", content=exact)
        assert r.status_code == 200, r.text
        r = c.post("/callbacks", content=iter([exact[:1000], exact[1000:]]))
        assert r.json() == {"seq": r.json()["seq"], "duplicate": True}
        assert_error(c.post("/callbacks", content=exact + b" "), 413, "too_large")
        over = iter([exact[:1000], exact[1000:] + b" "])
        assert_error(c.post("/callbacks", content=over), 413, "too_large")
        three = [v1("dtmf", cid, f"2012-11-14T15:55:0{i}Z", dtmfDigit=str(i)) for i in range(3)]
        r = c.post("/callbacks", json=three)
        assert [x["duplicate"] for x in r.json()["results"]] == [False, False, False]


def test_a_refused_get_delivery_is_quarantined_with_its_query_string(limited: Server) -> None:
    cid = new_id()
    event = v1("hangup", None, "2012-11-14T15:56:12Z", cause="NORMAL_CLEARING", tag=cid)
    with limited.client() as c:
        r = c.get("/callbacks/get", params=event)
        assert assert_error(r, 422, "invalid_event")["detail"] == "callId is required for hangup"
        mine = [x for x in all_rejects(c) if cid in x["body"]]
        assert len(mine) == 1
        assert (mine[0]["status"], mine[0]["path"]) == (422, "/callbacks/get")
        assert dict(parse_qsl(mine[0]["body"])) == event
        r = c.get("/callbacks/get", params={**event, "callId": cid})
        assert r.status_code == 200


def test_methods_other_than_get_and_post_on_callbacks_are_405(limited: Server) -> None:
    with limited.client() as c:
        for method in ("PUT", "DELETE", "PATCH"):
            r = c.request(method, "/callbacks", json=hangup_body(new_id()))
            assert_error(r, 405, "method_not_allowed")
            assert r.headers["allow"] == "GET, POST"
        r = c.put("/callbacks/sub/path", content=b"{}")
        assert (r.status_code, r.headers["allow"]) == (405, "GET, POST")
        r = c.put("/calls/x")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET, HEAD"
        r = c.post("/calls")
        assert_error(r, 405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}
        assert c.head("/calls").status_code == 200
        assert_error(c.get("/no/such/route"), 404, "not_found")


# --------------------------------------------------------------------------------------------
# Storage faults


def test_a_locked_database_is_503_and_the_server_recovers_by_itself_when_it_is_released(
    tmp_path: Path,
) -> None:
    db = tmp_path / "locked.db"
    config = write_config(tmp_path / "config.toml", {"storage": {"busy_timeout_ms": 200}})
    with running(db, config=config) as server, server.client() as c:
        before = c.post("/callbacks", json=hangup_body(new_id()))
        assert before.status_code == 200
        refused = [new_id() for _ in range(3)]
        lock = sqlite3.connect(db, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            for cid in refused:
                r = c.post("/callbacks", json=hangup_body(cid))
                err = assert_error(r, 503, "unavailable")
                assert "locked" in err["detail"]
            batch = [v1("incomingcall", refused[0], "2012-11-14T15:55:01Z")]
            assert_error(c.post("/callbacks", json=batch), 503, "unavailable")
            # a body that would be quarantined cannot be kept either: 503, so it is resent
            assert_error(c.post("/callbacks", content=b"{oops"), 503, "unavailable")
            assert_error(c.get("/readyz"), 503, "unavailable")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        after = c.post("/callbacks", json=hangup_body(refused[0]))
        assert after.status_code == 200
        assert after.json() == {"seq": before.json()["seq"] + 1, "duplicate": False}
        assert c.get("/readyz").status_code == 200
        assert c.get(f"/calls/{refused[1]}").status_code == 404
        assert all_rejects(c) == []
        assert metric(c.get("/metrics").text, "tracker_storage_errors_total") >= 5
    assert rows(db, "SELECT count(*) FROM events") == [(2,)]


# --------------------------------------------------------------------------------------------
# Auth


def test_ingest_basic_auth_challenges_without_credentials_and_logs_nothing(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "config.toml",
        {"ingest": {"username": "bw", "password": "pa:ss w0rd"}, "query": {"token": "tok"}},
    )
    bearer = {"authorization": "Bearer tok"}
    event = hangup_body(new_id())
    with running(tmp_path / "auth.db", config=config) as server, server.client() as c:

        def failures() -> float:
            text = c.get("/metrics", headers=bearer).text
            return metric(text, 'tracker_auth_failures_total{scope="ingest"}')

        assert failures() == 0
        r = c.post("/callbacks", json=event)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Basic realm="tracker"'
        assert failures() == 1
        assert_error(c.get("/callbacks", params=event), 401, "unauthorized")
        wrong = c.post("/callbacks", json=event, auth=("bw", "nope"))
        assert_error(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == 'Basic realm="tracker"'
        garbage = {"authorization": "Basic !!!not-base64"}
        assert_error(c.post("/callbacks", json=event, headers=garbage), 401, "unauthorized")
        assert failures() == 4
        assert c.get("/events", headers=bearer).json() == {"events": [], "next": None}
        assert all_rejects(c, headers=bearer) == []
        # Bandwidth resends with the credentials after the challenge
        ok = c.post("/callbacks/v2", json=event, auth=("bw", "pa:ss w0rd"))
        assert ok.status_code == 200
        assert ok.json() == {"seq": 1, "duplicate": False}
        creds = base64.b64encode(b"bw:pa:ss w0rd").decode()
        again = c.get("/callbacks", params=event, headers={"authorization": f"basic {creds}"})
        assert again.json() == {"seq": 1, "duplicate": True}
        assert failures() == 4
        # the query token is its own thing: basic credentials do not open the query API
        assert_error(c.get("/events", auth=("bw", "pa:ss w0rd")), 401, "unauthorized")
        # and the live stream takes the bearer token like every query route
        assert_error(c.get("/events/stream"), 401, "unauthorized")
        with c.stream("GET", "/events/stream", headers=bearer) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            frames = sse_frames(s)
            assert next(frames)["id"] == "1"


# --------------------------------------------------------------------------------------------
# Server-sent events


def sse_frames(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The frames of an event stream that carry an ``id`` (comments and ``retry`` skipped)."""
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "id" in frame:
                yield frame
            frame = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        frame[field] = value.removeprefix(" ")


def test_the_event_stream_sends_the_log_then_live_events_and_resumes_after_last_event_id(
    srv: Server, client: httpx.Client
) -> None:
    cid = new_id()
    posted = [
        client.post("/callbacks", json=v1("incomingcall", cid, "2012-11-14T15:55:01Z")),
        client.post("/callbacks", json=v1("answer", cid, "2012-11-14T15:55:04Z")),
    ]
    seqs = [r.json()["seq"] for r in posted]
    start = seqs[0] - 1
    timeout = httpx.Timeout(5.0, read=3.0)
    with srv.client(timeout=timeout) as sse, srv.client() as poster:
        with sse.stream("GET", "/events/stream", params={"after": start}) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            frames = sse_frames(s)
            got = [next(frames), next(frames)]
            assert [int(f["id"]) for f in got] == seqs
            assert all(f["event"] == "callback" for f in got)
            data = json.loads(got[1]["data"])
            assert data["seq"] == seqs[1]
            assert data["callId"] == cid
            assert data["payload"] == v1("answer", cid, "2012-11-14T15:55:04Z")
            live = hangup_body(cid)
            t0 = time.monotonic()  # posted pretty-printed: its newlines must not split the frame
            seq = poster.post("/callbacks", content=json.dumps(live, indent=2)).json()["seq"]
            frame = next(frames)
            assert time.monotonic() - t0 < 1.0
            assert int(frame["id"]) == seq
            assert json.loads(frame["data"])["payload"] == live
        with sse.stream("GET", "/events/stream", headers={"Last-Event-ID": str(seqs[0])}) as s:
            assert [int(next(sse_frames(s))["id"])] == [seqs[1]]
        with sse.stream("GET", "/events/stream", params={"after": seqs[1]}) as s:
            assert int(next(sse_frames(s))["id"]) == seq
        r = sse.get("/events/stream", headers={"Last-Event-ID": "yesterday"})
        assert_error(r, 400, "bad_parameter")
        assert_error(sse.get("/events/stream", params={"after": "-1"}), 400, "bad_parameter")


# --------------------------------------------------------------------------------------------
# Many concurrent clients


CAUSES_V1 = [
    "NORMAL_CLEARING",
    "NORMAL_CLEARING",
    "USER_BUSY",
    "NO_ANSWER",
    "ORIGINATOR_CANCEL",
    "CALL_REJECTED",
    "UNALLOCATED_NUMBER",
    "NORMAL_TEMPORARY_FAILURE",
    "SWITCH_CONGESTION",
    "NORMAL_UNSPECIFIED",
]
CAUSES_V2 = [
    "hangup",
    "hangup",
    "busy",
    "timeout",
    "cancel",
    "rejected",
    "callback-error",
    "application-error",
    "node-capacity-exceeded",
    "error",
    "some-new-cause",
]


def _iso(ms: int, style: int = 0) -> str:
    """Epoch ms in one of Bandwidth's v1 styles (style 0 = the usual, with milliseconds)."""
    from tracker.events import format_time

    text = format_time(ms)
    assert text is not None
    if style == 1:
        return text[:19] + "Z"  # no milliseconds
    if style == 2:  # -02:00 offset
        shifted = format_time(ms - 2 * 3600_000)
        assert shifted is not None
        return shifted[:23] + "-02:00"
    if style == 3:  # hour-only offset
        shifted = format_time(ms - 3 * 3600_000)
        assert shifted is not None
        return shifted[:23] + "-03"
    return text


def call_flow(rng: random.Random, n: int) -> list[dict[str, str]]:
    """The callbacks of one realistic call (and of its transfer leg, if any)."""
    t0 = 1_352_908_501_000 + n * 37_000 + rng.randrange(0, 30_000)
    ring = rng.randrange(500, 20_000)
    talk = rng.randrange(1_000, 300_000)
    a, b = "+1323" + str(rng.randrange(1_000_000, 9_999_999)), "+1386524" + str(1000 + n)
    kind = rng.choice(["v1", "v1", "v1-reject", "v1-timeout", "v2", "v2", "v2-transfer"])
    cid = f"c-{n:04d}-{rng.getrandbits(40):010x}"
    if kind.startswith("v1"):
        style = rng.randrange(4)
        nums = {"from": a, "to": b}
        out = [
            v1(
                "incomingcall",
                cid,
                _iso(t0, style),
                callState="started",
                applicationId="a-25nh2lu",
                **nums,
            )
        ]
        if kind == "v1-reject":
            out.append(
                v1(
                    "hangup",
                    cid,
                    _iso(t0 + ring, style),
                    cause="CALL_REJECTED",
                    callState="completed",
                    **nums,
                )
            )
            return out
        if kind == "v1-timeout":
            out.append(v1("timeout", cid, _iso(t0 + ring, style), **nums))
            return out
        out.append(v1("answer", cid, _iso(t0 + ring, style), callState="active", **nums))
        if rng.random() < 0.5:
            out.append(v1("speak", cid, _iso(t0 + ring + 400), status="started", tag="ivr"))
            out.append(v1("dtmf", cid, _iso(t0 + ring + 3000), dtmfDigit=str(rng.randrange(10))))
        if rng.random() < 0.3:
            out.append(
                v1(
                    "recording",
                    cid,
                    None,
                    recordingUri=f"{V1_BASE}/recordings/r-{n}",
                    status="complete",
                )
            )
        out.append(
            v1(
                "hangup",
                cid,
                _iso(t0 + ring + talk, style),
                cause=rng.choice(CAUSES_V1),
                callState="completed",
                **nums,
            )
        )
        if rng.random() < 0.1:  # a second, different hangup: a conflicting end
            out.append(
                v1(
                    "hangup",
                    cid,
                    _iso(t0 + ring + talk + 5),
                    cause="NORMAL_UNSPECIFIED",
                    callState="completed",
                    **nums,
                )
            )
        return out
    direction = rng.choice(["inbound", "outbound"])
    base = {"from": a, "to": b, "direction": direction}
    start, answer, end = _iso(t0), _iso(t0 + ring), _iso(t0 + ring + talk)
    tag = {"tag": f"campaign-{n % 5}"} if rng.random() < 0.4 else {}
    out = [v2("initiate", cid, start, startTime=start, **base, **tag)]
    answered = rng.random() < 0.8
    if answered:
        out.append(v2("answer", cid, answer, startTime=start, answerTime=answer, **base))
        if rng.random() < 0.4:
            out.append(
                v2(
                    "gather",
                    cid,
                    _iso(t0 + ring + 900),
                    digits="12",
                    startTime=start,
                    answerTime=answer,
                    terminatingDigit="#",
                    **base,
                )
            )
    if kind == "v2-transfer" and answered:
        leg = f"c-{n:04d}-b-{rng.getrandbits(32):08x}"
        bstart, banswer = _iso(t0 + ring + 1000), _iso(t0 + ring + 3000)
        bend = _iso(t0 + ring + talk - 500)
        legbase = {
            "from": b,
            "to": "+19195551234",
            "direction": "outbound",
            "parentCallId": cid,
            "startTime": bstart,
        }
        out.append(v2("transferAnswer", leg, banswer, answerTime=banswer, **legbase))
        out.append(
            v2(
                "transferDisconnect",
                leg,
                bend,
                answerTime=banswer,
                endTime=bend,
                cause=rng.choice(["hangup", "busy", "cancel"]),
                **legbase,
            )
        )
        out.append(
            v2(
                "transferComplete",
                cid,
                bend,
                startTime=start,
                answerTime=answer,
                cause="hangup",
                **base,
            )
        )
    disconnect = {"startTime": start, "endTime": end, "cause": rng.choice(CAUSES_V2), **base}
    if answered:
        disconnect["answerTime"] = answer
    if disconnect["cause"] in ("error", "application-error"):
        disconnect["errorMessage"] = "Service unavailable"
        disconnect["errorId"] = "4a2a0d3a-1c56-4f1a-9d60-1f1b3c8c6e20"
    out.append(v2("disconnect", cid, end, **disconnect))
    if rng.random() < 0.2:
        late = _iso(t0 + ring + talk + 60_000)
        out.append(
            v2(
                "recordingAvailable",
                cid,
                late,
                recordingId=f"r-{n}",
                status="complete",
                endTime=end,
                startTime=start,
                **base,
            )
        )
    if rng.random() < 0.1:  # a type this release does not know
        out.append(v2("someFutureEvent", cid, _iso(t0 + ring + 10), **base))
    return out


def test_many_concurrent_clients_with_shuffled_duplicated_events_agree_with_the_local_fold(
    tmp_path: Path,
) -> None:
    rng = random.Random(20121114)
    events = [e for n in range(300) for e in call_flow(rng, n)]
    distinct = {content_key(e)[1]: e for e in events}
    deliveries: list[tuple[str, list[dict[str, str]]]] = []  # (how, events)
    for e in events:
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            how = rng.choices(["json", "json-pretty", "get", "form", "batch"], [6, 2, 1, 1, 1])[0]
            deliveries.append((how, [e]))
    rng.shuffle(deliveries)
    # fold some neighbours into batches (each element is its own event)
    merged: list[tuple[str, list[dict[str, str]]]] = []
    for how, evs in deliveries:
        if (
            how == "batch"
            and merged
            and merged[-1][0] == "batch"
            and len(merged[-1][1]) < 4
            and all(content_key(x) != content_key(evs[0]) for x in merged[-1][1])
        ):
            merged[-1][1].append(evs[0])
            continue
        merged.append((how, list(evs)))

    db = tmp_path / "concurrent.db"
    results: list[tuple[bytes, int, bool]] = []
    lock = threading.Lock()
    failures: list[str] = []
    local = threading.local()

    def deliver(item: tuple[str, list[dict[str, str]]]) -> None:
        how, evs = item
        c: httpx.Client = local.client
        path = rng_path(evs[0])
        if how == "json":
            r = c.post(path, json=evs[0])
        elif how == "json-pretty":
            shuffled = list(evs[0].items())
            random.Random(len(path)).shuffle(shuffled)
            r = c.post(path, content=json.dumps(dict(shuffled), indent=3))
        elif how == "get":
            r = c.get(path, params=evs[0])
        elif how == "form":
            r = c.post(path, data=evs[0])
        else:
            r = c.post(path, json=evs)
        if r.status_code != 200:
            with lock:
                failures.append(f"{how} {r.status_code} {r.text}")
            return
        got = r.json()["results"] if how == "batch" else [r.json()]
        with lock:
            for e, res in zip(evs, got, strict=True):
                results.append((content_key(e)[1], res["seq"], res["duplicate"]))

    def rng_path(e: dict[str, str]) -> str:
        return "/callbacks" if len(e["eventType"]) % 2 else f"/callbacks/{e['eventType']}"

    streamed: list[int] = []

    def watch(server: Server, ready: threading.Event) -> None:
        """A live /events/stream reader during the whole load: it must see every seq once."""
        timeout = httpx.Timeout(10.0, read=20.0)
        with server.client(timeout=timeout) as c, c.stream("GET", "/events/stream") as s:
            ready.set()
            for frame in sse_frames(s):
                streamed.append(int(frame["id"]))
                if len(streamed) >= len(distinct):
                    return

    with running(db) as server:
        clients: list[httpx.Client] = []
        ready = threading.Event()
        watcher = threading.Thread(target=watch, args=(server, ready), daemon=True)
        watcher.start()
        assert ready.wait(10)

        def init() -> None:
            local.client = server.client(timeout=30.0)
            with lock:
                clients.append(local.client)

        try:
            with ThreadPoolExecutor(max_workers=10, initializer=init) as pool:
                list(pool.map(deliver, merged))
        finally:
            for c in clients:
                c.close()
        assert failures == []
        watcher.join(30)
        assert streamed == list(range(1, len(distinct) + 1))

        by_key: dict[bytes, set[int]] = defaultdict(set)
        fresh: dict[bytes, int] = defaultdict(int)
        for key, seq, dup in results:
            by_key[key].add(seq)
            fresh[key] += not dup
        assert set(by_key) == set(distinct)
        assert all(len(s) == 1 for s in by_key.values())
        assert all(n == 1 for n in fresh.values())
        assert sorted(next(iter(s)) for s in by_key.values()) == list(range(1, len(distinct) + 1))

        per_call: dict[str, list[dict[str, str]]] = defaultdict(list)
        for e in distinct.values():
            per_call[e["callId"]].append(e)
        assert len(per_call) >= 300
        with server.client() as c:
            for cid, evs in per_call.items():
                want = msgspec.to_builtins(
                    view(fold((fact_of(decode_object(e)) for e in evs), cid))
                )
                got = c.get("/calls/" + quote(cid, safe="")).json()
                for k in ("firstSeq", "lastSeq"):
                    del want[k], got[k]
                assert got == want, cid
            listed = c.get("/calls", params={"limit": 1000}).json()["calls"]
            assert len(listed) == len(per_call)
            stats = c.get("/stats").json()
            assert stats["total"] == len(per_call)
        assert server.terminate() == 0
    assert rows(db, "SELECT count(*) FROM events") == [(len(distinct),)]
    check = subprocess.run(
        [sys.executable, "-m", "tracker", "replay", "--check", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
