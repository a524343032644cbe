"""The dashboard's server side (SPEC §5 and §10): the KPIs in ``/stats``, the ``/stats/series``
chart route, the schema step that feeds them, the pages and their assets, and the token sign-in
with its cookie. Through Starlette's TestClient on a real SQLite file; the browser tests are in
``test_dashboard_browser.py``."""

from __future__ import annotations

import contextlib
import fnmatch
import re
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.callbacks import v1
from tracker.api import Tracker
from tracker.app import create_app
from tracker.config import load_settings
from tracker.http.dashboard import ASSETS, COOKIE, session_value
from tracker.storage.sqlite.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"


@contextlib.contextmanager
def serving(db: Path, **sections: dict[str, Any]) -> Iterator[TestClient]:
    settings = load_settings(env={}, overrides={"storage": {"path": str(db)}, **sections})
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


def post(client: TestClient, *events: dict[str, Any], **kw: Any) -> None:
    for ev in events:
        r = client.post("/callbacks", json=ev, **kw)
        assert r.status_code == 200, r.text


def a_call(cid: str, start: str, answer: str | None, end: str | None, cause: str) -> list[Any]:
    """A v1 inbound call: incomingcall at ``start``, maybe an answer, maybe a hangup."""
    evs = [v1("incomingcall", cid, start, callState="active", **{"from": "+1555", "to": "+1666"})]
    if answer is not None:
        evs.append(v1("answer", cid, answer))
    if end is not None:
        evs.append(v1("hangup", cid, end, cause=cause))
    return evs


# Ring 3 s, talk 60 s; ring 5 s, talk 20 s; busy (never answered); still ringing; answered and
# never ended (not an attempt yet).
CALLS = [
    a_call(
        "k-1",
        "2024-03-01T10:00:00Z",
        "2024-03-01T10:00:03Z",
        "2024-03-01T10:01:03Z",
        "NORMAL_CLEARING",
    ),
    a_call(
        "k-2",
        "2024-03-01T10:00:30Z",
        "2024-03-01T10:00:35Z",
        "2024-03-01T10:00:55Z",
        "NORMAL_CLEARING",
    ),
    a_call("k-3", "2024-03-01T10:02:10Z", None, "2024-03-01T10:02:20Z", "USER_BUSY"),
    a_call("k-4", "2024-03-01T10:02:40Z", None, None, ""),
    a_call("k-5", "2024-03-01T10:03:00Z", "2024-03-01T10:03:09Z", None, ""),
]


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[TestClient]:
    with serving(tmp_path / "t.db") as client:
        for call in CALLS:
            post(client, *call)
        yield client


# --------------------------------------------------------------------------------------------
# /stats kpis


def test_stats_kpis_are_the_telephony_figures_over_the_ended_calls(calls):
    kpis = calls.get("/stats").json()["kpis"]
    assert kpis == {
        "attempts": 3,  # k-1, k-2, k-3 ended; k-4 and k-5 are still up
        "answered": 2,
        "asr": round(2 / 3, 4),
        "acd": 40.0,  # (60 + 20) / 2
        "averageRingSeconds": 4.0,  # (3 + 5) / 2
    }


def test_stats_kpis_follow_the_time_range(calls):
    kpis = calls.get("/stats?since=2024-03-01T10:02:00Z").json()["kpis"]
    assert kpis == {
        "attempts": 1,
        "answered": 0,
        "asr": 0.0,
        "acd": None,
        "averageRingSeconds": None,
    }


def test_stats_kpis_with_nothing_to_average_are_null(tmp_path):
    with serving(tmp_path / "t.db") as client:
        body = client.get("/stats").json()
    assert body["kpis"] == {
        "attempts": 0,
        "answered": 0,
        "asr": None,
        "acd": None,
        "averageRingSeconds": None,
    }


def test_an_answered_call_without_a_start_counts_as_answered_but_not_in_the_ring_time(tmp_path):
    with serving(tmp_path / "t.db") as client:
        post(
            client,
            v1("answer", "x-1", "2024-03-01T10:00:03Z"),
            v1("hangup", "x-1", "2024-03-01T10:00:13Z", cause="NORMAL_CLEARING"),
        )
        kpis = client.get("/stats").json()["kpis"]
    assert kpis["answered"] == 1 and kpis["acd"] == 10.0
    assert kpis["averageRingSeconds"] is None


