"""The call-state fold: examples for every rule in SPEC §4, then its algebra as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.callbacks import SPEC_EXAMPLE_VIEW
from tracker.events import InvalidEvent, decode_object, parse_time
from tracker.ingest import reconciled_entry
from tracker.render import view
from tracker.state import (
    END_HARD,
    END_NONE,
    END_RECONCILED,
    CallState,
    Fact,
    evolve,
    fact_of,
    fold,
    fold_distinct,
    initial_state,
    merge,
    unit,
)

CALL = "c-1"
URI = "https://api.catapult.inetwork.com/v1/users/u-1/calls/c-1"
URL = "https://voice.bandwidth.com/api/v2/accounts/9900000/calls/c-1"


def F(obj: dict[str, Any], seq: int | None = None) -> Fact:
    if obj.get("eventType") == "reconciled" and "response" in obj:  # the tracker's own event
        return msgspec.structs.replace(reconciled_entry(msgspec.json.encode(obj)).fact, seq=seq)
    return fact_of(decode_object(obj), seq)


def state_of(*objs: dict[str, Any], call_id: str = CALL) -> CallState:
    return fold([F(o) for o in objs], call_id)


def view_of(*objs: dict[str, Any], outcomes: dict[str, str] | None = None, call_id: str = CALL):
    return view(state_of(*objs, call_id=call_id), outcomes)


def at(second: float) -> str:
    """2012-11-14T15:55:00Z plus ``second`` seconds, in the v1/v2 wire format."""
    dt = datetime(2012, 11, 14, 15, 55, tzinfo=UTC) + timedelta(seconds=second)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def v1(event_type: str, second: float | None = None, call_id: str = CALL, **fields: Any):
    d: dict[str, Any] = {"eventType": event_type, "callId": call_id, "callUri": URI}
    if second is not None:
        d["time"] = at(second)
    return {**d, **fields}


def v2(event_type: str, second: float | None = None, call_id: str = CALL, **fields: Any):
    d: dict[str, Any] = {"eventType": event_type, "callId": call_id, "callUrl": URL}
    if second is not None:
        d["eventTime"] = at(second)
    return {**d, **fields}


# --------------------------------------------------------------------------------------------
# Causes and outcomes

V1_CAUSES = [
    ("NORMAL_CLEARING", "normal"),
    ("USER_BUSY", "busy"),
    ("NO_ANSWER", "no_answer"),
    ("ORIGINATOR_CANCEL", "cancelled"),
    ("CALL_REJECTED", "rejected"),
    ("UNALLOCATED_NUMBER", "failed"),
    ("NORMAL_TEMPORARY_FAILURE", "failed"),
    ("SWITCH_CONGESTION", "failed"),
    ("NORMAL_UNSPECIFIED", "error"),
]

V2_CAUSES = [
    ("hangup", "normal"),
    ("busy", "busy"),
    ("timeout", "no_answer"),
    ("cancel", "cancelled"),
    ("rejected", "rejected"),
    ("callback-error", "failed"),
    ("invalid-bxml", "failed"),
    ("application-error", "failed"),
    ("account-limit", "failed"),
    ("node-capacity-exceeded", "failed"),
    ("error", "error"),
    ("unknown", "error"),
    ("carrier-pigeon-lost", "error"),
]


@pytest.mark.parametrize(("cause", "outcome"), V1_CAUSES)
def test_a_v1_hangup_cause_maps_to_its_outcome_and_is_kept_raw(cause, outcome):
    v = view_of(v1("incomingcall", 1), v1("hangup", 9, cause=cause))
    assert v.status == "ended"
    assert v.cause == cause
    assert v.outcome == outcome
    assert v.endedAt == at(9)


@pytest.mark.parametrize(("cause", "outcome"), V2_CAUSES)
def test_a_v2_disconnect_cause_maps_to_its_outcome_and_is_kept_raw(cause, outcome):
    v = view_of(v2("initiate", 1, startTime=at(1)), v2("disconnect", 9, cause=cause, endTime=at(8)))
    assert v.status == "ended"
    assert v.cause == cause
    assert v.outcome == outcome
    assert v.endedAt == at(8)


def test_a_v1_hangup_without_cause_is_an_error():
    v = view_of(v1("hangup", 9))
    assert (v.status, v.cause, v.outcome) == ("ended", None, "error")


def test_configured_outcome_mappings_apply_to_causes_the_spec_does_not_list():
    events = (v1("hangup", 9, cause="MEDIA_TIMEOUT"),)
    assert view_of(*events).outcome == "error"
    assert view_of(*events, outcomes={"MEDIA_TIMEOUT": "failed"}).outcome == "failed"
    assert view_of(*events, outcomes={"MEDIA_TIMEOUT": "failed"}).cause == "MEDIA_TIMEOUT"


def test_configured_outcome_mappings_take_precedence_over_the_builtin_table():
    events = (v2("disconnect", 9, cause="application-error"),)
    assert view_of(*events, outcomes={"application-error": "error"}).outcome == "error"


def test_a_call_that_has_not_ended_has_no_outcome():
    v = view_of(v1("incomingcall", 1), v1("answer", 3))
    assert (v.status, v.outcome, v.cause, v.endedAt) == ("answered", None, None, None)


# --------------------------------------------------------------------------------------------
# Soft ends (v1 timeout / error)


def test_a_v1_timeout_without_hangup_ends_the_call_as_no_answer():
    v = view_of(v1("incomingcall", 1), v1("timeout", 31))
    assert v.status == "ended"
    assert v.outcome == "no_answer"
    assert v.cause is None
    assert v.endedAt == at(31)
    assert v.durationSeconds == 30.0


def test_a_v1_error_without_hangup_ends_the_call_as_error_with_its_message():
    v = view_of(v1("incomingcall", 1), v1("error", 5, message="Call rejected by the app"))
    assert v.status == "ended"
    assert v.outcome == "error"
    assert v.cause is None
    assert v.errorMessage == "Call rejected by the app"
    assert v.endedAt == at(5)


def test_the_earliest_soft_end_wins_when_there_are_several():
    v = view_of(v1("timeout", 10), v1("error", 20, message="x"))
    assert (v.outcome, v.endedAt) == ("no_answer", at(10))
    v = view_of(v1("timeout", 20), v1("error", 10, message="x"))
    assert (v.outcome, v.endedAt, v.errorMessage) == ("error", at(10), "x")


@pytest.mark.parametrize("order", [0, 1])
def test_a_hangup_arriving_after_a_timeout_wins(order):
    events = [v1("incomingcall", 1), v1("timeout", 31), v1("hangup", 32, cause="NO_ANSWER")]
    if order:
        events.reverse()
    v = view_of(*events)
    assert v.status == "ended"
    assert (v.cause, v.outcome, v.endedAt) == ("NO_ANSWER", "no_answer", at(32))


def test_a_hangup_wins_over_an_error_even_when_the_error_is_later():
    v = view_of(v1("hangup", 10, cause="NORMAL_CLEARING"), v1("error", 20, message="late"))
    assert (v.cause, v.outcome, v.endedAt, v.errorMessage) == (
        "NORMAL_CLEARING",
        "normal",
        at(10),
        None,
    )


# --------------------------------------------------------------------------------------------
# Transfers and v2 evidence


def test_a_transfer_complete_carries_a_cause_but_does_not_end_the_a_leg():
    a_leg = view_of(
        v2("initiate", 0, startTime=at(0), direction="inbound"),
        v2("answer", 2, startTime=at(0), answerTime=at(2)),
        v2("transferComplete", 60, cause="hangup", startTime=at(0), answerTime=at(2)),
    )
    assert a_leg.status == "answered"
    assert (a_leg.endedAt, a_leg.cause, a_leg.outcome) == (None, None, None)
    assert a_leg.lastEventType == "transferComplete"


def test_a_transfer_disconnect_ends_the_b_leg_and_keeps_its_parent():
    b_leg = view_of(
        v2(
            "transferAnswer",
            5,
            call_id="c-B",
            parentCallId="c-A",
            startTime=at(3),
            answerTime=at(5),
        ),
        v2(
            "transferDisconnect",
            60,
            call_id="c-B",
            parentCallId="c-A",
            startTime=at(3),
            answerTime=at(5),
            endTime=at(59),
            cause="hangup",
        ),
        call_id="c-B",
    )
    assert b_leg.callId == "c-B"
    assert b_leg.status == "ended"
    assert b_leg.parentCallId == "c-A"
    assert (b_leg.cause, b_leg.outcome, b_leg.endedAt) == ("hangup", "normal", at(59))
    assert (b_leg.ringSeconds, b_leg.talkSeconds, b_leg.durationSeconds) == (2.0, 54.0, 56.0)


def test_a_v2_call_is_rebuilt_from_its_disconnect_alone():
    v = view_of(
        v2(
            "disconnect",
            72.7,
            direction="outbound",
            startTime=at(1),
            answerTime=at(4),
            endTime=at(72.636),
            cause="hangup",
            **{"from": "+15551230000", "to": "+15551239999"},
        )
    )
    assert v.api == "v2"
    assert v.status == "ended"
    assert v.direction == "outbound"
    assert (v.startedAt, v.answeredAt, v.endedAt) == (at(1), at(4), at(72.636))
    assert (v.ringSeconds, v.talkSeconds, v.durationSeconds) == (3.0, 68.636, 71.636)
    assert (v.from_, v.to) == ("+15551230000", "+15551239999")
    assert v.anomalies == []


def test_an_unanswered_v2_disconnect_leaves_the_call_unanswered():
    v = view_of(v2("disconnect", 30, startTime=at(1), endTime=at(30), cause="timeout"))
    assert v.answeredAt is None
    assert (v.ringSeconds, v.talkSeconds, v.durationSeconds) == (None, None, 29.0)
    assert v.outcome == "no_answer"


def test_recording_results_do_not_give_the_call_its_start_or_answer():
    v = view_of(
        v2("initiate", 10, startTime=at(10)),
        v2("recordingAvailable", 100, startTime=at(5), answerTime=at(6), endTime=at(90)),
    )
    assert v.startedAt == at(10)
    assert v.answeredAt is None
    assert v.status == "started"


def test_v2_times_are_the_earliest_evidence():
    v = view_of(
        v2("answer", 6, startTime=at(2), answerTime=at(6)),
        v2("gather", 9, startTime=at(1), answerTime=at(5)),
    )
    assert (v.startedAt, v.answeredAt) == (at(1), at(5))


def test_v2_direction_is_as_sent():
    assert view_of(v2("initiate", 1, direction="outbound")).direction == "outbound"
    assert view_of(v2("initiate", 1)).direction is None


# --------------------------------------------------------------------------------------------
# The worked examples


SEED_HANGUP = {
    "eventType": "hangup",
    "from": "+13233326955",
    "to": "+13865245000",
    "callId": "{callId}",
    "callUri": "https://api.catapult.inetwork.com/v1/users/{userId}/calls/{callId}",
    "callState": "completed",
    "time": "2012-11-14T15:56:12.636Z",
    "cause": "NORMAL_CLEARING",
}


def test_the_seed_documents_hangup_example_ends_a_call_normally():
    v = view_of(SEED_HANGUP, call_id="{callId}")
    assert msgspec.json.decode(msgspec.json.encode(v)) == {
        "callId": "{callId}",
        "api": "v1",
        "status": "ended",
        "direction": None,
        "from": "+13233326955",
        "to": "+13865245000",
        "startedAt": None,
        "answeredAt": None,
        "endedAt": "2012-11-14T15:56:12.636Z",
        "cause": "NORMAL_CLEARING",
        "outcome": "normal",
        "errorMessage": None,
        "ringSeconds": None,
        "talkSeconds": None,
        "durationSeconds": None,
        "tag": None,
        "parentCallId": None,
        "eventCount": 1,
        "firstEventAt": "2012-11-14T15:56:12.636Z",
        "lastEventAt": "2012-11-14T15:56:12.636Z",
        "lastEventType": "hangup",
        "firstSeq": None,
        "lastSeq": None,
        "anomalies": [],
    }


def test_the_spec_example_gives_exactly_the_documented_state():
    numbers = {"from": "+13233326955", "to": "+13865245000"}
    facts = [
        F(v1("incomingcall", 1, call_id="c-abc", callState="active", **numbers), 17),
        F(v1("answer", 4, call_id="c-abc", callState="active", **numbers), 30),
        F(v1("speak", 5, call_id="c-abc", callState="active", status="started"), 50),
        F(v1("gather", 30, call_id="c-abc", digits="1"), 70),
        F(v1("hangup", 72.636, call_id="c-abc", cause="NORMAL_CLEARING", **numbers), 93),
    ]
    v = view(fold(facts, "c-abc"))
    expected = SPEC_EXAMPLE_VIEW
    assert msgspec.json.decode(msgspec.json.encode(v)) == expected
    # field names and their order are the spec's
    assert list(msgspec.json.decode(msgspec.json.encode(v))) == list(expected)


# --------------------------------------------------------------------------------------------
# Durations, status, direction, api


def test_durations_are_null_when_an_end_is_unknown_never_zero():
    no_start = view_of(v1("answer", 3), v1("hangup", 10, cause="NORMAL_CLEARING"))
    assert (no_start.ringSeconds, no_start.talkSeconds, no_start.durationSeconds) == (
        None,
        7.0,
        None,
    )
    not_ended = view_of(v1("incomingcall", 1), v1("answer", 3))
    assert (not_ended.ringSeconds, not_ended.talkSeconds, not_ended.durationSeconds) == (
        2.0,
        None,
        None,
    )
    started_only = view_of(v1("incomingcall", 1))
    assert (started_only.ringSeconds, started_only.talkSeconds) == (None, None)
    assert started_only.durationSeconds is None


def test_a_zero_duration_is_reported_only_when_both_times_are_known_and_equal():
    v = view_of(v1("incomingcall", 1), v1("hangup", 1, cause="CALL_REJECTED"))
    assert v.durationSeconds == 0.0
    assert v.talkSeconds is None


def test_a_v1_incomingcall_starts_an_inbound_call():
    v = view_of(v1("incomingcall", 1))
    assert (v.status, v.direction, v.startedAt, v.api) == ("started", "inbound", at(1), "v1")


def test_other_v1_calls_have_no_direction_and_no_start():
    v = view_of(v1("answer", 3), v1("hangup", 9, cause="NORMAL_CLEARING"))
    assert (v.direction, v.startedAt) == (None, None)


def test_v1_call_state_active_means_answered_at_its_time():
    v = view_of(v1("incomingcall", 1), v1("speak", 7, callState="active"))
    assert (v.status, v.answeredAt) == ("answered", at(7))
    assert view_of(v1("speak", 7, callState="started")).status == "started"


def test_an_incomingcall_in_state_active_is_not_an_answer():
    # Bandwidth sends every incomingcall with callState "active": the leg exists, unanswered
    v = view_of(v1("incomingcall", 1, callState="active"))
    assert (v.status, v.answeredAt, v.ringSeconds) == ("started", None, None)
    v = view_of(v1("incomingcall", 1, callState="active"), v1("answer", 4, callState="active"))
    assert (v.status, v.answeredAt, v.ringSeconds) == ("answered", at(4), 3.0)


def test_api_is_v2_when_any_event_is_v2():
    assert view_of(v1("incomingcall", 1), v1("answer", 2)).api == "v1"
    assert view_of(v1("incomingcall", 1), v2("somethingNew", 2)).api == "v2"
    assert view_of(v1("incomingcall", 1), v2("dtmf", 3, digit="1")).api == "v2"


# --------------------------------------------------------------------------------------------
# Picks: tag, from/to, first/last event


@pytest.mark.parametrize("reverse", [False, True])
def test_tag_is_the_value_on_the_latest_event_by_event_time(reverse):
    events = [v2("answer", 1, tag="a"), v2("gather", 9, tag="c"), v2("redirect", 5, tag="b")]
    events.append(v2("dtmf", None, tag="untimed"))
    if reverse:
        events.reverse()
    assert view_of(*events).tag == "c"


def test_a_tie_on_tag_time_is_broken_by_content_not_arrival():
    a, b = v2("gather", 5, tag="x"), v2("redirect", 5, tag="y")
    assert view_of(a, b).tag == view_of(b, a).tag


def test_from_and_to_come_from_the_earliest_event_that_carries_them():
    v = view_of(
        v1("answer", 5, **{"from": "+2", "to": "+20"}),
        v1("incomingcall", 1, **{"from": "+1"}),
        v1("hangup", 9, **{"from": "+3", "to": "+30"}, cause="NORMAL_CLEARING"),
    )
    assert (v.from_, v.to) == ("+1", "+20")


def test_first_and_last_event_come_from_timed_events_only():
    v = view_of(
        v1("incomingcall", 1),
        v1("recording", None, recordingUri="r"),
        v1("hangup", 9, cause="NORMAL_CLEARING"),
    )
    assert (v.firstEventAt, v.lastEventAt, v.lastEventType) == (at(1), at(9), "hangup")
    assert v.eventCount == 3


def test_event_count_counts_distinct_events_and_unknown_types():
    a = v1("incomingcall", 1)
    u = v1("somethingNew", 2)
    assert view_of(a, a, dict(reversed(list(a.items()))), u, u).eventCount == 2


def test_an_untimed_call_has_no_first_or_last_event():
    v = view_of(v1("recording", None, recordingUri="r"))
    assert (v.firstEventAt, v.lastEventAt, v.lastEventType) == (None, None, None)
    assert v.eventCount == 1


# --------------------------------------------------------------------------------------------
# Anomalies


def test_two_different_hard_ends_give_conflicting_end_and_the_earliest_wins():
    events = [v1("hangup", 20, cause="NORMAL_CLEARING"), v1("hangup", 10, cause="USER_BUSY")]
    for order in (events, events[::-1]):
        v = view_of(*order)
        assert (v.cause, v.outcome, v.endedAt) == ("USER_BUSY", "busy", at(10))
        assert v.anomalies == ["conflicting_end"]


def test_hard_ends_at_the_same_time_are_chosen_by_content_not_arrival():
    a = v2("disconnect", 9, endTime=at(9), cause="hangup")
    b = v2("transferDisconnect", 9, endTime=at(9), cause="busy")
    assert view_of(a, b) == view_of(b, a)
    assert view_of(a, b).anomalies == ["conflicting_end"]


def test_the_same_hard_end_twice_is_not_a_conflict():
    end = v1("hangup", 9, cause="NORMAL_CLEARING")
    assert view_of(end, dict(end)).anomalies == []


def test_an_event_timed_after_the_end_is_flagged():
    v = view_of(v1("hangup", 9, cause="NORMAL_CLEARING"), v1("dtmf", 15, dtmfDigit="1"))
    assert v.anomalies == ["event_after_end"]
    assert v.status == "ended"


def test_an_event_after_a_soft_end_is_flagged():
    assert view_of(v1("timeout", 9), v1("speak", 15)).anomalies == ["event_after_end"]


def test_a_later_hard_end_is_a_conflict_not_an_event_after_end():
    v = view_of(v1("hangup", 9, cause="NORMAL_CLEARING"), v1("hangup", 15, cause="USER_BUSY"))
    assert v.anomalies == ["conflicting_end"]


def test_a_disconnect_sent_after_its_end_time_is_not_flagged():
    v = view_of(v2("disconnect", 30, endTime=at(20), cause="hangup"))
    assert v.anomalies == []


def test_recording_and_transcription_results_may_come_after_the_end():
    v = view_of(
        v2("disconnect", 30, endTime=at(30), cause="hangup"),
        v2("recordComplete", 31, endTime=at(29)),
        v2("recordingAvailable", 60, endTime=at(29)),
        v2("transcriptionAvailable", 120),
        v1("recording", 70),
        v1("transcription", 130),
    )
    assert v.anomalies == []


def test_an_unparseable_time_is_flagged_and_ignored():
    v = view_of(v1("incomingcall", 1), {**v1("answer"), "time": "yesterday"})
    assert v.anomalies == ["unparseable_time"]
    assert (v.status, v.answeredAt, v.lastEventAt) == ("answered", None, at(1))


def test_an_unparseable_v2_start_time_is_flagged():
    v = view_of(v2("initiate", 1, startTime="2012-99-99"))
    assert v.anomalies == ["unparseable_time"]
    assert v.startedAt is None


def test_anomalies_are_sorted():
    v = view_of(
        v1("hangup", 9, cause="NORMAL_CLEARING"),
        v1("hangup", 8, cause="USER_BUSY"),
        v1("dtmf", 20),
        {**v1("speak"), "time": "garbage"},
    )
    assert v.anomalies == ["conflicting_end", "event_after_end", "unparseable_time"]


def test_late_answer_never_reopens_an_ended_call():
    ended = [v1("incomingcall", 1), v1("hangup", 9, cause="NO_ANSWER")]
    v = view_of(*ended, v1("answer", 12))
    assert (v.status, v.outcome, v.endedAt) == ("ended", "no_answer", at(9))
    assert v.anomalies == ["event_after_end"]


# --------------------------------------------------------------------------------------------
# Property tests: realistic mixes of v1 and v2 events for one call

T0 = datetime(2012, 11, 14, 15, 55, tzinfo=UTC)
MISSING = object()


@st.composite
def wire_times(draw: st.DrawFn) -> Any:
    """A time as the wire might carry it: in any accepted style, missing, or unparseable."""
    kind = draw(st.sampled_from(["ok"] * 6 + ["missing", "bad"]))
    if kind == "missing":
        return MISSING
    if kind == "bad":
        return draw(st.sampled_from(["garbage", "2012-13-45T00:00:00Z", "15:55", "", "-"]))
    dt = T0 + timedelta(
        seconds=draw(st.integers(0, 40)), milliseconds=draw(st.sampled_from([0, 636]))
    )
    style = draw(st.sampled_from(["ms", "plain", "utc", "minus3", "plus0530", "nanos"]))
    ms = f"{dt.microsecond // 1000:03d}"
    if style == "ms":
        return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms}Z"
    if style == "plain":
        return (
            f"{dt:%Y-%m-%dT%H:%M:%S}Z" if dt.microsecond == 0 else f"{dt:%Y-%m-%dT%H:%M:%S}.{ms}Z"
        )
    if style == "utc":
        return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms}+00:00"
    if style == "minus3":
        return f"{dt - timedelta(hours=3):%Y-%m-%dT%H:%M:%S}.{ms}-03"
    if style == "plus0530":
        return f"{dt + timedelta(hours=5, minutes=30):%Y-%m-%dT%H:%M:%S}.{ms}+05:30"
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms}123456Z"


V1_KINDS = [
    "incomingcall",
    "answer",
    "hangup",
    "timeout",
    "playback",
    "speak",
    "dtmf",
    "gather",
    "recording",
    "transcription",
    "conference-member",
    "error",
    "transferComplete",
    "redirect",
    "someFutureV1Event",
]
V2_KINDS = [
    "initiate",
    "answer",
    "disconnect",
    "transferAnswer",
    "transferComplete",
    "transferDisconnect",
    "bridgeComplete",
    "gather",
    "dtmf",
    "redirect",
    "recordComplete",
    "recordingAvailable",
    "transcriptionAvailable",
    "machineDetectionComplete",
    "conferenceMemberJoin",
    "someFutureV2Event",
]
NUMBERS = ["+13233326955", "+13865245000", "+15551230000"]


def _maybe(draw: st.DrawFn, d: dict[str, Any], key: str, values: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        d[key] = draw(values)


def _put_time(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not MISSING:
        d[key] = value


@st.composite
def v1_events(draw: st.DrawFn, kinds: list[str] = V1_KINDS) -> dict[str, Any]:
    et = draw(st.sampled_from(kinds))
    d: dict[str, Any] = {"eventType": et, "callId": CALL, "callUri": URI}
    _put_time(d, "time", draw(wire_times()))
    _maybe(draw, d, "callState", st.sampled_from(["active", "started", "completed"]))
    _maybe(draw, d, "tag", st.sampled_from(["a", "b", "c"]))
    _maybe(draw, d, "from", st.sampled_from(NUMBERS))
    _maybe(draw, d, "to", st.sampled_from(NUMBERS))
    _maybe(draw, d, "n", st.integers(0, 2))
    if et == "hangup":
        d["cause"] = draw(st.sampled_from([c for c, _ in V1_CAUSES]))
    if et == "error":
        _maybe(draw, d, "message", st.sampled_from(["boom", "bad bxml"]))
    return d


@st.composite
def v2_events(draw: st.DrawFn, kinds: list[str] = V2_KINDS) -> dict[str, Any]:
    et = draw(st.sampled_from(kinds))
    d: dict[str, Any] = {"eventType": et, "callId": CALL, "callUrl": URL}
    _put_time(d, "eventTime", draw(wire_times()))
    if draw(st.booleans()):
        _put_time(d, "startTime", draw(wire_times()))
    if draw(st.booleans()):
        _put_time(d, "answerTime", draw(wire_times()))
    if et in ("disconnect", "transferDisconnect", "recordComplete", "recordingAvailable"):
        _put_time(d, "endTime", draw(wire_times()))
    if et in ("disconnect", "transferDisconnect", "transferComplete", "bridgeComplete"):
        d["cause"] = draw(st.sampled_from([c for c, _ in V2_CAUSES]))
        _maybe(draw, d, "errorMessage", st.sampled_from(["oops", "Service unavailable"]))
    _maybe(draw, d, "direction", st.sampled_from(["inbound", "outbound"]))
    _maybe(draw, d, "parentCallId", st.sampled_from(["p-1", "p-2"]))
    _maybe(draw, d, "tag", st.sampled_from(["a", "b", "c"]))
    _maybe(draw, d, "from", st.sampled_from(NUMBERS))
    _maybe(draw, d, "to", st.sampled_from(NUMBERS))
    _maybe(draw, d, "n", st.integers(0, 2))
    return d


@st.composite
def reconciled_events(draw: st.DrawFn) -> dict[str, Any]:
    """The tracker's own ``reconciled`` event, with a v1 or v2 API body that ends the call."""
    response: dict[str, Any] = {"callId": CALL}
    if draw(st.booleans()):
        response["state"] = draw(st.sampled_from(["completed", "rejected"]))
        times = ("startTime", "activeTime", "endTime")
    else:
        response["state"] = "disconnected"
        times = ("startTime", "answerTime", "endTime")
        response["disconnectCause"] = draw(st.sampled_from([c for c, _ in V2_CAUSES]))
        _maybe(draw, response, "errorMessage", st.sampled_from(["oops", None]))
    for key in times:
        if draw(st.booleans()):
            _put_time(response, key, draw(wire_times()))
    d: dict[str, Any] = {"eventType": "reconciled", "callId": CALL, "source": URL}
    _put_time(d, "checkedAt", draw(wire_times()))
    return {**d, "response": response}


