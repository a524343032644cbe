"""Bad input against ONE real server (started once for this module).

Hypothesis throws arbitrary bytes, arbitrary JSON, near-valid events (wrong types, missing fields,
huge strings, deep nesting, odd unicode, invalid UTF-8, NUL bytes, enormous numbers, duplicate
keys), form bodies, query strings and random content types at ``/callbacks``, and arbitrary
parameters at every read route. Every answer must be a 2xx or one of the spec's 4xx with the JSON
error shape (never a 500, never a hang), and every refused body must land in the quarantine,
byte for byte below its cap. Schemathesis then walks ``/openapi.json``. Hostile strings (quotes,
``%``, ``/``, ``..``, SQL fragments, control characters) must be plain data everywhere: in the
path, in filters and in ``tracker export --format csv``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server import Server, run_tracker, start_server
from tracker.cli.commands import defuse_formula
from tracker.events import V1_TYPES, V2_TYPES
from tracker.state import OUTCOMES

pytestmark = pytest.mark.slow

QUARANTINE_CAP = 65536  # ingest.quarantine_max_bytes, default
CODES = {
    400: {"invalid_json", "bad_parameter"},
    404: {"not_found"},
    413: {"too_large"},
    415: {"unsupported_media_type"},
    422: {"invalid_event"},
}
REFUSED = {400, 413, 415, 422}  # the quarantined answers to a POST or GET /callbacks


def fuzz_settings(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return run_tracker(*args, timeout=timeout, text=False)


def path_segment(value: str) -> str:
    """A call id as one path segment: every reserved byte escaped, dots too (``..`` stays data)."""
    return quote(value, safe="").replace(".", "%2E")


# --------------------------------------------------------------------------------------------
# The server, a client, and the quarantine as seen through GET /rejects


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.terminate()
        else:
            s.proc.wait(10)
        time.sleep(0.1)  # tests/server.py's output pump reads to EOF first
        if s.proc.stdout is not None:
            s.proc.stdout.close()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(timeout=10.0) as c:  # a hang is a ReadTimeout: a failure
        yield c


class Quarantine:
    """The rejects added since the last look."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.last = 0
        self.new()

    def new(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            r = self.client.get("/rejects", params={"after": self.last, "limit": 1000})
            assert r.status_code == 200, r.text
            page = r.json()
            rows += page["rejects"]
            if page["rejects"]:
                self.last = page["rejects"][-1]["id"]
            if page["next"] is None:
                return rows


@pytest.fixture(scope="module")
def quarantine(client: httpx.Client) -> Quarantine:
    return Quarantine(client)


def stored_body(row: dict[str, Any]) -> bytes:
    if row["bodyEncoding"] == "base64":
        return base64.b64decode(row["body"])
    assert row["bodyEncoding"] == "utf-8"
    return str(row["body"]).encode("utf-8")


def assert_error_shape(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] in CODES[r.status_code], (r.status_code, body)
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 10, body
    return body


def check_ingest_answer(
    r: httpx.Response,
    sent: bytes,
    quarantine: Quarantine,
    *,
    path: str = "/callbacks",
    batch: bool | None = None,
) -> dict[str, Any] | None:
    """A 200 (nothing quarantined) or a refusal that added exactly one reject holding ``sent``."""
    context = f"sent {sent[:300]!r}: {r.status_code} {r.text[:300]}"
    assert r.status_code == 200 or r.status_code in REFUSED, context
    new = quarantine.new()
    if r.status_code == 200:
        assert not new, f"an accepted body was quarantined: {context}"
        answer: dict[str, Any] = r.json()
        if "results" in answer:
            assert batch is not False, context
            assert all(isinstance(x["seq"], int) for x in answer["results"]), context
        else:
            assert batch is not True, context
            assert isinstance(answer["seq"], int), context
            assert isinstance(answer["duplicate"], bool), context
        return answer
    error = assert_error_shape(r)
    assert len(new) == 1, f"{len(new)} rejects for one refused request: {context}"
    row = new[0]
    assert row["status"] == r.status_code, (row, context)
    assert row["error"] == error["error"], (row, context)
    assert row["path"] == path, (row, context)
    assert row["size"] == len(sent), (row, context)
    got = stored_body(row)
    if len(sent) <= QUARANTINE_CAP:
        assert got == sent, f"the quarantine holds {got[:200]!r}: {context}"
        assert row["truncated"] is False
    else:
        assert got == sent[:QUARANTINE_CAP], context
        assert row["truncated"] is True
    return None


# --------------------------------------------------------------------------------------------
# Hostile strings are data: path, query, filters, CSV export (first, before the fuzzers add
# calls of their own)

HOSTILE = [
    "it's",
    'say "hi"',
    "100%",
    "%2F",
    "%%25",
    "a/b",
    "a%2Fb",
    ".",
    "..",
    "../..",
    "a/../b",
    "/leading",
    "trailing/",
    "' OR 1=1 --",
    '"; DROP TABLE events; --',
    "x'); DELETE FROM calls; --",
    "tab\there",
    "new\nline",
    "cr\rlf\r\n",
    "nul\x00byte",
    "del\x7f",
    "\x1b[31mred",
    "bell\x07",
    "line\u2028sep",
    "zero\u200bwidth",
    "rtl\u202eoverride",
    "\U0001f600 emoji",
    "?q=1&r=2",
    "#fragment",
    "a;b,c",
    '=HYPERLINK("http://x")',
    "back\\slash",
    "{callId}",
    "events",
    "x/events",
    "*",
    "a+b c",
]


@pytest.fixture(scope="module")
def hostile_calls(client: httpx.Client) -> dict[str, int]:
    """One ended call per hostile id, every string field set to the id; id -> seq."""
    seqs = {}
    for i, hostile in enumerate(HOSTILE):
        event = {
            "eventType": "hangup",
            "callId": hostile,
            "time": f"2031-01-01T00:00:{i:02d}Z",
            "cause": hostile,
            "tag": hostile,
            "from": hostile,
            "to": hostile,
        }
        r = client.post("/callbacks", content=json.dumps(event).encode())
        assert r.status_code == 200, (hostile, r.text)
        seqs[hostile] = r.json()["seq"]
    return seqs


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_call_id_is_plain_data_in_the_path_and_in_every_filter(
    client: httpx.Client, hostile_calls: dict[str, int], hostile: str
) -> None:
    segment = path_segment(hostile)
    r = client.get(f"/calls/{segment}")
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["callId"] == hostile
    assert state["cause"] == state["tag"] == state["from"] == state["to"] == hostile
    assert state["outcome"] == "error"  # an unknown cause
    r = client.get(f"/calls/{segment}/events")
    assert r.status_code == 200, r.text
    assert r.json()["callId"] == hostile
    assert [e["seq"] for e in r.json()["events"]] == [hostile_calls[hostile]]
    assert r.json()["events"][0]["payload"]["callId"] == hostile
    for name in ("tag", "cause", "from", "to"):
        r = client.get("/calls", params={name: hostile, "limit": 5})
        assert r.status_code == 200, r.text
        assert [c["callId"] for c in r.json()["calls"]] == [hostile], name
    r = client.get("/calls", params={"tag": hostile, "outcome": "error", "status": "ended"})
    assert [c["callId"] for c in r.json()["calls"]] == [hostile]
    # delivered again by GET, with the id in the query string: a new event, on the same call
    qs = urlencode({"eventType": "answer", "callId": hostile, "tag": hostile}, quote_via=quote)
    r = client.get(f"/callbacks?{qs}")
    assert r.status_code == 200, r.text
    r = client.get(f"/calls/{segment}/events")
    assert len(r.json()["events"]) == 2
    assert r.json()["events"][1]["payload"] == {
        "eventType": "answer",
        "callId": hostile,
        "tag": hostile,
    }


def test_hostile_strings_never_reach_sql_and_match_only_themselves(
    client: httpx.Client, hostile_calls: dict[str, int]
) -> None:
    total = client.get("/stats").json()["total"]
    probes = ["' OR '1'='1' --", '" OR ""="', "%%%%%%", "______", "*?*?*?", "x' UNION SELECT 1 --"]
    for probe in probes + HOSTILE:
        r = client.get(f"/calls/{path_segment(probe)}")
        if probe in probes:
            assert r.status_code == 404, (probe, r.text)
            assert assert_error_shape(r)["error"] == "not_found"
        else:
            assert r.json()["callId"] == probe
        for name in ("tag", "cause", "direction"):
            r = client.get("/calls", params={name: probe, "limit": 1000})
            assert r.status_code == 200, r.text
            # no LIKE, no injection: exact matches only
            assert all(c[name] == probe for c in r.json()["calls"]), (name, probe)
    assert client.get("/stats").json()["total"] == total
    assert client.get("/calls/a/b").status_code == 404  # an unescaped '/' is not a call id


def test_csv_export_round_trips_hostile_strings_through_the_csv_module(
    server: Server, hostile_calls: dict[str, int]
) -> None:
    for raw in (["--raw"], []):  # exact values, and by default formula cells defused
        shown = (lambda s: s) if raw else defuse_formula
        done = run_cli("export", "calls", "--format", "csv", *raw, "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader(io.StringIO(done.stdout.decode("utf-8"), newline="")))
        by_id = {row["callId"]: row for row in rows}
        for hostile in HOSTILE:
            row = by_id.get(shown(hostile))
            assert row is not None, f"{hostile!r} is missing from the CSV export"
            assert row["cause"] == row["from"] == row["to"] == shown(hostile)
            assert row["status"] == "ended"

        done = run_cli("export", "events", "--format", "csv", *raw, "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader(io.StringIO(done.stdout.decode("utf-8"), newline="")))
        by_seq = {int(row["seq"]): row for row in rows}
        for hostile, seq in hostile_calls.items():
            row = by_seq[seq]
            assert row["callId"] == shown(hostile)
            assert json.loads(row["payload"])["tag"] == hostile

    done = run_cli("export", "calls", "--format", "ndjson", "--db", str(server.db))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split(b"\n")
    assert lines[-1] == b""
    ids = {json.loads(line)["callId"] for line in lines[:-1]}
    assert set(HOSTILE) <= ids


# --------------------------------------------------------------------------------------------
# Strategies

EVENT_TYPES = sorted(V1_TYPES | V2_TYPES)
FIELDS = [
    "callId",
    "time",
    "eventTime",
    "startTime",
    "answerTime",
    "endTime",
    "cause",
    "tag",
    "from",
    "to",
    "direction",
    "callState",
    "callUri",
    "callUrl",
    "errorMessage",
    "message",
    "parentCallId",
    "digits",
    "status",
    "conferenceId",
    "recordingUri",
]
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u2028\u2029",
    "\ufeff",
    "\U0001d54f\u0301",
    "\u202e",
    "\x1b[2J",
    "' OR 1=1 --",
    '"; DROP TABLE events; --',
    "%s%n%x",
    "../../etc/passwd",
    "2012-11-14T15:56:12.636Z",
    "2012-11-14T15:56:12-03",
    "2012-11-14T15:56:12+05:30",
    "2012-11-14 15:56:12",
    "9999-12-31T23:59:59.999-23:59",
    "0001-01-01T00:00:00+23:59",
    "0000-00-00T00:00:00Z",
    "2012-02-30T25:61:61Z",
    "2012-11-14T15:56:12." + "9" * 40 + "Z",
    "NORMAL_CLEARING",
    "hangup",
    "active",
    "inbound",
    "outbound",
]
odd_text = (
    st.sampled_from(ODD_STRINGS)
    | st.text(max_size=40)
    | st.integers(1000, 120_000).map(lambda n: "x" * n)
)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = odd_text | json_leaf | json_values


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def render(pairs: list[tuple[str, Any]], ascii_only: bool) -> bytes:
    """A JSON object from key/value pairs, keeping duplicate keys."""
    parts = [
        json.dumps(k, ensure_ascii=ascii_only) + ":" + json.dumps(v, ensure_ascii=ascii_only)
        for k, v in pairs
    ]
    return ("{" + ",".join(parts) + "}").encode("utf-8", "surrogatepass")


@st.composite
def near_valid_events(draw: st.DrawFn) -> bytes:
    """Mostly well-typed events with one or two things wrong (or nothing wrong at all)."""

    def sometimes_wrong(right: st.SearchStrategy[Any]) -> Any:
        return draw(right if draw(st.integers(0, 4)) else field_values)

    et = sometimes_wrong(st.sampled_from(EVENT_TYPES) | st.sampled_from(["", "ANSWER", "x"]))
    pairs: list[tuple[str, Any]] = []
    if draw(st.integers(0, 9)):  # sometimes no eventType at all
        pairs.append(("eventType", et))
    if draw(st.integers(0, 5)):  # usually a callId
        pairs.append(("callId", sometimes_wrong(st.text(max_size=12) | odd_text)))
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=8))
        pairs.append((key, sometimes_wrong(odd_text | st.none())))
    if draw(st.integers(0, 7)) == 0:
        pairs.append(("deep", nested(draw(st.integers(50, 1500)))))
    if draw(st.integers(0, 5)) == 0 and pairs:  # a duplicate key, with another value
        key, _ = draw(st.sampled_from(pairs))
        pairs.append((key, draw(field_values)))
    body = render(pairs, draw(st.booleans()))
    return draw(mutated(body))


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """Usually the body as it is; sometimes broken in one of the ways senders break things."""
    how = draw(st.sampled_from(["as-is"] * 12 + ["cut", "byte", "nul", "utf8", "surrogate", "bom"]))
    at = draw(st.integers(0, len(body)))
    if how == "cut":
        return body[:at]
    if how == "byte":
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at:]
    if how == "nul":
        return body[:at] + b"\x00" + body[at:]
    if how == "utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
        return body[:at] + bad + body[at:]
    if how == "surrogate":
        return body.replace(b'"', b'"\\ud800', 1)
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    return body


