"""Bandwidth callback events: msgspec Structs for both API generations, decoding, time parsing.

Pure: no I/O. The generation is detected from the payload first (v2 carries ``eventTime`` /
``callUrl``, v1 ``time`` / ``callUri``) because the two share event names (``answer``, ``gather``,
``dtmf``, ``redirect``, ``transferComplete``) with different fields. Each generation is a tagged
union on ``eventType``; an ``eventType`` that neither union knows decodes to :class:`Unknown`.
Unknown fields are never rejected: the Structs name only what the tracker reads, and the exact
bytes received are what the log keeps.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal

import msgspec

Api = Literal["v1", "v2"]


class InvalidEvent(ValueError):
    """An event that cannot be accepted; the message names the field and the event type."""


# --------------------------------------------------------------------------------------------
# v1 (Catapult)


class V1Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="eventType"):
    callId: str | None = None
    time: str | None = None
    callUri: str | None = None
    callState: str | None = None
    tag: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None


class V1IncomingCall(V1Event, frozen=True, tag="incomingcall"):
    applicationId: str | None = None


class V1Answer(V1Event, frozen=True, tag="answer"):
    pass


class V1Hangup(V1Event, frozen=True, tag="hangup"):
    cause: str | None = None


class V1Timeout(V1Event, frozen=True, tag="timeout"):
    pass


class V1Playback(V1Event, frozen=True, tag="playback"):
    status: str | None = None


class V1Speak(V1Event, frozen=True, tag="speak"):
    status: str | None = None


class V1Dtmf(V1Event, frozen=True, tag="dtmf"):
    dtmfDigit: str | None = None


class V1Gather(V1Event, frozen=True, tag="gather"):
    digits: str | None = None
    reason: str | None = None


class V1Recording(V1Event, frozen=True, tag="recording"):
    recordingUri: str | None = None
    status: str | None = None


class V1Transcription(V1Event, frozen=True, tag="transcription"):
    transcriptionUri: str | None = None
    status: str | None = None


class V1Conference(V1Event, frozen=True, tag="conference"):
    conferenceId: str | None = None
    status: str | None = None


class V1ConferenceMember(V1Event, frozen=True, tag="conference-member"):
    conferenceId: str | None = None
    memberId: str | None = None


class V1ConferencePlayback(V1Event, frozen=True, tag="conference-playback"):
    conferenceId: str | None = None


class V1ConferenceSpeak(V1Event, frozen=True, tag="conference-speak"):
    conferenceId: str | None = None


class V1Error(V1Event, frozen=True, tag="error"):
    message: Any = None
    errorMessage: str | None = None


class V1TransferComplete(V1Event, frozen=True, tag="transferComplete"):
    pass


class V1Redirect(V1Event, frozen=True, tag="redirect"):
    pass


V1Union = (
    V1IncomingCall
    | V1Answer
    | V1Hangup
    | V1Timeout
    | V1Playback
    | V1Speak
    | V1Dtmf
    | V1Gather
    | V1Recording
    | V1Transcription
    | V1Conference
    | V1ConferenceMember
    | V1ConferencePlayback
    | V1ConferenceSpeak
    | V1Error
    | V1TransferComplete
    | V1Redirect
)

# --------------------------------------------------------------------------------------------
# v2 (Voice API)


class V2Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="eventType"):
    callId: str | None = None
    eventTime: str | None = None
    accountId: str | None = None
    applicationId: str | None = None
    callUrl: str | None = None
    direction: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    startTime: str | None = None
    answerTime: str | None = None
    tag: str | None = None
    parentCallId: str | None = None


class V2Initiate(V2Event, frozen=True, tag="initiate"):
    pass


class V2Answer(V2Event, frozen=True, tag="answer"):
    pass


class V2Disconnect(V2Event, frozen=True, tag="disconnect"):
    endTime: str | None = None
    cause: str | None = None
    errorMessage: str | None = None
    errorId: str | None = None


class V2TransferAnswer(V2Event, frozen=True, tag="transferAnswer"):
    pass


class V2TransferComplete(V2Event, frozen=True, tag="transferComplete"):
    cause: str | None = None
    errorMessage: str | None = None
    errorId: str | None = None


class V2TransferDisconnect(V2Event, frozen=True, tag="transferDisconnect"):
    endTime: str | None = None
    cause: str | None = None
    errorMessage: str | None = None
    errorId: str | None = None


class V2BridgeComplete(V2Event, frozen=True, tag="bridgeComplete"):
    cause: str | None = None
    errorMessage: str | None = None


class V2BridgeTargetComplete(V2Event, frozen=True, tag="bridgeTargetComplete"):
    pass


class V2Gather(V2Event, frozen=True, tag="gather"):
    digits: str | None = None
    terminatingDigit: str | None = None


class V2Dtmf(V2Event, frozen=True, tag="dtmf"):
    digit: str | None = None


class V2Redirect(V2Event, frozen=True, tag="redirect"):
    pass


class V2RecordComplete(V2Event, frozen=True, tag="recordComplete"):
    recordingId: str | None = None
    endTime: str | None = None


class V2RecordingComplete(V2Event, frozen=True, tag="recordingComplete"):
    recordingId: str | None = None
    endTime: str | None = None


class V2RecordingAvailable(V2Event, frozen=True, tag="recordingAvailable"):
    recordingId: str | None = None
    endTime: str | None = None
    status: str | None = None


class V2TranscriptionAvailable(V2Event, frozen=True, tag="transcriptionAvailable"):
    recordingId: str | None = None
    endTime: str | None = None


class V2MachineDetectionComplete(V2Event, frozen=True, tag="machineDetectionComplete"):
    pass


class V2ConferenceCreated(V2Event, frozen=True, tag="conferenceCreated"):
    conferenceId: str | None = None


class V2ConferenceMemberJoin(V2Event, frozen=True, tag="conferenceMemberJoin"):
    conferenceId: str | None = None


class V2ConferenceMemberExit(V2Event, frozen=True, tag="conferenceMemberExit"):
    conferenceId: str | None = None


class V2ConferenceRedirect(V2Event, frozen=True, tag="conferenceRedirect"):
    conferenceId: str | None = None


class V2ConferenceCompleted(V2Event, frozen=True, tag="conferenceCompleted"):
    conferenceId: str | None = None


class V2ConferenceRecordingAvailable(V2Event, frozen=True, tag="conferenceRecordingAvailable"):
    conferenceId: str | None = None
    recordingId: str | None = None


V2Union = (
    V2Initiate
    | V2Answer
    | V2Disconnect
    | V2TransferAnswer
    | V2TransferComplete
    | V2TransferDisconnect
    | V2BridgeComplete
    | V2BridgeTargetComplete
    | V2Gather
    | V2Dtmf
    | V2Redirect
    | V2RecordComplete
    | V2RecordingComplete
    | V2RecordingAvailable
    | V2TranscriptionAvailable
    | V2MachineDetectionComplete
    | V2ConferenceCreated
    | V2ConferenceMemberJoin
    | V2ConferenceMemberExit
    | V2ConferenceRedirect
    | V2ConferenceCompleted
    | V2ConferenceRecordingAvailable
)


class Unknown(msgspec.Struct, frozen=True, kw_only=True):
    """An event type this release does not know: logged, and on a call's timeline if it has one."""

    eventType: str | None = None
    callId: str | None = None
    eventTime: str | None = None
    time: str | None = None
    tag: str | None = None


