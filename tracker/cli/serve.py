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

    from tracker.config import Settings

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
                say(f"listening on {url} (db: {db})")

    return Server(config)


def _open_files_for(settings: Settings) -> None:
    """Raise the soft open-file limit to the hard one (as Go and nginx do), and warn when
    ``server.max_connections`` still does not fit: beyond the limit ``accept`` fails, and a
    valid callback is reset instead of answered."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = settings.server.max_connections + settings.forward.max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        say(
            f"warning: server.max_connections ({settings.server.max_connections}) does not fit "
            f"in the open-file limit ({soft}, ulimit -n): lower it or raise the limit"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_of(args, host=args.host, port=args.port, workers=args.workers)
    import uvicorn
    from uvicorn.config import LOG_LEVELS, STARTUP_FAILURE

    if settings.server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"server.log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"got {settings.server.log_level!r}"
        )
    if not settings.storage.url and Path(settings.storage.path).is_dir():
        raise CliError(f"storage.path {settings.storage.path} is a directory", EXIT_USAGE)
    from tracker.config import serving
    from tracker.http import create_app
    from tracker.http.protocol import protocol_class

    settings = serving(settings)
    _open_files_for(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        access_log=settings.server.access_log,
        lifespan="on",
        loop="uvloop",
        http=protocol_class(settings.server),  # httptools, with limits on heads and connections
        timeout_keep_alive=settings.server.keepalive_seconds,  # type: ignore[arg-type]
        # The app reads the peer itself (server.forwarded_allow_ips): uvicorn's middleware would
        # replace it with what X-Forwarded-For says, and trusts loopback peers by default.
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    from tracker.storage import describe

    where = describe(settings) if settings.storage.url else os.path.abspath(settings.storage.path)
    server = _make_server(config, where)
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
