"""The data commands: replay, import, export, show and backup (each opens the storage it needs:
``import`` creates it, the others need an existing one; ``export``, ``show`` and ``backup`` only
read)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from tracker.cli.common import (
    EXIT_DATA,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Progress,
    output,
    say,
    settings_of,
    storage_of,
    to_json,
)
from tracker.errors import InvalidJson, TrackerError
from tracker.ingest import parse_event, quarantine

if TYPE_CHECKING:
    from tracker.records import Entry, Reject
    from tracker.storage import Snapshot, Storage

IMPORT_CHUNK: Final = 1000  # events (and rejects) per import transaction
MAX_REJECTS_SHOWN: Final = 20  # rejected import lines listed on stderr; the quarantine has all
JSON_WS: Final = b" \t\r\n"
UTF8_BOM: Final = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    store = storage_of(settings, must_exist=True)
    progress = Progress("replay: calls")
    try:
        start = time.monotonic()
        drift = store.replay(
            check=args.check, progress=progress, rebuild=args.rebuild, jobs=args.jobs
        )
        progress.done()
        elapsed = time.monotonic() - start
        calls, events = store.counts()
    finally:
        progress.done()
        store.close()
    if not args.check:
        print(f"replay: rebuilt {calls} calls from {events} events in {elapsed:.2f}s")
        return EXIT_OK
    for call_id, fields in drift:
        print(f"drift: call {to_json(call_id)}")
        for name, (have, want) in fields.items():
            print(f"  {name}: {to_json(have)} -> {to_json(want)}")
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

    def __init__(self, store: Storage, source: str, max_body_bytes: int) -> None:
        self.store = store
        self.source = source
        self.max_body_bytes = max_body_bytes
        self.entries: list[Entry] = []
        self.rejects: list[Reject] = []
        self.new = self.duplicate = self.rejected = 0

    def add(self, where: str, body: bytes, error: str | None = None) -> None:
        try:
            if error is not None:
                raise InvalidJson(error)
            self.entries.append(parse_event(body, self.max_body_bytes))
        except TrackerError as refused:
            self.reject(where, body, refused)
        if len(self.entries) + len(self.rejects) >= IMPORT_CHUNK:
            self.flush()

    def reject(self, where: str, body: bytes, refused: TrackerError) -> None:
        location = f"{self.source}:{where}" if where else self.source
        self.rejected += 1
        if self.rejected <= MAX_REJECTS_SHOWN:
            say(f"rejected {location}: {refused.code}: {refused.detail}")
        self.rejects.append(quarantine(refused, body, "application/x-ndjson", f"import:{location}"))

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
    settings = settings_of(args)
    if args.file == "-":
        fh: IO[bytes] = sys.stdin.buffer
        source = "stdin"
    else:
        try:
            fh = Path(args.file).open("rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise CliError(f"cannot read {args.file}: {err.strerror}", EXIT_USAGE) from None
        source = args.file
    progress = Progress("import: events")
    try:
        store = storage_of(settings)
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
        say(f"... and {importer.rejected - MAX_REJECTS_SHOWN} more rejected (see GET /rejects)")
    print(
        f"imported {importer.new} new, {importer.duplicate} duplicate, {importer.rejected} rejected"
    )
    return EXIT_DATA if importer.rejected else EXIT_OK


# --------------------------------------------------------------------------------------------
# export and show


def _cell(value: Any) -> str:
    """A CSV cell: null is empty, lists are ``;``-joined, anything else its JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value)
    return to_json(value)


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


def _export_calls(snap: Snapshot, out: IO[bytes], fmt: str, progress: Progress, raw: bool) -> int:
    from tracker.render import CallView, call_json

    n = 0
    if fmt == "ndjson":
        for n, v in enumerate(map(call_json, snap.calls()), 1):
            out.write(v + b"\n")
            if n % 10_000 == 0:
                progress(n)
        return n
    columns = [f.encode_name for f in msgspec.structs.fields(CallView)]
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    with _csv_writer(out, raw) as writer:
        writer.writerow(columns)
        for n, v in enumerate(map(call_json, snap.calls()), 1):
            view = decode(v)
            writer.writerow([_cell(view.get(c)) for c in columns])
            if n % 10_000 == 0:
                progress(n)
    return n


