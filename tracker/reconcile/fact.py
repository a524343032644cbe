"""The facts of the tracker's own ``reconciled`` event (SPEC §11), from its body: pure, as
:func:`tracker.state.fact_of` is for callbacks (a separate module only to keep the fold's short).
"""

from __future__ import annotations

from collections.abc import Mapping

from tracker.events import parse_time
from tracker.state import END_RECONCILED, RECONCILED, Fact


def reconciled_fact(obj: Mapping[str, object], key: bytes, seq: int | None = None) -> Fact:
    """The facts of the tracker's own ``reconciled`` event (SPEC §11): the API's times are
    start/answer evidence, its ``endTime`` a hard end that any real one overrides; its own time
    is ``checkedAt`` and never counts as after the end. Total, as :func:`fact_of`."""
    bad = False

    def tm(raw: object) -> int | None:
        nonlocal bad
        if raw is None or raw == "":
            return None
        value = parse_time(raw)
        if value is None:
            bad = True
        return value

    got = obj.get("response")
    response: Mapping[str, object] = got if isinstance(got, dict) else {}
    state = response.get("state")
    v1 = state in ("completed", "rejected") or "activeTime" in response
    answer_raw = response.get("activeTime" if v1 else "answerTime")
    cause = error = None
    if not v1:
        cause = _text(response.get("disconnectCause"))
        error = _text(response.get("errorMessage"))
    return Fact(
        key=key,
        event_type=RECONCILED,
        v2=not v1,
        seq=seq,
        t=tm(obj.get("checkedAt")),
        start=tm(response.get("startTime")),
        answer=tm(answer_raw),
        answered=bool(answer_raw),
        end_kind=END_RECONCILED,
        end_t=tm(response.get("endTime")),
        cause=cause,
        error=error,
        late_ok=True,
        time_bad=bad,
        recon=_v1_end(state, bool(answer_raw)) if v1 else "",
    )


def _v1_end(state: object, answered: bool) -> str:
    """What a v1 reconciled end's outcome comes from: the API's state and its own answer
    evidence (not the call's: a late answer callback must not change an end)."""
    if state == "rejected":
        return "rejected"
    return "answered" if answered else "unanswered"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
