"""A real ``tracker serve`` process on a free loopback port, for tests that are about HTTP; and
the ``tracker`` command run as its own process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A config.toml with the given sections (values as TOML literals via repr of str/int/bool)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lit = "true" if value else "false"
            elif isinstance(value, str):
                lit = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                lit = repr(value)
            lines.append(f"{key} = {lit}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tracker(
    *args: str, timeout: float = 60, text: bool = True
) -> subprocess.CompletedProcess[Any]:
    """``python -m tracker ARGS`` in a process of its own, without any ``TRACKER_*`` variable
    of ours; returns the ``CompletedProcess`` (output as text, or bytes with ``text=False``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        capture_output=True,
        text=text,
        timeout=timeout,
        env=env,
        check=False,
    )


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, db: Any, output: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.db = db
        self.output = output  # every line the server wrote (stdout and stderr), as it arrives

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10.0), **kw)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no cleanup, no checkpoint
        self.proc.wait(10)


def start_server(
    db: Path | str,
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    preexec: Any = None,
    timeout: float = 20.0,
) -> Server:
    """Start ``python -m tracker serve --port 0`` and wait until it is listening and ready."""
    cmd = [sys.executable, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--db", str(db)]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += args or []
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        preexec_fn=preexec,
    )
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = LISTENING.search(line)
        if m:
            url = m.group(1)
            _drain(proc, seen)
            with httpx.Client(base_url=url, timeout=5.0) as c:
                while time.monotonic() < deadline:
                    try:
                        if c.get("/healthz").status_code == 200:
                            return Server(proc, url, db, seen)
                    except httpx.TransportError:
                        pass
                    time.sleep(0.05)
            break
    proc.kill()
    raise RuntimeError("tracker serve did not start:\n" + "".join(seen))


def _drain(proc: subprocess.Popen[str], into: list[str]) -> None:
    """Keep reading the server's output so a full pipe never blocks it; keep it in ``into``."""
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at EOF (the process ended): no unclosed-file warning later
            for line in proc.stdout:
                into.append(line)

    threading.Thread(target=pump, daemon=True).start()


@contextmanager
def running(db: Path | str, **kw: Any) -> Iterator[Server]:
    server = start_server(db, **kw)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
