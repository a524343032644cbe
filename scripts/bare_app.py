"""The benchmarks' baseline: a bare Starlette app on the tracker's uvicorn settings.

It does the least a service on this stack can do, so that ``tracker / bare`` shows what the
tracker's own work costs:

* ``POST /callbacks`` answers 204 without reading the body;
* ``GET /calls/{call_id}`` (a path parameter) answers a constant JSON body (``--view-file``,
  default a typical call view) and ``GET /calls`` a constant page (``--page-file``), so the
  bytes on the wire match the tracker's;
* ``GET /readyz`` and ``/healthz`` answer 200.

    python scripts/bare_app.py --port 0   # prints "bare: listening on http://127.0.0.1:PORT"

uvicorn settings as ``tracker serve``: uvloop, httptools, log_level warning, access_log off,
lifespan on, one worker.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DEFAULT_VIEW = (
    b'{"callId":"c-z572jq6wneqpp3bqwqrvqvq","api":"v1","status":"ended","direction":"inbound",'
    b'"from":"+13233326955","to":"+13865245000","startedAt":"2012-11-14T15:55:01.000Z",'
    b'"answeredAt":"2012-11-14T15:55:04.000Z","endedAt":"2012-11-14T15:56:12.636Z",'
    b'"cause":"NORMAL_CLEARING","outcome":"normal","errorMessage":null,"ringSeconds":3.0,'
    b'"talkSeconds":68.636,"durationSeconds":71.636,"tag":null,"parentCallId":null,'
    b'"eventCount":5,"firstEventAt":"2012-11-14T15:55:01.000Z",'
    b'"lastEventAt":"2012-11-14T15:56:12.636Z","lastEventType":"hangup","firstSeq":17,'
    b'"lastSeq":93,"anomalies":[]}'
)


def create_app(view: bytes, page: bytes) -> Starlette:
    async def callbacks(request: Request) -> Response:
        return Response(status_code=204)

    async def call(request: Request) -> Response:
        return Response(view, media_type="application/json")

    async def calls(request: Request) -> Response:
        return Response(page, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/callbacks", callbacks, methods=["POST"]),
            Route("/calls/{call_id}", call),
            Route("/calls", calls),
            Route("/readyz", ready),
            Route("/healthz", ready),
        ]
    )


class Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"bare: listening on http://{host}:{port}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--view-file", type=Path, help="the body of GET /calls/{call_id}")
    parser.add_argument("--page-file", type=Path, help="the body of GET /calls")
    args = parser.parse_args()
    view = args.view_file.read_bytes() if args.view_file else DEFAULT_VIEW
    page = args.page_file.read_bytes() if args.page_file else b'{"calls":[],"next":null}'
    config = uvicorn.Config(
        create_app(view, page),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
    )
    Server(config).run()


if __name__ == "__main__":
    main()