HUGE_NUMBERS = [
    b"9" * 30,
    b"9" * 5000,
    b"1e999999",
    b"-1e-999999",
    b"1" + b"0" * 400,
    b"-0",
    b"1E+2",
]
RAW_SPECIALS = [
    b"",
    b" \n\t",
    b"null",
    b"[]",
    b"[[]]",
    b"[null]",
    b'"event"',
    b"NaN",
    b"{",
    b"}",
    b"{}",
    b"[{}]",
    b'{"eventType":"x"} {"eventType":"y"}',
    b'{"eventType":"x",}',
    b"\x00",
    b"\xef\xbb\xbf{}",
    '{"eventType":"x"}'.encode("utf-16"),
    b"[" * 100_000 + b"]" * 100_000,
    b'{"eventType":"x","a":' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'[{"eventType":"x","a":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}]",
]
raw_json_bodies = (
    st.sampled_from(RAW_SPECIALS)
    | st.sampled_from(HUGE_NUMBERS).map(
        lambda n: b'{"eventType":"x","callId":"big","n":' + n + b"}"
    )
    | st.sampled_from(HUGE_NUMBERS).map(lambda n: b'{"eventType":"answer","callId":' + n + b"}")
)
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-16",
    "APPLICATION/JSON",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/cloudevents+json",
    "text/plain",
    "text/json",
    "text/html; charset=iso-8859-1",
    "multipart/form-data; boundary=xyz",
    "application/octet-stream",
    "application/xml",
    "",
    ";",
    "application/json, text/plain",
]
TOKEN = r"[a-zA-Z0-9!#$&^_.+-]"
content_types = st.sampled_from(CONTENT_TYPES) | st.from_regex(
    rf"\A{TOKEN}{{1,12}}/{TOKEN}{{1,20}}(;[ ]?[a-z]{{1,8}}=[a-zA-Z0-9-]{{0,10}})?\Z"
)
SUB_PATHS = ["/callbacks", "/callbacks/", "/callbacks/voice/status", "/callbacks/v2/answer-url"]


