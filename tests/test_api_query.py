"""The query API through Starlette's TestClient (the lifespan runs, the storage is a real SQLite
file): call state, timelines, listing with filters and keyset pagination, stats, the log, the
quarantine, health, metrics, the OpenAPI document, the bearer token, and the indexes behind
``/calls``.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import msgspec
import pytest
from databases import module_db
from starlette.testclient import TestClient

from tests.callbacks import SPEC_EXAMPLE_VIEW, V1_BASE, v1
from tracker.app import create_app
from tracker.config import load_settings
from tracker.events import decode_object, format_time, parse_time
from tracker.ingest import make_entry
from tracker.storage.sql import FILTER_COLUMNS
from tracker.storage.sqlite import SqliteStorage
from tracker.storage.sqlite.queries import list_calls
from tracker.storage.sqlite.schema import connect

V2_BASE = "https://voice.bandwidth.com/api/v2/accounts/9900000/calls"
DAY0 = parse_time("2012-11-10T00:00:00Z") or 0


def v2(event_type: str, call_id: str, at: str, **extra: str) -> dict[str, str]:
    ev = {"eventType": event_type, "eventTime": at, "accountId": "9900000", "callId": call_id}
    ev["callUrl"] = f"{V2_BASE}/{call_id}"
    ev.update(extra)
    return ev


def at(ms: int) -> str:
    text = format_time(ms)
    assert text is not None
    return text


@contextlib.contextmanager
def serving(db: Path | str, **sections: dict[str, Any]) -> Iterator[TestClient]:
    """The app on ``db`` (a SQLite file or a PostgreSQL URL) with extra configuration sections,
    lifespan running."""
    key = "url" if str(db).startswith("postgresql://") else "path"
    settings = load_settings(env={}, overrides={"storage": {key: str(db)}, **sections})
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def client(db_target: str) -> Iterator[TestClient]:
    with serving(db_target) as c:
        yield c


def assert_error(r: httpx2.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    detail: str = body["detail"]
    return detail


def post(client: TestClient, event: Any, **kw: Any) -> Any:
    r = client.post("/callbacks", json=event, **kw)
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------------------------
# A dataset of calls of every kind, shared by the listing and stats tests


def call_events(n: int, rng: random.Random) -> list[dict[str, str]]:
    t0 = DAY0 + n * 3 * 3600_000 + rng.randrange(0, 60_000)
    cid = f"c-{n:03d}"
    froms, tos = ["+13233326955", "+13233320000", "+14155550100"], ["+13865245000", "+19195551234"]
    nums = {"from": froms[n % 3], "to": tos[n % 2]}
    kind = n % 9
    if kind == 0:  # v1 inbound, answered, hung up with a cause
        cause = ["NORMAL_CLEARING", "USER_BUSY", "NORMAL_UNSPECIFIED"][n % 3]
        return [
            v1("incomingcall", cid, at(t0), **nums),
            v1("answer", cid, at(t0 + 3000), callState="active", **nums),
            v1("hangup", cid, at(t0 + 70_000), cause=cause, **nums),
        ]
    if kind == 1:  # v1 rejected
        return [
            v1("incomingcall", cid, at(t0), **nums),
            v1("hangup", cid, at(t0 + 500), cause="CALL_REJECTED", **nums),
        ]
    if kind == 2:  # v1 still ringing, with a tag
        return [v1("incomingcall", cid, at(t0), tag=f"t{n % 2}", **nums)]
    if kind == 3:  # v1 answered, no start event: direction and startedAt unknown
        return [v1("answer", cid, at(t0), callState="active", tag="t1", **nums)]
    if kind == 4:  # v1 timed out
        return [v1("incomingcall", cid, at(t0), **nums), v1("timeout", cid, at(t0 + 30_000))]
    if kind == 5:  # only an untimed event: firstEventAt unknown
        return [v1("recording", cid, None, recordingUri=f"{V1_BASE}/recordings/r-{n}")]
    direction = ["inbound", "outbound"][n % 2]
    base = {"direction": direction, "startTime": at(t0), **nums}
    if kind == 6:  # v2 answered and disconnected
        cause = ["hangup", "busy", "application-error", "timeout"][n % 4]
        return [
            v2("initiate", cid, at(t0), **base),
            v2("answer", cid, at(t0 + 2000), answerTime=at(t0 + 2000), **base),
            v2("disconnect", cid, at(t0 + 9000), endTime=at(t0 + 9000), cause=cause, **base),
        ]
    if kind == 7:  # v2 answered, ongoing, tagged
        return [
            v2("initiate", cid, at(t0), tag="t0", **base),
            v2("answer", cid, at(t0 + 1000), answerTime=at(t0 + 1000), **base),
        ]
    return [  # v2 cancelled before answer
        v2("initiate", cid, at(t0), **base),
        v2("disconnect", cid, at(t0 + 4000), endTime=at(t0 + 4000), cause="cancel", **base),
    ]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[int, Any]]]:
    """60 calls posted in shuffled batches; yields the client and ``{seq: event}``."""
    rng = random.Random(7)
    events = [e for n in range(60) for e in call_events(n, rng)]
    rng.shuffle(events)
    by_seq: dict[int, dict[str, str]] = {}
    with module_db(request.param, tmp_path_factory) as db, serving(db) as c:
        for i in range(0, len(events), 25):
            batch = events[i : i + 25]
            for e, res in zip(batch, post(c, batch)["results"], strict=True):
                assert res["duplicate"] is False
                by_seq[res["seq"]] = e
        yield c, by_seq


def all_calls(c: TestClient) -> list[dict[str, Any]]:
    page = c.get("/calls", params={"limit": 1000}).json()
    assert page["next"] is None
    calls: list[dict[str, Any]] = page["calls"]
    return calls


def walk(c: TestClient, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Every page of ``/calls`` by following ``next``."""
    out: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        q = {**params, "limit": limit} | ({} if cursor is None else {"cursor": cursor})
        r = c.get("/calls", params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["calls"]) <= limit
        out += page["calls"]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            return out
        assert isinstance(cursor, str)
        assert len(page["calls"]) == limit
        assert pages < 1000