any_event = st.one_of(v1_events(), v2_events(), reconciled_events())
hard_ends = st.one_of(v1_events(["hangup"]), v2_events(["disconnect", "transferDisconnect"]))
facts_of_events = st.lists(any_event, min_size=1, max_size=12).map(lambda es: [F(e) for e in es])
OUTCOMES = {"NORMAL_UNSPECIFIED": "failed", "busy": "error"}


def _distinct(facts: list[Fact]) -> list[Fact]:
    return list({f.key: f for f in facts}.values())


@settings(max_examples=200, deadline=None)
@given(facts_of_events, st.data())
def test_any_order_with_any_duplicates_folds_to_the_same_state(facts, data):
    extra = data.draw(st.lists(st.sampled_from(facts), max_size=6))
    shuffled = data.draw(st.permutations(facts + extra))
    a, b = fold(facts, CALL), fold(shuffled, CALL)
    assert a == b
    assert view(a) == view(b)
    assert view(a, OUTCOMES) == view(b, OUTCOMES)
    assert a.count == len(_distinct(facts))


@settings(max_examples=200, deadline=None)
@given(st.lists(any_event, max_size=10), st.data())
def test_the_state_does_not_depend_on_key_order_or_redelivery_of_the_payloads(events, data):
    rnd = data.draw(st.randoms())
    redelivered = []
    for e in events:
        items = list(e.items())
        rnd.shuffle(items)
        redelivered.append(msgspec.json.decode(msgspec.json.encode(dict(items))))
    rnd.shuffle(redelivered)
    assert state_of(*events) == state_of(*redelivered, *events)


