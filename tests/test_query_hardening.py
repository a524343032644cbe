"""Hardening of the query side: what a hostile client can make the service hold or show.

Through Starlette's TestClient on a real SQLite file (the lifespan runs), like
``tests/test_api_query.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
