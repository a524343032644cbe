"""The call-state fold: pure and total.

Each event is first reduced to a :class:`Fact` (what the fold needs of it; also what the log keeps
in columns, so replay never re-parses JSON). A :class:`CallState` is a join-semilattice of per-field
rules: earliest-evidence times are minima, "latest tag" is a maximum, picks such as the hard end are
the minimum of ``(time, content key)``, flags are ORs. Every rule is commutative, associative and
idempotent, so the state is a function of the *set* of distinct events; ties are broken by the
content key, never by arrival. ``eventCount`` is the one sum: :func:`fold` counts distinct content
keys, and the store (which dedupes by a UNIQUE key) calls :func:`evolve` once per distinct event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, TypeVar

import msgspec

from tracker.events import (
    RESULT_TYPES,
    Decoded,
    Unknown,
    V1Error,
    V1Event,
    V2Event,
    parse_time,
)

BIG: Final = 1 << 62  # sorts untimed evidence after (min picks) or before (max picks) timed

END_NONE: Final = 0
END_TIMEOUT: Final = 1  # v1 timeout: soft end
END_ERROR: Final = 2  # v1 error: soft end
END_HARD: Final = 3  # v1 hangup, v2 disconnect, v2 transferDisconnect
END_RECONCILED: Final = 4  # the tracker's own ``reconciled`` event (SPEC §11): a real end wins

#: The event type of what reconciliation appends (only with the reconciler's origin).
RECONCILED: Final = "reconciled"

OUTCOMES: Final = ("normal", "busy", "no_answer", "cancelled", "rejected", "failed", "error")

BUILTIN_OUTCOMES: Final[Mapping[str, str]] = {
    "NORMAL_CLEARING": "normal",
    "hangup": "normal",
    "USER_BUSY": "busy",
    "busy": "busy",
    "NO_ANSWER": "no_answer",
    "timeout": "no_answer",
    "ORIGINATOR_CANCEL": "cancelled",
    "cancel": "cancelled",
    "CALL_REJECTED": "rejected",
    "rejected": "rejected",
    "UNALLOCATED_NUMBER": "failed",
    "NORMAL_TEMPORARY_FAILURE": "failed",
    "callback-error": "failed",
    "invalid-bxml": "failed",
    "application-error": "failed",
    "account-limit": "failed",
    "node-capacity-exceeded": "failed",
}


def outcome_of(cause: str | None, extra: Mapping[str, str] | None = None) -> str:
    """The outcome of a hard end's raw cause (configured extras first, then the spec's table)."""
    if cause is None:
        return "error"
    if extra and cause in extra:
        return extra[cause]
    found = BUILTIN_OUTCOMES.get(cause)
    if found is not None:
        return found
    if cause.endswith("_CONGESTION"):
        return "failed"
    return "error"


class Fact(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What the fold needs of one event (and what the log keeps in columns)."""

    key: bytes
    event_type: str
    v2: bool = False
    seq: int | None = None
    t: int | None = None  # event time, UTC epoch ms
    time_bad: bool = False  # some time on the event could not be parsed
    start: int | None = None
    answer: int | None = None
    answered: bool = False
    end_kind: int = END_NONE
    end_t: int | None = None
    cause: str | None = None
    error: str | None = None
    tag: str | None = None
    from_: str | None = None
    to: str | None = None
    direction: str | None = None
    parent: str | None = None
    inbound: bool = False
    late_ok: bool = False  # hard ends and recording/transcription results
    recon: str | None = None  # a reconciled end: v1 "rejected"/"answered"/"unanswered", v2 ""


Pick = tuple[int, bytes, str]  # (time key, content key, value)
HardEnd = tuple[int, bytes, int | None, str | None, str | None]  # (tkey, key, end, cause, error)
SoftEnd = tuple[int, bytes, int, int | None, str | None]  # (tkey, key, kind, end, error)
# (tkey, key, end, cause, error, v1 state or "" for v2): the earliest reconciled end
ReconEnd = tuple[int, bytes, int | None, str | None, str | None, str]


