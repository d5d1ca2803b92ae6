"""The ledger's invariants hold in the database itself, and the services keep them."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from accounts import plans
from billing import services
from billing.models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction
from billing.tests.factories import payer_for_new_user
from core.errors import DomainError

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 15, tzinfo=UTC)
FEB = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC)


def balances(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def sums_match() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM billing_ledgeraccount a LEFT JOIN ("
            " SELECT account_id, sum(amount_nanousd) s FROM billing_ledgerentry GROUP BY 1) e"
            " ON e.account_id = a.id WHERE a.balance_nanousd <> coalesce(e.s, 0)"
        )
        return cursor.fetchone()[0] == 0


def test_a_monthly_grant_is_posted_once_and_balances_follow_entries():
    payer = payer_for_new_user(plan="pro")
    assert services.credits_ensure_month(billing_account=payer, now=JAN) is True
    assert services.credits_ensure_month(billing_account=payer, now=JAN) is False
    assert balances(payer)[AccountKind.INCLUDED] == plans.PRO_USER_MONTHLY_NANOUSD
    granted = services.platform_account_get_or_create(AccountKind.CREDITS_GRANTED)
    granted.refresh_from_db()
    assert granted.balance_nanousd == -plans.PRO_USER_MONTHLY_NANOUSD
    assert sums_match()


def test_unused_included_credits_expire_once_their_months_billing_has_closed():
    """Not at the next month's grant: January's rest waits for January's late charges, then
    expires as January's (`expiry`, period January)."""
    payer = payer_for_new_user(plan="free")
    services.credits_ensure_month(billing_account=payer, now=JAN)
    services.credits_ensure_month(billing_account=payer, now=FEB)
    assert balances(payer)[AccountKind.INCLUDED] == 2 * plans.FREE_USER_MONTHLY_NANOUSD
    services.credits_ensure_month(billing_account=payer, now=FEB + timedelta(hours=1))
    assert balances(payer)[AccountKind.INCLUDED] == plans.FREE_USER_MONTHLY_NANOUSD
    expired = services.platform_account_get_or_create(AccountKind.CREDITS_EXPIRED)
    expired.refresh_from_db()
    assert expired.balance_nanousd == plans.FREE_USER_MONTHLY_NANOUSD
    kinds = list(
        LedgerTransaction.objects.filter(billing_account=payer)
        .order_by("id")
        .values_list("kind", "period")
    )
    assert kinds == [
        ("grant", date(2026, 1, 1)),
        ("grant", date(2026, 2, 1)),
        ("expiry", date(2026, 1, 1)),
    ]


def test_a_top_up_is_idempotent_by_its_key():
    payer = payer_for_new_user()
    for _ in range(3):
        services.credits_top_up(
            billing_account=payer,
            amount_nanousd=5_000_000_000,
            actor="admin",
            idempotency_key="invoice-42",
        )
    assert balances(payer)[AccountKind.PREPAID] == 5_000_000_000


def test_the_database_refuses_to_update_or_delete_an_entry():
    payer = payer_for_new_user()
    services.credits_top_up(
        billing_account=payer, amount_nanousd=10, actor="t", idempotency_key="k"
    )
    entry = LedgerEntry.objects.first()
    for sql in (
        "UPDATE billing_ledgerentry SET amount_nanousd = 1 WHERE id = %s",
        "DELETE FROM billing_ledgerentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match=r"append-only|permission denied"),  # 0007
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [entry.pk])
    assert LedgerEntry.objects.get(pk=entry.pk).amount_nanousd == entry.amount_nanousd


def test_the_database_refuses_an_unbalanced_transaction():
    payer = payer_for_new_user()
    prepaid = services.pools_get(payer)[AccountKind.PREPAID]
    txn = LedgerTransaction.objects.create(kind="adjustment", idempotency_key="x", actor="sql")
    with (
        pytest.raises(IntegrityError, match="does not sum to zero"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd) "
            "VALUES (%s, %s, 1000)",
            [txn.pk, prepaid.pk],
        )
    prepaid.refresh_from_db()
    assert prepaid.balance_nanousd == 0


def test_the_database_refuses_to_set_a_balance_directly():
    payer = payer_for_new_user()
    prepaid = services.pools_get(payer)[AccountKind.PREPAID]
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():  # 0007
        LedgerAccount.objects.filter(pk=prepaid.pk).update(balance_nanousd=10**12)


def test_an_adjustment_needs_a_reason_and_cannot_make_a_pool_negative():
    payer = payer_for_new_user()
    with pytest.raises(DomainError, match="reason"):
        services.ledger_adjust(
            billing_account=payer,
            pool="prepaid",
            amount_nanousd=5,
            actor="admin",
            memo=" ",
            idempotency_key="a",
        )
    with pytest.raises(DomainError, match="below zero"):
        services.ledger_adjust(
            billing_account=payer,
            pool="prepaid",
            amount_nanousd=-5,
            actor="admin",
            memo="oops",
            idempotency_key="b",
        )
    services.ledger_adjust(
        billing_account=payer,
        pool="payg",
        amount_nanousd=-5,
        actor="admin",
        memo="late fee",
        idempotency_key="c",
    )
    assert balances(payer)[AccountKind.PAYG] == -5
    assert sums_match()


def test_the_grant_month_is_the_utc_month_whatever_the_clocks_zone():
    """At 00:30 on 1 February in UTC+2 it is still January in UTC: the grant belongs to
    January, the month the limits check asks about (one key rule for both)."""
    from datetime import timedelta, timezone

    from billing import limits

    payer = payer_for_new_user(plan="free")
    local_feb_first = datetime(2026, 2, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))

    services.credits_ensure_month(billing_account=payer, now=local_feb_first)

    keys = set(LedgerTransaction.objects.filter(billing_account=payer).values_list(
        "idempotency_key", flat=True
    ))  # fmt: skip
    assert keys == {f"grant:{payer.pk}:2026-01"}
    assert limits.state_params(payer.pk, local_feb_first)["grant_key"] in keys
