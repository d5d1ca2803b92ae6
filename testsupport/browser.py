"""A real browser for tests of browser-facing pages (imported by tests only).

Debian's Chromium, `/usr/bin/chromium` (installed by `scripts/bootstrap.sh`), driven by
Playwright's sync API; `playwright install` is never run (Playwright's own browser downloads
are not used). The machine's network is closed: without the flags that stop Chromium's
background networking it stalls on start.

Chromium is started once per test session (`running_chromium`, a headless process with a
DevTools endpoint); each test connects Playwright to it and gets a fresh page in its own
browser context (`fresh_page`: no cookies shared between tests). Playwright is started per
test, not per session, on purpose: its sync API keeps an asyncio loop registered as running
in the calling thread for as long as it is started, which Django takes for an async context
(database calls raise `SynchronousOnlyOperation`) and which breaks `asyncio.run` in any test
that runs after it. Per test, the loop is gone when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0
ACTION_TIMEOUT_MS = 15_000  # a click or a page load against a live server on this machine


class BrowserUnavailable(RuntimeError):
    """Chromium could not be started: the tests that need it fail with this message."""


@contextmanager
def running_chromium(
    profile: Path, *, executable: str = CHROMIUM, timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """Headless Chromium with a throwaway profile in `profile` (a new folder); yields its
    DevTools endpoint (http://127.0.0.1:<port>) and stops it on exit. Raises
    BrowserUnavailable if it does not start within `timeout_s`."""
    if not Path(executable).is_file():
        raise BrowserUnavailable(
            f"{executable} is missing: scripts/bootstrap.sh installs Debian's chromium"
        )
    profile.mkdir(parents=True)
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - a fixed executable and fixed arguments
            [
                executable,
                *CHROMIUM_ARGS,
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",  # any free port, written to DevToolsActivePort
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the Debian wrapper script and its Chromium stop together
        )
    try:
        yield _devtools_endpoint(proc, profile / "DevToolsActivePort", log, timeout_s)
    finally:
        _stop(proc)


def _devtools_endpoint(proc: subprocess.Popen, port_file: Path, log: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrowserUnavailable(
                f"{CHROMIUM} exited with status {proc.returncode}:\n{_tail(log)}"
            )
        with suppress(FileNotFoundError, ValueError, IndexError):
            port = int(port_file.read_text().splitlines()[0])
            return f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise BrowserUnavailable(f"{CHROMIUM} did not start within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def fresh_page(endpoint: str) -> Iterator[Page]:
    """A page in a new browser context of the Chromium at `endpoint`, closed on exit."""
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.connect_over_cdp(endpoint, timeout=START_TIMEOUT_S * 1000)
        except PlaywrightError as exc:
            raise BrowserUnavailable(f"Chromium at {endpoint}: {exc.message}") from exc
        try:
            context = browser.new_context()
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            try:
                yield context.new_page()
            finally:
                context.close()
        finally:
            browser.close()  # over CDP: disconnects, the shared Chromium keeps running


def screenshot(page: Page, path: Path) -> None:
    """A full-page screenshot, if the page can still take one (a failed test's evidence)."""
    with suppress(PlaywrightError):
        page.screenshot(path=str(path), full_page=True)
