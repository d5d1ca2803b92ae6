"""Credits: the monthly included grant and its expiry, prepaid top-ups and extra included
credits granted by a person.

Included credits belong to a UTC calendar month (`LedgerTransaction.period`). They are granted
lazily: by the hourly job (`credits_ensure_month_many`) or at a payer's first charge of the
month (`charging.cost_batch_apply` calls `credits_grant_month_due` inside its transaction).
A charge is paid from the credits of its request's month, whenever it is polled; what is left
of a month's credits expires once that month's billing has closed (`credits_expire_closed`:
month end + the failed-to-bill window + the poll lag, and no request of the month still
pending). Grants and expiries are monotonic: no month older than a payer's latest grant is
ever granted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing.models import (
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerTransaction,
    TransactionKind,
    UsageState,
)
from billing.selectors import (
    MONTHLY_GRANT_KEYS,
    grant_key,
    label_of,
    month_bounds,
    monthly_credit_nanousd_get,
    oldest_open_period,
    period_of,
    period_start,
)
from billing.services.accounts import (
    accounts_lock,
    platform_account_get_or_create,
    pools_ensure,
    pools_get,
)
from billing.services.ledger import Leg, Posting, postings_write, transaction_post
from core.errors import DomainError
from core.transactions import requires_atomic, retry_on_conflict

# One credit action moves at most $1,000,000: far above any real one, far below an overflow.
AMOUNT_MAX_NANOUSD = 10**15
AMOUNT_MAX_MESSAGE = "amount must be at most $1,000,000 (10^15 nano-USD)."


def latest_grants(payer_ids: Sequence[int]) -> dict[int, date]:
    """The period of each payer's latest monthly grant (payers never granted are absent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT billing_account_id, max(period) FROM billing_ledgertransaction "
            "WHERE billing_account_id = ANY(%s) AND kind = %s AND idempotency_key LIKE %s "
            "GROUP BY billing_account_id",
            [list(payer_ids), TransactionKind.GRANT, MONTHLY_GRANT_KEYS],
        )
        return dict(cursor.fetchall())


@requires_atomic
def credits_grant_month_due(
    *,
    billing_accounts: Sequence[BillingAccount],
    now: datetime | None = None,
    month: date | None = None,
    actor: str = "credits",
    locked: bool = False,
) -> int:
    """Grants the included credits of `month` (default: the UTC month containing `now`) to
    those of these accounts that do not have them yet, inside the caller's transaction;
    returns how many it granted.

    Monotonic: an account whose latest grant is for a later month gets nothing (a poll cycle
    that started before midnight never posts last month's grant after this month's). A grant
    expires nothing: each month's credits expire on their own once the month's billing window
    has closed (`credits_expire_closed`). Posted under the locks of the included pools and the
    platform's granted account (global order, `accounts_lock`; `locked=True` when the caller
    already holds them, having ensured the accounts' pools), with a per-month idempotency
    key, so running this any number of times, concurrently or late, grants once per month. A
    fixed number of statements.
    """
    now = now or timezone.now()
    period = month or period_of(now)
    label = label_of(period)
    by_id = {a.pk: a for a in billing_accounts}

    def due() -> list[int]:
        latest = latest_grants(list(by_id))
        return sorted(pk for pk in by_id if latest.get(pk) is None or latest[pk] < period)

    if not due():
        return 0
    if not locked:  # a caller holding the locks has ensured the pools it locked
        pools_ensure(*by_id.values())
    included = dict(
        LedgerAccount.objects.filter(
            billing_account_id__in=list(by_id), kind=AccountKind.INCLUDED
        ).values_list("billing_account_id", "pk")
    )
    granted = platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk
    if not locked:
        accounts_lock([*included.values(), granted])
    todo = due()  # again, under the locks: a concurrent call may have granted
    postings = []
    for pk in todo:
        amount = monthly_credit_nanousd_get(billing_account=by_id[pk])
        memo = f"monthly included credits {label}" if amount else f"no included credits for {label}"
        postings.append(
            Posting(
                TransactionKind.GRANT,
                grant_key(pk, label),
                [Leg(included[pk], amount), Leg(granted, -amount)] if amount else [],
                pk,
                memo,
                period,
            )
        )
    postings_write(postings, actor=actor, now=now, locked=True)
    return len(todo)


