"""The month a charge belongs to (issue 11, defects 7 and 10): a charge is paid from its
request's month's credits whenever it is polled; a month's included credits expire only once
its billing has closed; grants never go back in time. Clocks are frozen by passing `now`,
never today's date, at the January and the December (year) boundaries."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.conf import settings

from accounts import plans
from billing import services
from billing.models import AccountKind, LedgerTransaction, TransactionKind, UsageRecord
from billing.selectors import charges_nanousd, invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory

MONTHLY = plans.PRO_USER_MONTHLY_NANOUSD  # $2.00
COST = 1_500_000_000  # $1.50
DOLLAR = 1_000_000_000
BOUNDARIES = [  # (a moment in the old month, the first instant of the new one)
    pytest.param(datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), id="jan"),
    pytest.param(datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), id="dec"),
]
CLOSE = timedelta(seconds=settings.BILLING_FAILED_AFTER_S + settings.BILLING_CREDITS_CLOSE_LAG_S)


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def platform(kind) -> int:
    return services.platform_account_get_or_create(kind).balance_nanousd


@pytest.fixture
def provider(db):
    return ProviderFactory(slug="together")


@pytest.mark.django_db
@pytest.mark.parametrize(("old", "new"), BOUNDARIES)
def test_defect_7_a_charge_polled_after_midnight_is_paid_from_its_requests_month(
    provider, old, new
):
    """$1.50 at 23:59:30 of the last day, polled at 00:01: the old month's credit pays it,
    the old month's $0.50 expires once its billing closes, the new month keeps its $2.00."""
    payer = payer_for_new_user(plan="pro")
    services.credits_ensure_month(billing_account=payer, now=old)
    pending_usage(
        provider=provider, payer=payer, request_id="late", created_at=new - timedelta(seconds=30)
    )

    services.cost_batch_apply(
        provider=provider, costs={"late": COST}, now=new + timedelta(minutes=1)
    )
    services.credits_ensure_month(billing_account=payer, now=new + timedelta(minutes=2))
    assert pools(payer)["included"] == 2 * MONTHLY - COST  # the old month is not closed yet
    services.credits_ensure_month(billing_account=payer, now=new + CLOSE)

    assert pools(payer) == {"included": MONTHLY, "prepaid": 0, "payg": 0}
    assert platform(AccountKind.CREDITS_EXPIRED) == MONTHLY - COST
    charge = LedgerTransaction.objects.get(kind=TransactionKind.CHARGE)
    assert charge.period == old.date().replace(day=1)
    assert invariant_violations() == []


@pytest.mark.django_db
@pytest.mark.parametrize(("old", "new"), BOUNDARIES)
def test_defect_7_the_new_months_grant_first_changes_nothing(provider, old, new):
    """The hourly job granted the new month at 00:00:30, before the poll: the late charge
    still draws on the old month's credit, never on the new month's."""
    payer = payer_for_new_user(plan="pro")
    services.credits_ensure_month(billing_account=payer, now=old)
    pending_usage(
        provider=provider, payer=payer, request_id="late", created_at=new - timedelta(seconds=30)
    )
    services.credits_ensure_month(billing_account=payer, now=new + timedelta(seconds=30))
    services.cost_batch_apply(
        provider=provider, costs={"late": COST}, now=new + timedelta(minutes=1)
    )
    services.credits_ensure_month(billing_account=payer, now=new + CLOSE)

    assert pools(payer) == {"included": MONTHLY, "prepaid": 0, "payg": 0}
    assert platform(AccountKind.CREDITS_EXPIRED) == MONTHLY - COST


@pytest.mark.django_db
def test_a_month_with_a_request_still_pending_does_not_close(provider):
    """Its charge may still come (a slow provider, a poller outage): the month's credits wait
    for it, and expire once it is billed."""
    old, new = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    payer = payer_for_new_user(plan="pro")
    services.credits_ensure_month(billing_account=payer, now=old)
    pending_usage(
        provider=provider, payer=payer, request_id="slow", created_at=new - timedelta(minutes=1)
    )
    services.credits_ensure_month(billing_account=payer, now=new + 2 * CLOSE)
    assert pools(payer)["included"] == 2 * MONTHLY  # January is still open

    services.cost_batch_apply(provider=provider, costs={"slow": COST}, now=new + 2 * CLOSE)
    services.credits_ensure_month(billing_account=payer, now=new + 3 * CLOSE)
    assert pools(payer)["included"] == MONTHLY
    assert platform(AccountKind.CREDITS_EXPIRED) == MONTHLY - COST


