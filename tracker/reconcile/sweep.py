"""One reconciliation pass (SPEC §11): claim the stale calls, ask the API about each, and turn
each answer that ends a call into the tracker's own ``reconciled`` event.

The pass reads and claims through the storage interface (in worker threads, never on the event
loop) and appends through ``record``: the server's group-commit writer, or the storage itself
from the command line. Nothing here touches a database driver.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import msgspec

from tracker.config import Reconcile
from tracker.events import format_time
from tracker.ingest import reconciled_entry
from tracker.reconcile.client import Answer, CallApi
from tracker.records import Appended, CallRecord, Entry, now_ms
from tracker.state import RECONCILED
from tracker.storage import Storage

#: Most calls one pass claims (the rest wait for the next interval).
PASS_LIMIT: Final = 500
_USER_IN_URI = re.compile(r"/users/([^/]+)/calls/")
_json_dec = msgspec.json.Decoder()
_json_enc = msgspec.json.Encoder()

Record = Callable[[Entry], Awaitable[Appended]]


class Finding(NamedTuple):
    """What one stale call gave: its id, the URL asked, the answer, and the ``seq`` recorded
    (``None``: nothing recorded)."""

    call_id: str
    url: str | None
    answer: Answer
    seq: int | None


def ids_of(payloads: list[Any]) -> tuple[str | None, str | None]:
    """The v2 ``accountId`` and the v1 user id (from ``callUri``) the call's events carry."""
    account = user = None
    for obj in payloads:
        if not isinstance(obj, dict):
            continue
        if account is None and isinstance(obj.get("accountId"), str) and obj["accountId"]:
            account = obj["accountId"]
        uri = obj.get("callUri")
        if user is None and isinstance(uri, str) and (m := _USER_IN_URI.search(uri)):
            user = m.group(1)
    return account, user


def api_url(settings: Reconcile, call: CallRecord, payloads: list[Any]) -> str | None:
    """The URL to ask about a call, or ``None`` when no account (v2) or user (v1) id is known."""
    account, user = ids_of(payloads)
    cid = quote(call.state.call_id, safe="")
    if call.state.v2:
        account = account or settings.account_id
        if not account:
            return None
        base = settings.v2_api_url.rstrip("/")
        return f"{base}/accounts/{quote(account, safe='')}/calls/{cid}"
    user = user or settings.user_id
    if not user:
        return None
    return f"{settings.v1_api_url.rstrip('/')}/users/{quote(user, safe='')}/calls/{cid}"


def _payloads(storage: Storage, call_id: str) -> list[Any]:
    """The JSON payloads of the first page of a call's timeline (where its ids are)."""
    page = storage.timeline(call_id, limit=100)
    out = []
    for event in page[0] if page is not None else []:
        if event.fmt == "json" and event.origin is None:
            try:
                out.append(_json_dec.decode(event.body))
            except msgspec.DecodeError:
                continue
    return out


def reconciled_body(call_id: str, url: str, checked_at: int, response: bytes) -> bytes:
    """The ``reconciled`` event: the API's body as it came, inside."""
    return _json_enc.encode(
        {
            "eventType": RECONCILED,
            "callId": call_id,
            "source": url,
            "checkedAt": format_time(checked_at),
            "response": msgspec.Raw(response),
        }
    )


class Sweep:
    """Passes over the stale calls with one API client."""

    def __init__(
        self,
        storage: Storage,
        settings: Reconcile,
        api: CallApi,
        *,
        record: Record | None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.api = api
        self.record = record  # None: a dry run, nothing recorded
        self.count = count

    async def _thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def stale_calls(self, limit: int = PASS_LIMIT) -> list[CallRecord]:
        """The stale calls to ask about now: claimed for one interval (a dry run only lists)."""
        s = self.settings
        now = now_ms()
        before = now - int(s.stale_after_seconds * 1000)
        if self.record is None:
            calls, _ = await self._thread(
                lambda: self.storage.calls({}, limit=limit, stale=True, stale_before=before)
            )
            return list(calls)
        until = now + int(s.interval_seconds * 1000)
        return list(await self._thread(lambda: self.storage.claim_stale(limit, now, until, before)))

    async def run(self, limit: int = PASS_LIMIT) -> list[Finding]:
        """One pass: every stale call claimed is asked about once."""
        found = []
        for call in await self.stale_calls(limit):
            found.append(await self.one(call))
        return found

    async def one(self, call: CallRecord) -> Finding:
        cid = call.state.call_id
        payloads = await self._thread(lambda: _payloads(self.storage, cid))
        url = api_url(self.settings, call, payloads)
        if url is None:
            what = "accountId (reconcile.account_id)" if call.state.v2 else "user id (user_id)"
            answer = Answer("no_account", None, None, f"no {what} known for the call")
        else:
            answer = await self.api.get(url, "v2" if call.state.v2 else "v1")
        if self.count is not None:
            self.count(answer.kind)
        seq = None
        ended = answer.kind == "ended" and answer.body is not None and url is not None
        if ended and self.record is not None and answer.body is not None and url is not None:
            entry = reconciled_entry(reconciled_body(cid, url, now_ms(), answer.body))
            seq = (await self.record(entry)).seq
        return Finding(cid, url, answer, seq)