def post(client: httpx.Client, path: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=body, headers=headers)


# --------------------------------------------------------------------------------------------
# POST /callbacks


@fuzz_settings(300)
@given(
    body=st.binary(max_size=3000) | raw_json_bodies,
    content_type=content_types,
    path=st.sampled_from(SUB_PATHS),
)
def test_arbitrary_bytes_posted_to_callbacks_get_an_answer_and_every_refusal_is_quarantined(
    client: httpx.Client, quarantine: Quarantine, body: bytes, content_type: str | None, path: str
) -> None:
    check_ingest_answer(post(client, path, body, content_type), body, quarantine, path=path)


@fuzz_settings(150)
@given(value=json_values, content_type=st.sampled_from([None, "application/json"]))
def test_arbitrary_json_values_are_accepted_only_as_events(
    client: httpx.Client, quarantine: Quarantine, value: Any, content_type: str | None
) -> None:
    body = json.dumps(value).encode()
    answer = check_ingest_answer(post(client, "/callbacks", body, content_type), body, quarantine)
    if answer is not None:  # only an object with a string eventType can be an event
        elements = value if isinstance(value, list) else [value]
        assert all(isinstance(e, dict) and isinstance(e.get("eventType"), str) for e in elements)


@fuzz_settings(500)
@given(body=near_valid_events(), content_type=st.sampled_from([None, *CONTENT_TYPES[1:5]]))
def test_near_valid_events_are_logged_or_refused_with_the_field_named(
    client: httpx.Client, quarantine: Quarantine, body: bytes, content_type: str | None
) -> None:
    r = post(client, "/callbacks", body, content_type)
    answer = check_ingest_answer(r, body, quarantine, batch=False)
    if r.status_code == 422:
        detail = r.json()["detail"]
        assert any(word in detail for word in ("eventType", "callId", "event", "is invalid")), (
            detail
        )
    if answer is None or answer["duplicate"]:
        return
    event = json.loads(body)
    call_id = event.get("callId")
    if isinstance(call_id, str) and 0 < len(call_id) < 4000:  # it joins its call (URL-sized)
        got = client.get(f"/calls/{path_segment(call_id)}")
        assert got.status_code == 200, got.text
        assert got.json()["callId"] == call_id
        timeline = client.get(f"/calls/{path_segment(call_id)}/events")
        assert timeline.status_code == 200, timeline.text
        assert answer["seq"] in [e["seq"] for e in timeline.json()["events"]]


