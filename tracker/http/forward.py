"""Record-and-forward: the tracker as a sidecar proxy in front of the application.

With ``[forward] url`` set, every callback is first recorded (or refused and quarantined) and
then relayed to the application at ``{url}/{path after /callbacks}`` with the same method, query
string (after the URL's own, when it has one), body and headers (minus hop-by-hop headers;
``Authorization`` only with ``pass_authorization``), plus what the tracker made of it:

* ``X-Tracker-Seq``: the log position (for a batch, a comma-separated list, one per element);
* ``X-Tracker-Duplicate``: ``true`` or ``false`` (a list for a batch); a duplicate is forwarded
  too, because the application may not have answered the first delivery.

Both are absent when the tracker refused the body (it is still forwarded: the tracker never
decides for the application). The application's answer (status, headers, body: BXML, JSON,
nothing) goes back unchanged, streamed through as it arrives. When the application cannot be
reached the caller gets ``502 bad_gateway``; when it does not start answering within
``timeout_seconds``, ``504 gateway_timeout``. The event stays recorded either way, so a retry by
Bandwidth is recognised as a duplicate and forwarded again.

One pooled :class:`httpx.AsyncClient` (keep-alive, ``max_connections``) serves all requests. It
adds no headers and keeps no cookies of its own, follows no redirects (a 3xx goes back to the
caller) and ignores proxy environment variables, since the application is addressed directly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Final

import httpx

from tracker.config import Forward, redact_url
from tracker.errors import BadGateway, ConfigError, GatewayTimeout, TrackerError
from tracker.http.asgi import Scope, Send, raw_route_path, send_error
from tracker.metrics import Metrics
from tracker.records import Appended

#: Headers that describe one hop, not the message (RFC 9110 7.6.1), and the ones httpx recomputes.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED: Final = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}
#: The answering server adds its own ``date`` and ``server``; the upstream's would be duplicates.
_NOT_RETURNED: Final = _HOP_BY_HOP | {b"date", b"server"}
_TRACKER_PREFIX: Final = b"x-tracker-"
#: What proxies say about the original request: passed on only from ``forwarded_allow_ips``.
_PROXY_HEADERS: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded", b"x-real-ip"}
)
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD"})
SMALL_ANSWER: Final = 65_536  # answers up to this size (declared) are relayed in one message


class UpstreamAborted(Exception):
    """The application failed after its answer had started: the connection must be aborted."""


def _callbacks_suffix(scope: Scope, path: str) -> bytes:
    """The raw (still percent-encoded) path after ``/callbacks``, root path removed."""
    raw = raw_route_path(scope)
    if raw == b"/callbacks" or raw.startswith(b"/callbacks/"):
        return raw[len(b"/callbacks") :]
    return path[len("/callbacks") :].encode()  # no usable raw path: the decoded one


def tracker_headers(results: Sequence[Appended] | None) -> list[tuple[bytes, bytes]]:
    """``X-Tracker-Seq`` and ``X-Tracker-Duplicate`` for the results (none when refused)."""
    if results is None:
        return []
    seqs = b",".join(b"%d" % r.seq for r in results)
    dups = b",".join(b"true" if r.duplicate else b"false" for r in results)
    return [(b"x-tracker-seq", seqs), (b"x-tracker-duplicate", dups)]


class Forwarder:
    """Relays recorded callbacks to the application. Create in the app's ``open``; ``close``."""

    def __init__(
        self, settings: Forward, metrics: Metrics, trusted_proxies: Sequence[str] = ()
    ) -> None:
        try:
            base = httpx.URL(settings.url)
        except httpx.InvalidURL as err:
            reason = str(err).replace(settings.url, redact_url(settings.url))
            raise ConfigError(f"forward.url is not a valid URL: {reason}") from None
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(
                f"forward.url must be an http:// or https:// URL, got {redact_url(settings.url)!r}"
            )
        self.settings = settings
        self.metrics = metrics
        self.timeout = settings.timeout_seconds
        self.pass_authorization = settings.pass_authorization
        self._trust_all = "*" in trusted_proxies
        self._trusted_networks = [
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies if p != "*"
        ]
        # Credentials in the URL become the client's Basic auth (as httpx would do with them)
        # and are kept out of the URL itself, so no error, log line or metric can show them.
        auth = httpx.BasicAuth(base.username, base.password) if base.userinfo else None
        base = base.copy_with(userinfo=b"")
        self._base = base
        self._base_path = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
        self._base_query = base.query  # kept: it comes first, the callback's query string after
        self._shown = str(base.copy_with(query=None, fragment=None))
        n = settings.max_connections
        self.client = httpx.AsyncClient(
            auth=auth,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=n, max_keepalive_connections=n, keepalive_expiry=30.0
            ),
            follow_redirects=False,
            trust_env=False,
            # A proxy keeps no cookies: one caller's Set-Cookie must never reach another's request.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )
        # Nor does it add headers of its own (httpx's Accept-Encoding would have the
        # application compress an answer the caller never asked to be compressed).
        self.client.headers.clear()

    async def close(self) -> None:
        await self.client.aclose()

    # -- building the request ------------------------------------------------------------------

    def _url(self, scope: Scope, path: str) -> httpx.URL:
        raw = self._base_path + _callbacks_suffix(scope, path)
        query: bytes = scope.get("query_string", b"")
        if self._base_query:
            query = self._base_query + b"&" + query if query else self._base_query
        if query:
            raw += b"?" + query
        return self._base.copy_with(raw_path=raw or b"/")

    def _trusted(self, scope: Scope) -> bool:
        """The peer is a proxy of ``server.forwarded_allow_ips``: its X-Forwarded-* are kept."""
        if self._trust_all:
            return True
        client = scope.get("client")
        if not client or not self._trusted_networks:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(peer in net for net in self._trusted_networks)

    def _headers(
        self, scope: Scope, results: Sequence[Appended] | None
    ) -> list[tuple[bytes, bytes]]:
        incoming: list[tuple[bytes, bytes]] = scope["headers"]
        dropped: set[bytes] = set()
        for key, value in incoming:
            if key == b"connection":  # it names more headers that are for this hop only
                dropped.update(t.strip().lower() for t in value.split(b","))
        trusted = self._trusted(scope)
        out: list[tuple[bytes, bytes]] = []
        forwarded_for: list[bytes] = []
        forwarded_host = forwarded_proto = None
        host = b""
        for key, value in incoming:
            if key == b"host":
                host = value
                continue
            if key in _NOT_FORWARDED or key in dropped:
                continue
            # CGI-style servers read "_" as "-": x_tracker_seq would be their X-Tracker-Seq
            dashed = key.replace(b"_", b"-")
            if dashed.startswith(_TRACKER_PREFIX):
                continue
            if dashed in _PROXY_HEADERS:
                if not trusted or dashed != key:  # only a trusted proxy's, and only as named
                    continue
                if key == b"x-forwarded-for":
                    forwarded_for.append(value)
                    continue
                if key == b"x-forwarded-host":
                    forwarded_host = value
                    continue
                if key == b"x-forwarded-proto":
                    forwarded_proto = value
                    continue
            if key == b"authorization" and not self.pass_authorization:
                continue
            out.append((key, value))
        client = scope.get("client")
        if client:
            forwarded_for.append(str(client[0]).encode())
        if forwarded_for:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        if forwarded_host is None and host:
            forwarded_host = host
        if forwarded_host is not None:
            out.append((b"x-forwarded-host", forwarded_host))
        if forwarded_proto is None:
            forwarded_proto = str(scope.get("scheme", "http")).encode()
        out.append((b"x-forwarded-proto", forwarded_proto))
        out += tracker_headers(results)
        return out

    def _recorded(self, results: Sequence[Appended] | None) -> str:
        if results is None:
            return "the callback was refused by the tracker (it is quarantined)"
        seqs = ", ".join(str(r.seq) for r in results)
        return f"the callback is recorded (seq {seqs})"

    # -- relaying --------------------------------------------------------------------------------

    async def relay(
        self,
        scope: Scope,
        body: bytes,
        results: Sequence[Appended] | None,
        send: Send,
        path: str,
    ) -> None:
        """Forward the callback and stream the application's answer back through ``send``."""
        t0 = time.perf_counter()
        method: str = scope["method"]
        request = self.client.build_request(
            method,
            self._url(scope, path),
            headers=self._headers(scope, results),
            content=None if method in _NO_BODY_METHODS else body,
        )
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.send(request, stream=True)
        except (TimeoutError, httpx.TimeoutException):
            self.metrics.forward_errors.labels("timeout").inc()
            await send_error(
                send,
                GatewayTimeout(
                    f"the application at {self._shown} did not answer within "
                    f"{self.timeout:g} s (forward.timeout_seconds); {self._recorded(results)}"
                ),
            )
            return
        except httpx.HTTPError as err:
            kind = "connect" if isinstance(err, httpx.ConnectError) else "protocol"
            self.metrics.forward_errors.labels(kind).inc()
            await send_error(send, self._bad_gateway(err, results))
            return
        try:
            await self._stream_back(response, send, results)
        finally:
            await response.aclose()
        self.metrics.forward_seconds.observe(time.perf_counter() - t0)

    def _bad_gateway(
        self, err: httpx.HTTPError, results: Sequence[Appended] | None
    ) -> TrackerError:
        if isinstance(err, httpx.ConnectError):
            why = f"cannot connect to the application at {self._shown}"
        else:
            why = f"the application at {self._shown} gave no valid answer"
        reason = str(err) or type(err).__name__
        return BadGateway(f"{why} ({reason}); {self._recorded(results)}")

    async def _stream_back(
        self, response: httpx.Response, send: Send, results: Sequence[Appended] | None
    ) -> None:
        headers = [
            (key.lower(), value)
            for key, value in response.headers.raw
            if key.lower() not in _NOT_RETURNED
        ]
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        try:
            declared = int(response.headers.get("content-length", "-1"))
        except ValueError:
            declared = -1
        if response.status_code in (204, 304):
            declared = 0
        if 0 <= declared <= SMALL_ANSWER:
            # The usual answer (BXML, JSON, nothing): bounded, so read it whole and answer in one
            # go (or with a 502 when it breaks off). Larger or unknown lengths are streamed.
            try:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
            except httpx.HTTPError as err:
                self.metrics.forward_errors.labels("protocol").inc()
                await send_error(send, self._bad_gateway(err, results))
                return
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        try:
            await send(start)
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as err:
            self.metrics.forward_errors.labels("aborted").inc()
            raise UpstreamAborted(
                f"the application at {self._shown} failed while answering: {err!r}"
            ) from err
        await send({"type": "http.response.body", "body": b"", "more_body": False})
