"""Reads for billing, including the invariant checks finance relies on."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.db import connections
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from accounts import plans
from accounts import selectors as accounts_selectors
from accounts.models import Role, User
from billing.models import (
    PAYER_KINDS,
    AccountKind,
    BillingAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
    UsageRecord,
    UsageState,
)

# Each check: (name, SQL returning offending rows as (id, detail)); enum values are the
# parameters of `_INVARIANT_PARAMS`.
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
        "WHERE kind IN (%(included)s, %(prepaid)s) AND balance_nanousd < 0",
    ),
    (
        "billed usage record without exactly one charge of its cost",
        "SELECT u.id, coalesce(u.cost_nanousd::text, 'no cost') FROM billing_usagerecord u "
        "LEFT JOIN billing_ledgertransaction t ON t.id = u.charge_id AND t.kind = %(charge)s "
        "WHERE u.state = %(billed)s AND (t.id IS NULL OR u.cost_nanousd <> ("
        " SELECT coalesce(sum(e.amount_nanousd), 0) FROM billing_ledgerentry e "
        " JOIN billing_ledgeraccount a ON a.id = e.account_id "
        " WHERE e.transaction_id = t.id AND a.kind = %(provider_payable)s))",
    ),
    (
        "charge transaction not linked to exactly one usage record",
        "SELECT t.id, t.idempotency_key FROM billing_ledgertransaction t "
        "LEFT JOIN billing_usagerecord u ON u.charge_id = t.id "
        "WHERE t.kind = %(charge)s AND u.id IS NULL",
    ),
    (
        "usage record charged although not billed",
        "SELECT id, state FROM billing_usagerecord WHERE state <> %(billed)s "
        "AND charge_id IS NOT NULL",
    ),
    (
        # A charge moves its record's payer's money to its record's provider, nothing else.
        "charge leg outside its payer's pools and its provider's payable",
        "SELECT t.id, 'account ' || a.id || ' (' || a.kind || ') ' || e.amount_nanousd "
        "FROM billing_ledgertransaction t "
        "JOIN billing_ledgerentry e ON e.transaction_id = t.id "
        "JOIN billing_ledgeraccount a ON a.id = e.account_id "
        "LEFT JOIN billing_usagerecord u ON u.charge_id = t.id "
        "WHERE t.kind = %(charge)s AND NOT coalesce("
        " (a.kind = ANY(%(payer_kinds)s) AND a.billing_account_id = t.billing_account_id"
        "  AND t.billing_account_id = u.payer_id)"
        " OR (a.kind = %(provider_payable)s AND a.provider_id = u.provider_id), false)",
    ),
    (
        # `refund:<charge id>` (billing.services.corrections.charge_refund): per account, the
        # refund's legs and its charge's add up to zero, for the charge's payer.
        "refund is not its charge negated",
        "WITH r AS (SELECT t.id, t.billing_account_id AS payer, c.id AS charge_id, "
        " c.billing_account_id AS charge_payer FROM billing_ledgertransaction t "
        " LEFT JOIN billing_ledgertransaction c ON c.kind = %(charge)s "
        "  AND c.id = substring(t.idempotency_key FROM '^refund:([1-9][0-9]{0,17})$')::bigint "
        " WHERE t.kind = %(refund)s) "
        "SELECT r.id, 'account ' || e.account_id || ' off by ' || sum(e.amount_nanousd) "
        "FROM r JOIN billing_ledgerentry e ON e.transaction_id IN (r.id, r.charge_id) "
        "WHERE r.charge_id IS NOT NULL GROUP BY r.id, e.account_id "
        "HAVING sum(e.amount_nanousd) <> 0 "
        "UNION ALL SELECT r.id, 'refunds no charge' FROM r WHERE r.charge_id IS NULL "
        "UNION ALL SELECT r.id, 'payer ' || coalesce(r.payer::text, 'none') || ', its charge''s "
        "' || coalesce(r.charge_payer::text, 'none') FROM r "
        "WHERE r.charge_id IS NOT NULL AND r.payer IS DISTINCT FROM r.charge_payer "
        # Once per charge, under its one key (`refund:<charge id>`, no leading zero).
        "UNION ALL SELECT min(r.id), 'charge ' || r.charge_id || ' refunded ' || count(*) "
        "|| ' times' FROM r WHERE r.charge_id IS NOT NULL GROUP BY r.charge_id "
        "HAVING count(*) > 1",
    ),
    (
        # Every leg on a payer's pool (included, prepaid, pay-as-you-go) is in a transaction of
        # that payer, whatever its kind: a pool handed to another payer shows here.
        "payer pool leg in another payer's transaction",
        "SELECT t.id, 'account ' || a.id || ' of payer ' || a.billing_account_id || ' in a "
        "transaction of ' || coalesce(t.billing_account_id::text, 'no payer') "
        "FROM billing_ledgerentry e "
        "JOIN billing_ledgeraccount a ON a.id = e.account_id "
        "JOIN billing_ledgertransaction t ON t.id = e.transaction_id "
        "WHERE a.kind = ANY(%(payer_kinds)s) "
        "AND a.billing_account_id IS DISTINCT FROM t.billing_account_id",
    ),
]


_INVARIANT_PARAMS = {
    "included": AccountKind.INCLUDED,
    "prepaid": AccountKind.PREPAID,
    "provider_payable": AccountKind.PROVIDER_PAYABLE,
    "payer_kinds": [str(kind) for kind in PAYER_KINDS],
    "charge": TransactionKind.CHARGE,
    "refund": TransactionKind.REFUND,
    "billed": UsageState.BILLED,
}


def invariant_violations(using: str = "default") -> list[tuple[str, object, str]]:
    """Every violated invariant as (check, id, detail); empty when the books are right.
    `using`: the database alias to read (the tests read the owner's uncommitted corruption)."""
    found = []
    with connections[using].cursor() as cursor:
        for name, sql in INVARIANTS:
            cursor.execute(sql, _INVARIANT_PARAMS)
            found += [(name, row[0], row[1]) for row in cursor.fetchall()]
    return found


def balances_of(billing_account: BillingAccount) -> dict[str, int]:
    pools = billing_account.pools.all()
    return {
        kind: next((a.balance_nanousd for a in pools if a.kind == kind), 0)
        for kind in (AccountKind.INCLUDED, AccountKind.PREPAID, AccountKind.PAYG)
    }


def monthly_credit_nanousd_get(*, billing_account: BillingAccount) -> int:
    """The payer's included credits per month, from its owner's plan (`accounts.plans`)."""
    if billing_account.user_id:
        return plans.monthly_credit_nanousd(user_plan_name=billing_account.user.plan)
    org = billing_account.organization
    return plans.monthly_credit_nanousd(org_plan_name=org.plan, seats=org.seats)


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the calendar month (UTC) containing `now`."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def month_label(moment: datetime) -> str:
    """`YYYY-MM` of the calendar month (UTC) containing `moment`: the month a grant, a charge
    or a limit belongs to, whatever zone the clock reads in."""
    return f"{month_bounds(moment)[0]:%Y-%m}"


def period_of(moment: datetime) -> date:
    """The first day of the calendar month (UTC) containing `moment`: a ledger transaction's
    `period`, the month its money belongs to."""
    return month_bounds(moment)[0].date()


def period_start(period: date) -> datetime:
    """The first instant (UTC) of a period."""
    return datetime.combine(period, time(), tzinfo=UTC)


def label_of(period: date) -> str:
    """`YYYY-MM` of a period."""
    return f"{period:%Y-%m}"


# LIKE pattern of the monthly grants' keys (extra grants are `grant_extra:...`).
MONTHLY_GRANT_KEYS = "grant:%"
# Months a payer's included credits can be open at once: a month closes about half an hour
# after its end (`billing.services.credits.credits_expire_closed`), later only while one of its
# requests is still pending; only this many months back are looked at.
OPEN_MONTHS_MAX = 3


def oldest_open_period(now: datetime) -> date:
    """The oldest month whose included credits may still be open at `now`."""
    start = month_bounds(now)[0]
    for _ in range(OPEN_MONTHS_MAX - 1):
        start = month_bounds(start - timedelta(days=1))[0]
    return start.date()


def grant_key(billing_account_id: int, label: str) -> str:
    """Idempotency key of an account's monthly grant (`label` from `month_label`)."""
    return f"grant:{billing_account_id}:{label}"


# --- what a user may read -----------------------------------------------------------------------
def billing_account_visible(*, viewer: User, name: str) -> BillingAccount | None:
    """The billing account called `name` if `viewer` may read it, else None.

    A user reads their own account (named after them); members of an organization, whatever
    their role, read the organization's. A payer that was never charged has no row yet: it is
    returned unsaved (pk None), so reading never writes.
    """
    if name.lower() == viewer.username.lower():
        account = BillingAccount.objects.select_related("user").filter(user=viewer).first()
        return account or BillingAccount(user=viewer)
    org = accounts_selectors.organization_get(name=name)
    if org is None or accounts_selectors.membership_get(user=viewer, organization=org) is None:
        return None
    account = BillingAccount.objects.filter(organization=org).first()
    if account is None:
        return BillingAccount(organization=org)
    account.organization = org
    return account


def charges_nanousd(*, billing_account: BillingAccount, start: datetime, end: datetime) -> int:
    """What the payer was charged for the month starting at `start` (UTC; `end` is its end),
    whichever pool paid, net of refunds: minus the sum of its pools' legs of `charge` and
    `refund` transactions whose `period` is that month (the request's month). Transactions
    written before `period` existed (null) count by when they were posted, in [start, end)."""
    if billing_account.pk is None:
        return 0
    in_month = Q(transaction__period=start.astimezone(UTC).date()) | Q(
        transaction__period__isnull=True,
        transaction__created_at__gte=start,
        transaction__created_at__lt=end,
    )
    total = LedgerEntry.objects.filter(
        in_month,
        account__billing_account=billing_account,
        account__kind__in=PAYER_KINDS,
        transaction__billing_account=billing_account,
        transaction__kind__in=[TransactionKind.CHARGE, TransactionKind.REFUND],
    ).aggregate(total=Sum("amount_nanousd", default=0))["total"]
    return -total


def account_summary(*, billing_account: BillingAccount, now: datetime | None = None) -> dict:
    """The payer's pools and this month's charges, as the account API shows them.

    Balances are the ledger's (they add up to the ledger listing); this month's included
    credits appear once granted (by the hourly job or the month's first charge).
    """
    start, end = month_bounds(now or timezone.now())
    balances = dict.fromkeys(PAYER_KINDS, 0)
    if billing_account.pk is not None:
        balances.update(billing_account.pools.values_list("kind", "balance_nanousd"))
    org = billing_account.organization if billing_account.organization_id else None
    return {
        "name": billing_account.name,
        "type": "org" if org else "user",
        "included_credits_nanousd": balances[AccountKind.INCLUDED],
        "prepaid_nanousd": balances[AccountKind.PREPAID],
        "payg_due_nanousd": max(0, -balances[AccountKind.PAYG]),
        "month_to_date_spend_nanousd": charges_nanousd(
            billing_account=billing_account, start=start, end=end
        ),
        "spending_limit_nanousd": org.spending_limit_nanousd if org else None,
        "monthly_included_nanousd": monthly_credit_nanousd_get(billing_account=billing_account),
    }


def ledger_transaction_list(*, billing_account: BillingAccount) -> QuerySet[LedgerTransaction]:
    """The payer's ledger transactions, newest first, each with `payer_entries`: its legs on
    this payer's pools (the platform and provider legs are not the payer's business).

    Transactions that moved none of the payer's money (a month with no credits to grant is
    recorded as an empty grant) are left out.
    """
    if billing_account.pk is None:
        return LedgerTransaction.objects.none()
    on_payer = LedgerEntry.objects.filter(account__billing_account=billing_account)
    return (
        LedgerTransaction.objects.filter(billing_account=billing_account)
        .filter(Exists(on_payer.filter(transaction=OuterRef("pk"))))
        .prefetch_related(
            Prefetch(
                "entries",
                queryset=on_payer.select_related("account").order_by("id"),
                to_attr="payer_entries",
            )
        )
        .order_by("-created_at", "-id")
    )


def usage_record_list_visible(*, viewer: User) -> QuerySet[UsageRecord]:
    """Usage records `viewer` may read: their own requests (whoever paid), and every request
    billed to an organization they administer. Other members see only their own."""
    administered = (
        accounts_selectors.membership_list_for_user(user=viewer)
        .filter(role=Role.ADMIN)
        .values("organization_id")
    )
    return (
        UsageRecord.objects.filter(Q(user=viewer) | Q(payer__organization_id__in=administered))
        .select_related("provider", "user", "payer__user", "payer__organization")
        .order_by("-created_at", "-id")
    )
