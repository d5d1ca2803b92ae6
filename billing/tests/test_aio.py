"""The router's port to billing (`billing.aio`) on a real async psycopg connection."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from accounts.models import OrgPlan
from accounts.tests.factories import OrganizationFactory
from billing import aio, limits, services
from billing.models import InFlight, ProviderBillingHealth, UsageRecord
from billing.tests.factories import payer_for_new_user
from billing.usage_row import UsageRow
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db(transaction=True)  # the async connection is another session

NOW = datetime.now(UTC)


def run(work):
    """Runs `await work(conn)` on a new autocommit connection to the test database."""
    db = settings.DATABASES["default"]
    conninfo = make_conninfo(
        dbname=db["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=str(db.get("PORT") or "") or None,
    )

    async def main():
        async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
            return await work(conn)

    return asyncio.run(main())


def test_usage_rows_are_inserted_once():
    payer = payer_for_new_user()
    provider = ProviderFactory()
    row = UsageRow.build(
        provider_id=provider.pk, request_id="r1", user_id=payer.user_id, payer_id=payer.pk,
        hub_model_id="a/b", provider_model="b", task="conversational", http_status=200,
        prompt_tokens=1, completion_tokens=2, estimated_cost_nanousd=7, byok=False,
        created_at=NOW,
    )  # fmt: skip
    run(lambda conn: aio.usage_rows_insert(conn, [row, row]))
    run(lambda conn: aio.usage_rows_insert(conn, [row]))
    assert UsageRecord.objects.get().estimated_cost_nanousd == 7


def test_defect_13_a_request_id_the_provider_reuses_keeps_both_requests_on_the_router_path():
    """In one group-commit batch and across batches: the second request with a taken ID is
    kept under a key of its own, never dropped, never charged to the first payer."""
    first, second, third = payer_for_new_user(), payer_for_new_user(), payer_for_new_user()
    provider = ProviderFactory()

    def row(payer, seconds):
        return UsageRow.build(
            provider_id=provider.pk, request_id="dup", user_id=payer.user_id, payer_id=payer.pk,
            hub_model_id="a/b", provider_model="b", task="conversational", http_status=200,
            prompt_tokens=1, completion_tokens=2, estimated_cost_nanousd=7, byok=False,
            created_at=NOW + timedelta(seconds=seconds),
        )  # fmt: skip

    batch = [row(first, 0), row(second, 1)]
    run(lambda conn: aio.usage_rows_insert(conn, batch))
    run(lambda conn: aio.usage_rows_insert(conn, [row(third, 2)]))
    run(lambda conn: aio.usage_rows_insert(conn, batch))  # a writer's retry: nothing new

    assert UsageRecord.objects.get(request_id="dup").payer_id == first.pk
    kept = UsageRecord.objects.filter(request_id__startswith="reused-request-id:")
    assert sorted(kept.values_list("payer_id", flat=True)) == sorted([second.pk, third.pk])
    assert ProviderBillingHealth.objects.get(provider=provider).reused_request_ids_total == 2


def test_missing_request_ids_are_counted_per_provider():
    first, second = ProviderFactory(), ProviderFactory()
    ids = [first.pk, first.pk, second.pk]
    run(lambda conn: aio.missing_request_ids_count(conn, provider_ids=ids))
    run(lambda conn: aio.missing_request_ids_count(conn, provider_ids=[first.pk]))
    totals = dict(
        ProviderBillingHealth.objects.values_list("provider_id", "missing_request_ids_total")
    )
    assert totals == {first.pk: 3, second.pk: 1}


def test_a_payer_id_is_found_for_a_user_or_an_organization():
    payer = payer_for_new_user()
    org = OrganizationFactory(plan=OrgPlan.TEAM)
    org_payer = services.billing_account_get_or_create_for_organization(organization=org)

    def get(**kwargs):
        return run(lambda conn: aio.payer_id_get(conn, **kwargs))

    assert get(user_id=payer.user_id, org_id=None) == payer.pk
    assert get(user_id=payer.user_id, org_id=org.pk) == org_payer.pk
    assert get(user_id=payer.user_id + 1000, org_id=None) is None


def test_a_payer_with_a_limit_holds_a_reservation_until_it_is_released():
    org = OrganizationFactory(plan=OrgPlan.TEAM, seats=1, spending_limit_nanousd=10**9)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    terms = limits.payer_terms(billing_account=payer)

    decision, reservation = run(
        lambda conn: aio.payer_reserve(conn, terms=terms, estimate_nanousd=5, now=NOW)
    )
    assert decision.allowed and reservation is not None
    assert InFlight.objects.get(pk=reservation).estimated_cost_nanousd == 5
    run(lambda conn: aio.reservations_release(conn, reservation_ids=[reservation]))
    assert not InFlight.objects.exists()


def test_a_free_payer_without_credits_is_refused_and_reserves_nothing():
    payer = payer_for_new_user(plan="free")
    services.ledger_adjust(
        billing_account=payer, pool="payg", amount_nanousd=-1, actor="t", memo="debt",
        idempotency_key="debt",
    )  # fmt: skip
    terms = limits.payer_terms(billing_account=payer)
    decision, reservation = run(
        lambda conn: aio.payer_reserve(conn, terms=terms, estimate_nanousd=5, now=NOW)
    )
    assert (decision.allowed, decision.code, reservation) == (False, limits.DEBT, None)


def test_defect_5_a_free_payer_with_credits_reserves_the_bound_and_is_refused_beyond_them():
    payer = payer_for_new_user(plan="free")  # $0.10 included
    terms = limits.payer_terms(billing_account=payer)

    def reserve(estimate):
        return run(
            lambda conn: aio.payer_reserve(conn, terms=terms, estimate_nanousd=estimate, now=NOW)
        )

    first, first_id = reserve(60_000_000)
    second, second_id = reserve(60_000_000)  # $0.06 in flight < $0.10: one more may start
    third, third_id = reserve(1)  # $0.12 in flight: the credits are spoken for

    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.code == limits.NO_CREDITS and third_id is None
    reserved = InFlight.objects.filter(payer=payer).values_list("id", flat=True)
    assert sorted(reserved) == sorted([first_id, second_id])


def test_a_reservation_replaced_on_fail_over_is_dropped_in_the_same_check():
    org = OrganizationFactory(plan=OrgPlan.TEAM, seats=1, spending_limit_nanousd=0)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    terms = limits.payer_terms(billing_account=payer)  # $2.00 of credits, then nothing
    _, first = run(
        lambda conn: aio.payer_reserve(conn, terms=terms, estimate_nanousd=10**9, now=NOW)
    )

    decision, second = run(
        lambda conn: aio.payer_reserve(
            conn, terms=terms, estimate_nanousd=2 * 10**9, now=NOW, replaces=first
        )
    )

    assert decision.allowed, decision.reason  # $2.00 fits once the $1.00 is dropped
    assert list(InFlight.objects.values_list("id", "estimated_cost_nanousd")) == [
        (second, 2 * 10**9)
    ]


def test_refreshing_reservations_moves_their_expiry_in_one_statement():
    org = OrganizationFactory(plan=OrgPlan.TEAM, seats=1, spending_limit_nanousd=10**9)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    terms = limits.payer_terms(billing_account=payer)
    ids = [
        run(lambda conn: aio.payer_reserve(conn, terms=terms, estimate_nanousd=5, now=NOW))[1]
        for _ in range(3)
    ]
    later = NOW + timedelta(hours=1)

    run(lambda conn: aio.reservations_refresh(conn, reservation_ids=ids[:2], expires_at=later))

    expiries = dict(InFlight.objects.values_list("id", "expires_at"))
    assert [expiries[i] == later for i in ids] == [True, True, False]