def assert_late_event_changes_no_end(events, end, late):
    before = view_of(*events, end)
    after = view_of(*events, end, late)
    assert before.status == after.status == "ended"
    assert (after.endedAt, after.cause, after.outcome, after.errorMessage) == (
        before.endedAt,
        before.cause,
        before.outcome,
        before.errorMessage,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(any_event, max_size=10),
    hard_ends,
    any_event.filter(lambda e: F(e).end_kind != END_HARD),
)
def test_a_late_event_never_reopens_a_call_with_a_hard_end(events, end, late):
    assert_late_event_changes_no_end(events, end, late)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(any_event.filter(lambda e: F(e).end_kind != END_HARD), max_size=10),
    v1_events(["timeout", "error"]),
    any_event.filter(lambda e: F(e).end_kind == END_NONE),
)
def test_a_late_event_never_reopens_a_call_with_a_soft_end(events, end, late):
    assert_late_event_changes_no_end(events, end, late)


@settings(max_examples=200, deadline=None)
@given(st.lists(any_event, max_size=10), hard_ends, st.lists(reconciled_events(), max_size=3))
def test_any_real_hard_end_overrides_reconciled_ends_in_any_order_without_a_conflict(
    events, end, reconciled
):
    alone = view_of(*events, end)
    both = view_of(*reconciled, *events, end)
    assert both.status == "ended"
    assert (both.endedAt, both.cause, both.outcome, both.errorMessage) == (
        alone.endedAt,
        alone.cause,
        alone.outcome,
        alone.errorMessage,
    )
    assert "reconciled" not in both.anomalies
    assert ("conflicting_end" in both.anomalies) == ("conflicting_end" in alone.anomalies)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(any_event.filter(lambda e: F(e).end_kind != END_HARD), max_size=10),
    reconciled_events(),
    any_event.filter(lambda e: F(e).end_kind not in (END_HARD, END_RECONCILED)),
)
def test_a_late_event_never_reopens_a_reconciled_call(events, end, late):
    assert_late_event_changes_no_end(events, end, late)
    assert "reconciled" in view_of(*events, end, late).anomalies


