"""Request guards that run before any route: the Host check, the cross-site check and the
reading of a forwarded sub-path. Pure functions of header and path bytes (no I/O).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_to_bytes

#: The names a loopback-bound server answers to by default (any port).
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """``host`` (a listen address) accepts connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: bytes) -> str:
    """The name in a ``Host`` header, port removed, lower case; IPv6 literals keep brackets."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    return text.split(":", 1)[0]


class HostCheck:
    """``allowed_hosts`` with Starlette ``TrustedHostMiddleware`` semantics: ``*`` allows any
    host, ``*.example.com`` any sub-domain of ``example.com`` (not the bare domain), anything
    else exactly that name. Ports never matter. An IPv6 literal may be written with or
    without brackets."""

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        self.any = False
        for raw in patterns:
            pattern = raw.strip().lower()
            if pattern == "*":
                self.any = True
            elif pattern.startswith("*"):
                suffixes.append(pattern[1:])
            elif ":" in pattern and not pattern.startswith("["):
                exact.add(f"[{pattern}]")  # a bare IPv6 literal
            else:
                exact.add(pattern)
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)

    def allows(self, header: bytes | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        name = host_name(header)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def cross_site(origin: bytes | None, fetch_site: bytes | None, host: bytes | None) -> str | None:
    """Why a request is a browser's cross-site request, or ``None``.

    Bandwidth (and curl, and any server-side client) sends neither ``Origin`` nor
    ``Sec-Fetch-Site``. Browsers send ``Sec-Fetch-Site`` on every request and ``Origin`` on
    cross-origin ones, also for the "simple" form and text/plain posts they make without a
    preflight; so a request a browser marks as coming from another site, or whose ``Origin`` is
    not this host, was made by a web page and is refused.
    """
    if fetch_site is not None:
        site = fetch_site.strip().lower()
        if site in (b"cross-site", b"same-site"):
            return f"it was sent by a web page of another site (Sec-Fetch-Site: {site.decode()})"
    if origin is not None:
        text = origin.decode("latin-1").strip()
        _, sep, rest = text.partition("://")
        if not sep or host is None or rest.lower() != host.decode("latin-1").strip().lower():
            return f"it was sent by a web page of another origin (Origin: {text[:100]})"
    return None


#: How many times a path segment is percent-decoded when looking for dot segments: catches
#: double (``%252e``) and triple encoding, which some servers and frameworks undo.
_DECODE_ROUNDS: Final = 3


def dot_segment(raw_path: bytes) -> bytes | None:
    """The first segment of a raw (percent-encoded) path that is, or hides, a ``.`` or ``..``
    segment; ``None`` when there is none.

    A segment is looked at percent-decoded (up to three times) and split at ``/`` and ``\\``
    (so ``..%2F`` and ``%2e%2e%5c`` count), because whichever of these the application's server
    undoes, it then resolves the dot segment and leaves the base path.
    """
    for segment in raw_path.split(b"/"):
        text = segment
        for round_ in range(_DECODE_ROUNDS + 1):
            parts = text.replace(b"\\", b"/").split(b"/")
            if any(p in (b".", b"..") for p in parts):
                return segment
            if b"%" not in text or round_ == _DECODE_ROUNDS:
                break
            text = unquote_to_bytes(text)
    return None
