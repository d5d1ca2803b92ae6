"""Issue 11, "a poller no provider can stall": a provider answering out-of-range, absurd, huge or
deeply nested costs for one ID, a batch that fails to apply, long streams, poller outages, slow
first queries, suspended providers and overlapping polls. Each leaves the healthy records
charged in the same poll and nothing failed to bill without having been asked."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import close_old_connections, connection, transaction
from django.urls import reverse
from django.utils import timezone

from billing import polling, services, tasks
from billing.models import (
    AccountKind,
    LedgerTransaction,
    ProviderBillingHealth,
    TransactionKind,
    UsageRecord,
    UsageState,
)
from billing.selectors import invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from core.errors import DomainError
from registry import services as registry_services
from registry.models import ProviderState
from registry.tests.factories import ProviderFactory

USD = 1_000_000_000
COST = 1_000_000  # $0.001: paid from any payer's included credits


class CostEndpoint:
    """A provider's cost URL (an httpx transport): answers `body(asked IDs)` and counts calls."""

    def __init__(self, body=None, status: int = 200):
        self.body = body or (lambda ids: answer({i: COST for i in ids}))
        self.status = status
        self.asked: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["requestIds"]
        self.asked.append(ids)
        return httpx.Response(self.status, content=self.body(ids))

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def answer(costs: dict[str, object]) -> bytes:
    """An answer whose cost literals are written as given (bytes are spliced in raw)."""
    entries = []
    for request_id, cost in costs.items():
        literal = cost if isinstance(cost, bytes) else json.dumps(cost).encode()
        entries.append(b'{"requestId":' + json.dumps(request_id).encode() + b',"costNanoUsd":'
                       + literal + b"}")  # fmt: skip
    return b'{"requests":[' + b",".join(entries) + b"]}"


@pytest.fixture
def provider(db):
    return ProviderFactory(cost_url="https://costs.example/v1/costs", api_key="k")


def pending(provider, count: int, *, payer=None, age_s: int = 120, prefix="r") -> list[str]:
    payer = payer or payer_for_new_user(plan="pro")
    created = timezone.now() - timedelta(seconds=age_s)
    ids = [f"{prefix}-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    for request_id in ids:
        pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=created)
    return ids


