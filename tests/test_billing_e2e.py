"""End-to-end billing: a real Celery worker and beat (1-second poll interval), the provider
simulator over HTTP, and PostgreSQL. Records are polled, charged, and the balances and ledger
come out as expected. No eager mode, nothing mocked."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import plans
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from billing import services
from billing.models import AccountKind, LedgerTransaction, UsageRecord
from billing.selectors import invariant_violations
from billing.tasks import credits_ensure_month_all
from simulator.costs import cost_nanousd
from testsupport.processes import celery_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def records(provider, payer, user, count: int) -> list[str]:
    ids = [f"sim-{provider.slug}-{uuid.uuid4().hex[:24]}" for _ in range(count)]
    created = timezone.now() - timedelta(seconds=90)
    for request_id in ids:
        services.usage_record_create(
            provider=provider,
            request_id=request_id,
            user=user,
            payer=payer,
            http_status=200,
            created_at=created,
        )
    return ids


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def shrink_included_to(payer, remaining: int) -> None:
    """This month's grant, then an adjustment leaving `remaining` nano-USD of it."""
    services.credits_ensure_month(billing_account=payer)
    included = pools(payer)[AccountKind.INCLUDED]
    services.ledger_adjust(
        billing_account=payer,
        pool=AccountKind.INCLUDED,
        amount_nanousd=remaining - included,
        actor="test",
        memo="make the pool small",
        idempotency_key=uuid.uuid4().hex,
    )


def test_the_worker_and_beat_charge_users_and_organizations_in_pool_order(provider, tmp_path):
    pro = UserFactory(username="pro-user", plan="pro")
    pro_payer = services.billing_account_get_or_create_for_user(user=pro)
    shrink_included_to(pro_payer, 1_000)
    services.credits_top_up(
        billing_account=pro_payer, amount_nanousd=2_000, actor="test", idempotency_key="e2e-topup"
    )
    free = UserFactory(username="free-user", plan="free")
    free_payer = services.billing_account_get_or_create_for_user(user=free)
    shrink_included_to(free_payer, 500)
    org = OrganizationFactory(name="acme", plan="team", seats=2)
    member = UserFactory(username="acme-dev")
    MembershipFactory(user=member, organization=org)
    org_payer = services.billing_account_get_or_create_for_organization(organization=org)

    pro_ids = records(provider, pro_payer, pro, 5)
    free_ids = records(provider, free_payer, free, 3)
    org_ids = records(provider, org_payer, member, 4)
    everything = pro_ids + free_ids + org_ids

    with celery_processes(tmp_path, "worker", "beat", BILLING_POLL_INTERVAL_S="1") as procs:
        done = wait_for(
            lambda: (
                UsageRecord.objects.filter(request_id__in=everything, state="billed").count()
                == len(everything)
            ),
            timeout_s=90,
        )
        assert done, "\n".join(p.output() for p in procs)

    pro_total = sum(cost_nanousd(i) for i in pro_ids)
    assert pools(pro_payer) == {"included": 0, "prepaid": 0, "payg": -(pro_total - 3_000)}
    free_total = sum(cost_nanousd(i) for i in free_ids)
    assert pools(free_payer) == {"included": 0, "prepaid": 0, "payg": -(free_total - 500)}
    org_total = sum(cost_nanousd(i) for i in org_ids)
    assert pools(org_payer)["included"] == 2 * plans.ORG_SEAT_MONTHLY_NANOUSD - org_total
    assert pools(services.billing_account_get_or_create_for_user(user=member))["included"] == 0
    payable = services.provider_payable_get_or_create(provider=provider)
    assert payable.balance_nanousd == pro_total + free_total + org_total
    assert LedgerTransaction.objects.filter(kind="charge").count() == len(everything)
    assert invariant_violations() == []


def test_a_new_month_grants_fresh_credits_and_the_closed_month_expires_through_the_worker(
    provider, tmp_path
):
    """This month's first charges grant this month's credits lazily; the hourly job (sent to
    the worker) then expires what is left of last month, whose billing has long closed.
    (On the 1st of a month before about 00:35 UTC last month would still be open.)"""
    user = UserFactory(username="monthly", plan="pro")
    payer = services.billing_account_get_or_create_for_user(user=user)
    last_month = timezone.now().replace(day=1) - timedelta(days=3)
    services.credits_ensure_month(billing_account=payer, now=last_month)
    ids = records(provider, payer, user, 3)

    with celery_processes(tmp_path, "worker", "beat", BILLING_POLL_INTERVAL_S="1") as procs:
        done = wait_for(
            lambda: UsageRecord.objects.filter(request_id__in=ids, state="billed").count() == 3,
            timeout_s=90,
        )
        assert done, "\n".join(p.output() for p in procs)
        credits_ensure_month_all.delay()
        closed = wait_for(
            lambda: LedgerTransaction.objects.filter(billing_account=payer, kind="expiry").exists(),
            timeout_s=60,
        )
        assert closed, "\n".join(p.output() for p in procs)

    kinds = list(
        LedgerTransaction.objects.filter(billing_account=payer)
        .order_by("id")
        .values_list("kind", flat=True)
    )
    assert kinds == ["grant", "grant", "charge", "charge", "charge", "expiry"]
    total = sum(cost_nanousd(i) for i in ids)
    assert pools(payer)["included"] == plans.PRO_USER_MONTHLY_NANOUSD - total
    expired = services.platform_account_get_or_create(AccountKind.CREDITS_EXPIRED)
    assert expired.balance_nanousd == plans.PRO_USER_MONTHLY_NANOUSD
    assert invariant_violations() == []