def _export_events(snap: Snapshot, out: IO[bytes], fmt: str, progress: Progress, raw: bool) -> int:
    from tracker.render import ExportedEvent, exported_event, one_line

    n = 0
    encode = msgspec.json.Encoder().encode
    if fmt == "ndjson":
        for n, e in enumerate(snap.events(), 1):
            out.write(encode(one_line(exported_event(e))) + b"\n")
            if n % 10_000 == 0:
                progress(n)
        return n
    columns = [f.encode_name for f in msgspec.structs.fields(ExportedEvent)]
    with _csv_writer(out, raw) as writer:
        writer.writerow(columns)
        for n, e in enumerate(snap.events(), 1):
            r = one_line(exported_event(e))
            writer.writerow(
                [
                    str(r.seq),
                    _cell(r.receivedAt),
                    r.eventType,
                    _cell(r.callId),
                    _cell(r.time),
                    encode(r.payload).decode("utf-8", "replace"),
                    _cell(r.origin),
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
    settings = settings_of(args)
    progress = Progress(f"export: {args.what}")
    run = _export_calls if args.what == "calls" else _export_events
    store = storage_of(settings, read_only=True)
    try:
        with store.snapshot() as snap, output(args.output) as out:
            n = run(snap, out, args.format, progress, args.raw)
    finally:
        progress.done()
        store.close()
    if args.output not in (None, "-"):
        say(f"exported {n} {args.what} to {args.output}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# show


def _indented(doc: bytes, by: bytes) -> bytes:
    """``doc`` as indented JSON, every line after the first shifted right by ``by``."""
    return msgspec.json.format(doc, indent=2).replace(b"\n", b"\n" + by)


def cmd_show(args: argparse.Namespace) -> int:
    from tracker.records import iter_timeline
    from tracker.render import call_json, event_row
    from tracker.storage import describe

    settings = settings_of(args)
    out = sys.stdout.buffer
    store = storage_of(settings, read_only=True)
    try:
        with store.snapshot() as snap:
            found = snap.call(args.call_id)
            if found is None:
                raise CliError(f"no call {to_json(args.call_id)} in {describe(settings)}")
            view = call_json(found)
            if not args.events:
                out.write(msgspec.json.format(view, indent=2) + b"\n")
            else:
                # {"call": STATE, "events": [...]}, the timeline written an event at a time from
                # pages of it: a call with many large events is never held whole
                encode = msgspec.json.Encoder().encode
                out.write(b'{\n  "call": ' + _indented(view, b"  ") + b',\n  "events": [')
                sep = b"\n    "
                pages = iter_timeline(
                    lambda after: snap.timeline(args.call_id, after=after, limit=1000)
                )
                for e in pages:
                    out.write(sep + _indented(encode(event_row(e)), b"    "))
                    sep = b",\n    "
                out.write(b"\n  ]\n}\n" if sep != b"\n    " else b"]\n}\n")
    finally:
        store.close()
    out.flush()
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# backup


def cmd_backup(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    store = storage_of(settings, read_only=True)
    try:
        source = Path(settings.storage.path)
        dest = Path(args.dest)
        if dest.is_dir():
            raise CliError(f"{dest} is a directory: give the backup's file name", EXIT_USAGE)
        if dest.exists() and dest.resolve() == source.resolve():
            raise CliError(f"{dest} is the database itself", EXIT_USAGE)
        if dest.exists() and not args.force:
            raise CliError(f"{dest} already exists (pass --force to overwrite it)")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CliError(f"cannot create {dest.parent}: {error.strerror}", EXIT_USAGE) from None
        start = time.monotonic()
        events = store.backup(str(dest))
    finally:
        store.close()
    size = dest.stat().st_size
    elapsed = time.monotonic() - start
    print(f"backup: {dest} ({size} bytes, {events} events, integrity ok) in {elapsed:.2f}s")
    return EXIT_OK