# --------------------------------------------------------------------------------------------
# One call


def test_an_unknown_call_is_404_not_found(client: TestClient) -> None:
    assert "nope" in assert_error(client.get("/calls/nope"), 404, "not_found")
    assert_error(client.get("/calls/nope/events"), 404, "not_found")
    assert_error(client.get("/calls/"), 404, "not_found")
    assert_error(client.get("/calls/a/b"), 404, "not_found")


@pytest.mark.parametrize(
    "call_id", ["{callId}", 'say "hi"', "it's", "with  spaces ", "ünïcødé-☎-日本", "a/b", "a%2Fb"]
)
def test_call_ids_of_any_text_round_trip_through_the_path(client: TestClient, call_id: str) -> None:
    seq = post(client, v1("incomingcall", call_id, "2012-11-14T15:55:01Z"))["seq"]
    path = "/calls/" + quote(call_id, safe="")
    call = client.get(path)
    assert call.status_code == 200, call.text
    assert call.json()["callId"] == call_id
    assert call.json()["firstSeq"] == seq
    timeline = client.get(path + "/events").json()
    assert timeline["callId"] == call_id
    assert [e["seq"] for e in timeline["events"]] == [seq]


def test_a_call_state_has_every_field_of_the_spec(client: TestClient) -> None:
    cid = "c-xytsl6nfcayzsxdbqq7q36i"
    nums = {"from": "+13233326955", "to": "+13865245000"}
    post(
        client,
        [
            v1("incomingcall", cid, "2012-11-14T15:55:01Z", **nums),
            v1("answer", cid, "2012-11-14T15:55:04.000Z", callState="active", **nums),
            v1("hangup", cid, "2012-11-14T13:56:12.636-02:00", cause="NORMAL_CLEARING", **nums),
        ],
    )
    assert client.get(f"/calls/{cid}").json() == {
        **SPEC_EXAMPLE_VIEW,
        "callId": cid,
        "eventCount": 3,
        "firstSeq": 1,
        "lastSeq": 3,
    }