@fuzz_settings(120)
@given(
    elements=st.lists(near_valid_events(), min_size=1, max_size=5),
    spacing=st.sampled_from([b",", b" , ", b",\n"]),
)
def test_batches_of_near_valid_events_are_all_or_nothing(
    client: httpx.Client, quarantine: Quarantine, elements: list[bytes], spacing: bytes
) -> None:
    body = b"[" + spacing.join(elements) + b"]"
    r = post(client, "/callbacks", body, "application/json")
    answer = check_ingest_answer(r, body, quarantine)
    if answer is not None and "results" in answer:
        assert len(answer["results"]) == len(elements)
    if r.status_code == 422 and r.json()["detail"].startswith("element "):
        index = int(r.json()["detail"].split()[1].rstrip(":"))
        assert 0 <= index < len(elements)


form_values = (
    st.sampled_from(ODD_STRINGS) | st.text(max_size=40) | st.integers(100, 4000).map("y".__mul__)
)
form_pairs = st.lists(
    st.tuples(st.sampled_from(["eventType", *FIELDS]) | st.text(max_size=6), form_values),
    max_size=8,
)


@fuzz_settings(80)
@given(
    pairs=form_pairs,
    event_type=st.sampled_from(EVENT_TYPES) | st.text(max_size=10),
    junk=st.sampled_from([b"", b"&%", b"&%zz=1", b"&a=%ff", b"&b=%ED%A0%80", b"&=", b";x=1"]),
)
def test_form_bodies_are_logged_or_refused_and_quarantined(
    client: httpx.Client,
    quarantine: Quarantine,
    pairs: list[tuple[str, str]],
    event_type: str,
    junk: bytes,
) -> None:
    body = urlencode([("eventType", event_type), *pairs]).encode() + junk
    r = post(client, "/callbacks", body, "application/x-www-form-urlencoded")
    check_ingest_answer(r, body, quarantine, batch=False)