@settings(max_examples=200, deadline=None)
@given(st.lists(any_event, max_size=10), hard_ends, any_event)
def test_once_ended_a_call_stays_ended_whatever_comes_next(events, end, late):
    assert view_of(*events, end, late).status == "ended"


@settings(max_examples=200, deadline=None)
@given(facts_of_events, st.data())
def test_folding_two_halves_and_merging_equals_folding_the_whole(facts, data):
    distinct = [msgspec.structs.replace(f, seq=i) for i, f in enumerate(_distinct(facts), 1)]
    mask = data.draw(st.lists(st.booleans(), min_size=len(distinct), max_size=len(distinct)))
    left = [f for f, m in zip(distinct, mask, strict=True) if m]
    right = [f for f, m in zip(distinct, mask, strict=True) if not m]
    whole = fold(distinct, CALL)
    assert merge(fold(left, CALL), fold(right, CALL)) == whole
    assert merge(fold(right, CALL), fold(left, CALL)) == whole
    assert view(merge(fold(left, CALL), fold(right, CALL))) == view(whole)


def _evolve_all(facts: list[Fact], call_id: str) -> CallState:
    state = initial_state(call_id)
    for f in facts:
        state = evolve(state, f)
    return state


@settings(max_examples=200, deadline=None)
@given(facts_of_events, st.data())
def test_the_single_pass_fold_equals_evolving_one_event_at_a_time_in_any_order(facts, data):
    distinct = [msgspec.structs.replace(f, seq=i) for i, f in enumerate(_distinct(facts), 1)]
    order = data.draw(st.permutations(distinct))
    whole = fold(distinct, CALL)
    assert _evolve_all(order, CALL) == whole
    assert fold_distinct(((f, None) for f in order), CALL) == whole
    assert fold_distinct(((f, f.seq) for f in order), CALL) == whole


