"""Charging provider-reported costs: pool order, bill-to, exactly once, concurrency."""

from datetime import UTC, datetime

import pytest
from django.core.management import call_command

from accounts import plans
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from billing import services
from billing.models import LedgerTransaction, UsageRecord, UsageState
from billing.selectors import invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from core.errors import DomainError
from registry.tests.factories import ProviderFactory
from testsupport.processes import run_threads

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


@pytest.fixture
def provider(db):
    return ProviderFactory(slug="together")


@pytest.mark.django_db
def test_a_charge_uses_included_then_prepaid_then_pay_as_you_go(provider):
    payer = payer_for_new_user(plan="pro")  # $2.00 included
    services.credits_top_up(
        billing_account=payer, amount_nanousd=1_000_000_000, actor="t", idempotency_key="t1"
    )
    for i in range(3):
        pending_usage(provider=provider, payer=payer, request_id=f"r{i}", created_at=NOW)

    result = services.cost_batch_apply(
        provider=provider,
        costs={"r0": 1_500_000_000, "r1": 1_000_000_000, "r2": 700_000_000},
        now=NOW,
    )

    assert result.billed == 3
    assert pools(payer) == {"included": 0, "prepaid": 0, "payg": -200_000_000}
    payable = services.provider_payable_get_or_create(provider=provider)
    assert payable.balance_nanousd == 3_200_000_000
    assert invariant_violations() == []


@pytest.mark.django_db
def test_a_free_user_goes_below_zero_rather_than_a_served_request_being_refused(provider):
    payer = payer_for_new_user(plan="free")
    pending_usage(provider=provider, payer=payer, request_id="big", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"big": 350_000_000}, now=NOW)
    assert pools(payer) == {"included": 0, "prepaid": 0, "payg": -250_000_000}


@pytest.mark.django_db
def test_a_bill_to_organization_pays_from_its_seats_credits(provider):
    org = OrganizationFactory(name="acme", plan="team", seats=3)
    member = UserFactory(username="dev")
    MembershipFactory(user=member, organization=org)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    services.usage_record_create(
        provider=provider,
        request_id="o1",
        user=member,
        payer=payer,
        http_status=200,
        created_at=NOW,
    )
    services.cost_batch_apply(provider=provider, costs={"o1": 1_000_000_000}, now=NOW)
    assert pools(payer)["included"] == 3 * plans.ORG_SEAT_MONTHLY_NANOUSD - 1_000_000_000
    user_account = services.billing_account_get_or_create_for_user(user=member)
    assert pools(user_account) == {"included": 0, "prepaid": 0, "payg": 0}


@pytest.mark.django_db
def test_a_zero_cost_is_recorded_without_a_charge(provider):
    payer = payer_for_new_user()
    record = pending_usage(provider=provider, payer=payer, request_id="z", created_at=NOW)
    result = services.cost_batch_apply(provider=provider, costs={"z": 0}, now=NOW)
    record.refresh_from_db()
    assert (result.zero_cost, record.state, record.charge_id) == (1, UsageState.ZERO_COST, None)


@pytest.mark.django_db
def test_applying_the_same_batch_twice_charges_once(provider):
    payer = payer_for_new_user(plan="pro")
    for i in range(5):
        pending_usage(provider=provider, payer=payer, request_id=f"r{i}", created_at=NOW)
    costs = {f"r{i}": 100 + i for i in range(5)}
    first = services.cost_batch_apply(provider=provider, costs=costs, now=NOW)
    second = services.cost_batch_apply(provider=provider, costs=costs, now=NOW)
    assert (first.billed, second.billed, second.already_done) == (5, 0, 5)
    assert LedgerTransaction.objects.filter(kind="charge").count() == 5
    assert pools(payer)["included"] == plans.PRO_USER_MONTHLY_NANOUSD - sum(costs.values())
    call_command("billing_check")


