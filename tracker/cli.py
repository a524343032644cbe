"""The ``tracker`` command line: serve, replay, import, export, show and backup.

Every command takes ``--db PATH`` and ``--config PATH``; settings are built-in defaults < config
file < ``TRACKER_<SECTION>_<KEY>`` environment variables < flags. Exit codes: 0 ok; 1 a data
problem (drift, rejected import lines, an unknown call, a database that cannot be read, a backup
that would overwrite a file); 2 a usage or configuration error. Results go to stdout, messages and
progress (on a terminal only) to stderr. The store is opened lazily, per command; ``serve`` leaves
it to the app's lifespan.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from tracker import __version__
from tracker.errors import ConfigError, TrackerError

if TYPE_CHECKING:
    import socket

    import uvicorn

    from tracker.config import Settings
    from tracker.store import Store

EXIT_OK: Final = 0
EXIT_DATA: Final = 1
EXIT_USAGE: Final = 2

IMPORT_CHUNK: Final = 1000  # events (and rejects) per import transaction
MAX_REJECTS_SHOWN: Final = 20  # rejected import lines listed on stderr; the quarantine has all
GC_THRESHOLDS: Final = (20_000, 20, 1_000)  # gc.set_threshold for `tracker serve`
GRACEFUL_SHUTDOWN_SECONDS: Final = 5  # then open connections (SSE streams) are cancelled
BACKUP_PAGES: Final = 1024  # pages per backup step
BACKUP_PAUSE: Final = 0.001  # seconds between steps, so a live server gets the file in between
BACKUP_MAX_RESTARTS: Final = 3  # a busy server restarts a stepped copy; then copy in one step
JSON_WS: Final = b" \t\r\n"
UTF8_BOM: Final = b"\xef\xbb\xbf"


class CliError(Exception):
    """A problem to report in one line on stderr (no traceback), with an exit code."""

    def __init__(self, message: str, code: int = EXIT_DATA) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _err(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"tracker: {message}", file=sys.stderr, flush=True)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# --------------------------------------------------------------------------------------------
# Settings and storage


def _settings(args: argparse.Namespace, **server: Any) -> Settings:
    """Load settings; ``--db`` and the given server flags (when set) beat everything else."""
    from tracker.config import load_settings

    overrides: dict[str, dict[str, Any]] = {}
    if args.db is not None:
        overrides["storage"] = {"path": args.db}
    flags = {k: v for k, v in server.items() if v is not None}
    if flags:
        overrides["server"] = flags
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            settings = load_settings(args.config, overrides=overrides)
        except OSError as err:  # a directory, no permission: the config file cannot be read
            name = err.filename if err.filename is not None else args.config
            raise ConfigError(f"cannot read config file {name}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {args.config} is not valid UTF-8") from None
    for w in caught:
        _err(f"warning: {w.message}")
    return settings


def _db_path(settings: Settings) -> Path:
    """The database file, which must already exist (only ``import`` and ``serve`` create it)."""
    path = settings.storage.path
    if path == ":memory:" or not Path(path).is_file():
        raise CliError(
            f"no database at {path} (give --db PATH, TRACKER_STORAGE_PATH or storage.path)",
            EXIT_USAGE,
        )
    return Path(path)


def _open_store(settings: Settings) -> Store:
    """The store (created if missing), refusing to add our schema to another program's file."""
    from tracker.store import Store

    s = settings.storage
    path = Path(s.path)
    if s.path != ":memory:" and path.is_file() and path.stat().st_size > 0:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
        if version == 0 and tables:
            raise CliError(f"{path} is not a tracker database (it holds other tables)")
    try:
        return Store(
            s.path,
            synchronous=s.synchronous,
            outcomes=settings.outcomes,
            busy_ms=s.busy_timeout_ms,
            quarantine_max_bytes=settings.ingest.quarantine_max_bytes,
        )
    except (sqlite3.Error, OSError) as err:
        raise CliError(f"cannot open the database {s.path}: {err}") from None