def test_a_timeline_is_ordered_by_event_time_with_untimed_events_last_then_by_seq(
    client: TestClient,
) -> None:
    cid = "c-timeline"
    incoming = v1("incomingcall", cid, "2012-11-14T15:55:01Z", **{"from": "+1", "to": "+2"})
    dtmf = v1("dtmf", cid, "2012-11-14T13:55:03-02:00", dtmfDigit="5")  # 15:55:03Z
    answer = v1("answer", cid, "2012-11-14T15:55:05.000Z", callState="active")
    playback = v1("playback", cid, "2012-11-14T15:55:05Z", status="started")
    hangup = v1("hangup", cid, "2012-11-14T12:56-03", cause="NORMAL_CLEARING")  # 15:56:00Z
    recording = v1("recording", cid, None, recordingUri=f"{V1_BASE}/recordings/r-1")
    transcript = v1("transcription", cid, None, transcriptionUri=f"{V1_BASE}/t/t-1")
    seqs = {}
    for name, e in [
        ("hangup", hangup),
        ("recording", recording),
        ("answer", answer),
        ("playback", playback),
        ("transcription", transcript),
        ("dtmf", dtmf),
        ("incomingcall", incoming),
    ]:
        seqs[name] = post(client, e)["seq"]
    # a form-encoded delivery's payload is its string fields
    speak = v1("speak", cid, "2012-11-14T15:55:30Z", status="done")
    seqs["speak"] = client.post("/callbacks", data=speak).json()["seq"]
    timeline = client.get(f"/calls/{cid}/events").json()
    assert timeline["callId"] == cid
    got = timeline["events"]
    assert [e["eventType"] for e in got] == [
        "incomingcall",
        "dtmf",
        "answer",
        "playback",
        "speak",
        "hangup",
        "recording",
        "transcription",
    ]
    assert [e["seq"] for e in got] == [seqs[e["eventType"]] for e in got]
    assert [e["time"] for e in got] == [
        "2012-11-14T15:55:01.000Z",
        "2012-11-14T15:55:03.000Z",
        "2012-11-14T15:55:05.000Z",
        "2012-11-14T15:55:05.000Z",
        "2012-11-14T15:55:30.000Z",
        "2012-11-14T15:56:00.000Z",
        None,
        None,
    ]
    posted = [incoming, dtmf, answer, playback, speak, hangup, recording, transcript]
    assert [e["payload"] for e in got] == posted
    for e in got:
        assert set(e) == {"seq", "receivedAt", "eventType", "time", "payload"} | (
            {"callId"} if "callId" in e else set()
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["receivedAt"])


# --------------------------------------------------------------------------------------------
# Listing and stats


