"""Start a real simulator process for tests (the simulator's, billing's and router's suites).

The process runs `python -m uvicorn simulator.app:app` on a free loopback port, without Django
settings in its environment, and is stopped when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from testsupport.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def environment_without_django() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 30) -> None:
    """Polls `<url>/_sim/health` until it answers 200; raises if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/_sim/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the simulator did not answer within {timeout_s} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_process(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 (our own command line)
            command,
            cwd=REPO_ROOT,
            env=environment_without_django(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def running_simulator(log: Path) -> Iterator[str]:
    """Yields the base URL of a fresh simulator process."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "simulator.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "3",
    ]
    proc = start_process(command, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        stop(proc)
