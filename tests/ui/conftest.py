"""The dashboard in a real browser: headless Chromium from Debian driven by
Selenium through Debian's chromedriver (nothing is downloaded; scripts/ensure-chromium
installs both).  Without them the tests are skipped, except under ``CI=true``,
where a missing browser is a failure."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from plane.testing.serve_process import PlaneServe

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NOTEPAD = Path(__file__).resolve().parents[2] / "examples" / "notepad" / "app.py"
WAIT = 60.0
"""Generous bound on every wait (the machine is shared); nothing is timed."""


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session; its console log is read by the tests."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = f"no browser: {', '.join(missing)} missing (run scripts/ensure-chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser, with its console log emptied before the test and checked after."""
    browser.get_log("browser")
    browser.get("about:blank")
    yield browser
    browser.execute_script("try { sessionStorage.clear() } catch (e) {}")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors since the last read."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [e for e in entries if e.get("level") == "SEVERE"]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[PlaneServe]:
    serving = PlaneServe(tmp_path / "data", "process", "--terminate-on-exit")
    yield serving
    serving.stop()


def notepad_body(key: str, **spawn: Any) -> dict[str, Any]:
    """A connect body for the example notepad (a real WebSocket backend) as a process."""
    executable = {
        "command": [sys.executable, str(NOTEPAD)],
        "env": {"HOST": "127.0.0.1", "NOTE_SECRET": "s3cret-value"},
    }
    return {"key": {"name": key}, "spawn_config": {"executable": executable, **spawn}}


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy (at most ``timeout`` s)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except WebDriverException as exc:  # an element replaced while read
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


class HeldWebSocket:
    """A WebSocket through plane's proxy, held open in a thread of its own until closed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.opened.wait(WAIT):
            raise AssertionError(f"the WebSocket did not open: {self.error}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by the waiter
            self.error = exc
            self.opened.set()

    async def _main(self) -> None:
        async with open_websocket_url(self.url) as ws:
            await ws.get_message()  # the notepad's first state
            self.opened.set()
            await trio.to_thread.run_sync(self._stop.wait)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(WAIT)


def ws_url(url: str) -> str:
    """``http://proxy/<token>/`` -> ``ws://proxy/<token>/ws`` (the notepad's socket)."""
    return "ws://" + url.removeprefix("http://") + "ws"