@pytest.mark.django_db
def test_non_billable_requests_are_recorded_but_never_charged(provider):
    payer = payer_for_new_user()
    failed = services.usage_record_create(
        provider=provider, request_id="e", user=payer.user, payer=payer, http_status=503
    )
    no_id = services.usage_record_create(
        provider=provider, request_id=None, user=payer.user, payer=payer, http_status=200
    )
    byok = services.usage_record_create(
        provider=provider, request_id="k", user=payer.user, payer=payer, http_status=200, byok=True
    )
    assert [failed.state, no_id.state, byok.state] == ["not_billable", "not_billable", "byok"]
    result = services.cost_batch_apply(provider=provider, costs={"e": 5, "k": 5}, now=NOW)
    assert result.billed == 0
    assert LedgerTransaction.objects.filter(kind="charge").count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_pollers_applying_the_same_costs_charge_each_request_once(provider):
    payer = payer_for_new_user(plan="pro")
    costs = {}
    for i in range(200):
        pending_usage(provider=provider, payer=payer, request_id=f"c{i}", created_at=NOW)
        costs[f"c{i}"] = 1_000 + i
    results = []
    errors = run_threads(
        2,
        lambda i: results.append(
            services.cost_batch_apply(provider=provider, costs=costs, now=NOW)
        ),
    )
    assert errors == []
    assert sorted(r.billed for r in results) == [0, 200]
    assert UsageRecord.objects.filter(state="billed").count() == 200
    assert pools(payer)["included"] == plans.PRO_USER_MONTHLY_NANOUSD - sum(costs.values())
    assert invariant_violations() == []


@pytest.mark.django_db(transaction=True)
def test_32_threads_charging_one_account_lose_no_update(provider):
    payer = payer_for_new_user(plan="free")
    services.credits_top_up(
        billing_account=payer, amount_nanousd=5_000, actor="t", idempotency_key="seed"
    )
    for i in range(32):
        pending_usage(provider=provider, payer=payer, request_id=f"t{i}", created_at=NOW)

    errors = run_threads(
        32,
        lambda i: services.cost_batch_apply(
            provider=provider, costs={f"t{i}": 10_000_000}, now=NOW
        ),
    )

    assert errors == []
    total = 32 * 10_000_000
    expected_payg = -(total - plans.FREE_USER_MONTHLY_NANOUSD - 5_000)
    assert pools(payer) == {"included": 0, "prepaid": 0, "payg": expected_payg}
    assert services.provider_payable_get_or_create(provider=provider).balance_nanousd == total
    assert invariant_violations() == []


@pytest.mark.django_db
def test_a_refund_gives_each_pool_back_what_it_paid_once(provider):
    payer = payer_for_new_user(plan="free")  # $0.10 included
    record = pending_usage(provider=provider, payer=payer, request_id="r", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"r": 300_000_000}, now=NOW)
    record.refresh_from_db()
    assert pools(payer) == {"included": 0, "prepaid": 0, "payg": -200_000_000}

    refund = services.charge_refund(usage_record=record, actor="finance", memo="outage")
    again = services.charge_refund(usage_record=record, actor="finance", memo="outage")

    assert refund.kind == "refund"
    assert again is None
    expected = {"included": plans.FREE_USER_MONTHLY_NANOUSD, "prepaid": 0, "payg": 0}
    assert pools(payer) == expected
    assert services.provider_payable_get_or_create(provider=provider).balance_nanousd == 0
    record.refresh_from_db()
    assert record.state == UsageState.BILLED  # the charge stays; the refund is a new entry
    assert invariant_violations() == []


@pytest.mark.django_db
def test_only_a_charged_request_can_be_refunded_and_a_reason_is_required(provider):
    payer = payer_for_new_user()
    record = pending_usage(provider=provider, payer=payer, request_id="p", created_at=NOW)
    with pytest.raises(DomainError, match="nothing to refund"):
        services.charge_refund(usage_record=record, actor="finance", memo="why")
    services.cost_batch_apply(provider=provider, costs={"p": 5}, now=NOW)
    record.refresh_from_db()
    with pytest.raises(DomainError, match="reason"):
        services.charge_refund(usage_record=record, actor="finance", memo="  ")
    assert LedgerTransaction.objects.filter(kind="refund").count() == 0
