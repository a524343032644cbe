"""Settings: ``config.toml`` < ``TRACKER_<SECTION>_<KEY>`` environment variables < flags.

Decoded into frozen msgspec Structs that forbid unknown keys, so a typo is an error naming it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tracker.errors import ConfigError
from tracker.guards import LOOPBACK_HOSTS, is_loopback
from tracker.state import OUTCOMES


class Server(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "warning"
    access_log: bool = False
    allowed_hosts: tuple[str, ...] = ()
    forwarded_allow_ips: tuple[str, ...] = ()
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 32_768
    max_connections: int = 1000
    keepalive_seconds: float = 5.0
    workers: int = 1


class Storage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = ""
    path: str = "data/tracker.db"
    synchronous: str = "normal"
    busy_timeout_ms: int = 5000
    read_mmap_mb: int = 2048
    wal_checkpoint_mb: int = 4


class Ingest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    username: str = ""
    password: str = ""
    quarantine_max_bytes: int = 65_536
    max_commit_events: int = 2000
    body_timeout_seconds: float = 30.0


class Query(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str = ""
    max_streams: int = 100


class Forward(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = ""
    timeout_seconds: float = 10.0
    pass_authorization: bool = False
    max_connections: int = 100


class Reconcile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """SPEC §11: stale calls, and asking Bandwidth's call API about them."""

    enabled: bool = False
    interval_seconds: float = 60.0
    stale_after_seconds: float = 14400.0
    v2_api_url: str = "https://voice.bandwidth.com/api/v2"
    v1_api_url: str = "https://api.catapult.inetwork.com/v1"
    account_id: str = ""
    user_id: str = ""
    username: str = ""
    password: str = ""
    max_requests_per_second: float = 5.0

    def __repr__(self) -> str:  # the password is shown nowhere (logs, errors, dumps)
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        if shown["password"]:
            shown["password"] = "***"
        return "Reconcile(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = msgspec.field(default_factory=Server)
    storage: Storage = msgspec.field(default_factory=Storage)
    ingest: Ingest = msgspec.field(default_factory=Ingest)
    query: Query = msgspec.field(default_factory=Query)
    forward: Forward = msgspec.field(default_factory=Forward)
    reconcile: Reconcile = msgspec.field(default_factory=Reconcile)
    outcomes: dict[str, str] = msgspec.field(default_factory=dict)


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "server": Server,
    "storage": Storage,
    "ingest": Ingest,
    "query": Query,
    "forward": Forward,
    "reconcile": Reconcile,
}
NOT_SETTINGS = {"TRACKER_CONFIG"}
LOG_LEVELS = (
    "critical",
    "error",
    "warning",
    "info",
    "debug",
    "trace",
)  # the config file's path, not a key


URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(value: str) -> bool:
    """A database URL (PostgreSQL), not a file path."""
    return value.startswith(URL_SCHEMES)


def _validate(s: Settings) -> Settings:
    if s.storage.synchronous not in ("normal", "full"):
        raise ConfigError(
            f'storage.synchronous must be "normal" or "full", got {s.storage.synchronous!r}'
        )
    for cause, outcome in s.outcomes.items():
        if outcome not in OUTCOMES:
            raise ConfigError(
                f"outcomes.{cause} must be one of {', '.join(OUTCOMES)}, got {outcome!r}"
            )
    positive = {
        "ingest.max_body_bytes": s.ingest.max_body_bytes,
        "ingest.max_batch": s.ingest.max_batch,
        "ingest.max_commit_events": s.ingest.max_commit_events,
        "ingest.quarantine_max_bytes": s.ingest.quarantine_max_bytes,
        "forward.timeout_seconds": s.forward.timeout_seconds,
        "forward.max_connections": s.forward.max_connections,
        "ingest.body_timeout_seconds": s.ingest.body_timeout_seconds,
        "server.header_timeout_seconds": s.server.header_timeout_seconds,
        "server.max_header_bytes": s.server.max_header_bytes,
        "server.max_connections": s.server.max_connections,
        "server.keepalive_seconds": s.server.keepalive_seconds,
        "storage.wal_checkpoint_mb": s.storage.wal_checkpoint_mb,
        "server.workers": s.server.workers,
        "query.max_streams": s.query.max_streams,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if s.storage.url and not is_url(s.storage.url):
        raise ConfigError(
            f"storage.url must start with postgresql:// or postgres://, got {s.storage.url!r}"
        )
    if s.storage.read_mmap_mb < 0:
        raise ConfigError(
            f"storage.read_mmap_mb must be 0 (off) or more, got {s.storage.read_mmap_mb}"
        )
    if s.server.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"server.log_level must be one of {', '.join(LOG_LEVELS)}, got {s.server.log_level!r}"
        )
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"server.port must be 0-65535, got {s.server.port}")
    if s.forward.url:
        parts = urlsplit(s.forward.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"forward.url must be an http:// or https:// URL, got {redact_url(s.forward.url)!r}"
            )
        if parts.fragment or s.forward.url.endswith("#"):
            raise ConfigError(
                "forward.url must not have a #fragment (it is never sent to the application)"
            )
    for item in s.server.forwarded_allow_ips:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(
                    "server.forwarded_allow_ips takes IP addresses, networks (10.0.0.0/8) or "
                    f'"*", got {item!r}'
                ) from None
    if bool(s.ingest.username) != bool(s.ingest.password):
        raise ConfigError("ingest.username and ingest.password must be set together")
    _check_credentials(s)
    _check_reconcile(s.reconcile)
    if s.storage.busy_timeout_ms < 0:
        raise ConfigError(
            f"storage.busy_timeout_ms must be 0 or more, got {s.storage.busy_timeout_ms}"
        )
    return s