def test_a_schema_1_database_gets_the_time_columns_filled_from_each_call(tmp_path):
    db = tmp_path / "old.db"
    with Tracker.open(db) as t:
        for call in CALLS:
            for ev in call:
                t.ingest(ev)
    conn = sqlite3.connect(db)  # back to schema 1: no time columns
    for column in ("started_at", "answered_at", "ended_at"):
        conn.execute(f"ALTER TABLE calls DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with serving(db) as client:
        kpis = client.get("/stats").json()["kpis"]
    assert kpis["attempts"] == 3 and kpis["acd"] == 40.0 and kpis["averageRingSeconds"] == 4.0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# --------------------------------------------------------------------------------------------
# /stats/series


def test_series_counts_calls_per_minute_by_outcome(calls):
    r = calls.get("/stats/series?since=2024-03-01T10:00:00Z&until=2024-03-01T10:04:00Z&step=60")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stepSeconds"] == 60
    assert body["times"] == [f"2024-03-01T10:0{i}:00.000Z" for i in range(4)]
    assert body["byOutcome"] == {
        "normal": [2, 0, 0, 0],
        "busy": [0, 0, 1, 0],
        "in_progress": [0, 0, 1, 1],
    }


def test_series_without_bounds_covers_every_call_in_round_buckets(calls):
    body = calls.get("/stats/series").json()
    assert body["stepSeconds"] == 60
    assert body["since"] == "2024-03-01T10:00:00.000Z"
    assert sum(sum(v) for v in body["byOutcome"].values()) == 5
    assert len(body["times"]) == 4


def test_series_picks_a_wider_step_for_a_long_range(calls):
    body = calls.get("/stats/series?since=2024-03-01T00:00:00Z&until=2024-03-08T00:00:00Z").json()
    assert body["stepSeconds"] == 900  # 7 days in at most 1440 buckets
    assert len(body["times"]) == 672
    assert sum(body["byOutcome"]["normal"]) == 2


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("since=2024-03-01T00:00:00Z&until=2024-03-08T00:00:00Z&step=60", "step"),
        ("since=2024-03-02T00:00:00Z&until=2024-03-01T00:00:00Z", "until"),
        ("step=0", "step"),
        ("since=yesterday", "since"),
        ("bucket=60", "bucket"),
    ],
)
def test_series_refuses_bad_parameters_naming_them(calls, query, needle):
    r = calls.get(f"/stats/series?{query}")
    assert r.status_code == 400
    assert r.json()["error"] == "bad_parameter" and needle in r.json()["detail"]


def test_series_of_an_empty_database_is_empty(tmp_path):
    with serving(tmp_path / "t.db") as client:
        body = client.get("/stats/series").json()
    assert body["byOutcome"] == {} and body["times"] == []


# --------------------------------------------------------------------------------------------
# Pages and assets


def test_the_page_is_served_with_a_strict_content_security_policy(tmp_path):
    with serving(tmp_path / "t.db") as client:
        r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline
    assert 'name="tracker-auth" content="open"' in r.text


