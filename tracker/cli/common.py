"""What the commands share: settings from flags, errors and exit codes, progress, output."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from tracker.errors import ConfigError

if TYPE_CHECKING:
    from tracker.config import Settings
    from tracker.storage import Storage

EXIT_OK: Final = 0
EXIT_DATA: Final = 1
EXIT_USAGE: Final = 2


class CliError(Exception):
    """A problem to report in one line on stderr (no traceback), with an exit code."""

    def __init__(self, message: str, code: int = EXIT_DATA) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"tracker: {message}", file=sys.stderr, flush=True)


def to_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# --------------------------------------------------------------------------------------------
# Settings and storage


def settings_of(args: argparse.Namespace, **server: Any) -> Settings:
    """Load settings; ``--db`` and the given server flags (when set) beat everything else."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.db is not None:
        overrides["storage"] = {"path": args.db}
    flags = {k: v for k, v in server.items() if v is not None}
    if flags:
        overrides["server"] = flags
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            from tracker.config import load_settings

            settings = load_settings(args.config, overrides=overrides)
        except OSError as err:  # a directory, no permission: the config file cannot be read
            name = err.filename if err.filename is not None else args.config
            raise ConfigError(f"cannot read config file {name}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {args.config} is not valid UTF-8") from None
    for w in caught:
        say(f"warning: {w.message}")
    return settings


def storage_of(settings: Settings, *, must_exist: bool = False, read_only: bool = False) -> Storage:
    """The storage of the command (created if missing, unless ``must_exist``/``read_only``)."""
    from tracker.storage import StorageError, open_storage
    from tracker.storage.errors import NoDatabase

    try:
        return open_storage(settings, must_exist=must_exist, read_only=read_only)
    except NoDatabase as error:
        raise CliError(error.detail, EXIT_USAGE) from None
    except StorageError as error:
        raise CliError(error.detail) from None


class Progress:
    """A ``\\r`` counter on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = isatty(sys.stderr)
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


def isatty(stream: IO[Any] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


@contextlib.contextmanager
def output(path: str | None) -> Iterator[IO[bytes]]:
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