def test_calls_are_listed_most_recently_changed_first(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, _ = dataset
    calls = all_calls(c)
    assert len(calls) == 60
    seqs = [x["lastSeq"] for x in calls]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 60
    for x in calls[:5]:
        assert c.get(f"/calls/{x['callId']}").json() == x
    default = c.get("/calls").json()
    assert default == {"calls": calls, "next": None}


FILTERS = {
    "status": "status",
    "outcome": "outcome",
    "cause": "cause",
    "direction": "direction",
    "from": "from",
    "to": "to",
    "tag": "tag",
}


def test_every_filter_selects_exactly_the_matching_calls(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, _ = dataset
    calls = all_calls(c)
    tried = 0
    for param, field in FILTERS.items():
        values = Counter(x[field] for x in calls if x[field] is not None)
        assert len(values) >= 2, (param, values)
        for value in values:
            want = [x for x in calls if x[field] == value]
            got = c.get("/calls", params={param: value, "limit": 1000}).json()
            assert got == {"calls": want, "next": None}, (param, value)
            tried += 1
    assert tried > 20
    assert c.get("/calls", params={"cause": "NO_SUCH_CAUSE"}).json() == {"calls": [], "next": None}
    both = c.get("/calls", params={"status": "ended", "direction": "outbound"}).json()["calls"]
    assert both == [x for x in calls if x["status"] == "ended" and x["direction"] == "outbound"]
    assert both


def test_since_is_inclusive_and_until_exclusive_on_first_event_time(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, _ = dataset
    calls = all_calls(c)
    timed = sorted({x["firstEventAt"] for x in calls if x["firstEventAt"] is not None})
    assert any(x["firstEventAt"] is None for x in calls)
    lo, hi = timed[10], timed[40]

    def between(since: str | None, until: str | None) -> list[dict[str, Any]]:
        return [
            x
            for x in calls
            if x["firstEventAt"] is not None
            and (since is None or x["firstEventAt"] >= since)
            and (until is None or x["firstEventAt"] < until)
        ]

    for since, until in [(lo, None), (None, hi), (lo, hi), (hi, lo)]:
        params = (
            {"limit": 1000}
            | ({"since": since} if since else {})
            | ({"until": until} if until else {})
        )
        got = c.get("/calls", params=params).json()["calls"]
        assert got == between(since, until), (since, until)
    # any ISO-8601 form of the same instant bounds the same way
    ms = parse_time(lo)
    assert ms is not None
    offset = format_time(ms - 2 * 3600_000)
    assert offset is not None
    same = c.get("/calls", params={"since": offset[:23] + "-02:00", "limit": 1000}).json()
    assert same["calls"] == between(lo, None)
    exact = c.get("/calls", params={"since": lo, "until": lo}).json()
    assert exact["calls"] == []
    one = c.get("/calls", params={"since": lo, "until": timed[11]}).json()["calls"]
    assert [x["firstEventAt"] for x in one] == [lo]


def test_keyset_pagination_walks_every_call_once(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, _ = dataset
    calls = all_calls(c)
    for limit in (1, 7, 59, 60, 61):
        walked = walk(c, {}, limit)
        assert [x["callId"] for x in walked] == [x["callId"] for x in calls], limit
    ended = [x for x in calls if x["status"] == "ended"]
    assert walk(c, {"status": "ended"}, 4) == ended
    first = c.get("/calls", params={"limit": 7}).json()
    assert first["next"] == str(first["calls"][-1]["lastSeq"])


def test_new_calls_during_a_walk_do_not_shift_the_pages(db_target: str) -> None:
    with serving(db_target) as c:
        for n in range(10):
            post(c, v1("incomingcall", f"c-{n}", at(DAY0 + n * 1000)))
        page1 = c.get("/calls", params={"limit": 4}).json()
        post(c, v1("incomingcall", "c-new", at(DAY0)))
        post(c, v1("answer", "c-0", at(DAY0 + 5000)))  # c-0 changes: moves to the front
        rest: list[dict[str, Any]] = []
        cursor = page1["next"]
        while cursor is not None:
            page = c.get("/calls", params={"limit": 4, "cursor": cursor}).json()
            rest += page["calls"]
            cursor = page["next"]
        ids = [x["callId"] for x in page1["calls"] + rest]
        assert ids == [f"c-{n}" for n in range(9, 0, -1)]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("since=yesterday", "since"),
        ("until=2012-13-45T00:00:00Z", "until"),
        ("status=done", "status"),
        ("outcome=ok", "outcome"),
        ("colour=red", "colour"),
        ("cursor=abc", "cursor"),
        ("cursor=0", "cursor"),
    ],
)
def test_a_bad_listing_parameter_is_400_naming_it(
    client: TestClient, query: str, name: str
) -> None:
    detail = assert_error(client.get("/calls?" + query), 400, "bad_parameter")
    assert name in detail


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/stats?since=soon", "since"),
        ("/stats?until=x", "until"),
        ("/stats?status=ended", "status"),
        ("/events?after=x", "after"),
        ("/events?after=-1", "after"),
        ("/events?limit=0", "limit"),
        ("/events?limit=1001", "limit"),
        ("/events?cursor=1", "cursor"),
        ("/rejects?limit=5000", "limit"),
        ("/rejects?after=one", "after"),
    ],
)
def test_a_bad_parameter_elsewhere_is_400_naming_it(
    client: TestClient, path: str, name: str
) -> None:
    detail = assert_error(client.get(path), 400, "bad_parameter")
    assert name in detail


