"""Process and concurrency helpers for the Django test suites (imported by tests only):
management commands in-process or as processes, Celery and web server processes on the test
database, threads released together, polling."""

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from celery import current_app
from django.conf import settings
from django.core.management import call_command
from django.db import close_old_connections, connection

from testsupport.net import free_port

REPO_ROOT = Path(settings.BASE_DIR)


def run_command(*args: str) -> tuple[str, str]:
    """Runs a management command in-process; returns (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_database_url() -> str:
    """DATABASE_URL of the database the tests run on, for processes the tests start."""
    db = connection.settings_dict
    credentials = quote(db["USER"], safe="")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


test_database_url.__test__ = False  # not a test, despite its name


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process (manage.py, a worker) on the test database, with
    the application's credentials only (as in production: not the owner's)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_OWNER_URL"}
    return {**env, "DATABASE_URL": test_database_url(), **extra}


def manage_process(*args: str) -> subprocess.CompletedProcess:
    """Runs `manage.py ARGS` as a real process on the test database (text output captured)."""
    return subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stop_process(proc: subprocess.Popen | None, sig: int, *, wait_s: float) -> int | None:
    """Sends `sig` to a child process, kills it if it has not exited within `wait_s`;
    returns its exit status (None if it was never started)."""
    if proc is None or proc.poll() is not None:
        return proc and proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=30)


class CeleryProcess:
    """A real Celery worker or beat process on the test database and Redis."""

    def __init__(self, kind: str, log_dir: Path, **env: str):
        self.kind = kind
        self.name = f"{kind}-{uuid.uuid4().hex[:8]}@test"
        self.log = log_dir / f"{self.name}.log"
        self.env = subprocess_env(REDIS_URL=settings.REDIS_URL, **env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CeleryProcess":
        args = (
            ["worker", "--pool=solo", "-n", self.name, "--without-mingle", "--without-gossip"]
            if self.kind == "worker"
            else ["beat", "--schedule", str(self.log.with_suffix(".schedule"))]
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 (our own command line)
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config.celery:app",
                    *args,
                    "--loglevel=INFO",
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, sig: int | None = None) -> int | None:
        """SIGTERM (a warm shutdown) by default; `sig` sends that signal instead."""
        return stop_process(self.proc, signal.SIGTERM if sig is None else sig, wait_s=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def celery_processes(log_dir: Path, *kinds: str, **env: str) -> Iterator[list[CeleryProcess]]:
    """Starts e.g. a worker and a beat; stops them (warm shutdown) at the end. The broker's
    queue is emptied first: tasks an earlier test's beat left queued (a `cost_poll_enqueue`
    fanning out polls of this test's providers) must not run in this test."""
    current_app.control.purge()  # the project's app (config/celery.py, loaded with Django)
    procs = [CeleryProcess(kind, log_dir, **env).start() for kind in kinds]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.2):
    """Polls `predicate` until it returns something true; returns it (None on timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every_s)
    return None


def run_threads(count: int, target) -> list[BaseException]:
    """Runs `target(i)` in `count` threads released together; returns what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def wrapped(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


class WebServer:
    """The real web process (config/serve.py: uvicorn serving `config.asgi`, Django and the
    router) on the test database, as `make run` starts it. The router's caches off, so each test
    sees its own data at once."""

    def __init__(self, log: Path, **env: str):
        self.log = log
        self.env = {"ROUTER_CACHE_TTL_S": "0", "LOG_LEVEL": "INFO", **env}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "WebServer":
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 (our own server)
                # The served configuration (config/serve.py: uvicorn and its limits).
                [sys.executable, "-m", "config.serve", "--host", "127.0.0.1", "--port",
                 str(port)],
                cwd=REPO_ROOT, env=subprocess_env(**self.env), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the web server exited:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}/api/health", timeout=2).status_code < 500
            except httpx.TransportError:
                return False

        if not wait_for(up, timeout_s=60):
            raise RuntimeError(f"the web server did not answer within 60 s:\n{self.output()}")
        return self

    def stop(self, sig: int | None = None) -> None:
        # SIGINT, not SIGTERM: after a graceful shutdown uvicorn re-raises the signal it got,
        # and only SIGINT ends the interpreter normally (atexit runs, so coverage is saved).
        stop_process(self.proc, signal.SIGINT if sig is None else sig, wait_s=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
