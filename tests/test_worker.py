"""End-to-end: a real Celery worker process consumes from the real Redis and writes to
PostgreSQL. No eager mode."""

import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from config.celery import app
from core.models import Heartbeat
from core.tasks import heartbeat_record
from core.testing import REPO_ROOT, subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_worker_process():
    """One real worker (solo pool) on the test database and the test Redis."""
    name = f"e2e-{uuid.uuid4().hex[:8]}@test"
    env = subprocess_env(REDIS_URL=settings.REDIS_URL)
    log = REPO_ROOT / ".pytest_cache" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config.celery:app",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "-n",
                name,
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield name
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode not in (0, -15):
        pytest.fail(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    return None


def test_a_real_worker_runs_a_task_and_its_effect_is_in_postgresql(celery_worker_process):
    source = f"e2e-{uuid.uuid4().hex[:8]}"
    heartbeat_record.delay(source)

    beat = wait_for(lambda: Heartbeat.objects.filter(source=source).first())

    assert beat is not None, "the worker did not record the heartbeat within 60 s"
    assert beat.worker == celery_worker_process


def test_tasks_are_acked_late_and_time_limited_below_the_visibility_timeout():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    visibility_timeout = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility_timeout
    assert conf.broker_url == settings.REDIS_URL
