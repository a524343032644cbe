"""The HTTP/1.1 connection ``tracker serve`` runs: uvicorn's httptools protocol with the limits
uvicorn does not have.

uvicorn (0.54) bounds neither the time nor the size of a request head with httptools (its
``h11_max_incomplete_event_size`` applies to h11 only, and answers a plain-text 400), arms its
keep-alive timer only after a first response (a new connection that sends nothing, or one byte
a second, stays open for ever), and ``limit_concurrency`` answers 503 *after* reading a head, on
every connection including the ones already serving, while the surplus sockets stay open. So:

* **head deadline** (``server.header_timeout_seconds``): a request head must be complete within
  this time of its first byte, or of the connection opening. A partial head is answered
  ``408 timeout``; a connection that sent nothing is closed.
* **head size** (``server.max_header_bytes``): a head (request line and headers) larger than this
  is answered ``431 headers_too_large``: a complete head is measured exactly, one still arriving
  is refused as soon as more than the limit of it has arrived (counted per read, so at most one
  read, 256 KiB, is ever buffered beyond the limit).
* **connection cap** (``server.max_connections``): a connection beyond the cap is answered
  ``503 too_many_connections`` at once and closed; connections already open are not affected,
  so a keep-alive sender (Bandwidth, a proxy) keeps being served while a flood is refused.

Errors have the API's one shape (``{"error", "detail"}``) and ``Connection: close``; after
sending one the connection reads and drops what the client still sends for a moment (a
"lingering close", so the answer is not lost to a reset), then closes.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tracker.config import Server
from tracker.errors import HeadersTooLarge, RequestTimeout, TooManyConnections, TrackerError
from tracker.http.asgi import LINGER_SECONDS, error_body

_REASONS: Final = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _raw_error(err: TrackerError) -> bytes:
    body = error_body(err)
    reason = _REASONS.get(err.status, b"Service Unavailable")
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (err.status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size cap and a connection cap
    (class attributes; :func:`protocol_class` makes a subclass with the configured values)."""

    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 32_768
    max_connections: ClassVar[int] = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0
        self._began = False  # a request has started on this connection
        self._head_since = 0.0  # when the current head's deadline started (loop time)
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(
                TooManyConnections(
                    f"the server has {self.max_connections} connections open, its limit "
                    "(server.max_connections): retry shortly"
                )
            )
            return
        self._head_since = self.loop.time()  # the first head's deadline runs from the opening
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger = None
        super().connection_lost(exc)

    def eof_received(self) -> Any:
        if self._refused:  # the client has read our answer and closed its side
            self.transport.close()
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        in_head = self._in_head
        super().data_received(data)
        # A head still incomplete after this read is refused once more of it arrived than the
        # limit, counted per read: the read that starts a head is not counted (it may end a
        # previous request's body), so the parser holds at most the limit plus one read.
        # A head that completes is measured exactly (on_headers_complete).
        if in_head and self._in_head and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(self._too_large())

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        if self._began:  # not the first request: its deadline runs from now
            self._head_since = self.loop.time()
        self._began = True
        self._head_bytes = 0
        # One timer per connection stays armed across requests (a timer per request costs more
        # than the rest of the head's handling): when it fires it checks the current head's
        # deadline and sets itself again for the time that is left.
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The whole head arrived, maybe in one read: its exact size (request line, headers).
        size = len(self.url) + 16 + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.max_header_bytes:
            self._refuse(self._too_large())  # the rest of this read is ignored (callbacks below)
            return
        super().on_headers_complete()

    # Once refused, what the parser still finds in the current read is ignored.

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser's 400 for an invalid request, unless we answered
            super().send_400_response(msg)

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request head exceeds {self.max_header_bytes} bytes (server.max_header_bytes)"
        )

    def _head_late(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if not self._in_head:
            if not self._began:  # nothing sent since the connection opened: just close it
                self.transport.close()
            return  # between two requests: the next head sets the timer again
        left = self._head_since + self.header_timeout - self.loop.time()
        if left > 0:  # the timer was set for an earlier head on this connection
            self._head_timer = self.loop.call_later(left, self._head_late)
            return
        self._refuse(
            RequestTimeout(
                f"the request head did not arrive within {self.header_timeout:g} s "
                "(server.header_timeout_seconds)"
            )
        )

    def _refuse(self, err: TrackerError) -> None:
        """Answer ``err`` and close, draining what the client still sends for a moment."""
        self._refused = True
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._unset_keepalive_if_required()
        if self.transport.is_closing():  # the parser refused the request itself (uvicorn's 400)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a request is being answered on this connection: never write into its response
            self.transport.close()
            return
        self.transport.write(_raw_error(err))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def protocol_class(server: Server) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with ``[server]``'s limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "TrackerHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "header_timeout": server.header_timeout_seconds,
            "max_header_bytes": server.max_header_bytes,
            "max_connections": server.max_connections,
        },
    )
