"""Bandwidth callbacks as the HTTP tests send them, and SPEC §4's example state."""

from __future__ import annotations

from typing import Any

V1_BASE = "https://api.catapult.inetwork.com/v1/users/u-ktp3mmi4n35wdqmrwqosqpa"


def v1(event_type: str, call_id: str | None, at: str | None, **extra: str) -> dict[str, str]:
    """A Catapult (v1) callback as Bandwidth sends it: every value a string."""
    ev: dict[str, str] = {"eventType": event_type}
    if call_id is not None:
        ev["callId"] = call_id
        ev["callUri"] = f"{V1_BASE}/calls/{call_id}"
    if at is not None:
        ev["time"] = at
    ev.update(extra)
    return ev


# `GET /calls/{callId}` of SPEC §4, field for field and in its order.
SPEC_EXAMPLE_VIEW: dict[str, Any] = {
    "callId": "c-abc",
    "api": "v1",
    "status": "ended",
    "direction": "inbound",
    "from": "+13233326955",
    "to": "+13865245000",
    "startedAt": "2012-11-14T15:55:01.000Z",
    "answeredAt": "2012-11-14T15:55:04.000Z",
    "endedAt": "2012-11-14T15:56:12.636Z",
    "cause": "NORMAL_CLEARING",
    "outcome": "normal",
    "errorMessage": None,
    "ringSeconds": 3.0,
    "talkSeconds": 68.636,
    "durationSeconds": 71.636,
    "tag": None,
    "parentCallId": None,
    "eventCount": 5,
    "firstEventAt": "2012-11-14T15:55:01.000Z",
    "lastEventAt": "2012-11-14T15:56:12.636Z",
    "lastEventType": "hangup",
    "firstSeq": 17,
    "lastSeq": 93,
    "anomalies": [],
}