def test_every_asset_the_page_names_is_served_from_the_package(tmp_path):
    with serving(tmp_path / "t.db") as client:
        page = client.get("/ui/calls/c-1").text
        urls = re.findall(r'(?:src|href)="(/ui/static/[^"?]+)', page)
        assert len(urls) >= 4
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200, url
            assert r.content
            again = client.get(url, headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304
        assert client.get("/ui/static/index.html").status_code == 404
        assert client.get("/ui/static/../dashboard.py").status_code == 404
        assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")


def test_pip_install_ships_every_package_and_every_asset():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    for init in (ROOT / "tracker").rglob("__init__.py"):
        package = ".".join(init.parent.relative_to(ROOT).parts)
        assert any(fnmatch.fnmatch(package, pat) for pat in include), package
    patterns = setuptools["package-data"]["tracker.http"]
    static = ROOT / "tracker" / "http" / "static"
    base = ROOT / "tracker" / "http"
    files = [p.relative_to(base).as_posix() for p in static.rglob("*") if p.is_file()]
    assert "static/index.html" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name
    for name in ASSETS:
        assert (static / name).is_file(), name


def test_a_call_id_with_a_slash_has_a_page(tmp_path):
    with serving(tmp_path / "t.db") as client:
        assert client.get("/ui/calls/a%2Fb").status_code == 200


# --------------------------------------------------------------------------------------------
# Sign-in


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[TestClient]:
    sections = {"query": {"token": TOKEN}, "ingest": {"username": "bw", "password": "pw"}}
    with serving(tmp_path / "t.db", **sections) as client:
        post(client, *CALLS[0], auth=("bw", "pw"))
        yield client


def test_with_a_token_the_page_asks_for_it_and_shows_no_data(guarded):
    r = guarded.get("/")
    assert r.status_code == 200
    assert 'name="tracker-auth" content="sign-in"' in r.text
    assert "k-1" not in r.text
    assert guarded.get("/stats").status_code == 401
    assert guarded.get("/calls/k-1").status_code == 401


def test_opening_the_page_with_the_token_sets_a_strict_http_only_cookie(guarded):
    r = guarded.get("/?token=" + TOKEN + "&status=ended")
    assert r.status_code == 303
    assert r.headers["location"] == "/?status=ended"  # the token is taken out of the URL
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    assert guarded.get("/stats").status_code == 200
    assert guarded.get("/calls/k-1").json()["status"] == "ended"
    assert guarded.get("/calls/k-1/events").status_code == 200
    page = guarded.get("/")
    assert 'content="signed-in"' in page.text


def test_the_token_in_a_calls_page_url_returns_to_that_page(guarded):
    r = guarded.get("/ui/calls/a%2Fb?token=" + TOKEN)
    assert r.status_code == 303 and r.headers["location"] == "/ui/calls/a%2Fb"
    page = guarded.get("/ui/calls/a%2Fb")
    assert 'content="signed-in"' in page.text


def test_the_sign_in_form_sets_the_cookie_and_returns_to_the_page(guarded):
    r = guarded.post("/ui/sign-in", data={"token": TOKEN, "next": "/ui/calls/k-1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/calls/k-1"
    assert guarded.get("/calls?limit=1").status_code == 200
    out = guarded.post("/ui/sign-out")
    assert out.status_code == 303
    assert guarded.get("/stats").status_code == 401


def test_a_wrong_token_sets_no_cookie_and_says_so(guarded):
    for r in (
        guarded.get("/?token=wrong"),
        guarded.post("/ui/sign-in", data={"token": "wrong", "next": "/"}),
    ):
        assert r.status_code == 200
        assert "set-cookie" not in r.headers
        assert "not accepted" in r.text
    assert guarded.get("/stats").status_code == 401


def test_a_forged_or_stale_cookie_is_refused(guarded):
    guarded.cookies.set(COOKIE, session_value(b"another-token").decode())
    assert guarded.get("/stats").status_code == 401
    guarded.cookies.set(COOKIE, TOKEN)  # the token itself is not the cookie's value
    assert guarded.get("/stats").status_code == 401


def test_the_cookie_is_no_credential_for_ingest(guarded):
    guarded.get("/?token=" + TOKEN)
    r = guarded.post("/callbacks", json=v1("hangup", "k-9", "2024-03-01T10:00:00Z", cause="x"))
    assert r.status_code == 401
    assert "basic" in r.headers["www-authenticate"].lower()


def test_the_bearer_header_still_works_beside_the_cookie(guarded):
    r = guarded.get("/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200


def test_a_sign_in_posted_from_another_site_is_refused(guarded):
    r = guarded.post(
        "/ui/sign-in",
        data={"token": TOKEN, "next": "/"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 400 and "set-cookie" not in r.headers
    r = guarded.post(
        "/ui/sign-in",
        data={"token": TOKEN, "next": "/"},
        headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    )
    assert r.status_code == 400 and "set-cookie" not in r.headers


def test_a_sign_in_from_the_page_itself_is_taken_without_a_referrer(guarded):
    r = guarded.post(
        "/ui/sign-in",
        data={"token": TOKEN, "next": "/"},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 303 and "set-cookie" in r.headers


def test_the_sign_in_never_redirects_to_another_site(guarded):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = guarded.post("/ui/sign-in", data={"token": TOKEN, "next": target})
        assert r.status_code == 303 and r.headers["location"] == "/", target


def test_mounted_under_a_prefix_the_page_names_its_assets_under_it(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    settings = load_settings(env={}, overrides={"storage": {"path": str(tmp_path / "t.db")}})
    tracker_app = create_app(settings)
    parent = Starlette(routes=[Mount("/tracker", app=tracker_app)], lifespan=tracker_app.lifespan)
    with TestClient(parent) as client:
        page = client.get("/tracker/")
        assert page.status_code == 200
        assert 'name="tracker-base" content="/tracker"' in page.text
        for url in re.findall(r'(?:src|href)="(/tracker/ui/static/[^"?]+)', page.text):
            assert client.get(url).status_code == 200, url
        assert client.get("/tracker/stats/series").status_code == 200