@pytest.mark.django_db
def test_defect_10_a_poll_cycle_started_before_midnight_never_posts_last_months_grant_late(
    provider,
):
    """A new payer: the hourly job grants February at 00:00:10; a poll cycle whose clock read
    23:59:50 then charges a January request. January is never granted after February (that
    used to expire February's fresh credit for good); the charge goes to pay-as-you-go."""
    payer = payer_for_new_user(plan="pro")
    jan_end = datetime(2026, 2, 1, tzinfo=UTC)
    pending_usage(
        provider=provider, payer=payer, request_id="r", created_at=jan_end - timedelta(minutes=1)
    )
    services.credits_ensure_month(billing_account=payer, now=jan_end + timedelta(seconds=10))

    services.cost_batch_apply(
        provider=provider, costs={"r": COST}, now=jan_end - timedelta(seconds=10)
    )

    assert pools(payer) == {"included": MONTHLY, "prepaid": 0, "payg": -COST}
    grants = LedgerTransaction.objects.filter(kind=TransactionKind.GRANT, billing_account=payer)
    assert list(grants.values_list("period", flat=True)) == [date(2026, 2, 1)]
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.EXPIRY).exists()
    assert invariant_violations() == []


@pytest.mark.django_db
def test_the_month_spend_of_a_late_charge_is_its_requests_month(provider):
    payer = payer_for_new_user(plan="pro")
    jan_end = datetime(2026, 2, 1, tzinfo=UTC)
    services.credits_ensure_month(billing_account=payer, now=jan_end - timedelta(days=2))
    pending_usage(
        provider=provider, payer=payer, request_id="r", created_at=jan_end - timedelta(seconds=5)
    )
    services.cost_batch_apply(
        provider=provider, costs={"r": 3 * MONTHLY}, now=jan_end + timedelta(minutes=1)
    )
    jan = services.billing_account_get_or_create_for_user(user=payer.user)
    jan_start = datetime(2026, 1, 1, tzinfo=UTC)
    feb_end = datetime(2026, 3, 1, tzinfo=UTC)
    assert charges_nanousd(billing_account=jan, start=jan_start, end=jan_end) == 3 * MONTHLY
    assert charges_nanousd(billing_account=jan, start=jan_end, end=feb_end) == 0
    assert UsageRecord.objects.get(request_id="r").state == "billed"


@pytest.mark.django_db
def test_credit_a_refund_gives_back_to_a_closed_month_expires_with_the_next_close(provider):
    """January's charge refunded in February, after January closed: the included part comes
    back into the pool. It is spent with February, and what is left of it expires when
    February closes, never taking March's credit."""
    jan, feb, mar = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))
    payer = payer_for_new_user(plan="pro")
    services.credits_ensure_month(billing_account=payer, now=jan + timedelta(days=14))
    record = pending_usage(
        provider=provider, payer=payer, request_id="jan", created_at=jan + timedelta(days=19)
    )
    services.cost_batch_apply(provider=provider, costs={"jan": COST}, now=jan + timedelta(days=19))
    services.credits_ensure_month(billing_account=payer, now=feb + CLOSE)  # Feb granted, Jan closed
    assert pools(payer)["included"] == MONTHLY
    record.refresh_from_db()
    services.charge_refund(usage_record=record, actor="finance", memo="outage")
    assert pools(payer)["included"] == MONTHLY + COST

    pending_usage(
        provider=provider, payer=payer, request_id="feb", created_at=feb + timedelta(days=9)
    )
    services.cost_batch_apply(
        provider=provider, costs={"feb": 3 * DOLLAR}, now=feb + timedelta(days=9)
    )
    assert pools(payer)["included"] == MONTHLY + COST - 3 * DOLLAR  # $0.50 left
    services.credits_ensure_month(billing_account=payer, now=mar + timedelta(seconds=10))
    services.credits_ensure_month(billing_account=payer, now=mar + CLOSE)

    assert pools(payer)["included"] == MONTHLY  # March's whole, nothing stray left
    assert invariant_violations() == []


@pytest.mark.django_db
def test_a_month_with_a_cost_held_for_review_stays_open_until_it_is_decided(provider):
    """Found by review: January closed while a January cost was held; approved later, it was
    paid from pay-as-you-go instead of January's credit."""
    old, new = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    payer = payer_for_new_user(plan="pro")
    services.credits_ensure_month(billing_account=payer, now=old)
    record = pending_usage(
        provider=provider, payer=payer, request_id="held", created_at=new - timedelta(seconds=30)
    )
    UsageRecord.objects.filter(pk=record.pk).update(estimated_cost_nanousd=1_000_000)
    services.cost_batch_apply(
        provider=provider, costs={"held": COST}, now=new + timedelta(minutes=1)
    )
    record.refresh_from_db()
    assert record.state == "held"
    services.credits_ensure_month(billing_account=payer, now=new + 2 * CLOSE)
    assert pools(payer)["included"] == 2 * MONTHLY  # January still open

    services.held_costs_approve(
        usage_records=[record], actor="finance", memo="checked", now=new + 2 * CLOSE
    )
    services.credits_ensure_month(billing_account=payer, now=new + 3 * CLOSE)

    assert pools(payer) == {"included": MONTHLY, "prepaid": 0, "payg": 0}
    assert platform(AccountKind.CREDITS_EXPIRED) == MONTHLY - COST
