"""``tracker serve``: uvicorn with our signal handling and start-up line."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.cli.common import EXIT_DATA, EXIT_OK, EXIT_USAGE, CliError, say, settings_of
from tracker.errors import ConfigError

if TYPE_CHECKING:
    from tracker.config import Settings


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
    from uvicorn.config import LOG_LEVELS, STARTUP_FAILURE

    if settings.server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"server.log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"got {settings.server.log_level!r}"
        )
    if not settings.storage.url and Path(settings.storage.path).is_dir():
        raise CliError(f"storage.path {settings.storage.path} is a directory", EXIT_USAGE)
    from tracker.config import serving
    from tracker.storage import describe

    settings = serving(settings)
    _open_files_for(settings)
    where = describe(settings) if settings.storage.url else os.path.abspath(settings.storage.path)
    from tracker.cli.workers import TrackerServer, make_config, serve_workers, settle_memory

    if settings.server.workers > 1:
        if not settings.storage.url:
            # create or migrate the file once, before the workers open it together
            from tracker.cli.common import storage_of

            storage_of(settings).close()
        return serve_workers(settings, where)
    server = TrackerServer(make_config(settings), where)
    settle_memory()
    try:
        server.run()
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:
            raise CliError("the server could not start (see the error above)") from None
        raise
    return EXIT_OK if server.started else EXIT_DATA
