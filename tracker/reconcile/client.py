"""Bandwidth's call API, asked about one call at a time (SPEC §11): httpx's AsyncClient with
timeouts, Basic auth, a rate limit, and a backoff after 429 and 5xx answers.

Every answer is an :class:`Answer` of a ``kind``; only ``ended`` carries a body to record. None
raises: a network error, a timeout or a body that is not JSON are kinds too. The password is
in the client's auth only: no URL, message or metric shows it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, NamedTuple

import httpx
import msgspec

#: The kinds of answer (``/metrics`` counts them): ``ended`` is recorded, the others not.
KINDS: Final = (
    "ended",
    "live",
    "not_found",
    "unauthorized",
    "rate_limited",
    "server_error",
    "timeout",
    "not_json",
    "http_error",
    "network_error",
    "no_account",
)
TIMEOUT_SECONDS: Final = 10.0
BACKOFF_FIRST: Final = 1.0  # seconds of pause after a 429 or 5xx, doubling while they go on
BACKOFF_MAX: Final = 60.0

_json = msgspec.json.Decoder()


class Answer(NamedTuple):
    kind: str
    status: int | None  # the HTTP status, None without one
    body: bytes | None  # the JSON body of an ``ended`` answer (what is recorded), else None
    detail: str  # what happened, for people (never a credential)


def ended_state(api: str, obj: object) -> str | None:
    """The state of an API body that says the call is over (v2 ``disconnected``; v1
    ``completed`` or ``rejected``), else ``None``."""
    if not isinstance(obj, dict):
        return None
    state = obj.get("state")
    if api == "v2" and state == "disconnected":
        return "disconnected"
    if api == "v1" and state in ("completed", "rejected"):
        return str(state)
    return None


class CallApi:
    """One client for every request of a process (connections are kept alive)."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        max_per_second: float = 5.0,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.client = httpx.AsyncClient(
            auth=httpx.BasicAuth(username, password),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"accept": "application/json", "user-agent": "tracker-reconcile"},
        )
        self.spacing = 1.0 / max_per_second
        self._next_at = 0.0  # monotonic time the next request may start
        self._lock = asyncio.Lock()
        self._backoff = 0.0

    async def _turn(self) -> None:
        """Wait for the rate limit (and any backoff): requests start ``spacing`` apart."""
        async with self._lock:
            now = time.monotonic()
            wait = self._next_at - now
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_at = max(now, self._next_at) + self.spacing

    def _slow_down(self, retry_after: str | None) -> None:
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_FIRST)
        pause = self._backoff
        if retry_after is not None and retry_after.strip().isdigit():
            pause = min(BACKOFF_MAX, max(pause, float(retry_after)))
        self._next_at = max(self._next_at, time.monotonic() + pause)

    async def get(self, url: str, api: str) -> Answer:
        """Ask ``url`` about a call of API generation ``api`` (``v1``/``v2``)."""
        await self._turn()
        try:
            resp = await self.client.get(url)
        except httpx.TimeoutException:
            return Answer("timeout", None, None, "no answer before the timeout")
        except httpx.HTTPError as err:
            return Answer("network_error", None, None, f"the request failed: {type(err).__name__}")
        status = resp.status_code
        if status == 429 or status >= 500:
            self._slow_down(resp.headers.get("retry-after"))
            kind = "rate_limited" if status == 429 else "server_error"
            return Answer(kind, status, None, f"HTTP {status}; asked again next interval")
        self._backoff = 0.0
        if status in (401, 403):
            return Answer("unauthorized", status, None, f"HTTP {status}: check the credentials")
        if status == 404:
            return Answer("not_found", status, None, "HTTP 404: the API does not know the call")
        if status != 200:
            return Answer("http_error", status, None, f"HTTP {status}")
        body = resp.content
        try:
            obj = _json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return Answer("not_json", status, None, "the body is not JSON")
        state = ended_state(api, obj)
        if state is None:
            shown = obj.get("state") if isinstance(obj, dict) else None
            return Answer("live", status, None, f"state {shown!r}: not over")
        return Answer("ended", status, body, f"state {state!r}")

    async def close(self) -> None:
        await self.client.aclose()
