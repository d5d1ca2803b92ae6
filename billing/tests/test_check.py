"""`billing_check` detects each kind of corruption of the books (issue 11, defect 8).

Each test corrupts committed books as the tables' owner, inside one transaction on the owner's
connection (the guard triggers disabled there, or a constraint dropped, when the database
itself would refuse the corruption), runs the command on that same transaction, and rolls it
all back. The command must exit 1 and name the violation.
"""

import contextlib
import io

import pytest
from django.core.management import call_command
from django.db import connections, transaction

from accounts.tests.factories import UserFactory
from billing import services
from billing.models import AccountKind, BillingAccount
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "owner"])

USD = 1_000_000_000
COST = USD // 20  # $0.05: below the review threshold, charged at once


class Rollback(Exception):
    pass


@pytest.fixture
def books() -> dict:
    """Committed: a victim with $100 prepaid and three charges (the first refunded), a thief
    with empty pools, a payer without pools."""
    provider = ProviderFactory(slug="together")
    victim, thief = payer_for_new_user(plan="free"), payer_for_new_user(plan="free")
    services.credits_top_up(
        billing_account=victim, amount_nanousd=100 * USD, actor="t", idempotency_key="top-up"
    )
    records = [pending_usage(provider=provider, payer=victim, request_id=f"r{i}") for i in range(3)]
    services.cost_batch_apply(provider=provider, costs={f"r{i}": COST for i in range(3)})
    for record in records:
        record.refresh_from_db()
    services.charge_refund(usage_record=records[0], actor="finance", memo="bad answer")
    victim_pools, thief_pools = services.pools_get(victim), services.pools_get(thief)
    return {
        "victim": victim.pk,
        "victim_prepaid": victim_pools[AccountKind.PREPAID].pk,
        "thief_payg": thief_pools[AccountKind.PAYG].pk,
        "thief_prepaid": thief_pools[AccountKind.PREPAID].pk,
        "bare_payer": BillingAccount.objects.create(user=UserFactory()).pk,
        "payable": services.provider_payable_get_or_create(provider=provider).pk,
        "record": records[1].pk,
        "charge": records[1].charge_id,
        "charge2": records[2].charge_id,
        "refunded_charge": records[0].charge_id,
    }


def check(using: str = "default") -> tuple[int, str]:
    """(exit status, stderr) of `billing_check` on that connection."""
    err = io.StringIO()
    try:
        call_command("billing_check", database=using, stdout=io.StringIO(), stderr=err)
    except SystemExit as exit_:
        return exit_.code, err.getvalue()
    return 0, err.getvalue()


def check_corrupted(statements: list[str], params: dict) -> tuple[int, str]:
    """Runs `statements` as the owner, then `billing_check` in the same transaction; rolls
    back."""
    with contextlib.suppress(Rollback), transaction.atomic(using="owner"):
        with connections["owner"].cursor() as cursor:
            for sql in statements:
                cursor.execute(sql, params)
        result = check(using="owner")
        raise Rollback
    return result


# The corrupted leg below: the victim's first leg of a charge.
ENTRIES_MUTABLE = "ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_entry_no_update_delete"
BALANCES_MUTABLE = "ALTER TABLE billing_ledgeraccount DISABLE TRIGGER billing_balance_guard"