class CallState(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The semilattice accumulator of one call (stored as msgpack beside the rendered view)."""

    call_id: str = ""
    v2: bool = False
    inbound: bool = False
    direction: Pick | None = None
    started: int | None = None
    answered: bool = False
    answered_at: int | None = None
    hard: HardEnd | None = None
    conflict: bool = False
    soft: SoftEnd | None = None
    tag: Pick | None = None
    from_: Pick | None = None
    to: Pick | None = None
    parent: Pick | None = None
    first: Pick | None = None
    last: Pick | None = None
    live_max: int | None = None
    time_bad: bool = False
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    recon: ReconEnd | None = None
    #: The latest receipt time (ms) of the call's distinct events, like ``last_seq`` a fact of
    #: arrival, not of content: what "stale" is measured from (SPEC §11).
    received: int | None = None


def initial_state(call_id: str = "") -> CallState:
    return CallState(call_id=call_id)


# --------------------------------------------------------------------------------------------
# Event -> Fact


def _event_type(ev: V1Event | V2Event | Unknown) -> str:
    tag = type(ev).__struct_config__.tag
    if isinstance(tag, str):
        return tag
    return ev.eventType if isinstance(ev, Unknown) and ev.eventType else ""


def fact_of(decoded: Decoded, seq: int | None = None) -> Fact:
    """Reduce a decoded event to the facts the fold uses. Total: bad times become flags."""
    ev = decoded.event
    bad = False

    def tm(raw: str | None) -> int | None:
        nonlocal bad
        if raw is None or raw == "":
            return None
        value = parse_time(raw)
        if value is None:
            bad = True
        return value

    et = _event_type(ev)
    start = answer = end_t = None
    answered = inbound = late_ok = False
    end_kind = END_NONE
    cause = error = direction = parent = from_ = to = None
    if isinstance(ev, V2Event):
        t = tm(ev.eventTime)
        from_, to, direction, parent = ev.from_, ev.to, ev.direction, ev.parentCallId
        if et in RESULT_TYPES:
            late_ok = True
        else:
            start = tm(ev.startTime)
            answer = tm(ev.answerTime)
            answered = bool(ev.answerTime)
            if et in ("answer", "transferAnswer"):  # the B-leg's answer: as an answer (SPEC §4)
                answered = True
                if answer is None:
                    answer = t
        if et in ("disconnect", "transferDisconnect"):
            raw_end = getattr(ev, "endTime", None)
            end_kind, end_t, late_ok = END_HARD, (tm(raw_end) if raw_end else t), True
            cause = getattr(ev, "cause", None)
            error = getattr(ev, "errorMessage", None)
    elif isinstance(ev, V1Event):
        t = tm(ev.time)
        from_, to = ev.from_, ev.to
        if et == "incomingcall":
            inbound, start = True, t
        # Bandwidth's incomingcall always says callState "active" (the call leg exists, it is
        # not answered yet): only later events in that state are evidence of an answer, which
        # is also what SPEC §4's own example shows (answeredAt 3 s after the incomingcall).
        if et == "answer" or (ev.callState == "active" and et != "incomingcall"):
            answered, answer = True, t
        if et == "hangup":
            end_kind, end_t, late_ok = END_HARD, t, True
            cause = getattr(ev, "cause", None)
        elif et == "timeout":
            end_kind, end_t = END_TIMEOUT, t
        elif isinstance(ev, V1Error):
            end_kind, end_t = END_ERROR, t
            error = ev.errorMessage or (ev.message if isinstance(ev.message, str) else None)
        elif et in RESULT_TYPES:
            late_ok = True
    else:
        t = tm(ev.eventTime if ev.eventTime is not None else ev.time)
    return Fact(
        key=decoded.key,
        event_type=et,
        v2=decoded.api == "v2",
        seq=seq,
        t=t,
        time_bad=bad,
        start=start,
        answer=answer,
        answered=answered,
        end_kind=end_kind,
        end_t=end_t,
        cause=cause,
        error=error,
        tag=ev.tag,
        from_=from_,
        to=to,
        direction=direction,
        parent=parent,
        inbound=inbound,
        late_ok=late_ok,
    )


# --------------------------------------------------------------------------------------------
# The semilattice


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _lo(a: Pick | None, b: Pick | None) -> Pick | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def _hi(a: Pick | None, b: Pick | None) -> Pick | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


EndT = TypeVar("EndT", HardEnd, SoftEnd, ReconEnd)


def _lo_end(a: EndT | None, b: EndT | None) -> EndT | None:
    """The earlier of two ends, by (time key, content key)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if (a[0], a[1]) <= (b[0], b[1]) else b


def unit(fact: Fact, call_id: str = "", seq: int | None = None) -> CallState:
    """The state of a call that has seen exactly this one event (``seq`` overrides the fact's)."""
    return fold_distinct([(fact, seq)], call_id)


def merge(a: CallState, b: CallState) -> CallState:
    """Join two states. Commutative, associative, idempotent in every field but ``count``."""
    conflict = a.conflict or b.conflict
    if a.hard is not None and b.hard is not None and a.hard[1] != b.hard[1]:
        conflict = True
    return CallState(
        call_id=a.call_id or b.call_id,
        v2=a.v2 or b.v2,
        inbound=a.inbound or b.inbound,
        direction=_lo(a.direction, b.direction),
        started=_min(a.started, b.started),
        answered=a.answered or b.answered,
        answered_at=_min(a.answered_at, b.answered_at),
        hard=_lo_end(a.hard, b.hard),
        conflict=conflict,
        soft=_lo_end(a.soft, b.soft),
        tag=_hi(a.tag, b.tag),
        from_=_lo(a.from_, b.from_),
        to=_lo(a.to, b.to),
        parent=_lo(a.parent, b.parent),
        first=_lo(a.first, b.first),
        last=_hi(a.last, b.last),
        live_max=_max(a.live_max, b.live_max),
        time_bad=a.time_bad or b.time_bad,
        count=a.count + b.count,
        first_seq=_min(a.first_seq, b.first_seq),
        last_seq=_max(a.last_seq, b.last_seq),
        recon=_lo_end(a.recon, b.recon),
        received=_max(a.received, b.received),
    )


def evolve(
    state: CallState, fact: Fact, seq: int | None = None, received: int | None = None
) -> CallState:
    """The state after one more *distinct* event (the store's UNIQUE key guarantees that),
    received at ``received`` (ms).

    Equal to ``merge(state, unit(fact))`` (property-tested), computed in one pass.
    """
    return fold_distinct([(fact, seq)], state.call_id, start=state, received=received)


def fold(facts: Iterable[Fact], call_id: str = "") -> CallState:
    """The state of a call from its events, in any order, with any duplicates."""
    distinct: dict[bytes, Fact] = {}
    seqs: list[int] = []
    for fact in facts:
        distinct.setdefault(fact.key, fact)
        if fact.seq is not None:
            seqs.append(fact.seq)
    state = fold_distinct(((f, None) for f in distinct.values()), call_id)
    if not seqs:
        return state
    return msgspec.structs.replace(state, first_seq=min(seqs), last_seq=max(seqs))


def fold_distinct(
    pairs: Iterable[tuple[Fact, int | None]],
    call_id: str = "",
    start: CallState | None = None,
    received: int | None = None,
) -> CallState:
    """:func:`fold` in one pass over *distinct* facts with their seqs (``None``: the fact's own),
    from ``start`` (default: the empty state); ``received``: the latest receipt time among them.

    The per-field rules of each event, kept in local variables instead of building a state per
    event: this is what replay runs over millions of events and the writer once per event.
    Property tests check that it equals joining the events' units with :func:`merge`, in any
    order and grouping.
    """
    s = initial_state(call_id) if start is None else start
    v2, inbound, answered, conflict, time_bad = s.v2, s.inbound, s.answered, s.conflict, s.time_bad
    direction, from_, to, parent = s.direction, s.from_, s.to, s.parent
    first, tag, last = s.first, s.tag, s.last
    hard, soft, recon = s.hard, s.soft, s.recon
    started, answered_at, live_max = s.started, s.answered_at, s.live_max
    first_seq, last_seq, count = s.first_seq, s.last_seq, s.count
    for fact, seq in pairs:
        count += 1
        if seq is None:
            seq = fact.seq
        if seq is not None:
            if first_seq is None or seq < first_seq:
                first_seq = seq
            if last_seq is None or seq > last_seq:
                last_seq = seq
        k = fact.key
        t = fact.t
        lo_t = BIG if t is None else t
        if fact.v2:
            v2 = True
        if fact.inbound:
            inbound = True
        if fact.time_bad:
            time_bad = True
        if fact.start is not None and (started is None or fact.start < started):
            started = fact.start
        if fact.answered:
            answered = True
        if fact.answer is not None and (answered_at is None or fact.answer < answered_at):
            answered_at = fact.answer
        kind = fact.end_kind
        if kind == END_HARD:
            h: HardEnd = (
                BIG if fact.end_t is None else fact.end_t,
                k,
                fact.end_t,
                fact.cause,
                fact.error,
            )
            if hard is None:
                hard = h
            else:
                if hard[1] != k:
                    conflict = True
                if (h[0], k) < (hard[0], hard[1]):
                    hard = h
        elif kind == END_RECONCILED:
            r_t = BIG if fact.end_t is None else fact.end_t
            if recon is None or (r_t, k) < (recon[0], recon[1]):
                recon = (r_t, k, fact.end_t, fact.cause, fact.error, fact.recon or "")
        elif kind in (END_TIMEOUT, END_ERROR):
            so: SoftEnd = (lo_t, k, kind, fact.end_t, fact.error)
            if soft is None or (lo_t, k) < (soft[0], soft[1]):
                soft = so
        if fact.direction is not None:
            p: Pick = (lo_t, k, fact.direction)
            if direction is None or p < direction:
                direction = p
        if fact.from_ is not None:
            p = (lo_t, k, fact.from_)
            if from_ is None or p < from_:
                from_ = p
        if fact.to is not None:
            p = (lo_t, k, fact.to)
            if to is None or p < to:
                to = p
        if fact.parent is not None:
            p = (lo_t, k, fact.parent)
            if parent is None or p < parent:
                parent = p
        if fact.tag is not None:
            p = (-BIG if t is None else t, k, fact.tag)
            if tag is None or p > tag:
                tag = p
        if t is not None:
            p = (t, k, fact.event_type)
            if first is None or p < first:
                first = p
            if last is None or p > last:
                last = p
            if not fact.late_ok and (live_max is None or t > live_max):
                live_max = t
    return CallState(
        call_id=s.call_id or call_id,
        v2=v2,
        inbound=inbound,
        direction=direction,
        started=started,
        answered=answered,
        answered_at=answered_at,
        hard=hard,
        conflict=conflict,
        soft=soft,
        tag=tag,
        from_=from_,
        to=to,
        parent=parent,
        first=first,
        last=last,
        live_max=live_max,
        time_bad=time_bad,
        count=count,
        first_seq=first_seq,
        last_seq=last_seq,
        recon=recon,
        received=_max(s.received, received),
    )


# --------------------------------------------------------------------------------------------
# The projection's columns of a state


def status_of(s: CallState) -> str:
    if s.hard is not None or s.recon is not None or s.soft is not None:
        return "ended"
    return "answered" if s.answered else "started"


def outcome_for(s: CallState, outcomes: Mapping[str, str] | None = None) -> str | None:
    """The call's outcome: null until it ended; from the hard end's cause, else a reconciled
    end (v2: its cause; v1: rejected, else normal or no_answer by the API's answer time), else
    the soft end."""
    if s.hard is not None:
        return outcome_of(s.hard[3], outcomes)
    if s.recon is not None:
        v1 = {"rejected": "rejected", "answered": "normal", "unanswered": "no_answer"}
        return v1.get(s.recon[5]) or outcome_of(s.recon[3], outcomes)
    if s.soft is not None:
        return "no_answer" if s.soft[2] == END_TIMEOUT else "error"
    return None


def direction_of(s: CallState) -> str | None:
    if s.direction is not None:
        return s.direction[2]
    return "inbound" if s.inbound else None