@fuzz_settings(100)
@given(
    pairs=form_pairs,
    event_type=st.sampled_from(EVENT_TYPES) | st.text(max_size=10),
    junk=st.sampled_from(["", "&%", "&a=%ff", "&b=%ED%A0%80", "&=", "&&", "&x"]),
)
def test_get_callbacks_with_arbitrary_query_strings_is_logged_or_refused_and_quarantined(
    client: httpx.Client,
    quarantine: Quarantine,
    pairs: list[tuple[str, str]],
    event_type: str,
    junk: str,
) -> None:
    qs = urlencode([("eventType", event_type), *pairs], quote_via=quote) + junk
    r = client.get("/callbacks?" + qs)
    check_ingest_answer(r, qs.encode(), quarantine, batch=False)


def test_json_nested_thousands_of_levels_deep_is_a_400_not_a_crash(
    client: httpx.Client, quarantine: Quarantine
) -> None:
    for body in (
        b"[" * 50_000 + b"]" * 50_000,
        b'{"eventType":"x","a":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'[{"eventType":"x","a":' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}]",
    ):
        r = post(client, "/callbacks", body, "application/json")
        assert r.status_code == 400, r.text[:200]
        assert "nested too deeply" in r.json()["detail"]
        check_ingest_answer(r, body, quarantine)


# --------------------------------------------------------------------------------------------
# The read routes' parameters

READ_PARAMS = {
    "/calls": [
        "status",
        "outcome",
        "cause",
        "direction",
        "from",
        "to",
        "tag",
        "since",
        "until",
        "limit",
        "cursor",
    ],
    "/stats": ["since", "until"],
    "/stats/series": ["since", "until", "step"],
    "/events": ["after", "limit"],
    "/rejects": ["after", "limit"],
}
param_values = (
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "1000",
            "1001",
            "9223372036854775807",
            "9223372036854775808",
            "99999999999999999999999",
            "1" * 5000,
            "1e3",
            "0x10",
            "1_0",
            " 7",
            "\uff11",
            "",
            "started",
            "ended",
            "normal",
            "2012-11-14T15:56:12Z",
            "2012-11-14",
            "9999-12-31T23:59:59-23:59",
            "null",
        ]
    )
    | st.sampled_from(ODD_STRINGS)
    | st.text(max_size=30)
    | st.integers().map(str)
)