def test_stats_count_calls_by_status_outcome_and_cause_within_since_and_until(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, _ = dataset
    calls = all_calls(c)

    def expected(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        def count(field: str) -> dict[str, int]:
            return dict(Counter(x[field] for x in chosen if x[field] is not None))

        def mean(xs: list[float]) -> Any:
            return pytest.approx(sum(xs) / len(xs), abs=1e-3) if xs else None

        ended = [x for x in chosen if x["status"] == "ended"]
        answered = [x for x in ended if x["answeredAt"] is not None]
        return {
            "total": len(chosen),
            "byStatus": count("status"),
            "byOutcome": count("outcome"),
            "byCause": count("cause"),
            "stale": 0,  # every call here was received just now
            "kpis": {
                "attempts": len(ended),
                "answered": len(answered),
                "asr": pytest.approx(len(answered) / len(ended), abs=1e-4) if ended else None,
                "acd": mean([x["talkSeconds"] for x in answered if x["talkSeconds"] is not None]),
                "averageRingSeconds": mean(
                    [x["ringSeconds"] for x in ended if x["ringSeconds"] is not None]
                ),
            },
        }

    everything = c.get("/stats").json()
    assert everything == expected(calls)
    assert set(everything["byStatus"]) == {"started", "answered", "ended"}
    timed = sorted(x["firstEventAt"] for x in calls if x["firstEventAt"] is not None)
    lo, hi = timed[5], timed[30]
    within = [x for x in calls if x["firstEventAt"] and lo <= x["firstEventAt"] < hi]
    assert c.get("/stats", params={"since": lo, "until": hi}).json() == expected(within)
    later = [x for x in calls if x["firstEventAt"] and x["firstEventAt"] >= hi]
    assert c.get("/stats", params={"since": hi}).json() == expected(later)
    assert c.get("/stats", params={"until": "1999-01-01T00:00:00Z"}).json() == expected([])


def test_the_log_is_read_in_seq_order_page_by_page(
    dataset: tuple[TestClient, dict[int, Any]],
) -> None:
    c, by_seq = dataset
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.get("/events", params={"after": after, "limit": 17}).json()
        seen += page["events"]
        if page["next"] is None:
            break
        assert page["next"] == page["events"][-1]["seq"]
        after = page["next"]
    assert [e["seq"] for e in seen] == sorted(by_seq)
    assert sorted(by_seq) == list(range(1, len(by_seq) + 1))
    for e in seen:
        sent = by_seq[e["seq"]]
        assert set(e) == {"seq", "receivedAt", "eventType", "callId", "time", "payload"}
        assert e["payload"] == sent
        assert (e["eventType"], e["callId"]) == (sent["eventType"], sent["callId"])
        raw = sent.get("time", sent.get("eventTime"))
        assert e["time"] == (None if raw is None else format_time(parse_time(raw)))
    tail = c.get("/events", params={"after": len(by_seq) - 2}).json()
    assert [e["seq"] for e in tail["events"]] == [len(by_seq) - 1, len(by_seq)]
    assert tail["next"] is None
    assert c.get("/events", params={"after": 10**12}).json() == {"events": [], "next": None}


def test_the_quarantine_is_listed_oldest_first_page_by_page(client: TestClient) -> None:
    bodies = [b"{bad json %d" % i for i in range(5)]
    for body in bodies:
        assert client.post("/callbacks/x", content=body).status_code == 400
    assert client.post("/callbacks", content=b"\xff\xfe{", headers={}).status_code == 400
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/rejects", params={"after": after, "limit": 2}).json()
        assert len(page["rejects"]) <= 2
        seen += page["rejects"]
        if page["next"] is None:
            break
        assert page["next"] == page["rejects"][-1]["id"]
        after = page["next"]
    assert [r["id"] for r in seen] == sorted(r["id"] for r in seen)
    assert len({r["id"] for r in seen}) == 6
    assert [r["body"] for r in seen[:5]] == [b.decode() for b in bodies]
    for r in seen:
        assert {"id", "receivedAt", "status", "error", "detail", "body"} <= set(r)
        assert (r["status"], r["error"]) == (400, "invalid_json")
    assert seen[0]["path"] == "/callbacks/x"
    assert seen[-1]["bodyEncoding"] == "base64"


# --------------------------------------------------------------------------------------------
# Health, metrics, OpenAPI


def test_healthz_is_ok_and_readyz_reports_the_last_seq(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "lastSeq": 0}
    post(client, v1("incomingcall", "c-1", "2012-11-14T15:55:01Z"))
    assert client.get("/readyz").json() == {"status": "ready", "lastSeq": 1}


def test_metrics_are_prometheus_text_and_move_with_the_traffic(db_target: str) -> None:
    creds = ("bw", "secret")
    bearer = {"authorization": "Bearer tok"}
    sections = {"ingest": {"username": "bw", "password": "secret"}, "query": {"token": "tok"}}
    with serving(db_target, **sections) as c:

        def scrape() -> dict[str, float]:
            r = c.get("/metrics", headers=bearer)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            out = {}
            for line in r.text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out

        before = scrape()
        text = c.get("/metrics", headers=bearer).text
        for family, kind in [
            ("tracker_events_ingested_total", "counter"),
            ("tracker_duplicates_total", "counter"),
            ("tracker_rejects_total", "counter"),
            ("tracker_auth_failures_total", "counter"),
            ("tracker_batch_events", "histogram"),
            ("tracker_commit_seconds", "histogram"),
            ("tracker_ingest_seconds", "histogram"),
        ]:
            assert f"# TYPE {family} {kind}" in text
            assert f"# HELP {family} " in text
        cid = "c-metrics"
        post(c, v1("incomingcall", cid, "2012-11-14T15:55:01Z"), auth=creds)
        post(c, v1("incomingcall", cid, "2012-11-14T15:55:01Z"), auth=creds)
        batch = [
            v1("answer", cid, "2012-11-14T15:55:04Z"),
            v1("dtmf", cid, "2012-11-14T15:55:06Z", dtmfDigit="1"),
            v1("hangup", cid, "2012-11-14T15:56:12Z", cause="NORMAL_CLEARING"),
        ]
        post(c, batch, auth=creds)
        assert c.post("/callbacks", content=b"{", auth=creds).status_code == 400
        assert c.post("/callbacks", json={"eventType": "hangup"}, auth=creds).status_code == 422
        assert c.post("/callbacks", json=batch[0]).status_code == 401
        assert c.get("/stats").status_code == 401
        after = scrape()

        def moved(sample: str) -> float:
            return after.get(sample, 0.0) - before.get(sample, 0.0)

        for et in ("incomingcall", "answer", "dtmf", "hangup"):
            assert moved(f'tracker_events_ingested_total{{event_type="{et}"}}') == 1
        assert moved("tracker_duplicates_total") == 1
        assert moved('tracker_rejects_total{reason="invalid_json"}') == 1
        assert moved('tracker_rejects_total{reason="invalid_event"}') == 1
        assert moved('tracker_auth_failures_total{scope="ingest"}') == 1
        assert moved('tracker_auth_failures_total{scope="query"}') == 1
        assert moved("tracker_batch_events_count") >= 3  # three commits at least
        assert moved("tracker_batch_events_sum") >= 5  # five events (rejects not included)
        assert moved('tracker_batch_events_bucket{le="+Inf"}') == moved(
            "tracker_batch_events_count"
        )
        assert moved("tracker_commit_seconds_count") >= 3
        assert moved("tracker_commit_seconds_sum") > 0
        assert moved("tracker_ingest_seconds_count") == 3  # the answered 200s
        assert moved("tracker_ingest_seconds_sum") > 0
        assert after["tracker_log_last_seq"] == 4


SPEC_ROUTES = [
    "/calls/{callId}",
    "/calls/{callId}/events",
    "/calls",
    "/stats",
    "/events",
    "/events/stream",
    "/rejects",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
]


def test_the_openapi_document_is_openapi_3_and_lists_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    paths = doc["paths"]
    for route in SPEC_ROUTES:
        assert "get" in paths[route], route
    for route in ("/callbacks", "/callbacks/{path}"):
        assert {"get", "post"} <= set(paths[route]), route
    for route, ops in paths.items():
        for op in ops.values():
            assert "responses" in op, route
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in route
    call_id = [p for p in paths["/calls/{callId}"]["get"]["parameters"] if p["in"] == "path"]
    assert [p["name"] for p in call_id] == ["callId"]


# --------------------------------------------------------------------------------------------
# The bearer token of the query API


def test_a_query_token_guards_every_query_route_but_health_and_ingest(db_target: str) -> None:
    with serving(db_target, query={"token": "s3cr3t"}) as c:
        # ingest is not the query API: no token needed
        post(c, v1("incomingcall", "c-1", "2012-11-14T15:55:01Z"))
        assert c.post("/callbacks", content=b"{").status_code == 400
        routes = [
            "/calls/c-1",
            "/calls/c-1/events",
            "/calls",
            "/stats",
            "/events",
            "/rejects",
            "/metrics",
            "/openapi.json",
        ]
        for route in routes:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "Bearer s3cr3t-and-more"},
                {"authorization": "Basic czNjcjN0"},
                {"authorization": "s3cr3t"},
            ):
                r = c.get(route, headers=headers)
                assert_error(r, 401, "unauthorized")
                assert r.headers["www-authenticate"].startswith("Bearer")
            ok = c.get(route, headers={"authorization": "Bearer s3cr3t"})
            assert ok.status_code == 200, (route, ok.text)
        assert_error(c.get("/events/stream"), 401, "unauthorized")
        assert_error(c.get("/calls/unknown"), 401, "unauthorized")  # no probing without it
        assert c.get("/calls", headers={"authorization": "bearer s3cr3t"}).status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


