"""Found by an adversarial review of issue 11 (each failed before its fix): what limits count, what
the poller charges and what the month rule lets a new month spend must agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from accounts import plans
from accounts.tests.factories import UserFactory
from billing import polling, services
from billing.limits import payer_may_start
from billing.models import BillingAccount, ProviderBillingHealth, UsageRecord, UsageState
from billing.tests.factories import pending_usage
from billing.usage_row import UsageRow, usage_rows_insert
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db
WINDOW = timedelta(seconds=settings.BILLING_FAILED_AFTER_S)


def user_payer(plan="free", name="bob"):
    return services.billing_account_get_or_create_for_user(
        user=UserFactory(username=name, plan=plan)
    )


def test_a_record_limits_stopped_counting_is_never_charged():
    """A record past its window stops counting in limits; the poller must then never charge
    it (else a client runs a second round of requests before the charge lands)."""
    provider = ProviderFactory(cost_url="https://c.example/costs", api_key="k")
    payer = user_payer()
    now = timezone.now()
    record = pending_usage(
        provider=provider,
        payer=payer,
        request_id="x",
        created_at=now - WINDOW - timedelta(minutes=2),
    )
    UsageRecord.objects.filter(pk=record.pk).update(
        estimated_cost_nanousd=plans.FREE_USER_MONTHLY_NANOUSD,
        first_asked_at=now - WINDOW - timedelta(seconds=5),
    )
    services.credits_ensure_month(billing_account=payer, now=now)
    # Limits no longer count it: the free user may start again, for its whole credit.
    assert payer_may_start(billing_account=BillingAccount.objects.get(pk=payer.pk), now=now).allowed
    body = json.dumps(
        {"requests": [{"requestId": "x", "costNanoUsd": plans.FREE_USER_MONTHLY_NANOUSD}]}
    ).encode()
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    )
    polling.cost_poll_provider(provider=provider, now=now, client=client)
    record.refresh_from_db()
    assert record.state == UsageState.FAILED_TO_BILL, (
        f"charged ({record.state}) after limits had stopped counting it"
    )


def test_last_months_open_leftover_is_not_credit_for_this_months_requests():
    """Feb 1 00:05: Jan's $0.10 is still open (closes ~00:35), Feb's $0.10 granted. A free
    user may only use Feb's $0.10 for Feb requests, but limits count the whole pool ($0.20)."""
    provider = ProviderFactory(cost_url="https://c.example/costs", api_key="k")
    payer = user_payer()
    jan = datetime(2026, 1, 15, tzinfo=UTC)
    feb = datetime(2026, 2, 1, 0, 5, tzinfo=UTC)
    services.credits_ensure_month(billing_account=payer, now=jan)
    services.credits_ensure_month(billing_account=payer, now=feb)
    monthly = plans.FREE_USER_MONTHLY_NANOUSD
    # A Feb request reserved (estimate) at 1.5x the month's credit, exactly its real cost.
    r = pending_usage(provider=provider, payer=payer, request_id="f1", created_at=feb)
    UsageRecord.objects.filter(pk=r.pk).update(
        estimated_cost_nanousd=monthly * 3 // 2, first_asked_at=timezone.now()
    )
    decision = payer_may_start(billing_account=BillingAccount.objects.get(pk=payer.pk), now=feb)
    services.cost_batch_apply(provider=provider, costs={"f1": monthly * 3 // 2}, now=feb)
    payg = services.pools_get(payer)["payg"].balance_nanousd
    # Zero overshoot is promised when providers charge no more than the reservation: either
    # the request was refused, or it must not have created a debt.
    assert not decision.allowed or payg >= 0, f"allowed, then debt {payg} for a free user"


def _row(user, payer_id, provider_id, rid, created_at):
    return UsageRow.build(
        provider_id=provider_id,
        request_id=rid,
        user_id=user.pk,
        payer_id=payer_id,
        hub_model_id="m",
        provider_model="m",
        task="t",
        http_status=200,
        prompt_tokens=10,
        completion_tokens=10,
        estimated_cost_nanousd=5,
        byok=False,
        created_at=created_at,
    )


def test_a_request_id_reused_within_one_write_batch_keeps_both_requests():
    """Two different requests (two users) answered with the same request ID, written in one
    group-commit batch: the second must be kept (reused-request-id) and counted."""
    provider = ProviderFactory()
    a, b = user_payer(name="a"), user_payer(name="b")
    now = timezone.now()
    rows = [
        _row(a.user, a.pk, provider.pk, "same", now),
        _row(b.user, b.pk, provider.pk, "same", now + timedelta(seconds=1)),
    ]
    usage_rows_insert(rows)
    assert UsageRecord.objects.filter(user=b.user).count() == 1, "B's request was dropped"
    health = ProviderBillingHealth.objects.filter(provider=provider).first()
    assert health is not None and health.reused_request_ids_total == 1
