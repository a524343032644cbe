"""The dashboard (SPEC §10): the page at ``/``, a call's page at ``/ui/calls/{callId}``, their
static assets under ``/ui/static/`` and the sign-in that a ``[query] token`` asks for.

The pages carry no data: they are one HTML shell (``static/index.html``) whose script reads the
public query API, as any client would. So they are open even with a token; what the token guards
is the API. Signing in (``/?token=TOKEN`` or the form, which posts to ``/ui/sign-in``) sets an
HttpOnly, SameSite=Strict cookie that the query routes accept as well as the bearer header. The
cookie holds an HMAC of the token, not the token: it opens the same reads, but does not reveal
the token if it leaks, and it stops working when the token changes. Only GET query routes take
it (``/callbacks`` never does: ingest has credentials of its own), and SameSite=Strict keeps it
off requests that other sites start.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from html import escape
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tracker.errors import BadParameter, NotFound, TooLarge
from tracker.metrics import Metrics

COOKIE = "tracker_session"
COOKIE_MAX_AGE = 30 * 86400  # seconds; the cookie dies sooner when the token changes
_SESSION_LABEL = b"tracker dashboard session v1"
MAX_FORM_BYTES = 4096

# No inline script or style, no other origin: the page's own files only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a /?token= URL must not leak through Referer
    "Cache-Control": "no-store",
}
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# Every file the pages load, by the name in their URL (nothing else under static/ is served).
ASSETS = (
    "app.js",
    "app.css",
    "favicon.svg",
    "vendor/uplot/uPlot.iife.min.js",
    "vendor/uplot/uPlot.min.css",
    "vendor/uplot/LICENSE.txt",
)


def is_page(path: str) -> bool:
    """The routes that are open with a token: the pages and their assets hold no data."""
    return path in ("/", "/favicon.ico") or path.startswith("/ui/")


def session_value(token: bytes) -> bytes:
    """The cookie's value for a token: an HMAC of it, so the cookie never holds the token."""
    return hmac.new(token, _SESSION_LABEL, hashlib.sha256).hexdigest().encode()


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    root = resources.files("tracker.http") / "static"
    out = {}
    for name in ASSETS:
        body = (root / name).read_bytes()
        suffix = name[name.rfind(".") :]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        out[name] = Asset(body, TYPES[suffix], etag)
    return out


class Dashboard:
    """The page routes and the session cookie check, for a token (``None``: open)."""

    def __init__(self, token: bytes | None, metrics: Metrics) -> None:
        self._token = token
        self._session = session_value(token) if token is not None else None
        self._metrics = metrics
        self._assets = _load_assets()
        shell = (resources.files("tracker.http") / "static" / "index.html").read_text("utf-8")
        self._shell = Template(shell)
        # asset URLs carry a hash of the files, so a new release is never served stale
        digest = hashlib.sha256(b"".join(a.body for a in self._assets.values()))
        self._version = digest.hexdigest()[:12]

    # -- the session -----------------------------------------------------------------------------

    def cookie_ok(self, scope: dict[str, Any] | Any) -> bool:
        """The request carries this token's session cookie (compared in constant time)."""
        if self._session is None:
            return False
        for key, value in scope["headers"]:
            if key == b"cookie":
                for part in bytes(value).split(b";"):
                    name, _, got = part.strip().partition(b"=")
                    if name == COOKIE.encode() and hmac.compare_digest(got, self._session):
                        return True
        return False

    def _token_ok(self, given: str) -> bool:
        assert self._token is not None
        return hmac.compare_digest(given.encode(), self._token)

    # -- pages -----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The HTML shell; with a token, ``?token=`` signs in (and is taken out of the URL)."""
        given = request.query_params.get("token")
        if self._token is not None and given is not None:
            if self._token_ok(given):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = _raw_path(request)
                if rest:
                    target += "?" + urlencode(rest)
                return self._signed_in(request, target)
            self._metrics.query_auth_failures.inc()
            return self._render(request, "sign-in", "That token was not accepted. Try again.")
        if self._token is not None and not self.cookie_ok(request.scope):
            return self._render(request, "sign-in", "")
        return self._render(request, "open" if self._token is None else "signed-in", "")

    def _render(self, request: Request, auth: str, error: str) -> Response:
        path = _raw_path(request)
        base = _base(request)
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        html = self._shell.substitute(
            base=escape(base),
            auth=auth,
            error=escape(error),
            error_hidden="" if error else "hidden",
            next=escape(path[len(base) :] + ("?" + query if query else "")),
            version=self._version,
        )
        return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def favicon(self, request: Request) -> Response:
        """Browsers ask for it on any page, the API's JSON included (an SVG serves)."""
        return self._asset(request, "favicon.svg")

    async def asset(self, request: Request) -> Response:
        return self._asset(request, request.path_params["name"])

    def _asset(self, request: Request, name: str) -> Response:
        found = self._assets.get(name)
        if found is None:
            raise NotFound(f"no asset {name!r}")
        headers = {
            "ETag": found.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    # -- sign-in and out ---------------------------------------------------------------------------

    async def sign_in(self, request: Request) -> Response:
        """The form's POST: ``token`` and ``next`` (the page to return to)."""
        _same_origin(request)
        fields = await _form(request)
        target = _base(request) + _local(fields.get("next", "/"))
        if self._token is None:
            return RedirectResponse(target, 303)
        if not self._token_ok(fields.get("token", "")):
            self._metrics.query_auth_failures.inc()
            return self._render(request, "sign-in", "That token was not accepted. Try again.")
        return self._signed_in(request, target)

    async def sign_out(self, request: Request) -> Response:
        _same_origin(request)
        response = RedirectResponse(_base(request) + "/", 303)
        response.delete_cookie(COOKIE, path=_base(request) + "/", httponly=True, samesite="strict")
        return response

    def _signed_in(self, request: Request, target: str) -> Response:
        assert self._session is not None
        response = RedirectResponse(target, 303)
        response.headers["Referrer-Policy"] = "no-referrer"
        response.set_cookie(
            COOKIE,
            self._session.decode(),
            max_age=COOKIE_MAX_AGE,
            path=_base(request) + "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response


def _base(request: Request) -> str:
    """Where the tracker is mounted ("" at the root)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _raw_path(request: Request) -> str:
    """The path as sent, still percent-encoded (a call id may hold an encoded ``/``)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(request.scope["path"])


def _local(path: str) -> str:
    """A path on this site only (no scheme, no host, no ``//host``): else ``/``."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _same_origin(request: Request) -> None:
    """A form POST from another site is refused (browsers send ``Origin`` with every POST)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # every current browser says where a request comes from
        if site not in ("same-origin", "none"):
            raise BadParameter(f"a sign-in posted from another site ({site}) is refused")
        return
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # not a browser, or a page without a referrer
        return
    if origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise BadParameter(f"a sign-in posted from another site ({origin}) is refused")


async def _form(request: Request) -> dict[str, str]:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_FORM_BYTES:
        raise TooLarge(f"the form is {size} bytes; the limit is {MAX_FORM_BYTES}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLarge(f"the form exceeds {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise BadParameter("the form is not valid UTF-8") from None
