"""Exactly once under faults: concurrent pollers, a worker killed with SIGKILL in the middle of
applying a batch, a batch applied twice, a provider answering an ID twice. After each,
`billing_check` passes and every request is charged exactly once."""

import signal
import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.db import close_old_connections, connection, connections
from django.utils import timezone

from billing import polling, services
from billing.models import LedgerTransaction, UsageRecord
from billing.tasks import cost_poll_provider
from billing.tests.factories import payer_for_new_user
from simulator.costs import cost_nanousd
from testsupport.processes import CeleryProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def pending_records(provider, count: int) -> list[str]:
    payer = payer_for_new_user(plan="pro")
    created = timezone.now() - timedelta(seconds=90)
    ids = [f"sim-{provider.slug}-{uuid.uuid4().hex[:24]}" for _ in range(count)]
    UsageRecord.objects.bulk_create(
        [
            UsageRecord(
                provider=provider,
                request_id=i,
                user=payer.user,
                payer=payer,
                http_status=200,
                created_at=created,
            )
            for i in ids
        ]
    )
    return ids


def assert_charged_exactly_once(ids) -> None:
    billed = dict(
        UsageRecord.objects.filter(request_id__in=ids, state="billed").values_list(
            "request_id", "cost_nanousd"
        )
    )
    assert billed == {i: cost_nanousd(i) for i in ids}
    assert LedgerTransaction.objects.filter(kind="charge").count() == len(ids)
    call_command("billing_check")  # exits non-zero (SystemExit) on any violation


def test_two_pollers_on_the_same_provider_at_once_charge_each_request_once(provider):
    ids = pending_records(provider, 3000)
    # Slow answers make both pollers ask for the same IDs before either applies them.
    httpx.put(f"{provider.base_url}/_sim/faults", json={"latency_ms": 300}, timeout=10)
    results, errors = [], []

    def poll():
        try:
            results.append(polling.cost_poll_provider(provider=provider, batch_size=1000))
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    # One poll per provider at a time (an advisory lock): the second returns at once.
    assert sorted(bool(r.skipped) for r in results) == [False, True]
    assert sum(r.billed for r in results) == len(ids)
    assert_charged_exactly_once(ids)


def test_the_same_batch_applied_twice_charges_once(provider):
    ids = pending_records(provider, 500)
    costs = {i: cost_nanousd(i) for i in ids}
    services.cost_batch_apply(provider=provider, costs=costs)
    assert services.cost_batch_apply(provider=provider, costs=costs).billed == 0
    assert_charged_exactly_once(ids)


def test_a_provider_answering_an_id_twice_with_the_same_cost_charges_it_once(provider):
    ids = pending_records(provider, 10)
    body = {"requests": [{"requestId": i, "costNanoUsd": cost_nanousd(i)} for i in ids * 2]}
    parsed = polling.parse_cost_answer(httpx.Response(200, json=body).content, set(ids))
    services.cost_batch_apply(provider=provider, costs=parsed.costs)
    assert_charged_exactly_once(ids)


def waiting_backend_count() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
        return cursor.fetchone()[0]


def test_a_worker_killed_while_applying_a_batch_charges_nothing_then_exactly_once(
    provider, tmp_path
):
    ids = pending_records(provider, 2000)
    payable = services.provider_payable_get_or_create(provider=provider)
    # Hold the provider's payable account: the worker's batch blocks inside its transaction,
    # after it has locked the usage records and before it commits anything.
    blocker = connection.copy()
    blocker.connect()
    blocker.set_autocommit(False)
    with blocker.cursor() as cursor:
        cursor.execute("SELECT 1 FROM billing_ledgeraccount WHERE id = %s FOR UPDATE", [payable.pk])
    worker = CeleryProcess("worker", tmp_path).start()
    try:
        cost_poll_provider.delay(provider.pk)
        assert wait_for(lambda: waiting_backend_count() > 0, timeout_s=60), worker.output()
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        blocker.rollback()
        blocker.close()
    # The killed worker's transaction is rolled back by PostgreSQL: nothing half-applied.
    assert wait_for(lambda: waiting_backend_count() == 0, timeout_s=30)
    assert UsageRecord.objects.filter(request_id__in=ids, state="billed").count() == 0
    assert LedgerTransaction.objects.filter(kind="charge").count() == 0
    call_command("billing_check")

    replacement = CeleryProcess("worker", tmp_path).start()
    try:
        cost_poll_provider.delay(provider.pk)
        done = wait_for(
            lambda: (
                UsageRecord.objects.filter(request_id__in=ids, state="billed").count() == len(ids)
            ),
            timeout_s=90,
        )
        assert done, replacement.output()
    finally:
        replacement.stop()
    assert_charged_exactly_once(ids)
