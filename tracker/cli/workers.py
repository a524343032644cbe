"""``tracker serve``'s uvicorn server, and ``--workers N``: N processes on one socket.

The main process binds the socket, then runs uvicorn's own supervisor
(``uvicorn.supervisors.Multiprocess``) over :class:`Worker`\\ s: each is a spawned process that
builds the app from the settings and serves the inherited socket with :class:`TrackerServer`
(the kernel hands each new connection to one of them). The supervisor replaces a worker that
dies (even by ``kill -9``); SIGTERM or SIGINT to the main process stops every worker gracefully,
and the main process exits 0 once they have all exited; a worker whose main process was killed
(``kill -9``) stops by itself. Before it starts any, the main process
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, so ``/metrics`` on any worker counts
all of them (:mod:`tracker.metrics`); it removes the directory when it ends. How the workers
share one SQLite file: :mod:`tracker.storage.sqlite.lock` and :mod:`tracker.storage.sqlite.watch`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from typing import Final

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from tracker.cli.common import EXIT_DATA, EXIT_OK, say
from tracker.config import Settings
from tracker.metrics import MULTIPROC_DIR

GC_THRESHOLDS: Final = (20_000, 20, 1_000)  # gc.set_threshold for `tracker serve`
GRACEFUL_SHUTDOWN_SECONDS: Final = 5  # then open connections (SSE streams) are cancelled
READY_SECONDS: Final = 60  # for each worker to start serving
ORPHAN_POLL_SECONDS: Final = 0.5  # how often a worker checks that its main process lives
logger = logging.getLogger("uvicorn.error")


class TrackerServer(uvicorn.Server):
    """Exits normally after a graceful shutdown on SIGTERM/SIGINT.

    uvicorn re-raises the caught signal once it has shut down, so the process would die by
    the signal; a supervisor would see a crash instead of a clean exit 0. ``announce``: print
    the "listening on" line (a worker leaves it to the main process).
    """

    def __init__(self, config: uvicorn.Config, db: str, *, announce: bool = True) -> None:
        super().__init__(config)
        self.db = db
        self.announce = announce

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
        if self.announce and self.started and self.servers and self.servers[0].sockets:
            announce(self.servers[0].sockets[0], self.db)


def announce(sock: socket.socket, db: str) -> None:
    name = sock.getsockname()
    host, port = str(name[0]), int(name[1])
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    say(f"listening on {url} (db: {db})")


def make_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration of ``tracker serve`` (the app built from ``settings``)."""
    from tracker.http import create_app
    from tracker.http.protocol import protocol_class

    return uvicorn.Config(
        create_app(settings),
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


def settle_memory() -> None:
    """What is alive after start-up lives for the whole run: keep it out of the collector's
    scans, and collect the old generations rarely. Halves ingest p99 under load (full
    collections were pausing the event loop and the writer; BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Worker(Process):
    """One worker process. What crosses to it (pickled by ``spawn``) is the settings; it
    builds its app, uvicorn configuration and :class:`TrackerServer` itself."""

    def __init__(
        self,
        settings: Settings,
        db: str,
        logging_config: uvicorn.Config,
        sockets: list[socket.socket],
    ) -> None:
        self.settings = settings
        self.db = db
        self.parent = os.getpid()  # the main process (it may be gone by the time we start)
        self._tracker: TrackerServer | None = None
        super().__init__(logging_config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._tracker is None:
            self._tracker = TrackerServer(make_config(self.settings), self.db, announce=False)
        return self._tracker

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        server = self.server  # built before the health-check thread asks for it
        watch = threading.Thread(
            target=_stop_when_orphaned, args=(server, self.parent), daemon=True
        )
        watch.start()
        settle_memory()
        super().target(sockets)
        if not server.started:
            sys.exit(STARTUP_FAILURE)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, starting our :class:`Worker`\\ s; tells prometheus_client which
    workers died (their live gauges no longer count)."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], make: Callable[[], Worker]
    ) -> None:
        super().__init__(config, sockets)
        self.make = make
        self.failed = False

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            worker = self.make()
            worker.start()
            self.processes.append(worker)
        for process in self.processes:
            if not process.wait_until_ready(READY_SECONDS, self.should_exit):
                self.failed = True
                self.should_exit.set()
                return
        announce(self.sockets[0], worker.db)

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        process: Process
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            _mark_dead(process.pid)
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"worker [{process.pid}] failed to start: stopping")
                self.failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            say(f"worker {process.pid} died (exit {process.exitcode}): starting another")
            worker = self.make()
            worker.start()
            self.processes[idx] = worker

    def handle_hup(self) -> None:
        logger.info("SIGHUP: restarting workers is not supported; stop and start tracker serve")

    def handle_ttin(self) -> None:
        logger.info("SIGTTIN: the number of workers is server.workers")

    def handle_ttou(self) -> None:
        logger.info("SIGTTOU: the number of workers is server.workers")


def _stop_when_orphaned(server: uvicorn.Server, parent: int) -> None:
    """A worker whose main process is gone (killed with ``kill -9``: it could not stop its
    workers) shuts down gracefully by itself instead of serving on, unsupervised."""
    while not server.should_exit:
        if os.getppid() != parent:
            logger.warning("the main process is gone: stopping")
            server.should_exit = True
            return
        time.sleep(ORPHAN_POLL_SECONDS)


def _mark_dead(pid: int | None) -> None:
    if pid is not None:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_workers(settings: Settings, db: str) -> int:
    """Serve with ``server.workers`` processes until SIGTERM/SIGINT; the exit code."""
    shared = tempfile.mkdtemp(prefix="tracker-metrics-")
    os.environ[MULTIPROC_DIR] = shared  # inherited by the workers, read as they import
    # what the workers' logging is set up from (uvicorn.Config pickles; our app does not)
    logging_config = uvicorn.Config(
        "tracker.http:create_app",
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        access_log=settings.server.access_log,
        workers=settings.server.workers,
    )
    logging_config.configure_logging()
    sock = logging_config.bind_socket()
    try:
        supervisor = Supervisor(
            logging_config,
            [sock],
            lambda: Worker(settings, db, logging_config, [sock]),
        )
        supervisor.run()
    finally:
        sock.close()
        del os.environ[MULTIPROC_DIR]
        shutil.rmtree(shared, ignore_errors=True)
    if supervisor.failed:
        say("the server could not start (see the error above)")
        return EXIT_DATA
    return EXIT_OK