@settings(max_examples=200, deadline=None)
@given(facts_of_events, st.data())
def test_joining_the_units_with_merge_in_any_order_equals_the_fold(facts, data):
    # merge is written independently of fold_distinct (which evolve and replay use):
    # the two implementations of the per-field rules must agree
    distinct = [msgspec.structs.replace(f, seq=i) for i, f in enumerate(_distinct(facts), 1)]
    order = data.draw(st.permutations(distinct))
    joined = initial_state(CALL)
    for i, f in enumerate(order):
        before = fold(order[:i], CALL)
        assert evolve(before, f) == merge(before, unit(f, CALL))
        joined = merge(joined, unit(f, CALL))
    assert joined == fold(distinct, CALL)


@settings(max_examples=200, deadline=None)
@given(facts_of_events)
def test_merge_is_idempotent_in_every_field_but_the_count(facts):
    s = fold(facts, CALL)
    assert merge(s, s) == msgspec.structs.replace(s, count=2 * s.count)
    assert merge(s, initial_state(CALL)) == s


# --------------------------------------------------------------------------------------------
# Totality: nonsense in, a state out

EXTREME_INTS = st.sampled_from(
    [0, -1, 1, 2**31, 2**62, -(2**62), 2**63 - 1, -(2**63), 2**64, -(2**64), 10**400, -(10**400)]
)
maybe_int = st.none() | st.integers() | EXTREME_INTS
maybe_text = st.none() | st.text(max_size=5)

