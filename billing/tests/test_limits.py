"""Who may start a request before the router forwards it (credits, debt, spending limits)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from accounts import plans
from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    token_for,
)
from billing import services
from billing.limits import Decision, payer_may_start
from billing.models import BillingAccount, InFlight, UsageState
from billing.tests.factories import pending_usage
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
LAST_MONTH = datetime(2026, 2, 27, 12, tzinfo=UTC)
USD = 1_000_000_000


@pytest.fixture
def provider():
    return ProviderFactory(slug="together")


def user_payer(plan: str = "free", name: str = "bob") -> BillingAccount:
    return services.billing_account_get_or_create_for_user(
        user=UserFactory(username=name, plan=plan)
    )


def org_payer(*, plan: str = "team", seats: int = 1, limit: int | None = None, name="acme"):
    org = OrganizationFactory(name=name, plan=plan, seats=seats, spending_limit_nanousd=limit)
    return services.billing_account_get_or_create_for_organization(organization=org)


def fresh(payer: BillingAccount) -> BillingAccount:
    """As the router would have it: loaded from the database, owner not yet fetched."""
    return BillingAccount.objects.get(pk=payer.pk)


def charge(provider, payer, cost: int, *, request_id: str, now=NOW) -> None:
    pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=now)
    services.cost_batch_apply(provider=provider, costs={request_id: cost}, now=now)


def pending(provider, payer, estimate: int, *, request_id: str) -> None:
    record = pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=NOW)
    record.estimated_cost_nanousd = estimate
    record.save(update_fields=["estimated_cost_nanousd"])


def adjust(payer, pool: str, amount: int, key: str) -> None:
    services.ledger_adjust(
        billing_account=payer,
        pool=pool,
        amount_nanousd=amount,
        actor="test",
        memo="test setup",
        idempotency_key=key,
    )


# --- users without pay-as-you-go ----------------------------------------------------------------
def test_a_free_user_with_included_credits_may_start(provider):
    payer = user_payer()
    services.credits_ensure_month(billing_account=payer, now=NOW)

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)

    assert decision == Decision(allowed=True, reason="", code="ok")


def test_a_free_user_whose_credits_ran_out_exactly_is_refused_with_a_clear_reason(provider):
    payer = user_payer()
    charge(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD, request_id="all")

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)

    assert decision.allowed is False
    assert decision.code == "no_credits"
    assert decision.reason == (
        "User bob has no credits left (its plan includes $0.10 per month); buy prepaid "
        "credits or upgrade to PRO to continue."
    )


def test_a_free_user_with_prepaid_credits_may_start_after_the_included_ones_are_spent(provider):
    payer = user_payer()
    charge(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD, request_id="all")
    services.credits_top_up(
        billing_account=payer, amount_nanousd=1, actor="t", idempotency_key="one-nano"
    )

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_a_debt_blocks_a_free_user_even_with_credits_left(provider):
    payer = user_payer()
    charge(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD + 250_000_000, request_id="big")
    services.credits_top_up(
        billing_account=payer, amount_nanousd=5 * USD, actor="t", idempotency_key="later"
    )

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)

    assert decision.allowed is False
    assert decision.code == "unpaid_balance"
    assert "User bob has an unpaid balance of $0.25" in decision.reason


def test_a_settled_debt_no_longer_blocks_a_free_user(provider):
    payer = user_payer()
    charge(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD + 250_000_000, request_id="big")
    services.credits_top_up(
        billing_account=payer, amount_nanousd=USD, actor="t", idempotency_key="later"
    )
    adjust(payer, "payg", 250_000_000, "settle")

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_a_new_free_user_may_start_before_their_first_grant_is_posted():
    payer = user_payer()  # no grant yet: the first charge or the hourly job posts it

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_last_months_spent_credits_do_not_block_a_free_user_in_a_new_month(provider):
    payer = user_payer()
    charge(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD, request_id="feb", now=LAST_MONTH)
    assert payer_may_start(billing_account=fresh(payer), now=LAST_MONTH).allowed is False

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_a_free_organization_has_no_pay_as_you_go(provider):
    payer = org_payer(plan="free")

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)

    assert decision.allowed is False
    assert decision.code == "no_credits"
    assert decision.reason.startswith("Organization acme has no credits left")


# --- pay-as-you-go ------------------------------------------------------------------------------
def test_a_pro_user_in_debt_may_still_start(provider):
    payer = user_payer(plan="pro")
    charge(provider, payer, 10 * USD, request_id="big")

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_an_organization_without_a_limit_may_always_start(provider):
    payer = org_payer()
    charge(provider, payer, 1_000 * USD, request_id="huge")

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_an_organization_under_its_limit_may_start(provider):
    payer = org_payer(seats=1, limit=50 * USD)  # $2.00 included
    charge(provider, payer, 2 * USD + 49 * USD, request_id="r1")  # $49.00 pay-as-you-go
    pending(provider, payer, 999_999_999, request_id="p1")  # $49.999999999 with it

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_an_organization_at_its_limit_with_pending_estimates_is_refused(provider):
    payer = org_payer(seats=1, limit=50 * USD)
    charge(provider, payer, 2 * USD + 50 * USD, request_id="r1")  # exactly the limit

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)
    assert decision.allowed is False
    assert decision.reason == (
        "Organization acme reached its monthly spending limit of $50.00 ($50.00 spent or pending)."
    )


def test_pending_estimates_count_toward_the_spending_limit(provider):
    payer = org_payer(seats=1, limit=50 * USD)
    charge(provider, payer, 2 * USD + 49_900_000_000, request_id="r1")  # $49.90 spent
    pending(provider, payer, 120_000_000, request_id="p1")
    pending(provider, payer, 80_000_000, request_id="p2")

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)

    assert decision == Decision(
        allowed=False,
        reason="Organization acme reached its monthly spending limit of $50.00 "
        "($50.10 spent or pending).",
        code="spending_limit_reached",
    )


def test_only_pending_records_count_not_billed_or_failed_ones(provider):
    payer = org_payer(seats=1, limit=50 * USD)
    charge(provider, payer, 2 * USD + 49 * USD, request_id="r1")  # $49.00 pay-as-you-go
    for state in (UsageState.FAILED_TO_BILL, UsageState.NOT_BILLABLE, UsageState.BYOK):
        pending(provider, payer, 5 * USD, request_id=state)
        payer.usage_records.filter(request_id=state).update(state=state)
    payer.usage_records.filter(request_id="r1").update(estimated_cost_nanousd=5 * USD)

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True
    pending(provider, payer, USD, request_id="still-pending")
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False


def test_only_this_months_pay_as_you_go_counts_toward_the_limit(provider):
    payer = org_payer(seats=1, limit=50 * USD)
    charge(provider, payer, 2 * USD + 60 * USD, request_id="feb", now=LAST_MONTH)
    assert payer_may_start(billing_account=fresh(payer), now=LAST_MONTH).allowed is False

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_charges_paid_from_credits_do_not_count_toward_the_limit(provider):
    payer = org_payer(seats=10, limit=5 * USD)  # $20.00 included
    charge(provider, payer, 19 * USD, request_id="r1")

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_pending_estimates_that_credits_still_cover_do_not_count_toward_the_limit(provider):
    payer = org_payer(seats=1, limit=USD)
    services.credits_ensure_month(billing_account=payer, now=NOW)  # $2.00 included
    pending(provider, payer, 2_500_000_000, request_id="p1")  # $0.50 beyond the credits

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True
    pending(provider, payer, 500_000_000, request_id="p2")  # now $1.00 beyond

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)
    assert decision.allowed is False
    assert "($1.00 spent or pending)" in decision.reason


def test_a_zero_limit_means_credits_only(provider):
    payer = org_payer(seats=1, limit=0)

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True
    charge(provider, payer, 2 * USD, request_id="all")

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)
    assert decision.allowed is False
    assert "limit of $0.00 ($0.00 spent or pending)" in decision.reason


def test_prepaid_credits_bought_after_reaching_the_limit_let_an_organization_start(provider):
    payer = org_payer(seats=1, limit=USD)
    charge(provider, payer, 3 * USD, request_id="r1")
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False

    services.credits_top_up(
        billing_account=payer, amount_nanousd=USD, actor="t", idempotency_key="topup"
    )

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_another_payers_spend_does_not_count(provider):
    payer = org_payer(seats=1, limit=USD)
    other = org_payer(seats=1, limit=USD, name="other")
    charge(provider, other, 10 * USD, request_id="o1")
    pending(provider, other, 10 * USD, request_id="o2")
    services.credits_ensure_month(billing_account=payer, now=NOW)
    charge(provider, payer, 2 * USD, request_id="mine")  # credits spent, nothing beyond

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


# --- cost ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("records", [1, 30])
def test_the_check_costs_at_most_two_queries_however_many_records(
    provider, django_assert_max_num_queries, records
):
    payer = org_payer(seats=1, limit=1_000 * USD)
    for i in range(records):
        charge(provider, payer, 3 * USD, request_id=f"r{i}")
        pending(provider, payer, USD, request_id=f"p{i}")
    payer = fresh(payer)

    with django_assert_max_num_queries(2):
        assert payer_may_start(billing_account=payer, now=NOW).allowed is True


# --- issue 11: the bound --------------------------------------------------------------------------
def test_defect_1_an_organization_is_refused_a_request_whose_bound_would_pass_its_limit(provider):
    payer = org_payer(seats=1, limit=USD)
    charge(provider, payer, 2 * USD, request_id="credits")  # no credit left, no payg spend
    pending(provider, payer, 950_000_000, request_id="p1")  # $0.95 pending

    fits = payer_may_start(billing_account=fresh(payer), now=NOW, estimate_nanousd=50_000_000)
    passes = payer_may_start(billing_account=fresh(payer), now=NOW, estimate_nanousd=50_000_001)

    assert fits.allowed is True
    assert (passes.allowed, passes.code) == (False, "spending_limit_reached")
    assert passes.reason == (
        "Organization acme would pass its monthly spending limit of $1.00 ($0.95 spent or "
        "pending) with this request, which may cost up to $0.050000001; set max_tokens lower "
        "or raise the limit."
    )


def test_defect_5_a_free_users_pending_estimates_count_against_its_credits(provider):
    payer = user_payer()  # $0.10 included
    pending(provider, payer, plans.FREE_USER_MONTHLY_NANOUSD - 1, request_id="p1")
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True

    pending(provider, payer, 1, request_id="p2")  # credits no longer exceed pending

    decision = payer_may_start(billing_account=fresh(payer), now=NOW)
    assert (decision.allowed, decision.code) == (False, "no_credits")
    assert decision.reason == (
        "User bob has no credits left beyond $0.10 reserved for requests not yet billed (its "
        "plan includes $0.10 per month); buy prepaid credits or upgrade to PRO to continue."
    )


def test_defect_5_a_free_users_in_flight_reservations_count_against_its_credits(provider):
    payer = user_payer()
    InFlight.objects.create(
        payer=payer,
        estimated_cost_nanousd=plans.FREE_USER_MONTHLY_NANOUSD,
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )

    assert payer_may_start(billing_account=fresh(payer), now=NOW).code == "no_credits"


def test_an_expired_reservation_no_longer_counts(provider):
    payer = org_payer(seats=1, limit=0)  # $2.00 of credits, then nothing
    reservation = InFlight.objects.create(
        payer=payer, estimated_cost_nanousd=2 * USD, created_at=NOW, expires_at=NOW
    )
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True

    reservation.expires_at = NOW + timedelta(seconds=1)
    reservation.save()

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False


def test_defect_6_a_pending_record_past_its_billing_window_stops_counting(provider, settings):
    settings.BILLING_FAILED_AFTER_S = 1800
    payer = org_payer(seats=1, limit=0)
    pending(provider, payer, 2 * USD, request_id="stale")
    records = payer.usage_records.filter(request_id="stale")
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False  # in window

    # Never asked yet, however old: it can still be charged, so it counts.
    records.update(recorded_at=NOW - timedelta(days=1))
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False

    # A record first asked about recently is still inside its window, however old it is.
    records.update(first_asked_at=NOW - timedelta(seconds=1799))
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False

    # First asked a window ago: the poller expires it before asking again; it stops counting.
    records.update(first_asked_at=NOW - timedelta(seconds=1800))
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_defect_6_a_cost_held_for_review_counts_until_reviewed(provider):
    payer = org_payer(seats=1, limit=0)
    pending(provider, payer, 2 * USD, request_id="held")
    payer.usage_records.filter(request_id="held").update(
        state=UsageState.HELD, recorded_at=NOW - timedelta(days=3)
    )

    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is False
    payer.usage_records.filter(request_id="held").update(state=UsageState.REJECTED)
    assert payer_may_start(billing_account=fresh(payer), now=NOW).allowed is True


def test_defect_9_a_refunded_charge_nets_out_of_the_limit_and_the_month_to_date_spend(
    provider, api_client
):
    payer = org_payer(seats=1, limit=USD)
    member = UserFactory(username="acme-member")
    MembershipFactory(user=member, organization=payer.organization)
    charge(provider, payer, 2 * USD, request_id="credits", now=timezone.now())
    charge(provider, payer, 3 * USD, request_id="payg", now=timezone.now())  # $3 payg
    assert payer_may_start(billing_account=fresh(payer)).code == "spending_limit_reached"

    services.charge_refund(
        usage_record=payer.usage_records.get(request_id="payg"), actor="finance", memo="outage"
    )

    assert payer_may_start(billing_account=fresh(payer)).allowed is True
    response = api_client.get(
        "/api/billing/accounts/acme", HTTP_AUTHORIZATION=f"Bearer {token_for(member, 'read')}"
    )
    assert response.status_code == 200, response.content
    assert response.json()["month_to_date_spend_nanousd"] == 2 * USD