def record(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(request_id=request_id)


def states(ids) -> dict[str, str]:
    return dict(UsageRecord.objects.filter(request_id__in=ids).values_list("request_id", "state"))


# --- defect 2: one out-of-range cost stops a provider's billing -------------------------------
BAD_COSTS = {
    "2**63": str(2**63).encode(),
    "10**17 ($100M)": str(10**17).encode(),
    "1e1000000": b"1e1000000",
    "10**4-deep array": b"[" * 10_000 + b"]" * 10_000,
    "10**6-deep array": b"[" * 1_000_000 + b"]" * 1_000_000,
}


@pytest.mark.parametrize("bad", BAD_COSTS.values(), ids=BAD_COSTS.keys())
def test_defect_2_one_bad_cost_leaves_the_others_charged_in_the_same_poll(provider, bad):
    ids = pending(provider, 4)
    bad_id, good = ids[0], ids[1:]
    endpoint = CostEndpoint(lambda asked: answer({i: bad if i == bad_id else COST for i in asked}))

    started = time.monotonic()
    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert time.monotonic() - started < 10
    assert (result.billed, result.invalid, result.error) == (3, 1, "")
    assert states(good) == dict.fromkeys(good, UsageState.BILLED)
    bad_record = record(bad_id)
    assert bad_record.state == UsageState.PENDING
    assert bad_record.cost_error and bad_record.cost_attempts == 1
    assert ProviderBillingHealth.objects.get(provider=provider).invalid_costs_total == 1
    assert invariant_violations() == []


def _payg_near_the_bigint_floor(payer) -> None:
    """A payer whose pay-as-you-go pool is so deep in debt that any charge overflows it."""
    pools = services.pools_get(payer)
    adjustments = services.platform_account_get_or_create(AccountKind.ADJUSTMENTS)
    amount = 2**63 - 10
    with transaction.atomic():
        services.accounts_lock([pools[AccountKind.PAYG].pk, adjustments.pk])
        services.transaction_post(
            kind=TransactionKind.ADJUSTMENT,
            idempotency_key=f"test-overflow:{payer.pk}",
            legs=[
                services.Leg(pools[AccountKind.PAYG].pk, -amount),
                services.Leg(adjustments.pk, amount),
            ],
            billing_account=payer,
            actor="test",
            memo="debt near the bigint floor",
        )


def test_defect_2_a_batch_that_fails_to_apply_is_bisected_and_the_poll_goes_on(provider, settings):
    settings.BILLING_REVIEW_MIN_NANOUSD = 100 * USD  # $10 costs are charged, not held
    overflowing = payer_for_new_user(plan="free")
    _payg_near_the_bigint_floor(overflowing)
    healthy = pending(provider, 5, age_s=600)
    doomed = pending(provider, 1, payer=overflowing, age_s=500)
    later = pending(provider, 4, age_s=300)  # asked in the later batches
    endpoint = CostEndpoint(lambda asked: answer({i: 10 * USD for i in asked}))

    result = polling.cost_poll_provider(provider=provider, batch_size=4, client=endpoint.client())

    assert len(endpoint.asked) == 3  # the poll did not stop at the failing batch
    assert states(healthy + later) == dict.fromkeys(healthy + later, UsageState.BILLED)
    assert result.billed == 9 and result.invalid == 1
    bad = record(doomed[0])
    assert bad.state == UsageState.PENDING
    assert "DataError" in bad.cost_error and bad.cost_attempts == 1
    health = ProviderBillingHealth.objects.get(provider=provider)
    assert health.invalid_costs_total == 1
    assert "DataError" in health.last_error
    assert invariant_violations() == []


def test_a_record_that_always_fails_to_apply_cannot_use_up_the_bisection_budget(
    provider, settings, monkeypatch
):
    """Found by review: a few records whose cost fails to apply every time used the whole
    bisection budget of every poll, and the healthy records of their batch, never reached,
    expired unbilled. A record that failed alone is applied on its own next time."""
    settings.BILLING_REVIEW_MIN_NANOUSD = 100 * USD
    overflowing = payer_for_new_user(plan="free")
    _payg_near_the_bigint_floor(overflowing)
    doomed = pending(provider, 1, payer=overflowing, age_s=500)
    endpoint = CostEndpoint(lambda asked: answer({i: 10 * USD for i in asked}))
    polling.cost_poll_provider(provider=provider, client=endpoint.client())
    assert record(doomed[0]).cost_error.startswith(polling.APPLY_FAILED)

    monkeypatch.setattr(polling, "APPLY_ATTEMPTS_MAX", 1)  # one try for the batch, no halves
    healthy = pending(provider, 5, age_s=400)
    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert states(healthy) == dict.fromkeys(healthy, UsageState.BILLED)
    assert result.billed == 5 and record(doomed[0]).state == UsageState.PENDING
    assert invariant_violations() == []


# --- defect 4: failed_to_bill without ever being asked --------------------------------------
def test_defect_4_a_31_minute_stream_is_asked_and_billed(provider, settings):
    settings.BILLING_FAILED_AFTER_S = 1800
    # The request started 31 minutes ago; its record is written now, when the stream ends.
    ids = pending(provider, 2, age_s=31 * 60)
    endpoint = CostEndpoint()

    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert (result.billed, result.failed_to_bill) == (2, 0)
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


def test_defect_4_the_backlog_after_a_poller_outage_is_asked_and_billed(provider):
    ids = pending(provider, 3, age_s=60)
    endpoint = CostEndpoint()
    after_outage = timezone.now() + timedelta(minutes=45)

    result = polling.cost_poll_provider(
        provider=provider, now=after_outage, client=endpoint.client()
    )

    assert (result.billed, result.failed_to_bill) == (3, 0)
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


def test_defect_4_a_provider_with_a_long_first_query_delay_is_asked_before_expiry(provider):
    provider.first_cost_query_delay_s = 1800  # stored before the validation existed
    provider.save()
    ids = pending(provider, 2, age_s=60)
    endpoint = CostEndpoint()
    later = timezone.now() + timedelta(minutes=40)

    result = polling.cost_poll_provider(provider=provider, now=later, client=endpoint.client())

    assert (result.billed, result.failed_to_bill) == (2, 0)
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


def test_defect_4_the_window_counts_from_the_first_ask_even_when_the_answer_is_unusable(
    provider,
):
    ids = pending(provider, 2, age_s=60)
    down = CostEndpoint(status=503)
    first_poll = timezone.now()

    result = polling.cost_poll_provider(provider=provider, now=first_poll, client=down.client())

    assert "503" in result.error
    assert {record(i).first_asked_at for i in ids} == {first_poll}
    # Still inside the window counted from the first ask: asked again, not expired.
    polling.cost_poll_provider(
        provider=provider, now=first_poll + timedelta(minutes=29), client=down.client()
    )
    assert states(ids) == dict.fromkeys(ids, UsageState.PENDING)
    assert len(down.asked) == 2
    # Past it: expired before asking (limits stopped counting it at the same moment, so it
    # must never be charged after that), never charged.
    result = polling.cost_poll_provider(
        provider=provider, now=first_poll + timedelta(minutes=31), client=down.client()
    )
    assert len(down.asked) == 2
    assert result.failed_to_bill == 2
    assert states(ids) == dict.fromkeys(ids, UsageState.FAILED_TO_BILL)
    assert {record(i).first_asked_at for i in ids} == {first_poll}
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()


def test_defect_4_records_of_a_provider_without_a_cost_url_expire_from_when_written(db):
    provider = ProviderFactory(cost_url="")
    ids = pending(provider, 2, age_s=60)
    assert polling.cost_poll_provider(provider=provider).failed_to_bill == 0
    result = polling.cost_poll_provider(
        provider=provider, now=timezone.now() + timedelta(minutes=31)
    )
    assert result.failed_to_bill == 2
    assert states(ids) == dict.fromkeys(ids, UsageState.FAILED_TO_BILL)


def test_defect_4_a_first_query_delay_at_or_past_the_window_is_refused(db, settings):
    settings.BILLING_FAILED_AFTER_S = 1800
    settings.BILLING_POLL_INTERVAL_S = 60
    organization = ProviderFactory().organization
    with pytest.raises(DomainError) as refused:
        registry_services.provider_create(
            slug="slowpoke",
            organization=organization,
            base_url="https://slowpoke.example",
            first_cost_query_delay_s=1800,
        )
    assert refused.value.field == "first_cost_query_delay_s"
    registry_services.provider_create(
        slug="patient",
        organization=organization,
        base_url="https://patient.example",
        first_cost_query_delay_s=1700,
    )


def test_defect_4_the_admin_refuses_a_first_query_delay_past_the_window(
    staff_client, provider, settings
):
    settings.BILLING_FAILED_AFTER_S = 1800
    data = {
        "slug": provider.slug,
        "display_name": provider.display_name,
        "organization": provider.organization_id,
        "base_url": provider.base_url,
        "chat_route": provider.chat_route,
        "cost_url": provider.cost_url,
        "request_id_header": provider.request_id_header,
        "first_cost_query_delay_s": 3600,
        "state": provider.state,
        "new_api_key": "",
        "_save": "Save",
    }
    response = staff_client.post(
        reverse("admin:registry_provider_change", args=[provider.pk]), data
    )
    assert response.status_code == 200  # the form again, with the error on the field
    assert "first_cost_query_delay_s" in response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.first_cost_query_delay_s == 0


# --- defect 6: records stay pending for a suspended provider ---------------------------------
def test_defect_6_a_suspended_provider_is_still_polled_until_its_records_resolve(
    provider, monkeypatch
):
    ids = pending(provider, 2)
    provider.state = ProviderState.SUSPENDED
    provider.save()
    idle = ProviderFactory(cost_url="https://idle.example/costs")  # nothing pending: not polled
    enqueued: list[int] = []
    monkeypatch.setattr(tasks.cost_poll_provider, "delay", enqueued.append)

    tasks.cost_poll_enqueue()

    assert provider.pk in enqueued and idle.pk not in enqueued
    endpoint = CostEndpoint()
    monkeypatch.setattr(polling, "_client", lambda: endpoint.client())
    assert tasks.cost_poll_provider(provider.pk)["billed"] == 2
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


def test_defect_6_reactivating_a_provider_does_not_expire_its_records_unasked(provider):
    ids = pending(provider, 2)
    provider.state = ProviderState.SUSPENDED
    provider.save()
    provider.state = ProviderState.ACTIVE
    provider.save()
    result = polling.cost_poll_provider(
        provider=provider, now=timezone.now() + timedelta(hours=2), client=CostEndpoint().client()
    )
    assert (result.billed, result.failed_to_bill) == (2, 0)
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


# --- poll overlap ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_polls_of_one_provider_never_overlap(provider):
    ids = pending(provider, 3)
    inside, release = threading.Event(), threading.Event()

    def slow(asked):
        inside.set()
        assert release.wait(30)
        return answer(dict.fromkeys(asked, COST))

    endpoint = CostEndpoint(slow)
    results: dict[str, polling.PollResult] = {}
    errors: list[BaseException] = []

    def first():
        try:
            results["first"] = polling.cost_poll_provider(
                provider=provider, client=endpoint.client()
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(30)
        started = time.monotonic()
        second = polling.cost_poll_provider(provider=provider, client=endpoint.client())
        assert time.monotonic() - started < 2
        assert (second.asked, second.billed) == (0, 0)
        assert "another poll" in second.skipped
    finally:
        release.set()
        thread.join(60)
    assert errors == []
    assert results["first"].billed == 3
    assert len(endpoint.asked) == 1
    # The lock is released: the next poll runs (and finds nothing left to ask).
    third = polling.cost_poll_provider(provider=provider, client=endpoint.client())
    assert third.skipped == "" and states(ids) == dict.fromkeys(ids, UsageState.BILLED)


@pytest.mark.django_db(transaction=True)
def test_a_poll_interrupted_while_unlocking_does_not_keep_the_provider_locked(provider):
    """Found by review: a soft time limit firing inside the unlock left the session-level
    lock on a pooled connection, and every later poll of the provider was skipped. The
    session is ended instead, which releases the lock."""
    pending(provider, 1)

    def interrupt_unlock(execute, sql, params, many, context):
        if "pg_advisory_unlock" in sql:
            raise SoftTimeLimitExceeded()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(interrupt_unlock), pytest.raises(SoftTimeLimitExceeded):
        polling.cost_poll_provider(provider=provider, client=CostEndpoint().client())

    # Another session (another worker) can take the provider's lock.
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", [polling.POLL_LOCK_NAMESPACE, provider.pk]
            )
            assert cursor.fetchone()[0] is True
    finally:
        other.close()