CORRUPTIONS = {
    "transaction does not sum to zero": [
        ENTRIES_MUTABLE,
        "UPDATE billing_ledgerentry SET amount_nanousd = amount_nanousd - 1 "
        "WHERE id = (SELECT min(e.id) FROM billing_ledgerentry e JOIN billing_ledgeraccount a "
        "ON a.id = e.account_id WHERE e.transaction_id = %(charge)s "
        "AND a.billing_account_id = %(victim)s)",
    ],
    "cached balance differs from the sum of its entries": [
        BALANCES_MUTABLE,
        "UPDATE billing_ledgeraccount SET balance_nanousd = balance_nanousd + 1 "
        "WHERE id = %(victim_prepaid)s",
    ],
    "included or prepaid pool below zero": [
        BALANCES_MUTABLE,
        "ALTER TABLE billing_ledgeraccount DROP CONSTRAINT billing_ledgeraccount_pool_non_negative",
        "UPDATE billing_ledgeraccount SET balance_nanousd = -1 WHERE id = %(thief_prepaid)s",
    ],
    "billed usage record without exactly one charge of its cost": [
        "UPDATE billing_usagerecord SET cost_nanousd = cost_nanousd + 1 WHERE id = %(record)s",
    ],
    "charge transaction not linked to exactly one usage record": [
        "ALTER TABLE billing_usagerecord DROP CONSTRAINT billing_usagerecord_billed_has_charge",
        "UPDATE billing_usagerecord SET charge_id = NULL WHERE id = %(record)s",
    ],
    "usage record charged although not billed": [
        "ALTER TABLE billing_usagerecord DROP CONSTRAINT billing_usagerecord_billed_has_charge",
        "UPDATE billing_usagerecord SET state = 'pending' WHERE id = %(record)s",
    ],
    "charge leg outside its payer's pools and its provider's payable": [
        ENTRIES_MUTABLE,  # the victim's leg of a charge now draws on the thief's pool
        "UPDATE billing_ledgerentry SET account_id = %(thief_payg)s "
        "WHERE id = (SELECT min(e.id) FROM billing_ledgerentry e JOIN billing_ledgeraccount a "
        "ON a.id = e.account_id WHERE e.transaction_id = %(charge)s "
        "AND a.billing_account_id = %(victim)s)",
    ],
    "refund is not its charge negated": [
        # Balanced and posted the normal way (the database has no objection): a "refund" of
        # one nano-USD for a $0.05 charge.
        "WITH t AS (INSERT INTO billing_ledgertransaction (kind, idempotency_key, "
        "billing_account_id, actor, memo, created_at) VALUES ('refund', "
        "'refund:' || %(charge2)s, %(victim)s, 'x', 'x', now()) RETURNING id) "
        "INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd) "
        "SELECT id, %(victim_prepaid)s, 1 FROM t UNION ALL SELECT id, %(payable)s, -1 FROM t",
    ],
    "payer pool leg in another payer's transaction": [
        # The victim's $100 prepaid pool handed to another payer.
        "ALTER TABLE billing_ledgeraccount DISABLE TRIGGER billing_account_identity_guard",
        "UPDATE billing_ledgeraccount SET billing_account_id = %(bare_payer)s "
        "WHERE id = %(victim_prepaid)s",
    ],
}


@pytest.mark.parametrize("violation", list(CORRUPTIONS))
def test_billing_check_names_each_kind_of_corruption(books, violation):
    assert check() == (0, "")

    status, report = check_corrupted(CORRUPTIONS[violation], books)

    assert status == 1
    assert f"VIOLATION {violation}:" in report
    assert check() == (0, "")  # rolled back


def test_the_database_accepts_a_refund_that_only_billing_check_catches(books):
    """The refund corruption needs no trigger disabled: the application role could post it."""
    with contextlib.suppress(Rollback), transaction.atomic():
        with connections["default"].cursor() as cursor:
            cursor.execute(CORRUPTIONS["refund is not its charge negated"][0], books)
        status, report = check()
        raise Rollback
    assert status == 1
    assert "VIOLATION refund is not its charge negated:" in report
    assert report.count("VIOLATION") == 2  # one account off by one, the other by minus one


def test_a_second_refund_of_a_charge_under_another_key_is_caught(books):
    """Found by review: `refund:0<charge id>` passed the unique key and, being the charge
    negated exactly, every per-refund check; the payer was refunded twice."""
    with contextlib.suppress(Rollback), transaction.atomic():
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "WITH t AS (INSERT INTO billing_ledgertransaction (kind, idempotency_key, "
                "billing_account_id, actor, memo, created_at) VALUES ('refund', "
                "'refund:0' || %(refunded_charge)s, %(victim)s, 'x', 'x', now()) RETURNING id) "
                "INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd) "
                "SELECT t.id, e.account_id, -e.amount_nanousd FROM t, billing_ledgerentry e "
                "WHERE e.transaction_id = %(refunded_charge)s",
                books,
            )
        status, report = check()
        raise Rollback
    assert status == 1
    assert "VIOLATION refund is not its charge negated:" in report