#: Keys whose value is a list: in an environment variable, comma-separated.
LIST_KEYS: dict[str, tuple[str, ...]] = {"server": ("allowed_hosts", "forwarded_allow_ips")}


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def serving(settings: Settings) -> Settings:
    """The settings ``tracker serve`` runs with: an unset ``server.allowed_hosts`` becomes the
    loopback names when the server listens on a loopback address, and any host otherwise."""
    server = settings.server
    if server.allowed_hosts:
        return settings
    hosts = LOOPBACK_HOSTS if is_loopback(server.host) else ("*",)
    return msgspec.structs.replace(
        settings, server=msgspec.structs.replace(server, allowed_hosts=hosts)
    )


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _check_credentials(s: Settings) -> None:
    """Credentials that load but could never be presented: every request would get 401."""
    if ":" in s.ingest.username:
        # Basic sends "user:password" and the receiver splits at the first colon
        raise ConfigError(
            f"ingest.username must not contain ':' (HTTP Basic splits user and password at the "
            f"first colon, so no client could send it), got {s.ingest.username!r}"
        )
    token = s.query.token
    if token != token.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
        # a header value cannot carry control characters, and its surrounding spaces are not
        # part of it
        raise ConfigError(
            "query.token must not contain control characters or leading or trailing spaces "
            "(no Authorization header could carry it)"
        )


def _check_reconcile(r: Reconcile) -> None:
    for key in ("interval_seconds", "stale_after_seconds", "max_requests_per_second"):
        value = getattr(r, key)
        if not value > 0:
            raise ConfigError(f"reconcile.{key} must be positive, got {value}")
    for key in ("v2_api_url", "v1_api_url"):
        url = getattr(r, key)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise ConfigError(
                f"reconcile.{key} must be an http:// or https:// URL without credentials"
                f" (they go in reconcile.username and password), got {redact_url(url)!r}"
            )
    if bool(r.username) != bool(r.password):
        raise ConfigError("reconcile.username and reconcile.password must be set together")
    if ":" in r.username:
        raise ConfigError(
            "reconcile.username must not contain ':' (HTTP Basic splits user and password at"
            f" the first colon), got {r.username!r}"
        )
    if r.enabled and not r.username:
        raise ConfigError(
            "reconcile.enabled needs reconcile.username and reconcile.password (a Bandwidth API"
            " user with read access to calls)"
        )


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``TRACKER_<SECTION>_<KEY>`` variables; unknown ones are only a warning."""
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith("TRACKER_") or name in NOT_SETTINGS:
            continue
        rest = name[len("TRACKER_") :]
        if rest.startswith("OUTCOMES_") and len(rest) > len("OUTCOMES_"):
            out.setdefault("outcomes", {})[rest[len("OUTCOMES_") :]] = value
            continue
        for section, struct in SECTIONS.items():
            prefix = section.upper() + "_"
            if rest.startswith(prefix):
                key = rest[len(prefix) :].lower()
                if key in struct.__struct_fields__:
                    out.setdefault(section, {})[key] = (
                        _split(value) if key in LIST_KEYS.get(section, ()) else value
                    )
                    break
        else:
            warnings.warn(f"ignoring unknown environment variable {name}", stacklevel=2)
    return out


def _describe(err: msgspec.ValidationError, origin: str) -> str:
    text = str(err)
    if "unknown field" in text.lower():
        field = text.split("`")[1] if "`" in text else "?"
        where = text.split("at `$.")[-1].rstrip("`") if "at `$." in text else ""
        key = f"{where}.{field}" if where and where != text else field
        return f"unknown configuration key {key!r} in {origin}"
    return f"invalid configuration in {origin}: {text}"


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Built-in defaults < ``config`` file < environment < ``overrides`` (from flags)."""
    env = os.environ if env is None else env
    if config is None:
        config = env.get("TRACKER_CONFIG") or None
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        try:
            msgspec.convert(data, Settings)  # unknown keys, named, before anything is merged
        except msgspec.ValidationError as err:
            raise ConfigError(_describe(err, str(path))) from None
    _merge(data, _from_env(env))
    if overrides:
        _merge(data, overrides)
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError(_describe(err, "the environment or flags")) from None
    return _validate(settings)