@contextlib.contextmanager
def _snapshot(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A read-only connection of its own inside one read transaction: a consistent view that
    never blocks a server writing the same file (WAL)."""
    from tracker.store import SCHEMA_VERSION, connect

    path = _db_path(settings)
    conn = connect(path, busy_ms=settings.storage.busy_timeout_ms)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise CliError(f"{path} is not a tracker database (it has no schema)")
        if version > SCHEMA_VERSION:
            raise CliError(
                f"{path} has schema version {version}, newer than this release's "
                f"{SCHEMA_VERSION}: upgrade tracker"
            )
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


class _Progress:
    """A ``\\r`` counter on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = _isatty(sys.stderr)
        self.shown = False
        self.last = 0.0

    def __call__(self, n: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        of = f" / {total:,}" if total else ""
        sys.stderr.write(f"\r{self.label}: {n:,}{of}\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _isatty(stream: IO[Any] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or a file written beside ``path`` and renamed over it only when complete."""
    if path is None or path == "-":
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fh = tmp.open("wb")
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror}", EXIT_USAGE) from None
    try:
        with fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# serve


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
                _err(f"listening on {url} (db: {os.path.abspath(db)})")

    return Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port)
    import uvicorn
    from uvicorn.config import LOG_LEVELS, STARTUP_FAILURE

    if settings.server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"server.log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"got {settings.server.log_level!r}"
        )
    if Path(settings.storage.path).is_dir():
        raise CliError(f"storage.path {settings.storage.path} is a directory", EXIT_USAGE)
    from tracker.app import create_app

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


# --------------------------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _db_path(settings)
    store = _open_store(settings)
    progress = _Progress("replay: calls")
    try:
        start = time.monotonic()
        drift = store.replay(check=args.check, progress=progress)
        progress.done()
        elapsed = time.monotonic() - start
        calls = store.conn.execute("SELECT count(*) FROM calls").fetchone()[0]
        events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        progress.done()
        store.close()
    if not args.check:
        print(f"replay: rebuilt {calls} calls from {events} events in {elapsed:.2f}s")
        return EXIT_OK
    for call_id, fields in drift:
        print(f"drift: call {_json(call_id)}")
        for name, (have, want) in fields.items():
            print(f"  {name}: {_json(have)} -> {_json(want)}")
    summary = f"replay --check: {calls} calls, {events} events, {elapsed:.2f}s"
    if drift:
        print(f"{summary}: {len(drift)} calls differ from the log")
        return EXIT_DATA
    print(f"{summary}: no drift")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# import


def _read_bodies(fh: IO[bytes]) -> Iterator[tuple[str, bytes, str | None]]:
    """``(where, body, error)`` per event: NDJSON lines (``where`` = line number) or the
    elements of one JSON array (``where`` = ``[index]``), detected by the first non-space byte.
    ``body`` is the exact bytes of the line or element; blank lines are skipped."""
    lineno = 0
    for line in fh:
        lineno += 1
        if lineno == 1 and line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM) :]
        body = line.strip(JSON_WS)
        if not body:
            continue
        if body.startswith(b"["):
            data = line + fh.read()
            try:
                elements = msgspec.json.decode(data, type=list[msgspec.Raw])
            except RecursionError:
                yield "", data, "the file is not a valid JSON array: it is nested too deeply"
                return
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
                yield "", data, f"the file is not a valid JSON array: {err}"
                return
            for i, raw in enumerate(elements):
                yield f"[{i}]", bytes(raw), None
            return
        yield str(lineno), body, None
        break
    for line in fh:
        lineno += 1
        body = line.strip(JSON_WS)
        if body:
            yield str(lineno), body, None


class _Importer:
    """Validates like HTTP ingest, appends ``IMPORT_CHUNK`` events per transaction, counts."""

    def __init__(self, store: Store, source: str, max_body_bytes: int) -> None:
        self.store = store
        self.source = source
        self.max_body_bytes = max_body_bytes
        self.entries: list[Any] = []
        self.rejects: list[Any] = []
        self.new = self.duplicate = self.rejected = 0

    def add(self, where: str, body: bytes, error: str | None = None) -> None:
        from tracker.events import InvalidEvent, decode_object, parse_json
        from tracker.store import make_entry

        if error is not None:
            self.reject(where, body, 400, "invalid_json", error)
        elif len(body) > self.max_body_bytes:
            detail = (
                f"the event is {len(body)} bytes, more than ingest.max_body_bytes "
                f"({self.max_body_bytes})"
            )
            self.reject(where, body, 413, "too_large", detail)
        else:
            try:
                decoded = decode_object(parse_json(body), raw=body)
            except (msgspec.DecodeError, UnicodeDecodeError) as err:
                self.reject(where, body, 400, "invalid_json", f"the event is not valid JSON: {err}")
            except RecursionError:
                detail = "the event is not valid JSON: it is nested too deeply"
                self.reject(where, body, 400, "invalid_json", detail)
            except InvalidEvent as err:
                self.reject(where, body, 422, "invalid_event", str(err))
            else:
                self.entries.append(make_entry(decoded, body, "json"))
        if len(self.entries) + len(self.rejects) >= IMPORT_CHUNK:
            self.flush()

    def reject(self, where: str, body: bytes, status: int, error: str, detail: str) -> None:
        from tracker.store import Reject, now_ms

        location = f"{self.source}:{where}" if where else self.source
        self.rejected += 1
        if self.rejected <= MAX_REJECTS_SHOWN:
            _err(f"rejected {location}: {error}: {detail}")
        self.rejects.append(
            Reject(
                received_at=now_ms(),
                status=status,
                error=error,
                detail=detail,
                body=body,
                content_type="application/x-ndjson",
                path=f"import:{location}",
            )
        )

    def flush(self) -> None:
        if not self.entries and not self.rejects:
            return
        results = self.store.write_batch([self.entries], self.rejects)
        for appended in results[0]:
            if appended.duplicate:
                self.duplicate += 1
            else:
                self.new += 1
        self.entries, self.rejects = [], []