def open_periods(payer_ids: Sequence[int], *, now: datetime) -> dict[int, list[date]]:
    """Each payer's months whose included credits have not expired yet (granted, no expiry),
    oldest first; only the last `OPEN_MONTHS_MAX` months are looked at (months close about
    half an hour after their end, `credits_expire_closed`)."""
    oldest = oldest_open_period(now)
    grants: dict[int, set[date]] = {}
    expiries: set[tuple[int, date]] = set()
    with connection.cursor() as cursor:
        # One index range per payer on (billing_account, kind, period); the difference is
        # taken here (an anti-join per grant cost twice as much in bench/cost_ingest.py).
        cursor.execute(
            "SELECT billing_account_id, kind, period FROM billing_ledgertransaction "
            "WHERE billing_account_id = ANY(%(payers)s) AND kind IN (%(grant)s, %(expiry)s) "
            "AND period >= %(oldest)s "
            "AND (kind = %(expiry)s OR idempotency_key LIKE %(monthly)s)",
            {
                "payers": list(payer_ids),
                "oldest": oldest,
                "grant": TransactionKind.GRANT,
                "monthly": MONTHLY_GRANT_KEYS,
                "expiry": TransactionKind.EXPIRY,
            },
        )
        for payer, kind, period in cursor.fetchall():
            if kind == TransactionKind.GRANT:
                grants.setdefault(payer, set()).add(period)
            else:
                expiries.add((payer, period))
    found = {
        payer: sorted(p for p in periods if (payer, p) not in expiries)
        for payer, periods in grants.items()
    }
    return {payer: periods for payer, periods in found.items() if periods}


def included_left(pairs: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]:
    """What is left of each (payer, month)'s included credits: the sum of the legs on the
    payer's included pool of transactions belonging to that month (grants, charges, refunds,
    adjustments, expiry)."""
    if not pairs:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.billing_account_id, t.period, coalesce(sum(e.amount_nanousd), 0) "
            "FROM unnest(%(payers)s::bigint[], %(periods)s::date[]) AS q(payer, period) "
            "JOIN billing_ledgertransaction t ON t.billing_account_id = q.payer "
            " AND t.kind = ANY(%(kinds)s) AND t.period = q.period "
            "JOIN billing_ledgerentry e ON e.transaction_id = t.id "
            "JOIN billing_ledgeraccount a ON a.id = e.account_id "
            " AND a.kind = %(included)s AND a.billing_account_id = q.payer "
            "GROUP BY 1, 2",
            {
                "payers": [p for p, _ in pairs],
                "periods": [d for _, d in pairs],
                "kinds": [k for k in TransactionKind.values if k != TransactionKind.TOP_UP],
                "included": AccountKind.INCLUDED,
            },
        )
        left = {(p, d): int(v) for p, d, v in cursor.fetchall()}
    return {pair: left.get(pair, 0) for pair in pairs}


def month_closes_at(period: date) -> datetime:
    """When a month's included credits may expire: its end plus the failed-to-bill window and
    the poll lag (and then only once the payer has no request of that month still pending)."""
    end = month_bounds(period_start(period))[1]
    return end + timedelta(
        seconds=settings.BILLING_FAILED_AFTER_S + settings.BILLING_CREDITS_CLOSE_LAG_S
    )


