"""Reads for billing, including the invariant checks finance relies on."""

from django.db import connection

from billing.models import AccountKind, BillingAccount

# Each check: (name, SQL returning offending rows as (id, detail)).
INVARIANTS = [
    (
        "transaction does not sum to zero",
        "SELECT transaction_id, sum(amount_nanousd)::text FROM billing_ledgerentry "
        "GROUP BY transaction_id HAVING sum(amount_nanousd) <> 0",
    ),
    (
        "cached balance differs from the sum of its entries",
        "SELECT a.id, a.balance_nanousd || ' vs ' || coalesce(e.s, 0) "
        "FROM billing_ledgeraccount a LEFT JOIN (SELECT account_id, sum(amount_nanousd) s "
        "FROM billing_ledgerentry GROUP BY account_id) e ON e.account_id = a.id "
        "WHERE a.balance_nanousd <> coalesce(e.s, 0)",
    ),
    (
        "included or prepaid pool below zero",
        "SELECT id, balance_nanousd::text FROM billing_ledgeraccount "
        "WHERE kind IN ('included', 'prepaid') AND balance_nanousd < 0",
    ),
    (
        "billed usage record without exactly one charge of its cost",
        "SELECT u.id, coalesce(u.cost_nanousd::text, 'no cost') FROM billing_usagerecord u "
        "LEFT JOIN billing_ledgertransaction t ON t.id = u.charge_id AND t.kind = 'charge' "
        "WHERE u.state = 'billed' AND (t.id IS NULL OR u.cost_nanousd <> ("
        " SELECT coalesce(sum(e.amount_nanousd), 0) FROM billing_ledgerentry e "
        " JOIN billing_ledgeraccount a ON a.id = e.account_id "
        " WHERE e.transaction_id = t.id AND a.kind = 'provider_payable'))",
    ),
    (
        "charge transaction not linked to exactly one usage record",
        "SELECT t.id, t.idempotency_key FROM billing_ledgertransaction t "
        "LEFT JOIN billing_usagerecord u ON u.charge_id = t.id "
        "WHERE t.kind = 'charge' AND u.id IS NULL",
    ),
    (
        "usage record charged although not billed",
        "SELECT id, state FROM billing_usagerecord WHERE state <> 'billed' "
        "AND charge_id IS NOT NULL",
    ),
]


def invariant_violations() -> list[tuple[str, object, str]]:
    """Every violated invariant as (check, id, detail); empty when the books are right."""
    found = []
    with connection.cursor() as cursor:
        for name, sql in INVARIANTS:
            cursor.execute(sql)
            found += [(name, row[0], row[1]) for row in cursor.fetchall()]
    return found


def balances_of(billing_account: BillingAccount) -> dict[str, int]:
    pools = billing_account.pools.all()
    return {
        kind: next((a.balance_nanousd for a in pools if a.kind == kind), 0)
        for kind in (AccountKind.INCLUDED, AccountKind.PREPAID, AccountKind.PAYG)
    }