nonsense_facts = st.builds(
    Fact,
    key=st.binary(max_size=3),
    event_type=st.text(max_size=6),
    v2=st.booleans(),
    seq=maybe_int,
    t=maybe_int,
    time_bad=st.booleans(),
    start=maybe_int,
    answer=maybe_int,
    answered=st.booleans(),
    end_kind=st.integers() | EXTREME_INTS,
    end_t=maybe_int,
    cause=maybe_text,
    error=maybe_text,
    tag=maybe_text,
    from_=maybe_text,
    to=maybe_text,
    direction=maybe_text,
    parent=maybe_text,
    inbound=st.booleans(),
    late_ok=st.booleans(),
    recon=maybe_text,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(nonsense_facts, max_size=8), st.text(max_size=5))
def test_the_fold_and_view_never_raise_on_nonsensical_facts(facts, call_id):
    s = fold(facts, call_id)
    v = view(s, {"x": "failed"})
    msgspec.json.encode(v)
    assert v.status in ("started", "answered", "ended")
    assert v.anomalies == sorted(v.anomalies)
    half = len(facts) // 2
    merge(fold(facts[:half], call_id), fold(facts[half:], call_id))


@settings(max_examples=200, deadline=None)
@given(st.lists(nonsense_facts, max_size=8, unique_by=lambda f: f.key), st.text(max_size=5))
def test_the_single_pass_fold_equals_evolving_even_for_nonsensical_facts(facts, call_id):
    assert fold(facts, call_id) == _evolve_all(facts, call_id)


FIELD_NAMES = [
    "eventType",
    "callId",
    "time",
    "eventTime",
    "callUri",
    "callUrl",
    "startTime",
    "answerTime",
    "endTime",
    "cause",
    "callState",
    "tag",
    "from",
    "to",
    "direction",
    "parentCallId",
    "message",
    "errorMessage",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | wire_times().filter(lambda t: t is not MISSING)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
json_objects = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=6),
    json_values | st.sampled_from(V1_KINDS + V2_KINDS + [CALL]),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_objects, max_size=6), st.booleans())
def test_arbitrary_json_objects_either_are_refused_or_fold_without_raising(objs, lenient):
    facts = []
    for i, obj in enumerate(objs):
        try:
            decoded = decode_object(obj, lenient=lenient)
        except InvalidEvent:
            continue
        facts.append(fact_of(decoded, i))
    v = view(fold(facts, CALL))
    msgspec.json.encode(v)
    assert v.eventCount == len(_distinct(facts))


def test_a_fact_has_its_spec_times_in_epoch_milliseconds():
    f = F(v1("hangup", 72.636, cause="NORMAL_CLEARING"))
    assert f.t == f.end_t == parse_time(at(72.636))
    assert f.end_kind == END_HARD
