"""The projection's rows, the same on every backend: a call's state as its ``calls`` row, the
fold of the log's rows call by call, and the merge of folded calls with stored rows that replay
and ``--check`` walk. Pure: the backends run the statements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import msgspec

from tracker.records import CallRecord, Drift
from tracker.render import ORPHAN, drift_fields, ended_at
from tracker.state import CallState, Fact, direction_of, fold_distinct, outcome_for, status_of
from tracker.storage.interface import Progress

_fact_dec = msgspec.msgpack.Decoder(Fact)
_state_dec = msgspec.msgpack.Decoder(CallState)
_state_enc = msgspec.msgpack.Encoder()

CALL_COLUMNS: Final = (
    "call_id, status, outcome, cause, direction, from_number, to_number, tag, first_event_at,"
    " last_seq, started_at, answered_at, ended_at, last_received_at, state"
)


def row_of(state: CallState, outcomes: Mapping[str, str] | None) -> tuple[Any, ...]:
    """The calls row of a state: its filter columns and the accumulator (rendered on reads)."""
    return (
        state.call_id,
        status_of(state),
        outcome_for(state, outcomes),
        cause_of(state),
        direction_of(state),
        state.from_[2] if state.from_ is not None else None,
        state.to[2] if state.to is not None else None,
        state.tag[2] if state.tag is not None else None,
        state.first[0] if state.first is not None else None,
        state.last_seq,
        *times_of(state),
        state.received,
        _state_enc.encode(state),
    )


def cause_of(s: CallState) -> str | None:
    """The raw cause of the call's end: a real hard end's, else a reconciled end's."""
    if s.hard is not None:
        return s.hard[3]
    if s.recon is not None:
        return s.recon[3]
    return None


def times_of(state: CallState) -> tuple[int | None, int | None, int | None]:
    """The start, answer and end times (ms) the projection keeps as columns (for the KPIs)."""
    return state.started, state.answered_at, ended_at(state)


def state_times(blob: bytes) -> tuple[int | None, int | None, int | None]:
    """:func:`times_of` a stored state (the schema-2 migration fills old rows with it)."""
    return times_of(_state_dec.decode(blob))


def with_received(blob: bytes, received: int | None) -> bytes:
    """A stored state with its last receipt time (the schema-3 migration, from the log)."""
    return _state_enc.encode(msgspec.structs.replace(_state_dec.decode(blob), received=received))


def quarantine_cap(body: bytes, cap: int) -> tuple[bytes, bool]:
    return (body[:cap], True) if len(body) > cap else (body, False)


def fold_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, CallState]]:
    """Fold rows ``(call_key, seq, call_id, fact, received_at)`` ordered by call_key: one state
    per call (with the latest receipt time of its events).

    A plain loop into a list per call: over a million events, groupby's sub-iterators and a
    generator per call cost more than the fold itself (BENCHMARKS.md)."""
    decode = _fact_dec.decode
    key: int | None = None
    call_id = ""
    latest = 0
    pairs: list[tuple[Fact, int | None]] = []
    append = pairs.append
    for call_key, seq, cid, blob, received in rows:
        if call_key != key:
            if key is not None:
                yield key, fold_distinct(pairs, call_id, received=latest)
            key, call_id, pairs, latest = call_key, cid, [], received
            append = pairs.append
        elif received > latest:
            latest = received
        append((decode(blob), seq))
    if key is not None:
        yield key, fold_distinct(pairs, call_id, received=latest)


#: Below this many differing calls (or a tenth of them, whichever is more), replay rewrites just
#: those rows in place, in one transaction; beyond it, it rebuilds into a new table.
DIFF_MIN: Final = 1000
DIFF_SHARE: Final = 10

# (call_key, folded state or None: an orphan, the row it should be or None, the stored row or None)
Difference = tuple[int, CallState | None, tuple[Any, ...] | None, tuple[Any, ...] | None]


def differences(
    folded: Iterable[tuple[int, CallState]],
    stored: Iterable[tuple[Any, ...]],
    outcomes: Mapping[str, str],
    progress: Progress | None = None,
    total: int = 0,
) -> Iterator[Difference]:
    """Merge the folded log and the stored rows, both in ``call_key`` order: every call whose row
    is missing, differs from its fold, or has no events (an orphan)."""
    rows = iter(stored)
    got = next(rows, None)
    n = 0
    for n, (call_key, state) in enumerate(folded, 1):
        while got is not None and got[0] < call_key:
            yield got[0], None, None, tuple(got)
            got = next(rows, None)
        want = (call_key, *row_of(state, outcomes))
        if got is not None and got[0] == call_key:
            if tuple(got) != want:
                yield call_key, state, want, tuple(got)
            got = next(rows, None)
        else:
            yield call_key, state, want, None
        if progress and n % 10000 == 0:
            progress(n, total)
    while got is not None:
        yield got[0], None, None, tuple(got)
        got = next(rows, None)
    if progress:
        progress(n, total)


#: The calls row's columns, call_key first, in the order of ``row_of`` after the key.
_NAMES: Final = ("call_key, " + CALL_COLUMNS).replace(" ", "").split(",")


def drifts(
    diffs: Iterable[Difference], outcomes: Mapping[str, str]
) -> tuple[list[Drift], list[Drift]]:
    """What ``replay --check`` reports of differences: the drifting calls, and the stored rows
    that have no events (orphans)."""
    drift: list[Drift] = []
    orphans: list[Drift] = []
    for _, state, want_row, got in diffs:
        if state is None or want_row is None:
            assert got is not None
            orphans.append((got[1], dict(ORPHAN)))
            continue
        if got is None:
            drift.append((state.call_id, drift_fields(None, state, outcomes)))
            continue
        have: CallRecord | None
        try:
            have = CallRecord(_state_dec.decode(got[-1]), got[3])
        except (msgspec.DecodeError, msgspec.ValidationError):
            have = None
        columns = {  # the filter columns beside the state
            column: (got[i], want_row[i])
            for i, column in enumerate(_NAMES[:-1])
            if got[i] != want_row[i]
        }
        fields = drift_fields(have, state, outcomes, columns, unreadable=have is None)
        drift.append((state.call_id, fields))
    return drift, orphans
