"""End-to-end: a real Celery worker process consumes from the real Redis and writes to
PostgreSQL. No eager mode."""

import uuid

import pytest
from django.conf import settings

from config.celery import app
from core.models import Heartbeat
from core.tasks import heartbeat_record
from testsupport.processes import celery_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_runs_a_task_and_its_effect_is_in_postgresql(tmp_path):
    source = f"e2e-{uuid.uuid4().hex[:8]}"
    with celery_processes(tmp_path, "worker") as (worker,):
        heartbeat_record.delay(source)
        beat = wait_for(lambda: Heartbeat.objects.filter(source=source).first())
        assert beat is not None, f"no heartbeat within 60 s:\n{worker.output()}"
        assert beat.worker == worker.name


def test_tasks_are_acked_late_and_time_limited_below_the_visibility_timeout():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    visibility_timeout = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility_timeout
    assert conf.broker_url == settings.REDIS_URL
