"""The ``tracker`` command line: serve, replay, import, export, show, backup, reconcile and copy.

Every command takes ``--db PATH`` and ``--config PATH``; settings are built-in defaults < config
file < ``TRACKER_<SECTION>_<KEY>`` environment variables < flags. Exit codes: 0 ok; 1 a data
problem (drift, rejected import lines, an unknown call, a database that cannot be read, a backup
that would overwrite a file); 2 a usage or configuration error. Results go to stdout, messages and
progress (on a terminal only) to stderr. Storage is opened lazily, per command; ``serve`` leaves
it to the app's lifespan.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

import msgspec

from tracker import __version__
from tracker.cli.commands import cmd_backup, cmd_export, cmd_import, cmd_replay, cmd_show
from tracker.cli.common import EXIT_DATA, EXIT_OK, EXIT_USAGE, CliError, say
from tracker.cli.copy import cmd_copy
from tracker.cli.serve import cmd_serve
from tracker.errors import ConfigError, TrackerError

__all__ = ["build_parser", "main"]


CSV_NOTE = (
    "CSV columns are the JSON field names, in order. null is an empty cell; a call's anomalies "
    "are joined with ';'; an event's payload is its JSON text; quotes, commas and newlines are "
    "quoted as RFC 4180 says. A cell starting with =, @, +, -, tab or CR gets a leading ' so "
    "that a spreadsheet does not run it as a formula (OWASP), except a signed number such as "
    "+13233326955 or -3.5; --raw writes every value exactly."
)


def cmd_reconcile(args: argparse.Namespace) -> int:
    """``tracker reconcile``, imported when run: its HTTP client (httpx) is a quarter of the other
    commands' start-up (``tracker replay`` of a large log included, BENCHMARKS.md)."""
    from tracker.cli.reconcile import cmd_reconcile as run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("storage and configuration")
    group.add_argument(
        "--db",
        metavar="PATH|URL",
        help="the SQLite file, or a postgresql:// URL (beats TRACKER_STORAGE_PATH/_URL and "
        "storage.path/url)",
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
    p.add_argument("--workers", type=int, help="worker processes serving the port (server.workers)")

    p = command(
        "replay",
        cmd_replay,
        "rebuild the call projection from the log",
        "Rebuild every call's state from the event log and make the projection match it "
        "atomically (safe while the server runs): the calls that differ are rewritten in one "
        "transaction, or, when more than 1,000 and a tenth of them do (or with --rebuild), "
        "every call is folded into a new table that is swapped in. With --check, compare "
        "instead: print each call whose stored state differs (field: have -> want) and exit 1 "
        "if any does.",
    )
    p.add_argument("--check", action="store_true", help="report drift, change nothing")
    p.add_argument(
        "--rebuild", action="store_true", help="always fold into a new table and swap it in"
    )
    p.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=min(2, len(os.sched_getaffinity(0))),  # the CPUs this process may use
        metavar="N",
        help="processes comparing a large SQLite log (1 or 2; default: 2 where this process "
        "may use 2 or more CPUs)",
    )

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
        "streaming; safe while the server runs. An event is its GET /events row followed by "
        "origin: null for a received event, reconcile for the tracker's own reconciled event. "
        + CSV_NOTE,
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

    p = command(
        "reconcile",
        cmd_reconcile,
        "ask Bandwidth's call API about the stale calls, once",
        "One reconciliation pass (as a server with [reconcile] enabled makes every interval): "
        "ask the API about each stale call (not ended, nothing received for "
        "reconcile.stale_after_seconds) and record a 'reconciled' event for each one it says is "
        "over. Prints per call the URL asked, the answer, and what was recorded.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="ask, print, and record nothing (claim nothing)"
    )

    p = command(
        "copy",
        cmd_copy,
        "copy the log into another database (SQLite <-> PostgreSQL)",
        "Copy the log of --db (every event with its seq, receivedAt and exact body, and the "
        "quarantine) into DEST, a SQLite file or a postgresql:// URL, which must be empty "
        "(exit 1 otherwise, nothing written), building DEST's projection as it goes. "
        "Afterwards `export calls` and `export events` give the same output on both.",
    )
    p.add_argument("dest", metavar="DEST", help="an empty SQLite file (or none yet) or a URL")
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
    except ConfigError as error:
        say(f"configuration error: {error}")
        return EXIT_USAGE
    except CliError as error:
        say(error.message)
        return error.code
    except BrokenPipeError:  # `tracker export ... | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except TrackerError as error:
        say(error.detail)
        return EXIT_DATA
    except (msgspec.DecodeError, msgspec.ValidationError) as error:  # stored data we cannot read
        say(f"cannot read the stored data: {error}")
        return EXIT_DATA