GOOD_VALUES = {
    "status": ["started", "answered", "ended"],
    "outcome": list(OUTCOMES),
    "since": ["2012-11-14T15:55:01Z", "2031-01-01T00:00:00.000Z", "2012-11-14T15:55:01-03"],
    "until": ["2040-01-01T00:00:00Z", "2031-01-01T00:00:10+00:00", "1970-01-01T00:00:00Z"],
    "limit": ["1", "2", "50", "1000"],
    "cursor": ["1", "100", "9223372036854775807"],
    "after": ["0", "1", "50", "9223372036854775807"],
    "step": ["1", "60", "3600", "31622400", "31622401"],
}


@st.composite
def read_requests(draw: st.DrawFn) -> str:
    """Mostly known parameters with plausible values (to reach the queries), sometimes junk."""
    route = draw(st.sampled_from([*READ_PARAMS, "/calls/{id}", "/calls/{id}/events"]))
    names = READ_PARAMS.get(route, [])
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        known = bool(names) and draw(st.integers(0, 9)) > 0
        name = draw(st.sampled_from(names)) if known else draw(st.text(max_size=8))
        good = GOOD_VALUES.get(name, HOSTILE)
        value = draw(st.sampled_from(good) if draw(st.booleans()) else param_values)
        pairs.append((name, value))
    junk = draw(st.sampled_from([""] * 8 + ["&%ff=1", "&a=%ED%A0%80"]))
    qs = urlencode(pairs, quote_via=quote) + junk
    if "{id}" in route:
        call_id = draw(
            st.sampled_from(HOSTILE)
            | st.text(min_size=1, max_size=20)
            | st.sampled_from(ODD_STRINGS[1:])
        )
        route = route.replace("{id}", path_segment(call_id))
    return f"{route}?{qs}" if qs else route


