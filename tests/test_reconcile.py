"""Stale calls and reconciliation (SPEC §11): the ``reconciled`` event in the fold, the stale
filter and claims on both backends, passes against a fake Bandwidth API on loopback (v1 and v2,
every kind of answer), the command, and the loop of a real ``tracker serve`` process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fake_bandwidth import END, FakeApi, fake_bandwidth
from server import run_tracker, running, write_config
from starlette.testclient import TestClient

from tracker.app import create_app
from tracker.config import Reconcile, Settings, load_settings
from tracker.errors import ConfigError
from tracker.events import decode_object
from tracker.ingest import make_entry, reconciled_entry
from tracker.reconcile.client import CallApi
from tracker.reconcile.sweep import Finding, Sweep, reconciled_body
from tracker.records import Appended, Entry, now_ms
from tracker.render import call_json
from tracker.storage import Storage, open_storage

ACCOUNT = "acc-1"
USER = "u-1"
PASSWORD = "s3cret-pw-never-shown"
HOUR = 3_600_000


def v2(event_type: str, call_id: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "eventTime": at,
        "accountId": ACCOUNT,
        "callId": call_id,
        "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/{ACCOUNT}/calls/{call_id}",
        **extra,
    }


def v1(event_type: str, call_id: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "time": at,
        "callId": call_id,
        "callUri": f"https://api.catapult.inetwork.com/v1/users/{USER}/calls/{call_id}",
        **extra,
    }


def started_v2(call_id: str) -> list[dict[str, Any]]:
    return [
        v2("initiate", call_id, "2026-01-05T10:00:00.000Z", startTime="2026-01-05T10:00:00.000Z"),
        v2("answer", call_id, "2026-01-05T10:00:03.000Z"),
    ]


def started_v1(call_id: str) -> list[dict[str, Any]]:
    return [
        v1("incomingcall", call_id, "2026-01-05T10:00:00.000Z"),
        v1("answer", call_id, "2026-01-05T10:00:03.000Z"),
    ]


def entry(obj: dict[str, Any], received_at: int | None = None) -> Entry:
    return make_entry(decode_object(obj), msgspec.json.encode(obj), "json", received_at)


def recon_obj(call_id: str, response: dict[str, Any], checked: str = "2026-01-05T15:00:00.000Z"):
    return {
        "eventType": "reconciled",
        "callId": call_id,
        "source": f"https://voice.bandwidth.com/api/v2/accounts/{ACCOUNT}/calls/{call_id}",
        "checkedAt": checked,
        "response": response,
    }


def settings_for(db: str, **reconcile: Any) -> Settings:
    key = "url" if db.startswith("postgresql://") else "path"
    return load_settings(
        env={}, overrides={"storage": {key: db}, "reconcile": {"username": "api", **reconcile}}
    )


@contextlib.contextmanager
def opened(db: str) -> Iterator[Storage]:
    storage = open_storage(settings_for(db, password=PASSWORD))
    try:
        yield storage
    finally:
        storage.close()


def view(storage: Storage, call_id: str) -> dict[str, Any]:
    found = storage.call(call_id)
    assert found is not None
    out: dict[str, Any] = msgspec.json.decode(call_json(found))
    return out


# --------------------------------------------------------------------------------------------
# The reconciled event in the fold (through a real store)


def test_a_v2_reconciled_end_ends_the_call_with_the_apis_cause_and_times(db_target: str) -> None:
    with opened(db_target) as s:
        s.append([entry(e) for e in started_v2("c-1")])
        response = {
            "state": "disconnected",
            "startTime": "2026-01-05T09:59:59.000Z",
            "answerTime": "2026-01-05T10:00:04.000Z",
            "endTime": "2026-01-05T10:05:00.000Z",
            "disconnectCause": "application-error",
            "errorMessage": "the BXML failed",
        }
        s.append([reconciled_entry(msgspec.json.encode(recon_obj("c-1", response)))])
        got = view(s, "c-1")
    assert got["status"] == "ended"
    assert (got["startedAt"], got["answeredAt"], got["endedAt"]) == (
        "2026-01-05T09:59:59.000Z",
        "2026-01-05T10:00:03.000Z",
        "2026-01-05T10:05:00.000Z",
    )
    assert (got["cause"], got["outcome"], got["errorMessage"]) == (
        "application-error",
        "failed",
        "the BXML failed",
    )
    assert got["anomalies"] == ["reconciled"]  # checkedAt, hours later, is no event after end
    assert got["eventCount"] == 3
    assert got["lastEventType"] == "reconciled"


@pytest.mark.parametrize(
    ("state", "active", "outcome"),
    [
        ("completed", True, "normal"),
        ("completed", False, "no_answer"),
        ("rejected", False, "rejected"),
    ],
)
def test_a_v1_reconciled_end_has_no_cause_and_an_outcome_from_its_state_and_answer(
    tmp_path: Path, state: str, active: bool, outcome: str
) -> None:
    with opened(str(tmp_path / "t.db")) as s:
        s.append([entry(v1("incomingcall", "c-1", "2026-01-05T10:00:00.000Z"))])
        response: dict[str, Any] = {"state": state, "endTime": "2026-01-05T10:05:00Z"}
        if active:
            response["activeTime"] = "2026-01-05T10:00:02Z"
        s.append([reconciled_entry(msgspec.json.encode(recon_obj("c-1", response)))])
        got = view(s, "c-1")
    assert (got["status"], got["cause"], got["outcome"]) == ("ended", None, outcome)
    assert got["answeredAt"] == ("2026-01-05T10:00:02.000Z" if active else None)
    assert got["api"] == "v1"


@pytest.mark.parametrize("real_first", [False, True])
def test_a_real_hangup_overrides_a_reconciled_end_whatever_the_order_and_times(
    tmp_path: Path, real_first: bool
) -> None:
    response = {
        "state": "disconnected",
        "endTime": "2026-01-05T10:01:00Z",
        "disconnectCause": "hangup",
    }
    recon = reconciled_entry(msgspec.json.encode(recon_obj("c-1", response)))
    # the real end is *later* than the API's end time: it still wins
    real = entry(
        v2(
            "disconnect",
            "c-1",
            "2026-01-05T10:09:00Z",
            endTime="2026-01-05T10:09:00Z",
            cause="busy",
        )
    )
    with opened(str(tmp_path / "t.db")) as s:
        s.append([entry(e) for e in started_v2("c-1")])
        s.append([real] if real_first else [recon])
        s.append([recon] if real_first else [real])
        got = view(s, "c-1")
        assert s.replay(check=True) == []
    assert (got["endedAt"], got["cause"], got["outcome"]) == (
        "2026-01-05T10:09:00.000Z",
        "busy",
        "busy",
    )
    assert got["anomalies"] == []


def test_a_reconciled_event_posted_to_callbacks_is_only_an_unknown_event(tmp_path: Path) -> None:
    settings = settings_for(str(tmp_path / "t.db"), password=PASSWORD)
    response = {"state": "disconnected", "endTime": END, "disconnectCause": "hangup"}
    with TestClient(create_app(settings)) as c:
        for e in started_v2("c-1"):
            assert c.post("/callbacks", json=e).status_code == 200
        r = c.post("/callbacks", json=recon_obj("c-1", response))
        assert r.status_code == 200 and r.json()["duplicate"] is False
        got = c.get("/calls/c-1").json()
        assert (got["status"], got["endedAt"], got["anomalies"]) == ("answered", None, [])
        assert got["eventCount"] == 3  # logged and counted, as any unknown event
        timeline = c.get("/calls/c-1/events").json()["events"]
        assert [e["eventType"] for e in timeline][-1] == "reconciled"


def test_a_v2_transfer_answer_without_answer_time_is_answered_at_its_event_time(
    tmp_path: Path,
) -> None:
    with opened(str(tmp_path / "t.db")) as s:
        s.append([entry(v2("transferAnswer", "b-1", "2026-01-05T10:00:07.000Z", parentCallId="a"))])
        got = view(s, "b-1")
    assert (got["status"], got["answeredAt"]) == ("answered", "2026-01-05T10:00:07.000Z")


# --------------------------------------------------------------------------------------------
# Stale: the filter, /stats, claims, replay and migration


def _stale_dataset(s: Storage) -> int:
    """Calls received long ago or just now, ended or not; returns the cutoff to use."""
    now = now_ms()
    for i in range(12):
        cid = f"old-{i:02d}"
        s.append([entry(e, now - 5 * HOUR) for e in started_v2(cid)])
        if i % 3 == 0:
            s.append(
                [entry(v2("disconnect", cid, END, endTime=END, cause="hangup"), now - 5 * HOUR)]
            )
    for i in range(4):
        s.append([entry(e) for e in started_v1(f"new-{i}")])
    return now - 4 * HOUR


def test_stale_calls_are_the_ones_not_ended_with_nothing_received_for_a_while(
    db_target: str,
) -> None:
    with opened(db_target) as s:
        cutoff = _stale_dataset(s)
        page, _ = s.calls({}, limit=100, stale=True, stale_before=cutoff)
        stale = sorted(r.state.call_id for r in page)
        assert stale == [f"old-{i:02d}" for i in range(12) if i % 3]
        fresh, _ = s.calls({}, limit=100, stale=False, stale_before=cutoff)
        assert len(fresh) == 16 - len(stale)
        assert s.stale_count(cutoff) == len(stale)
        assert s.stats(stale_before=cutoff).stale == len(stale)
        # with the other filters and the cursor: pages of 3 walk the stale answered v2 calls once
        seen: list[str] = []
        before = None
        while True:
            got, before = s.calls(
                {"status": "answered"},
                limit=3,
                before_seq=before,
                stale=True,
                stale_before=cutoff,
            )
            seen += [r.state.call_id for r in got]
            if before is None:
                break
        assert sorted(seen) == stale and len(seen) == len(set(seen))
        none, _ = s.calls({"status": "ended"}, stale=True, stale_before=cutoff)
        assert none == []
        # a new event makes a call fresh again
        s.append([entry(v2("dtmf", "old-01", "2026-01-05T10:01:00.000Z", digit="1"))])
        assert s.stale_count(cutoff) == len(stale) - 1
        assert s.replay(check=True) == []


def test_the_query_api_filters_on_stale_and_counts_it_in_stats_and_metrics(
    db_target: str,
) -> None:
    with opened(db_target) as s:
        _stale_dataset(s)
    settings = settings_for(db_target, password=PASSWORD, stale_after_seconds=4 * 3600)
    with TestClient(create_app(settings)) as c:
        stale = c.get("/calls", params={"stale": "true", "limit": 3})
        assert stale.status_code == 200 and len(stale.json()["calls"]) == 3
        assert stale.json()["next"] is not None
        nxt = c.get("/calls", params={"stale": "true", "cursor": stale.json()["next"]}).json()
        assert len(nxt["calls"]) == 5
        assert all(x["status"] != "ended" for x in stale.json()["calls"] + nxt["calls"])
        assert len(c.get("/calls", params={"stale": "false", "limit": 100}).json()["calls"]) == 8
        got = c.get("/calls", params={"stale": "true", "status": "started"}).json()
        assert got["calls"] == []
        assert c.get("/stats").json()["stale"] == 8
        bad = c.get("/calls", params={"stale": "yes"})
        assert bad.status_code == 400 and "stale" in bad.json()["detail"]
        metrics = c.get("/metrics").text
        assert re.search(r"^tracker_stale_calls 8\.0$", metrics, re.M)
        assert PASSWORD not in metrics
        doc = c.get("/openapi.json").json()
        names = [p["name"] for p in doc["paths"]["/calls"]["get"]["parameters"]]
        assert "stale" in names


def test_each_stale_call_is_claimed_by_one_storage_per_interval(db_target: str) -> None:
    with opened(db_target) as a, opened(db_target) as b:
        cutoff = _stale_dataset(a)
        now = now_ms()
        got_a = a.claim_stale(5, now, now + 60_000, cutoff)
        got_b = b.claim_stale(100, now, now + 60_000, cutoff)
        ids_a = {r.state.call_id for r in got_a}
        ids_b = {r.state.call_id for r in got_b}
        assert len(ids_a) == 5 and len(ids_b) == 3 and not ids_a & ids_b
        assert a.claim_stale(100, now + 1000, now + 61_000, cutoff) == []
        later = a.claim_stale(100, now + 60_000, now + 120_000, cutoff)  # the interval is over
        assert {r.state.call_id for r in later} == ids_a | ids_b


def test_an_old_sqlite_database_gets_the_stale_columns_filled_from_its_log(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with opened(str(db)) as s:
        cutoff = _stale_dataset(s)
    conn = sqlite3.connect(db)
    names = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'calls_stale_%'")
    ]
    for name in names:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("ALTER TABLE calls DROP COLUMN last_received_at")
    conn.execute("ALTER TABLE calls DROP COLUMN claimed_until")
    conn.execute("ALTER TABLE events DROP COLUMN origin")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with opened(str(db)) as s:
        assert s.stale_count(cutoff) == 8
        assert s.replay(check=True) == []


def test_an_old_postgresql_database_gets_the_stale_columns_filled_from_its_log(pg_url: str) -> None:
    import psycopg

    with opened(pg_url) as s:
        cutoff = _stale_dataset(s)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'calls_stale_%'"
        ).fetchall():
            conn.execute(f"DROP INDEX {name}".encode())
        conn.execute("ALTER TABLE calls DROP COLUMN last_received_at")
        conn.execute("ALTER TABLE calls DROP COLUMN claimed_until")
        conn.execute("ALTER TABLE events DROP COLUMN origin")
        conn.execute("UPDATE tracker_schema SET version = 1")
    with opened(pg_url) as s:
        assert s.stale_count(cutoff) == 8
        assert s.replay(check=True) == []


def test_replay_rebuilds_the_last_receipt_times_from_the_log(db_target: str) -> None:
    with opened(db_target) as s:
        cutoff = _stale_dataset(s)
        s.replay()
        assert s.stale_count(cutoff) == 8
        assert s.replay(check=True) == []


# --------------------------------------------------------------------------------------------
# Passes against the fake API


def _sweep_settings(api: FakeApi, **kw: Any) -> Reconcile:
    return Reconcile(
        v2_api_url=f"{api.url}/v2",
        v1_api_url=f"{api.url}/v1",
        username="api",
        password=PASSWORD,
        **kw,
    )


def _pass(storage: Storage, settings: Reconcile, *, dry_run: bool = False) -> list[Finding]:
    async def go() -> list[Finding]:
        client = CallApi(settings.username, settings.password, max_per_second=50, timeout=0.5)

        async def record(e: Entry) -> Appended:
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: storage.append([e])[0]
            )

        try:
            return await Sweep(storage, settings, client, record=None if dry_run else record).run()
        finally:
            await client.close()

    return asyncio.run(go())


KINDS = {
    "ended": "ended",
    "live": "live",
    "missing": "not_found",
    "denied": "unauthorized",
    "throttled": "rate_limited",
    "broken": "server_error",
    "garbage": "not_json",
    "slow": "timeout",
}


@pytest.mark.parametrize("gen", ["v1", "v2"])
def test_a_pass_records_only_the_calls_the_api_says_are_over(db_target: str, gen: str) -> None:
    old = now_ms() - 5 * HOUR
    started = started_v2 if gen == "v2" else started_v1
    with fake_bandwidth() as api, opened(db_target) as s:
        for kind in KINDS:
            s.append([entry(e, old) for e in started(f"{kind}-{gen}")])
        found = {f.call_id: f for f in _pass(s, _sweep_settings(api))}
        assert {cid: f.answer.kind for cid, f in found.items()} == {
            f"{k}-{gen}": v for k, v in KINDS.items()
        }
        for kind in KINDS:
            cid = f"{kind}-{gen}"
            got = view(s, cid)
            if kind == "ended":
                assert found[cid].seq is not None
                assert (got["status"], got["endedAt"], got["anomalies"]) == (
                    "ended",
                    "2026-01-05T10:05:00.000Z",
                    ["reconciled"],
                )
                assert got["outcome"] == "normal"
                assert got["cause"] == ("hangup" if gen == "v2" else None)
            else:
                assert found[cid].seq is None
                assert got["status"] == "answered"
        owner = f"accounts/{ACCOUNT}" if gen == "v2" else f"users/{USER}"
        assert all(f"/{gen}/{owner}/calls/" in path for path, _ in api.requests)
        auth = {a for _, a in api.requests}
        assert auth == {"Basic " + base64.b64encode(f"api:{PASSWORD}".encode()).decode()}
        # the recorded event: the API's body as it came, inside
        page = s.timeline(f"ended-{gen}")
        assert page is not None
        recon = [e for e in page[0] if e.event_type == "reconciled"]
        assert len(recon) == 1 and recon[0].origin == "reconcile"
        body = msgspec.json.decode(recon[0].body)
        assert body["source"].endswith(f"/calls/ended-{gen}")
        assert body["response"]["state"] in ("disconnected", "completed")
        # claimed for the interval: an immediate second pass asks nothing
        asked = len(api.requests)
        assert _pass(s, _sweep_settings(api)) == []
        assert len(api.requests) == asked
        assert s.replay(check=True) == []


def test_a_dry_run_asks_and_records_nothing_and_claims_nothing(tmp_path: Path) -> None:
    old = now_ms() - 5 * HOUR
    with fake_bandwidth() as api, opened(str(tmp_path / "t.db")) as s:
        s.append([entry(e, old) for e in started_v2("ended-1")])
        found = _pass(s, _sweep_settings(api), dry_run=True)
        assert [(f.call_id, f.answer.kind, f.seq) for f in found] == [("ended-1", "ended", None)]
        assert view(s, "ended-1")["status"] == "answered"
        assert [f.call_id for f in _pass(s, _sweep_settings(api))] == ["ended-1"]
        assert view(s, "ended-1")["status"] == "ended"


def test_a_call_without_an_account_id_uses_the_configured_one_or_is_skipped(tmp_path: Path) -> None:
    old = now_ms() - 5 * HOUR
    bare = {"eventType": "answer", "eventTime": "2026-01-05T10:00:00Z", "callId": "ended-x"}
    with fake_bandwidth() as api, opened(str(tmp_path / "t.db")) as s:
        s.append([entry(bare, old)])
        found = _pass(s, _sweep_settings(api, interval_seconds=0.001))
        assert [f.answer.kind for f in found] == ["no_account"] and api.requests == []
        time.sleep(0.01)
        found = _pass(s, _sweep_settings(api, account_id="acc-9"))
        assert [f.answer.kind for f in found] == ["ended"]
        assert api.requests[0][0] == "/v2/accounts/acc-9/calls/ended-x"


def test_a_late_real_callback_after_a_reconciliation_overrides_it(db_target: str) -> None:
    old = now_ms() - 5 * HOUR
    with fake_bandwidth() as api, opened(db_target) as s:
        s.append([entry(e, old) for e in started_v2("ended-late")])
        _pass(s, _sweep_settings(api))
        assert view(s, "ended-late")["anomalies"] == ["reconciled"]
        late = v2(
            "disconnect",
            "ended-late",
            "2026-01-05T10:04:00Z",
            endTime="2026-01-05T10:04:00Z",
            cause="cancel",
        )
        s.append([entry(late)])
        got = view(s, "ended-late")
        assert (got["endedAt"], got["cause"], got["outcome"], got["anomalies"]) == (
            "2026-01-05T10:04:00.000Z",
            "cancel",
            "cancelled",
            [],
        )
        assert s.replay(check=True) == []


def test_a_429_or_500_makes_the_client_back_off_before_its_next_request() -> None:
    async def go(api: FakeApi) -> float:
        client = CallApi("api", PASSWORD, max_per_second=100, timeout=2)
        try:
            await client.get(f"{api.url}/v2/accounts/a/calls/throttled-1", "v2")
            start = time.monotonic()
            got = await client.get(f"{api.url}/v2/accounts/a/calls/live-1", "v2")
            assert got.kind == "live"
            return time.monotonic() - start
        finally:
            await client.close()

    with fake_bandwidth() as api:
        assert asyncio.run(go(api)) >= 0.9


def test_the_reconciled_event_is_carried_by_tracker_copy(tmp_path: Path, pg_url: str) -> None:
    src = str(tmp_path / "src.db")
    with opened(src) as s:
        s.append([entry(e) for e in started_v2("c-1")])
        body = reconciled_body(
            "c-1",
            "http://x/v2/accounts/a/calls/c-1",
            now_ms(),
            b'{"state":"disconnected","endTime":"2026-01-05T10:05:00Z","disconnectCause":"hangup"}',
        )
        s.append([reconciled_entry(body)])
        want = view(s, "c-1")
    r = run_tracker("copy", pg_url, "--db", src)
    assert r.returncode == 0, r.stderr
    with opened(pg_url) as d:
        assert view(d, "c-1") == want
        events = d.events_after(0, 10)
        assert [e.origin for e in events] == [None, None, "reconcile"]
        assert d.replay(check=True) == []


# --------------------------------------------------------------------------------------------
# Settings, the command, the server's loop


def test_reconcile_settings_are_validated_and_the_password_is_never_shown() -> None:
    with pytest.raises(ConfigError, match=r"reconcile\.interval_seconds"):
        load_settings(env={}, overrides={"reconcile": {"interval_seconds": 0}})
    with pytest.raises(ConfigError, match=r"reconcile\.username and reconcile\.password"):
        load_settings(env={}, overrides={"reconcile": {"password": PASSWORD}})
    with pytest.raises(ConfigError, match=r"reconcile\.enabled needs"):
        load_settings(env={}, overrides={"reconcile": {"enabled": True}})
    with pytest.raises(ConfigError, match="v2_api_url") as err:
        load_settings(env={}, overrides={"reconcile": {"v2_api_url": f"https://u:{PASSWORD}@x/"}})
    assert PASSWORD not in str(err.value)
    s = load_settings(
        env={"TRACKER_RECONCILE_USERNAME": "api", "TRACKER_RECONCILE_PASSWORD": PASSWORD}
    )
    assert s.reconcile.password == PASSWORD
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.reconcile)
    assert s.reconcile.stale_after_seconds == 14400 and s.reconcile.interval_seconds == 60


def test_tracker_reconcile_prints_each_stale_call_and_what_it_recorded(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    old = now_ms() - 5 * HOUR
    with opened(db) as s:
        for kind in ("ended", "live", "missing"):
            s.append([entry(e, old) for e in started_v2(f"{kind}-1")])
    with fake_bandwidth() as api:
        config = write_config(
            tmp_path / "c.toml",
            {"reconcile": {"v2_api_url": f"{api.url}/v2", "username": "api", "password": PASSWORD}},
        )
        dry = run_tracker("reconcile", "--dry-run", "--db", db, "--config", str(config))
        assert dry.returncode == 0, dry.stderr
        assert "ended-1:" in dry.stdout and "would record" in dry.stdout
        assert "3 stale calls asked, 1 ended (dry run" in dry.stdout
        done = run_tracker("reconcile", "--db", db, "--config", str(config))
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith("ended-1:"))
        assert "ended (HTTP 200)" in line and "recorded reconciled seq 7" in line
        assert re.search(r"missing-1: .*not_found \(HTTP 404\).*recorded nothing", done.stdout)
        assert "1 recorded" in done.stdout
        assert PASSWORD not in dry.stdout + dry.stderr + done.stdout + done.stderr
    shown = run_tracker("show", "ended-1", "--db", db)
    assert '"reconciled"' in shown.stdout
    bare = run_tracker("reconcile", "--db", db)
    assert bare.returncode != 0 and "reconcile.username" in bare.stderr


def test_the_serve_loop_reconciles_stale_calls_once_an_interval_across_two_servers(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "t.db")
    with fake_bandwidth() as api:
        config = write_config(
            tmp_path / "c.toml",
            {
                "reconcile": {
                    "enabled": True,
                    "interval_seconds": 4,
                    "stale_after_seconds": 1,
                    "v2_api_url": f"{api.url}/v2",
                    "v1_api_url": f"{api.url}/v1",
                    "username": "api",
                    "password": PASSWORD,
                }
            },
        )
        with (
            running(db, config=config, timeout=60) as one,
            running(db, config=config, timeout=60) as two,
        ):
            with one.client() as c:
                for cid in ("ended-s", "live-s", "slow-s"):
                    for e in started_v2(cid):
                        assert c.post("/callbacks", json=e).status_code == 200
                deadline = time.monotonic() + 60
                while (
                    time.monotonic() < deadline
                    and c.get("/calls/ended-s").json()["status"] != "ended"
                ):
                    time.sleep(0.2)
                got = c.get("/calls/ended-s").json()
                assert (got["status"], got["anomalies"]) == ("ended", ["reconciled"])
                while time.monotonic() < deadline and api.asked("slow-s") < 1:
                    time.sleep(0.05)
                # the API takes 2 s to answer about slow-s: ingest does not wait for it
                for server in (one, two):
                    with server.client() as other:
                        start = time.monotonic()
                        event = v2("dtmf", f"other-{server.url}", "2026-01-05T10:00:00Z")
                        assert other.post("/callbacks", json=event).status_code == 200
                        assert time.monotonic() - start < 1.0
                time.sleep(2)  # both servers made a pass meanwhile: the claims held
                assert [api.asked(c) for c in ("ended-s", "live-s", "slow-s")] == [1, 1, 1]
                stale = c.get("/calls", params={"stale": "true"}).json()["calls"]
                ids = {x["callId"] for x in stale if not x["callId"].startswith("other-")}
                assert ids == {"live-s", "slow-s"}  # not ended-s: it is ended
            metrics = ""
            for server in (one, two):
                with server.client() as c:
                    metrics += c.get("/metrics").text
            assert 'tracker_reconcile_answers_total{kind="ended"} 1.0' in metrics
            assert PASSWORD not in metrics
            assert one.terminate() == 0 and two.terminate() == 0
            assert PASSWORD not in "".join(one.output + two.output)