@requires_atomic
def credits_expire_closed(
    *, billing_accounts: Sequence[BillingAccount], now: datetime | None = None, actor="credits"
) -> int:
    """Closes each month whose billing has closed and expires what is left of its included
    credits; returns how many months it closed. A month M closes once `month_closes_at(M)`
    has passed and the payer has no request of M or earlier still pending or held for review
    (a charge of M is paid from M's credits, whenever it is polled or approved). The expiry
    (`expiry:<payer>:<YYYY-MM>`, period M) is posted even when nothing is left: it marks the
    month closed.

    What expires is everything in the included pool that does not belong to a later month
    still open (their remainders are kept whole): M's own remainder, and credit a refund gave
    back to a month already closed. So an expiry never takes a later month's credit and never
    more than the pool holds.
    """
    now = now or timezone.now()
    by_id = {a.pk: a for a in billing_accounts}
    opened = open_periods(list(by_id), now=now)
    candidates = [
        (payer, period)
        for payer, periods in opened.items()
        for period in periods
        if month_closes_at(period) <= now
    ]
    if not candidates:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT q.payer, q.period FROM unnest(%s::bigint[], %s::date[]) AS q(payer, period) "
            "WHERE NOT EXISTS (SELECT 1 FROM billing_usagerecord u WHERE u.payer_id = q.payer "
            "AND u.state = ANY(%s) AND u.created_at < (q.period + interval '1 month'))",
            [
                [p for p, _ in candidates],
                [d for _, d in candidates],
                [UsageState.PENDING, UsageState.HELD],
            ],
        )
        closable = sorted(cursor.fetchall())
    if not closable:
        return 0
    included = dict(
        LedgerAccount.objects.filter(
            billing_account_id__in={p for p, _ in closable}, kind=AccountKind.INCLUDED
        ).values_list("billing_account_id", "pk")
    )
    expired = platform_account_get_or_create(AccountKind.CREDITS_EXPIRED).pk
    balances = accounts_lock([*included.values(), expired])
    payers = {p for p, _ in closable}
    left = included_left([(p, d) for p in sorted(payers) for d in opened[p]])
    postings = []
    for payer, period in closable:  # oldest first per payer
        pool = included[payer]
        later = sum(max(v, 0) for (p, d), v in left.items() if p == payer and d > period)
        amount = max(0, balances[pool] - later)
        balances[pool] -= amount
        label = label_of(period)
        postings.append(
            Posting(
                TransactionKind.EXPIRY,
                f"expiry:{payer}:{label}",
                [Leg(pool, -amount), Leg(expired, amount)] if amount else [],
                payer,
                f"included credits of {label} unused when its billing closed expire",
                period,
            )
        )
    return len(postings_write(postings, actor=actor, now=now, locked=True))


@retry_on_conflict
@transaction.atomic(durable=True)
def credits_ensure_month_many(
    *,
    billing_accounts: Sequence[BillingAccount],
    now: datetime | None = None,
    actor: str = "credits",
) -> int:
    """The hourly job's work, in a transaction of its own: closes the months whose billing
    window has closed (`credits_expire_closed`), then grants this month's credits
    (`credits_grant_month_due`); returns how many accounts got this month's grant now."""
    pools_ensure(*billing_accounts)
    included = LedgerAccount.objects.filter(
        billing_account__in=list(billing_accounts), kind=AccountKind.INCLUDED
    ).values_list("pk", flat=True)
    platform = [
        platform_account_get_or_create(kind).pk
        for kind in (AccountKind.CREDITS_EXPIRED, AccountKind.CREDITS_GRANTED)
    ]
    accounts_lock([*included, *platform])  # everything both steps move, in the global order
    credits_expire_closed(billing_accounts=billing_accounts, now=now, actor=actor)
    return credits_grant_month_due(
        billing_accounts=billing_accounts, now=now, actor=actor, locked=True
    )


def credits_ensure_month(
    *, billing_account: BillingAccount, now: datetime | None = None, actor: str = "credits"
) -> bool:
    """`credits_ensure_month_many` for one account; True if it granted now."""
    return bool(credits_ensure_month_many(billing_accounts=[billing_account], now=now, actor=actor))


# (billing account id, "YYYY-MM") pairs whose monthly grant this process has seen committed.
_granted_months: set[tuple[int, str]] = set()
_GRANTED_MONTHS_MAX = 500_000  # about 50 MB; cleared (not evicted) when full


