"""Hardening of the query side: what a hostile client can make the service hold or show.

Through Starlette's TestClient on a real SQLite file (the lifespan runs), like
``tests/test_api_query.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests.callbacks import v1
from tests.test_api_query import post, serving
from tracker.events import V1_TYPES, V2_TYPES


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