Event = V1Event | V2Event | Unknown


def _tags(union: Any) -> frozenset[str]:
    return frozenset(cls.__struct_config__.tag for cls in union.__args__)


V1_TYPES: Final = _tags(V1Union)
V2_TYPES: Final = _tags(V2Union)
V1_NO_CALL: Final = frozenset(
    {"transcription", "conference", "conference-playback", "conference-speak"}
)
V2_NO_CALL: Final = frozenset(
    {
        "conferenceCreated",
        "conferenceRedirect",
        "conferenceCompleted",
        "conferenceRecordingAvailable",
    }
)
# Results whose times are the recording's, not the call's, and which legitimately come late.
RESULT_TYPES: Final = frozenset(
    {
        "recording",
        "transcription",
        "recordComplete",
        "recordingComplete",
        "recordingAvailable",
        "transcriptionAvailable",
        "conferenceRecordingAvailable",
    }
)


def detect_api(obj: dict[str, Any]) -> Api:
    """The API generation of a payload: markers first, then names only one generation uses."""
    if "eventTime" in obj or "callUrl" in obj:
        return "v2"
    if "time" in obj or "callUri" in obj:
        return "v1"
    et = obj.get("eventType")
    if isinstance(et, str) and et in V2_TYPES and et not in V1_TYPES:
        return "v2"
    return "v1"


