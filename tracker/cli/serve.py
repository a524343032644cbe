"""``tracker serve``: uvicorn with our signal handling and start-up line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tracker.cli.common import EXIT_DATA, EXIT_OK, EXIT_USAGE, CliError, say, settings_of
from tracker.errors import ConfigError

if TYPE_CHECKING:
    import socket

    import uvicorn

GC_THRESHOLDS: Final = (20_000, 20, 1_000)  # gc.set_threshold for `tracker serve`
GRACEFUL_SHUTDOWN_SECONDS: Final = 5  # then open connections (SSE streams) are cancelled


def _make_server(config: uvicorn.Config, db: str) -> uvicorn.Server:
    import uvicorn

    class Server(uvicorn.Server):
        """Exits normally after a graceful shutdown on SIGTERM/SIGINT.

        uvicorn re-raises the caught signal once it has shut down, so the process would die by
        the signal; a supervisor would see a crash instead of a clean exit 0.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stopping = getattr(self.config.app, "stopping", None)
            if callable(stopping):
                stopping()  # end /events/stream responses first, or they hold the shutdown
            await super().shutdown(sockets=sockets)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers and self.servers[0].sockets:
                name = self.servers[0].sockets[0].getsockname()
                host, port = str(name[0]), int(name[1])
                url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
                say(f"listening on {url} (db: {os.path.abspath(db)})")

    return Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_of(args, host=args.host, port=args.port)
    import uvicorn
    from uvicorn.config import LOG_LEVELS, STARTUP_FAILURE

    if settings.server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"server.log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"got {settings.server.log_level!r}"
        )
    if Path(settings.storage.path).is_dir():
        raise CliError(f"storage.path {settings.storage.path} is a directory", EXIT_USAGE)
    from tracker.http import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        access_log=settings.server.access_log,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _make_server(config, settings.storage.path)
    # What is alive after start-up lives for the whole run: keep it out of the collector's
    # scans, and collect the old generations rarely. Halves ingest p99 under load (full
    # collections were pausing the event loop and the writer; BENCHMARKS.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:
            raise CliError("the server could not start (see the error above)") from None
        raise
    return EXIT_OK if server.started else EXIT_DATA
