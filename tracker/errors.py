"""Errors as data: each names its HTTP status and code; ``tracker.http.asgi`` renders them.

Plain exceptions, no I/O, so the core and the shell can both raise them.
"""

from __future__ import annotations

from typing import ClassVar

from tracker.events import InvalidEvent


class TrackerError(Exception):
    """Base: ``code`` is the machine-readable error, ``detail`` a sentence a person can act on."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.partial: bytes | None = None  # what was read of a refused body, when not all of it
        self.size: int | None = None  # the refused body's full size, when known and not read
        self.unread = False  # the client may still be sending the body (we stopped reading)


class InvalidJson(TrackerError):
    status, code = 400, "invalid_json"


class BadParameter(TrackerError):
    status, code = 400, "bad_parameter"


class BadPath(TrackerError):
    """400: a ``/callbacks`` sub-path with ``.``/``..`` segments (plain or percent-encoded)."""

    status, code = 400, "bad_path"


class HostNotAllowed(TrackerError):
    """400: the ``Host`` header names no host in ``server.allowed_hosts``."""

    status, code = 400, "host_not_allowed"


class Unauthorized(TrackerError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str, challenge: str = 'Basic realm="tracker"') -> None:
        super().__init__(detail)
        self.challenge = challenge  # the WWW-Authenticate header to send


class CrossSite(TrackerError):
    """403: a web page of another site sent a callback (a browser's cross-site request)."""

    status, code = 403, "cross_site"


class NotFound(TrackerError):
    status, code = 404, "not_found"


class MethodNotAllowed(TrackerError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(TrackerError):
    status, code = 408, "timeout"


class TooLarge(TrackerError):
    status, code = 413, "too_large"


class HeadersTooLarge(TrackerError):
    """431: the request line and headers exceed ``server.max_header_bytes``."""

    status, code = 431, "headers_too_large"


class UnsupportedMediaType(TrackerError):
    status, code = 415, "unsupported_media_type"


class EventRejected(TrackerError):
    """422: wraps the core's :class:`~tracker.events.InvalidEvent` (detail names the field)."""

    status, code = 422, "invalid_event"


class StorageUnavailable(TrackerError):
    """503: the database cannot commit (full disk, read-only or locked file, I/O error)."""

    status, code = 503, "unavailable"


class TooManyConnections(TrackerError):
    """503: a new connection beyond ``server.max_connections``."""

    status, code = 503, "too_many_connections"


class TooManyStreams(TrackerError):
    """503: a new ``/events/stream`` beyond ``query.max_streams`` open in this process."""

    status, code = 503, "too_many_streams"


class BadGateway(TrackerError):
    status, code = 502, "bad_gateway"


class GatewayTimeout(TrackerError):
    status, code = 504, "gateway_timeout"


class ConfigError(Exception):
    """A configuration problem: the message names the key. The CLI exits 2."""


__all__ = [
    "BadGateway",
    "BadParameter",
    "BadPath",
    "ConfigError",
    "CrossSite",
    "EventRejected",
    "GatewayTimeout",
    "HeadersTooLarge",
    "HostNotAllowed",
    "InvalidEvent",
    "InvalidJson",
    "MethodNotAllowed",
    "NotFound",
    "RequestTimeout",
    "StorageUnavailable",
    "TooLarge",
    "TooManyConnections",
    "TooManyStreams",
    "TrackerError",
    "Unauthorized",
    "UnsupportedMediaType",
]