@fuzz_settings(400)
@given(url=read_requests())
def test_every_read_route_answers_any_parameters_with_200_or_a_json_400_or_404(
    client: httpx.Client, url: str
) -> None:
    r = client.get(url)
    assert r.status_code in (200, 400, 404), f"GET {url}: {r.status_code} {r.text[:300]}"
    if r.status_code != 200:
        detail = assert_error_shape(r)["detail"]
        if r.status_code == 400 and not url.startswith("/calls/"):
            assert "parameter" in detail or "must" in detail or "query" in detail, detail
        return
    body = r.json()
    route = url.split("?")[0]
    if route == "/calls":
        assert set(body) == {"calls", "next"}
        assert body["next"] is None or body["next"].isdigit()
    elif route == "/stats":
        assert set(body) == {"total", "byStatus", "byOutcome", "byCause", "stale", "kpis"}
    elif route == "/stats/series":
        assert set(body) == {"since", "until", "stepSeconds", "times", "byOutcome"}
        assert len(body["times"]) <= 1440
        assert all(len(v) == len(body["times"]) for v in body["byOutcome"].values())
    elif route in ("/events", "/rejects"):
        assert set(body) == {route[1:], "next"}
    else:
        assert "callId" in body


def test_query_parameters_are_strict_ascii_integers(client: httpx.Client) -> None:
    for value in ("1_0", " 7", "\uff11", "+5", "1.0", "0x10"):
        r = client.get("/events", params={"limit": value})
        assert r.status_code == 400, (value, r.text)
        assert "limit" in r.json()["detail"]
    assert client.get("/events", params={"limit": "7"}).status_code == 200


# --------------------------------------------------------------------------------------------
# Schemathesis against /openapi.json


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events/stream":
            continue  # an endless stream: covered by its own tests
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=20,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),  # path ids cannot be made negative
            )
            def run(case: Any) -> None:
                response = case.call(base_url=server.url, timeout=10)
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to make negative (no parameters)
            except Exception as err:
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {err}"
                )
    assert operations >= 12
    assert not failures, "\n\n".join(failures)


# --------------------------------------------------------------------------------------------
# Last: the server took all of the above


def test_the_server_survived_everything_and_its_projection_agrees_with_its_log(
    server: Server, client: httpx.Client
) -> None:
    assert server.proc.poll() is None, "the server process died"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    done = run_cli("replay", "--check", "--db", str(server.db))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