# --------------------------------------------------------------------------------------------
# Decoding


class Decoded(msgspec.Struct, frozen=True):
    """One accepted event: the typed event, its generation and its content key."""

    api: Api
    event: Event
    key: bytes  # blake2b-16 of the canonical JSON value: same JSON value, same key
    canonical: bytes


_json = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(order="sorted")


def _field_of(err: msgspec.ValidationError) -> str:
    m = re.search(r"at `\$\.([^`\[]+)", str(err))
    return m.group(1) if m else ""


def _describe(err: msgspec.ValidationError, event_type: str) -> str:
    msg = str(err)
    field = _field_of(err)
    base = msg.split(" - at ")[0]
    if field:
        return f"{field} is invalid for {event_type}: {base}"
    return f"invalid {event_type} event: {base}"


NUMBER_FIELDS: Final = ("from", "to")
_EATEN_PLUS = re.compile(r" [0-9]+")


def restore_plus(fields: dict[str, str]) -> dict[str, str]:
    """Form and query-string fields with ``from``/``to`` read as the E.164 numbers they were.

    Bandwidth's v1 GET-mode example sends ``to=+19192223333`` unencoded, and form decoding
    reads that ``+`` as a space. A ``from`` or ``to`` that is a space followed only by digits
    can be nothing else, so it gets its ``+`` back (so it also dedupes against a JSON POST)."""
    fixed = {
        k: "+" + v[1:]
        for k in NUMBER_FIELDS
        if (v := fields.get(k)) is not None and _EATEN_PLUS.fullmatch(v)
    }
    return {**fields, **fixed} if fixed else fields


def content_key(obj: Any) -> tuple[bytes, bytes]:
    """Canonical JSON (sorted keys, no whitespace) and its 16-byte blake2b digest."""
    canonical = _encoder.encode(obj)
    return canonical, hashlib.blake2b(canonical, digest_size=16).digest()


_typed: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "v1": msgspec.json.Decoder(V1Union),
    "v2": msgspec.json.Decoder(V2Union),
    "unknown": msgspec.json.Decoder(Unknown),
}


