"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium, for
the dashboard tests. Never downloads a browser: the binaries must be installed (``.ci/run`` does
it in CI); without them the tests skip locally and fail in CI (``CI=true``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parent.parent / "screenshots"  # git-ignored
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must run the browser tests: " + reason)
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh browser with an empty profile; its console and network logs are readable."""
    require_browser()
    os.environ["SE_OFFLINE"] = "true"  # selenium's manager must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tracker-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors since the last call (SEVERE entries)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def requested_hosts(driver: Any) -> set[str]:
    """Every host the page sent a request to since the last call (from the performance log)."""
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            parts = urlsplit(url)
            if parts.scheme not in ("data", "blob", "about", "chrome", "devtools"):
                hosts.add(parts.netloc or url)  # the browser's own pages are not the network
    return hosts


def screenshot(driver: Any, name: str) -> Path:
    """The whole page (the window grown to its height, up to 2400 px) as ``screenshots/*.png``."""
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.set_window_size(size["width"], min(max(height + 100, size["height"]), 2400))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
    return path
