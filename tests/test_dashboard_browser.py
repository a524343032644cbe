"""The dashboard in a real browser: headless Chromium (Debian's) driven by selenium against a real
``tracker serve`` on a loopback port. Each test reads the browser's console (no errors) and its
network log (no host but the tracker). Screenshots go to ``screenshots/`` (git-ignored)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import chromium, console_errors, requested_hosts, screenshot
from tests.callbacks import v1
from tests.server import Server, running, start_server, write_config

pytestmark = pytest.mark.browser
TOKEN = "browser-token"
WAIT = 20.0  # seconds a condition may take on a loaded machine (a wait, never an assert on time)


def iso(delta_seconds: float) -> str:
    t = datetime.now(UTC) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def call_events(cid: str, ago: float, *, answer: bool, cause: str | None) -> list[dict[str, str]]:
    """A v1 call that started ``ago`` seconds back: maybe answered after 4 s, maybe hung up."""
    numbers = {"from": "+15550001" + cid[-3:], "to": "+15550002000"}
    evs = [v1("incomingcall", cid, iso(-ago), callState="active", **numbers)]
    if answer:
        evs.append(v1("answer", cid, iso(-ago + 4), **numbers))
    if cause is not None:
        evs.append(v1("hangup", cid, iso(-ago + 30), cause=cause))
    return evs


def seed(server: Server, headers: dict[str, str] | None = None) -> None:
    calls = [
        call_events("c-normal-001", 900, answer=True, cause="NORMAL_CLEARING"),
        call_events("c-normal-002", 700, answer=True, cause="NORMAL_CLEARING"),
        call_events("c-busy-003", 500, answer=False, cause="USER_BUSY"),
        call_events("c-noans-004", 400, answer=False, cause="NO_ANSWER"),
        call_events("c-live-005", 120, answer=True, cause=None),
        call_events("c-ring-006", 20, answer=False, cause=None),
        # two different hangups: the earliest ends the call, and it gets conflicting_end
        [
            *call_events("c-odd-007", 300, answer=True, cause="NORMAL_CLEARING"),
            v1("hangup", "c-odd-007", iso(-250), cause="NORMAL_UNSPECIFIED"),
        ],
    ]
    with server.client(headers=headers or {}) as c:
        for evs in calls:
            for ev in evs:
                assert c.post("/callbacks", json=ev).status_code == 200


def wait_for(predicate: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as err:  # the page is still rendering
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def assert_clean(driver: Any, server: Server) -> None:
    """No console errors; every request went to the tracker."""
    assert console_errors(driver) == []
    assert requested_hosts(driver) <= {urlsplit(server.url).netloc}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path / "t.db") as s:
        seed(s)
        yield s


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def test_the_live_list_gains_a_call_posted_after_the_page_loaded(server, browser):
    browser.get(server.url + "/")
    wait_for(lambda: "c-live-005" in text_of(browser, "#live-table"), "the calls in progress")
    wait_for(lambda: "c-busy-003" in text_of(browser, "#ended-table"), "the ended calls")
    wait_for(lambda: text_of(browser, "#live") == "live", "the stream to open")
    assert "USER_BUSY" in text_of(browser, "#ended-table")
    assert "Calls\n7" in text_of(browser, "#kpis")  # seven calls in the last 24 hours
    with server.client() as c:
        for ev in call_events("c-new-777", 2, answer=False, cause=None):
            assert c.post("/callbacks", json=ev).status_code == 200
    wait_for(lambda: "c-new-777" in text_of(browser, "#live-table"), "the new call, live")
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
    with server.client() as c:
        ev = v1("hangup", "c-new-777", iso(0), cause="USER_BUSY")
        assert c.post("/callbacks", json=ev).status_code == 200
    wait_for(lambda: "c-new-777" in text_of(browser, "#ended-table"), "the call to end, live")
    wait_for(
        lambda: "c-new-777" not in text_of(browser, "#live-table"), "it to leave the live list"
    )
    wait_for(lambda: browser.find_elements("css selector", "#chart canvas"), "the chart")
    assert_clean(browser, server)
    browser.get(server.url + "/?range=1h")  # the README's picture: per minute over an hour
    wait_for(lambda: "c-new-777" in text_of(browser, "#ended-table"), "the last hour")
    wait_for(lambda: "minute" in text_of(browser, "#chart-title"), "minutes in the chart")
    wait_for(lambda: text_of(browser, "#live") == "live", "the stream to open")
    screenshot(browser, "dashboard")
    assert_clean(browser, server)


def test_filters_are_kept_in_the_url_and_survive_a_reload(server, browser):
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/")
    wait_for(lambda: "c-normal-001" in text_of(browser, "#ended-table"), "the ended calls")
    Select(browser.find_element("name", "outcome")).select_by_visible_text("busy")
    browser.find_element("css selector", "#filters button[type=submit]").click()
    wait_for(lambda: "outcome=busy" in browser.current_url, "the filter in the URL")
    wait_for(lambda: "c-normal-001" not in text_of(browser, "#ended-table"), "the list filtered")
    assert "c-busy-003" in text_of(browser, "#ended-table")
    browser.refresh()
    wait_for(lambda: "c-busy-003" in text_of(browser, "#ended-table"), "the filtered list again")
    assert "c-normal-001" not in text_of(browser, "#ended-table")
    assert Select(browser.find_element("name", "outcome")).first_selected_option.text == "busy"
    # a shared link with a number and a range opens the same view
    browser.get(server.url + "/?number=%2B15550001004&range=1h")
    wait_for(lambda: "c-noans-004" in text_of(browser, "#ended-table"), "the number's call")
    assert "c-busy-003" not in text_of(browser, "#ended-table")
    assert browser.find_element("name", "number").get_attribute("value") == "+15550001004"
    # a range with no calls says so
    browser.get(server.url + "/?range=custom&since=2020-01-01T00:00:00&until=2020-01-02T00:00:00")
    wait_for(lambda: "No call has ended" in text_of(browser, "#ended-empty"), "the empty state")
    assert_clean(browser, server)


def test_a_calls_page_shows_its_state_anomalies_and_timeline_with_raw_payloads(server, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    link = wait_for(
        lambda: browser.find_element("link text", "c-normal-002"), "the call's link in the list"
    )
    link.send_keys(Keys.ENTER)  # by keyboard
    wait_for(lambda: "/ui/calls/c-normal-002" in browser.current_url, "the call's page")
    wait_for(lambda: "NORMAL_CLEARING" in text_of(browser, "#call-state"), "the call's state")
    assert "None." in text_of(browser, "#call-anomalies")
    items = browser.find_elements("css selector", "#timeline li")
    assert [i.find_element("css selector", ".what").text for i in items] == [
        "incomingcall",
        "answer",
        "hangup",
    ]
    summary = items[2].find_element("css selector", "summary")
    summary.send_keys(Keys.ENTER)  # <details> opens by keyboard too
    raw = wait_for(lambda: items[2].find_element("css selector", "pre").text, "the raw payload")
    assert '"cause": "NORMAL_CLEARING"' in raw
    assert_clean(browser, server)
    browser.get(server.url + "/ui/calls/c-odd-007")
    wait_for(lambda: "conflicting_end" in text_of(browser, "#call-anomalies"), "the anomaly")
    assert "NORMAL_CLEARING" in text_of(browser, "#call-state")  # the earliest end
    assert len(browser.find_elements("css selector", "#timeline li")) == 4
    last = browser.find_elements("css selector", "#timeline summary")[-1]
    last.click()
    wait_for(lambda: "NORMAL_UNSPECIFIED" in text_of(browser, "#timeline"), "its payload")
    screenshot(browser, "call")
    assert_clean(browser, server)
    browser.get(server.url + "/ui/calls/no-such-call")
    wait_for(lambda: "No call with this id" in text_of(browser, "#call-missing"), "not found")
    # the browser logs the API's 404 for the unknown call, and nothing else
    errors = console_errors(browser)
    assert errors and all("/calls/no-such-call" in e["message"] for e in errors), errors


def test_search_by_call_id_opens_the_calls_page(server, browser):
    browser.get(server.url + "/")
    box = wait_for(lambda: browser.find_element("id", "q"), "the search box")
    box.send_keys("c-busy-003\n")
    wait_for(lambda: "/ui/calls/c-busy-003" in browser.current_url, "the call's page")
    wait_for(lambda: "USER_BUSY" in text_of(browser, "#call-state"), "its state")
    assert_clean(browser, server)


def test_the_token_sign_in_shows_no_data_before_the_token(tmp_path, browser):
    config = write_config(tmp_path / "config.toml", {"query": {"token": TOKEN}})
    with running(tmp_path / "t.db", config=config) as server:
        seed(server, headers={"Authorization": f"Bearer {TOKEN}"})
        browser.get(server.url + "/?outcome=busy")
        form = wait_for(lambda: browser.find_element("id", "token"), "the sign-in form")
        assert "c-busy-003" not in browser.page_source
        assert browser.find_element("id", "dashboard").is_displayed() is False
        form.send_keys(TOKEN + "\n")
        wait_for(lambda: "c-busy-003" in text_of(browser, "#ended-table"), "the data")
        assert "outcome=busy" in browser.current_url  # back to the view asked for
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly
        browser.find_element("css selector", "#sign-out button").click()
        wait_for(lambda: browser.find_element("id", "token").is_displayed(), "signed out")
        browser.get(server.url + "/?token=" + TOKEN)
        wait_for(lambda: "c-busy-003" in text_of(browser, "#ended-table"), "the data again")
        assert "token" not in browser.current_url
        assert_clean(browser, server)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_stream_drops_and_resumes_with_the_events_missed_meanwhile(tmp_path, browser):
    """The server goes away (the page says so), events are committed meanwhile (straight into
    the file), the server comes back on the same port: the browser's stream resumes after the
    last event it saw (Last-Event-ID) and the missed call shows, without a reload of the lists.
    Then the server goes away again and the page, asked to refresh, says it cannot reach it."""
    from tracker.api import Tracker

    db = tmp_path / "t.db"
    port = str(_free_port())
    server = start_server(db, args=["--port", port])
    try:
        seed(server)
        browser.get(server.url + "/")
        wait_for(lambda: text_of(browser, "#live") == "live", "the stream to open")
        with server.client() as c:  # one event seen live, so the stream has a Last-Event-ID
            for ev in call_events("c-seen-777", 2, answer=False, cause=None):
                assert c.post("/callbacks", json=ev).status_code == 200
        wait_for(lambda: "c-seen-777" in text_of(browser, "#live-table"), "the live call")
        server.terminate()
        wait_for(lambda: "dropped" in text_of(browser, "#banner"), "the dropped banner")
        with Tracker.open(db) as t:
            for ev in call_events("c-missed-888", 1, answer=False, cause=None):
                t.ingest(ev)
        server = start_server(db, args=["--port", port])
        wait_for(lambda: "resumed" in text_of(browser, "#banner"), "the resumed banner")
        wait_for(lambda: "c-missed-888" in text_of(browser, "#live-table"), "the missed call")
        assert (
            browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
        )
        server.terminate()
        wait_for(lambda: "dropped" in text_of(browser, "#banner"), "dropped again")
        browser.find_element("css selector", "#filters button[type=submit]").click()
        wait_for(lambda: "not reachable" in text_of(browser, "#banner"), "the unreachable state")
    finally:
        server.terminate()


def test_an_empty_tracker_says_there_are_no_calls_yet_until_one_arrives(tmp_path, browser):
    with running(tmp_path / "t.db") as server:
        browser.get(server.url + "/")
        wait_for(lambda: "No calls yet" in text_of(browser, "#banner"), "the empty state")
        assert "/callbacks" in text_of(browser, "#banner")
        wait_for(lambda: text_of(browser, "#live") == "live", "the stream to open")
        with server.client() as c:
            for ev in call_events("c-first-001", 1, answer=False, cause=None):
                assert c.post("/callbacks", json=ev).status_code == 200
        wait_for(lambda: "c-first-001" in text_of(browser, "#live-table"), "the first call")
        assert not browser.find_element("id", "banner").is_displayed()
        assert_clean(browser, server)


def test_the_page_fits_a_phone_width_screen(server):
    with chromium(390, 844) as phone:
        phone.get(server.url + "/")
        wait_for(lambda: "c-live-005" in text_of(phone, "#live-table"), "the calls")
        overflow = phone.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0
        screenshot(phone, "dashboard-phone")
        assert_clean(phone, server)


def test_the_server_refuses_nothing_the_page_asks_for(server):
    """Every request the page makes in a session is answered 2xx/3xx (no silent 4xx)."""
    with chromium() as driver:
        driver.get(server.url + "/ui/calls/c-normal-001")
        wait_for(lambda: "NORMAL_CLEARING" in text_of(driver, "#call-state"), "the call")
        statuses = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.responseStatus)"
        )
        assert statuses and all(s in (0, 200, 304) for s in statuses), statuses
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/ui/static/app.js").status_code == 200
