"""Body → entries: the one place a received body is parsed, validated, given its content key,
or refused (and then quarantined). Used by HTTP ingest, ``tracker import`` and the Python API.

Pure apart from the clock: raises :class:`~tracker.errors.TrackerError` for a refused body, and
:func:`quarantine` makes the record the refusal is kept as.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final
from urllib.parse import parse_qsl

import msgspec

from tracker.errors import EventRejected, InvalidJson, TooLarge, TrackerError, UnsupportedMediaType
from tracker.events import (
    Decoded,
    InvalidEvent,
    content_key,
    decode_object,
    parse_json,
    restore_plus,
)
from tracker.reconcile.fact import reconciled_fact
from tracker.records import ORIGIN_RECONCILE, Entry, LoggedEvent, Reject, now_ms
from tracker.state import RECONCILED, fact_of

#: The refusals whose body is kept in the quarantine (the others are not about the body).
QUARANTINED: Final = frozenset({400, 408, 413, 415, 422})

_fact_enc = msgspec.msgpack.Encoder()
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


def make_entry(decoded: Decoded, body: bytes, fmt: str, received_at: int | None = None) -> Entry:
    fact = fact_of(decoded)
    t = fact.t
    prefix = struct.pack(">q", t if t is not None else 0)
    return Entry(
        dkey=prefix + decoded.key,
        api=2 if fact.v2 else 1,
        event_type=fact.event_type,
        call_id=decoded.event.callId or None,  # an empty id names no call
        event_time=t,
        fact=fact,
        fact_blob=_fact_enc.encode(fact),
        fmt=fmt,
        body=body,
        received_at=now_ms() if received_at is None else received_at,
    )


def reconciled_entry(body: bytes, received_at: int | None = None) -> Entry:
    """The tracker's own ``reconciled`` event (SPEC §11) from its JSON body, as the reconciler
    appends it and ``tracker copy`` reads it again. Its content key has a namespace of its own:
    the same body posted to ``/callbacks`` is another event (an unknown one)."""
    obj = parse_json(body)
    if not isinstance(obj, dict) or obj.get("eventType") != RECONCILED:
        raise ValueError("not a reconciled event")
    canonical, _ = content_key(obj)
    key = hashlib.blake2b(b"reconciled\0" + canonical, digest_size=16).digest()
    fact = reconciled_fact(obj, key)
    t = fact.t
    cid = obj.get("callId")
    return Entry(
        dkey=struct.pack(">q", t if t is not None else 0) + key,
        api=2 if fact.v2 else 1,
        event_type=RECONCILED,
        call_id=cid if isinstance(cid, str) and cid else None,
        event_time=t,
        fact=fact,
        fact_blob=_fact_enc.encode(fact),
        fmt="json",
        body=body,
        received_at=now_ms() if received_at is None else received_at,
        origin=ORIGIN_RECONCILE,
    )


def entry_of(event: LoggedEvent, max_batch: int = 1) -> Entry:
    """A logged event as ingest (or the reconciler) made it, from its exact body and origin
    (``tracker copy``). Raises TrackerError (or ValueError for a broken reconciled body)."""
    if event.origin == ORIGIN_RECONCILE:
        return reconciled_entry(event.body, event.received_at)
    entries, _ = parse_entries(event.body, event.fmt, max_batch)
    return entries[0]._replace(received_at=event.received_at)


def content_kind(content_type: bytes, body: bytes) -> str:
    """How to read a POST body. A form-typed body that starts like JSON is JSON (``curl -d``)."""
    mime = content_type.split(b";", 1)[0].strip().lower()
    if mime in (b"", b"application/json") or mime.endswith(b"+json"):
        return "json"
    if mime == b"application/x-www-form-urlencoded":
        return "json" if body.lstrip()[:1] in (b"{", b"[") else "form"
    shown = mime.decode("latin-1")
    raise UnsupportedMediaType(
        f"content type {shown} is not accepted: send application/json "
        "(or application/x-www-form-urlencoded)"
    )


def parse_fields(raw: bytes) -> dict[str, str] | None:
    """Form or query-string fields (the last of repeated keys wins); ``None`` when not valid
    UTF-8 percent-encoding. Ingest and the query routes refuse that with their own errors."""
    try:
        return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None


def check_size(body: bytes, limit: int) -> None:
    """A whole body over ``ingest.max_body_bytes`` (the Python API's bodies)."""
    if len(body) > limit:
        raise TooLarge(f"the body is {len(body)} bytes; the limit is {limit} (max_body_bytes)")


def parse_entries(body: bytes, kind: str, max_batch: int) -> tuple[list[Entry], bool]:
    """Entries for a body; ``True`` when it was a JSON array (a batch). Raises TrackerError."""
    try:
        return _parse_entries(body, kind, max_batch)
    except RecursionError:  # msgspec's depth guard: JSON nested ~1000 levels deep
        raise InvalidJson(
            "the body is not valid JSON: it is nested too deeply (arrays or objects "
            "hundreds of levels deep); send a flatter event"
        ) from None


def _parse_entries(body: bytes, kind: str, max_batch: int) -> tuple[list[Entry], bool]:
    now = now_ms()
    if kind != "json":
        fields = parse_fields(body)
        if fields is None:
            what = "query string" if kind == "query" else "form body"
            raise InvalidJson(f"the {what} is not valid UTF-8 percent-encoding")
        try:
            decoded = decode_object(restore_plus(fields), lenient=True)
        except InvalidEvent as err:
            raise EventRejected(str(err)) from None
        return [make_entry(decoded, body, kind, now)], False
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            raws = _raw_list.decode(body)
        except msgspec.DecodeError as err:
            raise InvalidJson(f"the body is not valid JSON: {err}") from None
        if len(raws) > max_batch:
            raise TooLarge(f"a batch of {len(raws)} events exceeds max_batch ({max_batch})")
        if not raws:
            raise EventRejected("a batch must hold at least one event")
        entries = []
        for i, raw in enumerate(raws):
            element = bytes(raw)
            try:
                decoded = decode_object(parse_json(element), raw=element)
            except msgspec.DecodeError as err:  # the array scan does not check UTF-8 inside
                raise InvalidJson(f"element {i} is not valid JSON: {err}") from None
            except InvalidEvent as err:
                raise EventRejected(f"element {i}: {err}") from None
            entries.append(make_entry(decoded, element, "json", now))
        return entries, True
    try:
        obj = parse_json(body)
    except msgspec.DecodeError as err:
        if not body.strip():
            raise InvalidJson("the body is empty: send one JSON event or an array") from None
        raise InvalidJson(f"the body is not valid JSON: {err}") from None
    try:
        decoded = decode_object(obj, raw=body)
    except InvalidEvent as err:
        raise EventRejected(str(err)) from None
    return [make_entry(decoded, body, "json", now)], False


def parse_event(body: bytes, max_bytes: int) -> Entry:
    """One JSON event of an import file (a line, or an element of an array)."""
    if len(body) > max_bytes:
        raise TooLarge(
            f"the event is {len(body)} bytes, more than ingest.max_body_bytes ({max_bytes})"
        )
    try:
        decoded = decode_object(parse_json(body), raw=body)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise InvalidJson(f"the event is not valid JSON: {err}") from None
    except RecursionError:
        raise InvalidJson("the event is not valid JSON: it is nested too deeply") from None
    except InvalidEvent as err:
        raise EventRejected(str(err)) from None
    return make_entry(decoded, body, "json")


def quarantine(
    err: TrackerError, body: bytes, content_type: str, path: str, received_at: int | None = None
) -> Reject:
    """The quarantine record of a refused body (``err.partial``: the part that was read)."""
    return Reject(
        received_at=now_ms() if received_at is None else received_at,
        status=err.status,
        error=err.code,
        detail=err.detail,
        body=body if err.partial is None else err.partial,
        content_type=content_type,
        path=path,
        size=err.size,
    )
