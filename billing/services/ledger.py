"""The posting engine: balanced ledger transactions written with a fixed number of statements.

Every money movement is a `LedgerTransaction` whose legs are written by one INSERT statement
in the same database transaction; PostgreSQL checks the legs sum to zero and moves the cached
balances (migration 0002). Each posting has an idempotency key: posting it twice writes once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from django.db import connection
from django.utils import timezone

from billing.models import BillingAccount, LedgerTransaction
from billing.services.accounts import accounts_lock
from core.transactions import requires_atomic


@dataclass(frozen=True)
class Leg:
    account_id: int
    amount_nanousd: int


@dataclass(frozen=True)
class Posting:
    """One balanced ledger transaction to write."""

    kind: str
    idempotency_key: str
    legs: Sequence[Leg]
    billing_account_id: int | None = None
    memo: str = ""
    period: date | None = None  # the month the money belongs to (`billing.selectors.period_of`)


@requires_atomic
def postings_write(
    postings: Sequence[Posting], *, actor: str, now: datetime | None = None, locked: bool = False
) -> dict[str, int]:
    """Writes many transactions with two statements: the transactions, then all their legs.

    A posting whose idempotency key is already taken is skipped (`ON CONFLICT DO NOTHING`):
    that is how every money movement is applied at most once. No savepoints, so it stays fast
    inside a large transaction. Returns {idempotency key: transaction id} of those written.
    Every account the legs touch is locked first, in primary-key order (the one global lock
    order, `accounts_lock`), unless the caller says it already holds them all (`locked`): the
    caller's transaction holds the account locks under which it computed the legs.
    """
    for posting in postings:
        if sum(leg.amount_nanousd for leg in posting.legs) != 0:
            raise ValueError(f"unbalanced legs for {posting.idempotency_key}: {posting.legs}")
    if not postings:
        return {}
    if not locked:
        accounts_lock(leg.account_id for p in postings for leg in p.legs)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_ledgertransaction "
            "(kind, idempotency_key, billing_account_id, actor, memo, created_at, period) "
            "SELECT k, key, p, %s, m, %s, d FROM unnest(%s::text[], %s::text[], %s::bigint[], "
            "%s::text[], %s::date[]) AS t(k, key, p, m, d) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, id",
            [
                actor[:200],
                now or timezone.now(),
                [p.kind for p in postings],
                [p.idempotency_key for p in postings],
                [p.billing_account_id for p in postings],
                [p.memo[:500] for p in postings],
                [p.period for p in postings],
            ],
        )
        written = dict(cursor.fetchall())
        legs = [
            (written[p.idempotency_key], leg.account_id, leg.amount_nanousd)
            for p in postings
            if p.idempotency_key in written
            for leg in p.legs
            if leg.amount_nanousd
        ]
        if legs:
            cursor.execute(  # one statement: the database checks each transaction sums to 0
                "INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd) "
                "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])",
                [[t for t, _, _ in legs], [a for _, a, _ in legs], [x for _, _, x in legs]],
            )
    return written


@requires_atomic
def transaction_post(
    *,
    kind: str,
    idempotency_key: str,
    legs: Iterable[Leg],
    actor: str,
    memo: str = "",
    billing_account: BillingAccount | None = None,
    period: date | None = None,
) -> LedgerTransaction | None:
    """Posts one balanced transaction. Returns None if `idempotency_key` was already posted."""
    payer = billing_account and billing_account.pk
    written = postings_write(
        [Posting(kind, idempotency_key, list(legs), payer, memo, period)], actor=actor
    )
    return LedgerTransaction.objects.get(pk=written[idempotency_key]) if written else None