def cmd_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.file == "-":
        fh: IO[bytes] = sys.stdin.buffer
        source = "stdin"
    else:
        try:
            fh = Path(args.file).open("rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise CliError(f"cannot read {args.file}: {err.strerror}", EXIT_USAGE) from None
        source = args.file
    progress = _Progress("import: events")
    try:
        store = _open_store(settings)
        try:
            importer = _Importer(store, source, settings.ingest.max_body_bytes)
            for n, (where, body, error) in enumerate(_read_bodies(fh), 1):
                importer.add(where, body, error)
                if n % IMPORT_CHUNK == 0:
                    progress(n)
            importer.flush()
        finally:
            progress.done()
            store.close()
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    if importer.rejected > MAX_REJECTS_SHOWN:
        _err(f"... and {importer.rejected - MAX_REJECTS_SHOWN} more rejected (see GET /rejects)")
    print(
        f"imported {importer.new} new, {importer.duplicate} duplicate, {importer.rejected} rejected"
    )
    return EXIT_DATA if importer.rejected else EXIT_OK


# --------------------------------------------------------------------------------------------
# export


def _cell(value: Any) -> str:
    """A CSV cell: null is empty, lists are ``;``-joined, anything else its JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value)
    return _json(value)


# OWASP's CSV injection advice: a cell a spreadsheet would read as a formula gets a leading "'".
# A "+" or "-" that only signs a number is left alone, as Oracle APEX does, so E.164 numbers such
# as +13233326955 and negative amounts stay as they are.
_FORMULA_STARTS = ("=", "@", "+", "-", "\t", "\r")
_SIGNED_NUMBER = re.compile(r"[+-](?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def defuse_formula(cell: str) -> str:
    """``cell`` with a leading ``'`` when a spreadsheet would run it as a formula."""
    if cell.startswith(_FORMULA_STARTS) and not _SIGNED_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _export_calls(
    conn: sqlite3.Connection, out: IO[bytes], fmt: str, progress: _Progress, raw: bool
) -> int:
    from tracker.state import CallView
    from tracker.store import iter_views

    n = 0
    if fmt == "ndjson":
        for n, v in enumerate(iter_views(conn), 1):
            out.write(v + b"\n")
            if n % 10_000 == 0:
                progress(n)
        return n
    columns = [f.encode_name for f in msgspec.structs.fields(CallView)]
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    with _csv_writer(out, raw) as writer:
        writer.writerow(columns)
        for n, v in enumerate(iter_views(conn), 1):
            view = decode(v)
            writer.writerow([_cell(view.get(c)) for c in columns])
            if n % 10_000 == 0:
                progress(n)
    return n


def _export_events(
    conn: sqlite3.Connection, out: IO[bytes], fmt: str, progress: _Progress, raw: bool
) -> int:
    from tracker.store import EventRow, iter_events, one_line

    n = 0
    encode = msgspec.json.Encoder().encode
    if fmt == "ndjson":
        for n, row in enumerate(iter_events(conn), 1):
            out.write(encode(one_line(row)) + b"\n")
            if n % 10_000 == 0:
                progress(n)
        return n
    columns = [f.encode_name for f in msgspec.structs.fields(EventRow)]
    with _csv_writer(out, raw) as writer:
        writer.writerow(columns)
        for n, r in enumerate(map(one_line, iter_events(conn)), 1):
            writer.writerow(
                [
                    str(r.seq),
                    _cell(r.receivedAt),
                    r.eventType,
                    _cell(r.callId),
                    _cell(r.time),
                    encode(r.payload).decode("utf-8", "replace"),
                ]
            )
            if n % 10_000 == 0:
                progress(n)
    return n


class _DefusedWriter:
    """A csv writer whose cells go through :func:`defuse_formula` first."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: list[str]) -> None:
        self._writer.writerow([defuse_formula(cell) for cell in row])


@contextlib.contextmanager
def _csv_writer(out: IO[bytes], raw: bool) -> Iterator[Any]:
    text = io.TextIOWrapper(out, encoding="utf-8", errors="replace", newline="")
    try:
        writer = csv.writer(text, quoting=csv.QUOTE_MINIMAL)
        yield writer if raw else _DefusedWriter(writer)
        text.flush()
    finally:
        text.detach()  # leave ``out`` open: it is stdout, or the caller closes it


def cmd_export(args: argparse.Namespace) -> int:
    settings = _settings(args)
    progress = _Progress(f"export: {args.what}")
    run = _export_calls if args.what == "calls" else _export_events
    try:
        with _snapshot(settings) as conn, _output(args.output) as out:
            n = run(conn, out, args.format, progress, args.raw)
    finally:
        progress.done()
    if args.output not in (None, "-"):
        _err(f"exported {n} {args.what} to {args.output}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# show


def _indented(doc: bytes, by: bytes) -> bytes:
    """``doc`` as indented JSON, every line after the first shifted right by ``by``."""
    return msgspec.json.format(doc, indent=2).replace(b"\n", b"\n" + by)


def cmd_show(args: argparse.Namespace) -> int:
    from tracker.store import get_view, iter_call_events

    settings = _settings(args)
    out = sys.stdout.buffer
    with _snapshot(settings) as conn:
        view = get_view(conn, args.call_id)
        if view is None:
            raise CliError(f"no call {_json(args.call_id)} in {settings.storage.path}")
        if not args.events:
            out.write(msgspec.json.format(view, indent=2) + b"\n")
        else:
            # {"call": STATE, "events": [...]}, the timeline written an event at a time from
            # pages of it: a call with many large events is never held whole
            encode = msgspec.json.Encoder().encode
            out.write(b'{\n  "call": ' + _indented(view, b"  ") + b',\n  "events": [')
            sep = b"\n    "
            for row in iter_call_events(conn, args.call_id):
                out.write(sep + _indented(encode(row), b"    "))
                sep = b",\n    "
            out.write(b"\n  ]\n}\n" if sep != b"\n    " else b"]\n}\n")
    out.flush()
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# backup


class _Restarted(Exception):
    pass


def _copy_database(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """Online copy in steps with pauses between them. Each write by another connection restarts
    a stepped copy, so under steady writes it finishes in one step instead: in WAL mode that is
    one read transaction, which does not block the writer either."""
    last: list[int] = []

    def step(status: int, remaining: int, total: int) -> None:
        if last and remaining > last[-1]:
            last.append(-1)  # a restart; -1 entries count them
            if last.count(-1) > BACKUP_MAX_RESTARTS:
                raise _Restarted
        last.append(remaining)
        time.sleep(BACKUP_PAUSE)

    try:
        src.backup(dst, pages=BACKUP_PAGES, progress=step)
    except _Restarted:
        src.backup(dst, pages=-1)


def cmd_backup(args: argparse.Namespace) -> int:
    from tracker.store import connect

    settings = _settings(args)
    source = _db_path(settings)
    dest = Path(args.dest)
    if dest.is_dir():
        raise CliError(f"{dest} is a directory: give the backup's file name", EXIT_USAGE)
    if dest.exists() and dest.resolve() == source.resolve():
        raise CliError(f"{dest} is the database itself", EXIT_USAGE)
    if dest.exists() and not args.force:
        raise CliError(f"{dest} already exists (pass --force to overwrite it)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create {dest.parent}: {err.strerror}", EXIT_USAGE) from None
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    start = time.monotonic()
    try:
        src = connect(source, busy_ms=settings.storage.busy_timeout_ms)
        try:
            dst = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                _copy_database(src, dst)
            finally:
                dst.close()
        finally:
            src.close()
        check = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            problems = [r[0] for r in check.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise CliError(f"the copy failed its integrity check: {'; '.join(problems[:5])}")
            events = check.execute("SELECT count(*) FROM events").fetchone()[0]
            check.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            check.close()
        for stale in (Path(f"{dest}-wal"), Path(f"{dest}-shm"), Path(f"{dest}-journal")):
            stale.unlink(missing_ok=True)  # an old WAL would be replayed into the new file
        os.replace(tmp, dest)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    size = dest.stat().st_size
    elapsed = time.monotonic() - start
    print(f"backup: {dest} ({size} bytes, {events} events, integrity ok) in {elapsed:.2f}s")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The parser


CSV_NOTE = (
    "CSV columns are the JSON field names, in order. null is an empty cell; a call's anomalies "
    "are joined with ';'; an event's payload is its JSON text; quotes, commas and newlines are "
    "quoted as RFC 4180 says. A cell starting with =, @, +, -, tab or CR gets a leading ' so "
    "that a spreadsheet does not run it as a formula (OWASP), except a signed number such as "
    "+13233326955 or -3.5; --raw writes every value exactly."
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("storage and configuration")
    group.add_argument(
        "--db",
        metavar="PATH",
        help="the SQLite file (beats TRACKER_STORAGE_PATH and storage.path)",
    )
    group.add_argument(
        "--config",
        metavar="PATH",
        help="a config.toml (default: $TRACKER_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="tracker",
        description="Event-sourced call-state tracker for Bandwidth voice callbacks.",
        epilog="Exit codes: 0 ok, 1 drift or a data problem, 2 a usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=summary, description=description)
        p.set_defaults(func=func)
        return p

    p = command(
        "serve",
        cmd_serve,
        "run the HTTP service",
        "Run the HTTP service until SIGTERM or SIGINT, then shut down gracefully and exit 0. "
        "Prints 'tracker: listening on URL (db: PATH)' on stderr once it accepts connections.",
    )
    p.add_argument("--host", help="address to listen on (server.host)")
    p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one (server.port)")

    p = command(
        "replay",
        cmd_replay,
        "rebuild the call projection from the log",
        "Rebuild every call's state from the event log into a new table and swap it in "
        "atomically (safe while the server runs). With --check, compare instead: print each "
        "call whose stored state differs (field: have -> want) and exit 1 if any does.",
    )
    p.add_argument("--check", action="store_true", help="report drift, change nothing")

    p = command(
        "import",
        cmd_import,
        "import events from NDJSON or a JSON array",
        "Import events with the same validation and dedupe as HTTP ingest. The input is NDJSON "
        "(one event per line; blank lines skipped) or one JSON array (when its first non-space "
        "character is '['). Invalid events are quarantined (GET /rejects, path "
        "'import:FILE:LINE' or 'import:FILE:[INDEX]') and the rest imported. Prints 'imported "
        "N new, M duplicate, K rejected'; exits 1 when K > 0.",
    )
    p.add_argument("file", metavar="FILE|-", help="the file to read, or - for stdin")

    p = command(
        "export",
        cmd_export,
        "export calls or events as NDJSON or CSV",
        "Write every call (by lastSeq) or every event (by seq) from one consistent snapshot, "
        "streaming; safe while the server runs. " + CSV_NOTE,
    )
    p.add_argument("what", choices=["calls", "events"], help="what to export")
    p.add_argument("--format", choices=["ndjson", "csv"], default="ndjson", help="default ndjson")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default stdout)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="CSV: write every value exactly, without the leading ' on formula-like cells",
    )

    p = command(
        "show",
        cmd_show,
        "print one call's state",
        "Print a call's state as JSON (as GET /calls/{callId}); with --events print "
        '{"call": STATE, "events": TIMELINE}. Exits 1 for an unknown call.',
    )
    p.add_argument("call_id", metavar="CALL_ID", help="the callId")
    p.add_argument("--events", action="store_true", help="include the call's timeline")

    p = command(
        "backup",
        cmd_backup,
        "copy the database online",
        "Copy the database consistently while it is in use (SQLite online backup), verify the "
        "copy with PRAGMA integrity_check, and print its size and event count. The copy is a "
        "single self-contained file, renamed into place only when verified.",
    )
    p.add_argument("dest", metavar="DEST", help="the backup file to create")
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    return parser


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()
        return code
    except ConfigError as err:
        _err(f"configuration error: {err}")
        return EXIT_USAGE
    except CliError as err:
        _err(err.message)
        return err.code
    except BrokenPipeError:  # `tracker export ... | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except TrackerError as err:
        _err(err.detail)
        return EXIT_DATA
    except sqlite3.Error as err:
        _err(f"database error: {err}")
        return EXIT_DATA
    except (msgspec.DecodeError, msgspec.ValidationError) as err:  # stored data we cannot read
        _err(f"cannot read the stored data: {err}")
        return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
