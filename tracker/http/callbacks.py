"""``/callbacks``: the lean ASGI path of ingest (the hot path: no routing, no Request object,
decode once, answer after the group commit).

Reads the body (with a size limit and a deadline kept by one sweeper task for all requests),
hands it to :mod:`tracker.ingest` for entries, submits them to the :class:`~tracker.writer.Writer`
and answers with the ``seq`` (or the error, after quarantining the body), or relays it all to
the application through the :class:`~tracker.http.forward.Forwarder`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tracker.config import Settings
from tracker.errors import (
    BadPath,
    CrossSite,
    MethodNotAllowed,
    RequestTimeout,
    StorageUnavailable,
    TooLarge,
    TrackerError,
    Unauthorized,
)
from tracker.guards import cross_site, dot_segment
from tracker.http.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    raw_route_path,
    send_bytes,
    send_error,
)
from tracker.ingest import QUARANTINED, content_kind, parse_entries, quarantine
from tracker.metrics import Metrics
from tracker.records import Appended
from tracker.writer import Writer

if TYPE_CHECKING:
    from tracker.http.forward import Forwarder

_json = msgspec.json.Encoder()


def _result_body(results: list[Appended], batch: bool) -> bytes:
    if not batch:
        r = results[0]
        return b'{"seq":%d,"duplicate":%s}' % (r.seq, b"true" if r.duplicate else b"false")
    return _json.encode({"results": [{"seq": r.seq, "duplicate": r.duplicate} for r in results]})


def _check_sub_path(scope: Scope, path: str) -> None:
    """A sub-path with dot segments is refused: forwarded, it would reach the application
    outside its base path (``/callbacks/../admin``). One rule, on the raw path that is
    forwarded: no segment that is, or percent-decodes to, ``.`` or ``..``."""
    raw = raw_route_path(scope)
    sub = raw[len(b"/callbacks") :] if raw.startswith(b"/callbacks") else path.encode()
    bad = dot_segment(sub)
    if bad is not None:
        raise BadPath(
            f"the path has a dot segment ({bad.decode('latin-1')[:100]!r}): a sub-path of "
            "/callbacks must not contain '.' or '..' segments, plain or percent-encoded"
        )


class Callbacks:
    """The ``/callbacks`` endpoint. ``writer`` and ``forwarder`` are set by the app's lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.writer: Writer | None = None
        self.forwarder: Forwarder | None = None
        ing = settings.ingest
        self.max_body = ing.max_body_bytes
        self.max_batch = ing.max_batch
        self.body_timeout = ing.body_timeout_seconds
        self._basic: tuple[bytes, bytes] | None = (
            (ing.username.encode(), ing.password.encode()) if ing.username else None
        )
        self._reads: dict[asyncio.Task[Any], float] = {}  # body reads in progress: deadlines
        self._late: set[asyncio.Task[Any]] = set()  # reads the sweeper cancelled

    def _basic_ok(self, auth: bytes | None) -> bool:
        assert self._basic is not None
        if not auth:
            return False
        scheme, _, blob = auth.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(blob.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok_user = hmac.compare_digest(user, self._basic[0])
        ok_pass = hmac.compare_digest(password, self._basic[1])
        return ok_user and ok_pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        t0 = time.perf_counter()
        content_type = b""
        length: bytes | None = None
        auth: bytes | None = None
        expect = b""
        origin = fetch_site = host = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"authorization":
                auth = value
            elif key == b"expect":
                expect = value
            elif key == b"origin":
                origin = value
            elif key == b"sec-fetch-site":
                fetch_site = value
            elif key == b"host":
                host = value
        browser = origin is not None or fetch_site is not None  # neither: a server-side client
        why = cross_site(origin, fetch_site, host) if browser else None
        if why is not None:
            await send_error(send, CrossSite(f"callbacks are not accepted from browsers: {why}"))
            return
        if self._basic is not None and not self._basic_ok(auth):
            self.metrics.auth_failures.inc()
            await send_error(
                send,
                Unauthorized("credentials are required for /callbacks", 'Basic realm="tracker"'),
            )
            return
        writer = self.writer
        body = b""
        method = scope["method"]
        try:
            if writer is None:
                raise StorageUnavailable("the service is not started (lifespan not run)")
            if method == "POST":
                body = await self._read_body(receive, length, expect)
                kind = content_kind(content_type, body)
            elif method == "GET":
                kind = "query"
                body = scope["query_string"]
                if len(body) > self.max_body:  # the query string is the body of a GET callback
                    err = TooLarge(
                        f"the query string is {len(body)} bytes; the limit is {self.max_body} "
                        "(max_body_bytes)"
                    )
                    err.partial, err.size = body, len(body)  # cut to the quarantine's cap
                    raise err
            else:
                raise MethodNotAllowed(f"{method} is not allowed on /callbacks: use POST or GET")
            if path != "/callbacks":
                _check_sub_path(scope, path)
            entries, batch = parse_entries(body, kind, self.max_batch)
            results = await writer.submit(entries)
            status, answer = 200, _result_body(results, batch)
        except ClientGone:
            return
        except TrackerError as err:
            if err.status in QUARANTINED and writer is not None:
                reject = quarantine(err, body, content_type.decode("latin-1"), path)
                try:
                    await writer.submit((), (reject,))
                    self.metrics.rejects.labels(err.code).inc()
                except StorageUnavailable as unavailable:
                    err = unavailable  # the body could not be kept: the sender must retry
            # A refused body is still the application's to answer, but only a whole one: a
            # body cut short (408, 413 over the size limit), a wrong method or a storage
            # failure is answered here.
            if (
                self.forwarder is not None
                and err.status in QUARANTINED
                and err.partial is None
                and not isinstance(err, BadPath)  # it would leave the application's base path
            ):
                await self.forwarder.relay(scope, body, None, send, path)
                return
            await send_error(
                send,
                err,
                close=err.status in (408, 413),
                allow=b"GET, POST",
                linger=receive if err.unread else None,  # a body we stopped reading
            )
            return
        self.metrics.ingest_seconds.observe(time.perf_counter() - t0)
        if self.forwarder is not None:
            await self.forwarder.relay(scope, body, results, send, path)
            return
        await send_bytes(send, status, answer)

    async def _read_body(self, receive: Receive, length: bytes | None, expect: bytes) -> bytes:
        limit = self.max_body
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                err = TooLarge(
                    f"the body is {declared} bytes; the limit is {limit} (max_body_bytes)"
                )
                if expect.lower() == b"100-continue":
                    # the client waits for a go-ahead before it sends the body (curl does for
                    # bodies over 1 MB): refuse it unsent. A client may also send it without
                    # waiting, so the answer still lingers (and never says 100 Continue).
                    err.partial, err.unread = b"", True
                else:  # the head, for the quarantine
                    err.partial, err.unread = await self._head(receive, [], True)
                err.size = declared
                raise err
        chunks: list[bytes] = []
        size = 0
        more = True
        # The deadline is kept by one sweeper task for all requests (an asyncio.timeout per
        # request costs more than the rest of the read); the first receive is covered too, so
        # a client that sends headers and then nothing is timed out.
        task = asyncio.current_task()
        reads = self._reads
        if task is not None:
            reads[task] = time.monotonic() + self.body_timeout
        try:
            while more and size <= limit:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                more = message.get("more_body", False)
        except asyncio.CancelledError:
            if task is None or task not in self._late:
                raise
            self._late.discard(task)
            task.uncancel()
            late = RequestTimeout(
                f"the body did not arrive within {self.body_timeout:g} s (body_timeout_seconds)"
            )
            late.partial = b"".join(chunks)
            late.unread = True
            raise late from None
        finally:
            if task is not None:
                reads.pop(task, None)
        if size > limit:
            err = TooLarge(f"the body exceeds {limit} bytes (max_body_bytes)")
            err.partial, err.unread = await self._head(receive, chunks, more)
            raise err
        return b"".join(chunks)

    async def _head(self, receive: Receive, chunks: list[bytes], more: bool) -> tuple[bytes, bool]:
        """A refused body's head for the quarantine: what was read, plus more up to one byte past
        ``quarantine_max_bytes`` (so the store marks it truncated), briefly; and whether the client
        may still be sending the rest."""
        cap = self.settings.ingest.quarantine_max_bytes
        size = sum(len(c) for c in chunks)
        try:
            async with asyncio.timeout(min(self.body_timeout, 5.0)):
                while more and size <= cap:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    size += len(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            pass
        return b"".join(chunks)[: cap + 1], more

    async def sweep_reads(self) -> None:
        """Cancel body reads past their deadline (``ingest.body_timeout_seconds``)."""
        while True:
            await asyncio.sleep(min(0.5, self.body_timeout / 4))
            now = time.monotonic()
            if self._late:  # a cancel that landed after the read finished: forget it
                self._late = {t for t in self._late if not t.done()}
            for task, deadline in list(self._reads.items()):
                if deadline < now and task not in self._late:
                    self._late.add(task)
                    task.cancel()
