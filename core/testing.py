"""Helpers shared by the test suites (imported by tests only)."""

import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.core.management import call_command
from django.db import connection

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
    """The environment for a child process (manage.py, a worker) on the test database."""
    return {**os.environ, "DATABASE_URL": test_database_url(), **extra}


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