def grants_due(pairs: set[tuple[int, date]]) -> set[tuple[int, date]]:
    """Those (payer, month) pairs whose month is later than the payer's latest grant (so it
    may need granting); asks the database only about payers this process has not seen granted
    for that month (one query), so a steady stream of cost batches does not look the same
    10,000 grants up on every batch.

    Multi-process semantics: every process (each Celery prefork child, each web worker) has its
    own memory, shared with no one and never invalidated, and none of that is needed: a grant
    is never undone (the ledger is append-only), so "granted up to M" stays true everywhere
    once it is. Only grants read back from the database are remembered, and the only caller,
    `cost_batch_apply`, asks at the start of its own durable transaction, before it posts
    anything, so what it reads (and remembers) is committed. A stale "not granted" costs one
    locked re-check in `credits_grant_month_due`, never a second grant. Kept because it
    measurably helps (bench/cost_ingest.py, 2-core machine: end to end 1.49x the floor with
    it, 1.76x without).
    """
    unknown = {(p, d) for p, d in pairs if (p, label_of(d)) not in _granted_months}
    if not unknown:
        return set()
    latest = latest_grants(sorted({p for p, _ in unknown}))
    if len(_granted_months) > _GRANTED_MONTHS_MAX:
        _granted_months.clear()
    due = set()
    for payer, period in unknown:
        if payer in latest and latest[payer] >= period:
            _granted_months.add((payer, label_of(period)))
        else:
            due.add((payer, period))
    return due


@transaction.atomic
def credits_top_up(
    *,
    billing_account: BillingAccount,
    amount_nanousd: int,
    actor: str,
    idempotency_key: str,
    memo: str = "",
) -> LedgerTransaction | None:
    """Prepaid credits bought by the payer (they never expire). Returns None if
    `idempotency_key` was already posted. Joins the caller's transaction if there is one (the
    admin posts for several payers all or nothing)."""
    if amount_nanousd <= 0:
        raise DomainError("validation_error", "amount must be positive.", field="amount")
    if amount_nanousd > AMOUNT_MAX_NANOUSD:
        raise DomainError("validation_error", AMOUNT_MAX_MESSAGE, field="amount")
    prepaid = pools_get(billing_account)[AccountKind.PREPAID]
    cash = platform_account_get_or_create(AccountKind.CASH).pk
    accounts_lock([prepaid.pk, cash])
    return transaction_post(
        kind=TransactionKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        legs=[
            Leg(prepaid.pk, amount_nanousd),
            Leg(cash, -amount_nanousd),
        ],
        actor=actor,
        memo=memo or "prepaid top-up",
        billing_account=billing_account,
    )


@transaction.atomic
def credits_grant_extra(
    *,
    billing_account: BillingAccount,
    amount_nanousd: int,
    actor: str,
    memo: str,
    idempotency_key: str,
    now: datetime | None = None,
) -> LedgerTransaction | None:
    """Extra included credits granted by a person (a goodwill gesture, a contest prize...).

    Posted as a `grant`: included +X, credits_granted -X. Like the monthly credits they expire
    at month end. This month's own grant is made sure of first: granted before it, the extra
    credits would be expired by it. Returns None if `idempotency_key` was already posted.
    Joins the caller's transaction if there is one (the admin, for several payers).
    """
    if not memo.strip():
        raise DomainError(
            "validation_error", "A reason is required to grant credits.", field="memo"
        )
    if amount_nanousd <= 0:
        raise DomainError("validation_error", "amount must be positive.", field="amount")
    if amount_nanousd > AMOUNT_MAX_NANOUSD:
        raise DomainError("validation_error", AMOUNT_MAX_MESSAGE, field="amount")
    now = now or timezone.now()
    pools_ensure(billing_account)
    included = pools_get(billing_account)[AccountKind.INCLUDED]
    granted = platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk
    accounts_lock([included.pk, granted])  # the global order, before any posting
    credits_grant_month_due(billing_accounts=[billing_account], now=now, locked=True)
    return transaction_post(
        kind=TransactionKind.GRANT,
        idempotency_key=f"grant_extra:{idempotency_key}",
        legs=[
            Leg(included.pk, amount_nanousd),
            Leg(granted, -amount_nanousd),
        ],
        actor=actor,
        memo=memo,
        billing_account=billing_account,
        period=period_of(now),
    )