def decode_object(obj: Any, *, raw: bytes | None = None, lenient: bool = False) -> Decoded:
    """Validate one already-parsed JSON value as an event.

    ``raw`` is the JSON text ``obj`` was parsed from: when given, the typed decode reads it
    directly (much faster than converting the dict). ``lenient`` converts strings to the
    declared field types (GET and form deliveries).
    Raises :class:`InvalidEvent` naming the field and the event type.
    """
    if not isinstance(obj, dict):
        kind = type(obj).__name__ if obj is not None else "null"
        kind = {"str": "a string", "int": "a number", "float": "a number", "list": "an array"}.get(
            kind, kind
        )
        raise InvalidEvent(f"an event must be a JSON object, got {kind}")
    et = obj.get("eventType")
    if et is None:
        raise InvalidEvent("eventType is required")
    if not isinstance(et, str) or not et:
        raise InvalidEvent("eventType must be a non-empty string")
    api = detect_api(obj)
    try:
        canonical, key = content_key(obj)
    except UnicodeEncodeError:  # lone surrogates, e.g. a form body decoded with surrogateescape
        raise InvalidEvent(f"invalid {et} event: text must be valid UTF-8") from None
    known = V2_TYPES if api == "v2" else V1_TYPES
    target: Any = (V2Union if api == "v2" else V1Union) if et in known else Unknown
    try:
        if raw is not None and not lenient:
            decoder = _typed["unknown" if target is Unknown else api]
            event: Event = decoder.decode(raw)
        else:
            event = msgspec.convert(obj, type=target, strict=not lenient)
    except msgspec.ValidationError as err:
        raise InvalidEvent(_describe(err, et)) from None
    no_call = V2_NO_CALL if api == "v2" else V1_NO_CALL
    if target is not Unknown and et not in no_call:
        cid = event.callId
        if cid is None:
            raise InvalidEvent(f"callId is required for {et}")
        if cid == "":
            raise InvalidEvent(f"callId must not be empty for {et}")
    return Decoded(api=api, event=event, key=key, canonical=canonical)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body; raises ``msgspec.DecodeError`` with the position of the problem."""
    try:
        return _json.decode(body)
    except UnicodeDecodeError as err:  # msgspec lets invalid UTF-8 through as this
        raise msgspec.DecodeError(f"JSON is malformed: invalid UTF-8 (byte {err.start})") from None


# --------------------------------------------------------------------------------------------
# Times

_TIME = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?\s*"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# what format_time can render: 0001-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z
_MIN_MS: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MS
_MAX_MS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // _MS


def parse_time(value: Any) -> int | None:
    """Lenient ISO-8601 to UTC epoch milliseconds; ``None`` when it cannot be parsed.

    Accepts ``...636Z``, no fraction, any precision, ``+hh:mm``/``-hh:mm``/``+hhmm`` and
    hour-only ``-03`` offsets; no offset means UTC. Sub-millisecond digits are truncated.
    """
    if not isinstance(value, str):
        return None
    if len(value) >= 19 and value[10] in "Tt":  # the common shapes, in C
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # UTC or no offset only: fromisoformat takes "+05:99" as +06:39, so other offsets
            # go through the validating regex below
            if not dt.utcoffset():
                ms = (dt.replace(tzinfo=UTC) - _EPOCH) // _MS
                return ms if _MIN_MS <= ms <= _MAX_MS else None
    m = _TIME.fullmatch(value)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, _z, sign, oh, om = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0), tzinfo=UTC)
    except ValueError:
        return None
    ms = (dt - _EPOCH) // _MS + (int((frac or "0")[:3].ljust(3, "0")))
    if sign:
        off = int(oh) * 60 + int(om or 0)
        if int(oh) > 23 or int(om or 0) > 59:
            return None
        ms -= (off if sign == "+" else -off) * 60_000
    if not _MIN_MS <= ms <= _MAX_MS:  # an offset pushed it out of the years 1..9999
        return None
    return ms


_MILLIS: Final = tuple(f".{i:03d}Z" for i in range(1000))
_CLOCK: Final = tuple(f"T{m // 60:02d}:{m % 60:02d}:" for m in range(1440))  # by minute of day
_SECONDS: Final = tuple(f"{i:02d}" for i in range(60))
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def _day(days: int) -> str | None:
    """``YYYY-MM-DD`` of a day number since 1970-01-01 (``None`` outside years 1-9999)."""
    try:
        d = date.fromordinal(_EPOCH_DAY + days)
    except (OverflowError, ValueError):
        return None
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def format_time(ms: int | None) -> str | None:
    """UTC epoch milliseconds to ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (``None`` when out of range).

    Table lookups, not strftime: views render several times per call on every read.
    """
    if ms is None:
        return None
    sec, milli = divmod(ms, 1000)
    days, sec = divmod(sec, 86400)
    head = _day(days)
    if head is None:
        return None
    minute, sec = divmod(sec, 60)
    return head + _CLOCK[minute] + _SECONDS[sec] + _MILLIS[milli]