# --------------------------------------------------------------------------------------------
# The indexes behind /calls


def test_every_calls_filter_query_is_answered_from_an_index(tmp_path: Path) -> None:
    db = tmp_path / "plan.db"
    store = SqliteStorage(db)
    try:
        rng = random.Random(3)
        for n in range(30):
            entries = [
                make_entry(decode_object(e), msgspec.json.encode(e), "json")
                for e in call_events(n, rng)
            ]
            store.append(entries)
    finally:
        store.close()
    cases: list[tuple[dict[str, str], dict[str, Any]]] = [({}, {})]
    cases += [({name: "x"}, {}) for name in FILTER_COLUMNS]
    cases += [
        ({}, {"since": DAY0}),
        ({}, {"until": DAY0}),
        ({}, {"since": DAY0, "until": DAY0 + 86_400_000}),
        ({}, {"before_seq": 10}),
        ({"status": "ended"}, {"before_seq": 10}),
        ({"tag": "t0"}, {"since": DAY0}),
        ({"status": "ended", "cause": "busy"}, {}),
        ({}, {"stale": True, "stale_before": DAY0}),
        ({"status": "answered"}, {"stale": True, "stale_before": DAY0, "before_seq": 10}),
        ({"tag": "t0"}, {"stale": False, "stale_before": DAY0, "since": DAY0}),
        ({"status": "ended"}, {"stale": True, "stale_before": DAY0, "since": DAY0}),
    ]
    with contextlib.closing(connect(db)) as conn:
        for filters, kw in cases:
            traced: list[str] = []
            conn.set_trace_callback(traced.append)
            list_calls(conn, filters, limit=10, **kw)
            conn.set_trace_callback(None)
            selects = [s for s in traced if s.lstrip().upper().startswith("SELECT")]
            assert len(selects) == 1, traced
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + selects[0])]
            uses_index = [p for p in plan if "USING INDEX" in p or "USING COVERING INDEX" in p]
            assert uses_index, (filters, kw, plan)
            assert not any(re.fullmatch(r"SCAN calls", p) for p in plan), (filters, kw, plan)
            if kw.get("stale"):  # one range of the (status, last_received_at) index a status
                assert any("calls_stale_" in p and "last_received_at<?" in p for p in plan), plan
            elif filters:  # searched by one of the filter columns' indexes
                columns = [FILTER_COLUMNS[name] for name in filters]
                assert any(f"({c}=?" in p for p in plan for c in columns), (filters, plan)


def test_reads_through_a_mapped_file_equal_reads_without_one(tmp_path: Path) -> None:
    events = call_events(40, random.Random(7))
    seen: dict[int, tuple[Any, ...]] = {}
    for mmap_mb in (0, 64):
        storage = {"path": str(tmp_path / f"m{mmap_mb}.db"), "read_mmap_mb": mmap_mb}
        app = create_app(load_settings(env={}, overrides={"storage": storage}))
        with TestClient(app) as c:
            for e in events:
                post(c, e)
            calls = all_calls(c)  # runs on the read pool's connections
            views = [c.get(f"/calls/{quote(v['callId'], safe='')}").json() for v in calls]
            timelines = [  # all but the wall-clock receivedAt
                [
                    {k: x for k, x in e.items() if k != "receivedAt"}
                    for e in c.get(f"/calls/{quote(v['callId'], safe='')}/events").json()["events"]
                ]
                for v in calls
            ]
            assert app.storage is not None
            conns = list(app.storage._readers)  # type: ignore[attr-defined]
            assert len(conns) >= 2
            for conn in conns:  # the loop's reader and every pool thread's connection
                assert conn.execute("PRAGMA mmap_size").fetchone()[0] == mmap_mb << 20
            seen[mmap_mb] = (calls, views, timelines)
    assert seen[0][0] and seen[0] == seen[64]
