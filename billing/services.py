"""Writes for billing: accounts, ledger postings, credits, usage records, cost application.

Every money movement is a `LedgerTransaction` whose legs are written by one INSERT statement
in the same database transaction; PostgreSQL checks the legs sum to zero and moves the cached
balances (migration 0002). Accounts are locked in primary-key order before their balances are
read, so concurrent postings neither deadlock nor lose updates. Each posting has an
idempotency key: running the same operation twice posts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from django.db import connection, transaction
from django.utils import timezone

from accounts import plans
from accounts.models import Organization, User
from billing.models import (
    PAYER_KINDS,
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
    UsageRecord,
    UsageState,
)
from core.errors import DomainError
from core.ids import object_id
from registry.models import Provider


# --- accounts ---------------------------------------------------------------------------------
def ensure_pools(*billing_accounts: BillingAccount) -> None:
    """Creates the included, prepaid and payg pools of these accounts if missing (1 query)."""
    LedgerAccount.objects.bulk_create(
        [LedgerAccount(kind=k, billing_account=a) for a in billing_accounts for k in PAYER_KINDS],
        ignore_conflicts=True,
    )


def billing_account_for_user(*, user: User) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(user=user)
    ensure_pools(account)
    return account


def billing_account_for_organization(*, organization: Organization) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    ensure_pools(account)
    return account


def platform_account(kind: str) -> LedgerAccount:
    LedgerAccount.objects.bulk_create([LedgerAccount(kind=kind)], ignore_conflicts=True)
    return LedgerAccount.objects.get(kind=kind, billing_account=None, provider=None)


def provider_payable(*, provider: Provider) -> LedgerAccount:
    LedgerAccount.objects.bulk_create(
        [LedgerAccount(kind=AccountKind.PROVIDER_PAYABLE, provider=provider)],
        ignore_conflicts=True,
    )
    return LedgerAccount.objects.get(kind=AccountKind.PROVIDER_PAYABLE, provider=provider)


def pools_of(billing_account: BillingAccount) -> dict[str, LedgerAccount]:
    return {a.kind: a for a in LedgerAccount.objects.filter(billing_account=billing_account)}


def lock_accounts(account_ids: Iterable[int]) -> dict[int, int]:
    """Locks ledger accounts in primary-key order; returns {id: balance}."""
    ids = sorted(set(account_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, balance_nanousd FROM billing_ledgeraccount WHERE id = ANY(%s) "
            "ORDER BY id FOR UPDATE",
            [ids],
        )
        return dict(cursor.fetchall())


# --- postings ---------------------------------------------------------------------------------
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


def postings_write(
    postings: Sequence[Posting], *, actor: str, now: datetime | None = None
) -> dict[str, int]:
    """Writes many transactions with two statements: the transactions, then all their legs.

    A posting whose idempotency key is already taken is skipped (`ON CONFLICT DO NOTHING`):
    that is how every money movement is applied at most once. No savepoints, so it stays fast
    inside a large transaction. Returns {idempotency key: transaction id} of those written.
    The caller holds the account locks under which it computed the legs.
    """
    for posting in postings:
        if sum(leg.amount_nanousd for leg in posting.legs) != 0:
            raise ValueError(f"unbalanced legs for {posting.idempotency_key}: {posting.legs}")
    if not postings:
        return {}
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_ledgertransaction "
            "(kind, idempotency_key, billing_account_id, actor, memo, created_at) "
            "SELECT k, key, p, %s, m, %s "
            "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[]) AS t(k, key, p, m) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, id",
            [
                actor[:200],
                now or timezone.now(),
                [p.kind for p in postings],
                [p.idempotency_key for p in postings],
                [p.billing_account_id for p in postings],
                [p.memo[:500] for p in postings],
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


def transaction_post(
    *,
    kind: str,
    idempotency_key: str,
    legs: Iterable[Leg],
    actor: str,
    memo: str = "",
    billing_account: BillingAccount | None = None,
) -> LedgerTransaction | None:
    """Posts one balanced transaction. Returns None if `idempotency_key` was already posted."""
    written = postings_write(
        [Posting(kind, idempotency_key, list(legs), billing_account and billing_account.pk, memo)],
        actor=actor,
    )
    return LedgerTransaction.objects.get(pk=written[idempotency_key]) if written else None


def _month_start(moment: datetime | date) -> date:
    return date(moment.year, moment.month, 1)


def monthly_credit_nanousd(billing_account: BillingAccount) -> int:
    if billing_account.user_id:
        return plans.monthly_credit_nanousd(user_plan_name=billing_account.user.plan)
    org = billing_account.organization
    return plans.monthly_credit_nanousd(org_plan_name=org.plan, seats=org.seats)


def _grant_key(billing_account_id: int, label: str) -> str:
    return f"grant:{billing_account_id}:{label}"


def credits_ensure_month_many(
    *,
    billing_accounts: Sequence[BillingAccount],
    now: datetime | None = None,
    actor: str = "credits",
) -> int:
    """Makes sure this month's included credits were granted (UTC calendar months).

    Before a month's grant, whatever is left of earlier included credits expires. Both are
    posted under the included pools' locks with per-month idempotency keys, so running this
    any number of times, concurrently or late, grants once and expires once per month. A
    fixed number of statements for any number of accounts. Returns how many accounts got
    this month's grant now.
    """
    label = f"{_month_start(now or timezone.now()):%Y-%m}"
    by_id = {a.pk: a for a in billing_accounts}

    def missing() -> set[int]:
        keys = [_grant_key(pk, label) for pk in by_id]
        done = LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list(
            "billing_account_id", flat=True
        )
        return set(by_id) - set(done)

    if not missing():
        return 0
    with transaction.atomic(savepoint=False):
        included = dict(
            LedgerAccount.objects.filter(
                billing_account_id__in=list(by_id), kind=AccountKind.INCLUDED
            ).values_list("billing_account_id", "pk")
        )
        balances = lock_accounts(included.values())
        todo = missing()  # again, under the locks: a concurrent call may have granted
        expired = platform_account(AccountKind.CREDITS_EXPIRED).pk
        granted = platform_account(AccountKind.CREDITS_GRANTED).pk
        postings = []
        for pk in sorted(todo):
            pool, balance = included[pk], balances[included[pk]]
            if balance > 0:
                postings.append(
                    Posting(
                        TransactionKind.EXPIRY,
                        f"expiry:{pk}:before-{label}",
                        [Leg(pool, -balance), Leg(expired, balance)],
                        pk,
                        f"included credits unused before {label} expire",
                    )
                )
            amount = monthly_credit_nanousd(by_id[pk])
            postings.append(
                Posting(
                    TransactionKind.GRANT,
                    _grant_key(pk, label),
                    [Leg(pool, amount), Leg(granted, -amount)] if amount else [],
                    pk,
                    f"monthly included credits {label}"
                    if amount
                    else f"no included credits for {label}",
                )
            )
        postings_write(postings, actor=actor, now=now)
    return len(todo)


# (billing account, "YYYY-MM") known to have their month's grant. A grant is never undone, so a
# process may remember it and skip asking the database on every batch. Only grants read back
# from the database are remembered, and cost batches run in their own transactions, so a
# remembered grant is a committed one.
_granted_cache: set[tuple[int, str]] = set()
_GRANTED_CACHE_MAX = 500_000


def _payers_without_grant(payer_ids: Sequence[int], now: datetime) -> set[int]:
    label = f"{_month_start(now):%Y-%m}"
    unknown = [p for p in payer_ids if (p, label) not in _granted_cache]
    if not unknown:
        return set()
    done = set(
        LedgerTransaction.objects.filter(
            idempotency_key__in=[_grant_key(p, label) for p in unknown]
        ).values_list("billing_account_id", flat=True)
    )
    if len(_granted_cache) > _GRANTED_CACHE_MAX:
        _granted_cache.clear()
    _granted_cache.update((p, label) for p in done)
    return set(unknown) - done


def credits_ensure_month(
    *, billing_account: BillingAccount, now: datetime | None = None, actor: str = "credits"
) -> bool:
    """`credits_ensure_month_many` for one account; True if it granted now."""
    return bool(credits_ensure_month_many(billing_accounts=[billing_account], now=now, actor=actor))


def credits_top_up(
    *,
    billing_account: BillingAccount,
    amount_nanousd: int,
    actor: str,
    idempotency_key: str,
    memo: str = "",
) -> LedgerTransaction | None:
    """Prepaid credits bought by the payer (they never expire)."""
    if amount_nanousd <= 0:
        raise DomainError("validation_error", "amount must be positive.", field="amount")
    prepaid = pools_of(billing_account)[AccountKind.PREPAID]
    return transaction_post(
        kind=TransactionKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        legs=[
            Leg(prepaid.pk, amount_nanousd),
            Leg(platform_account(AccountKind.CASH).pk, -amount_nanousd),
        ],
        actor=actor,
        memo=memo or "prepaid top-up",
        billing_account=billing_account,
    )


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
    """
    if not memo.strip():
        raise DomainError(
            "validation_error", "A reason is required to grant credits.", field="memo"
        )
    if amount_nanousd <= 0:
        raise DomainError("validation_error", "amount must be positive.", field="amount")
    credits_ensure_month(billing_account=billing_account, now=now)
    included = pools_of(billing_account)[AccountKind.INCLUDED]
    return transaction_post(
        kind=TransactionKind.GRANT,
        idempotency_key=f"grant_extra:{idempotency_key}",
        legs=[
            Leg(included.pk, amount_nanousd),
            Leg(platform_account(AccountKind.CREDITS_GRANTED).pk, -amount_nanousd),
        ],
        actor=actor,
        memo=memo,
        billing_account=billing_account,
    )


def charge_refund(*, usage_record: UsageRecord, actor: str, memo: str) -> LedgerTransaction | None:
    """Refunds a billed request in full: a `refund` transaction with every leg of its charge
    negated, so each pool gets back what it paid and the provider's payable drops by the cost.

    The charge itself stays (entries are never changed). Once per charge (idempotency key
    `refund:<charge id>`): a second call returns None.
    """
    if not memo.strip():
        raise DomainError("validation_error", "A reason is required for a refund.", field="memo")
    if usage_record.state != UsageState.BILLED or usage_record.charge_id is None:
        raise DomainError(
            "validation_error",
            f"Request {usage_record.request_id} was not charged ({usage_record.state}); "
            "there is nothing to refund.",
            field="request_id",
        )
    legs = [
        Leg(account_id, -amount)
        for account_id, amount in LedgerEntry.objects.filter(
            transaction_id=usage_record.charge_id
        ).values_list("account_id", "amount_nanousd")
    ]
    with transaction.atomic():
        lock_accounts(leg.account_id for leg in legs)
        written = postings_write(
            [
                Posting(
                    TransactionKind.REFUND,
                    f"refund:{usage_record.charge_id}",
                    legs,
                    usage_record.payer_id,
                    memo,
                )
            ],
            actor=actor,
        )
    return LedgerTransaction.objects.get(pk=written.popitem()[1]) if written else None


def ledger_adjust(
    *,
    billing_account: BillingAccount,
    pool: str,
    amount_nanousd: int,
    actor: str,
    memo: str,
    idempotency_key: str,
    kind: str = TransactionKind.ADJUSTMENT,
) -> LedgerTransaction | None:
    """A correction by a person: moves `amount` (signed) into one of the payer's pools."""
    if not memo.strip():
        raise DomainError(
            "validation_error", "A reason is required for an adjustment.", field="memo"
        )
    if amount_nanousd == 0:
        raise DomainError("validation_error", "amount must not be zero.", field="amount")
    if pool not in PAYER_KINDS:
        raise DomainError(
            "validation_error", f"pool must be one of {', '.join(PAYER_KINDS)}.", field="pool"
        )
    account = pools_of(billing_account)[pool]
    with transaction.atomic():
        balance = lock_accounts([account.pk])[account.pk]
        if pool != AccountKind.PAYG and balance + amount_nanousd < 0:
            raise DomainError(
                "validation_error",
                f"This would take the {pool} pool below zero (balance {balance} nano-USD).",
                field="amount",
            )
        return transaction_post(
            kind=kind,
            idempotency_key=f"{kind}:{idempotency_key}",
            legs=[
                Leg(account.pk, amount_nanousd),
                Leg(platform_account(AccountKind.ADJUSTMENTS).pk, -amount_nanousd),
            ],
            actor=actor,
            memo=memo,
            billing_account=billing_account,
        )


# --- usage ------------------------------------------------------------------------------------
def usage_state(*, byok: bool, request_id: str | None, http_status: int | None) -> str:
    """The state a routed request's record starts in: `byok` (the user's own key, never
    charged), `not_billable` (no request ID, or an error status: kept for provider health) or
    `pending` (to be charged once the provider reports its cost)."""
    if byok:
        return UsageState.BYOK
    if not request_id or http_status is None or not 200 <= http_status < 400:
        return UsageState.NOT_BILLABLE
    return UsageState.PENDING


def usage_record_create(
    *,
    provider: Provider,
    request_id: str | None,
    user: User,
    payer: BillingAccount,
    http_status: int | None,
    hub_model_id: str = "",
    provider_model: str = "",
    task: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    estimated_cost_nanousd: int = 0,
    byok: bool = False,
    created_at: datetime | None = None,
) -> UsageRecord:
    """Records one routed request; idempotent on (provider, request ID).

    A request without a request ID, or answered with an error status, is kept for provider
    health as `not_billable`; one made with the user's own provider key is `byok`.
    """
    state = usage_state(byok=byok, request_id=request_id, http_status=http_status)
    if not request_id:
        # Still recorded, under a key of our own that no provider answer can match.
        request_id = f"no-request-id:{object_id()}"
    record, _ = UsageRecord.objects.get_or_create(
        provider=provider,
        request_id=request_id[:255],
        defaults={
            "user": user,
            "payer": payer,
            "http_status": http_status,
            "hub_model_id": hub_model_id[:200],
            "provider_model": provider_model[:255],
            "task": task[:64],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "estimated_cost_nanousd": max(estimated_cost_nanousd, 0),
            "state": state,
            "created_at": created_at or timezone.now(),
        },
    )
    return record


@dataclass
class BatchResult:
    billed: int = 0
    zero_cost: int = 0
    already_done: int = 0  # asked, but no longer pending (billed by another run, ...)
    charged_nanousd: int = 0
    payers: set[int] = field(default_factory=set)


def _split(amount: int, balances: dict[str, int]) -> dict[str, int]:
    """How much of a charge each pool pays: included, then prepaid, then pay-as-you-go."""
    from_included = min(amount, max(balances[AccountKind.INCLUDED], 0))
    from_prepaid = min(amount - from_included, max(balances[AccountKind.PREPAID], 0))
    return {
        AccountKind.INCLUDED: from_included,
        AccountKind.PREPAID: from_prepaid,
        AccountKind.PAYG: amount - from_included - from_prepaid,
    }


@transaction.atomic
def cost_batch_apply(
    *,
    provider: Provider,
    costs: Mapping[str, int],
    now: datetime | None = None,
    actor: str = "cost-poller",
) -> BatchResult:
    """Charges the provider-reported costs (validated non-negative integers) of pending usage
    records, all in one database transaction, with a fixed number of statements.

    Exactly once: the pending records are locked first (`FOR UPDATE`) and only records still
    pending are charged; a concurrent or repeated application of the same costs finds them
    billed and charges nothing. Each charge is its own ledger transaction with the
    idempotency key `charge:<provider>:<request id>`, and a usage record can point to only one.
    """
    now = now or timezone.now()
    result = BatchResult()
    if not costs:
        return result
    request_ids = list(costs)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, request_id, payer_id FROM billing_usagerecord "
            "WHERE provider_id = %s AND request_id = ANY(%s) AND state = 'pending' "
            "ORDER BY id FOR UPDATE",
            [provider.pk, request_ids],
        )
        pending = cursor.fetchall()
    result.already_done = len(request_ids) - len(pending)
    if not pending:
        return result

    payer_ids = sorted({payer_id for _, _, payer_id in pending})
    pools = {
        (billing_account_id, kind): pk
        for pk, billing_account_id, kind in LedgerAccount.objects.filter(
            billing_account_id__in=payer_ids
        ).values_list("pk", "billing_account_id", "kind")
    }
    payable = provider_payable(provider=provider).pk
    ungranted = _payers_without_grant(payer_ids, now)
    if ungranted:
        # Every account this batch touches is locked in primary-key order first (no
        # deadlocks); then, lazily at a payer's first charge of the month, its credits.
        lock_accounts([*pools.values(), payable])
        credits_ensure_month_many(
            billing_accounts=list(
                BillingAccount.objects.filter(pk__in=ungranted).select_related(
                    "user", "organization"
                )
            ),
            now=now,
        )
    balances = lock_accounts([*pools.values(), payable])
    running = {
        payer_id: {kind: balances[pools[(payer_id, kind)]] for kind in PAYER_KINDS}
        for payer_id in payer_ids
    }

    charged, zero, postings = [], [], []
    for usage_id, request_id, payer_id in pending:
        cost = costs[request_id]
        if cost == 0:
            zero.append(usage_id)
            continue
        legs = [Leg(payable, cost)]
        for kind, part in _split(cost, running[payer_id]).items():
            if part:
                running[payer_id][kind] -= part
                legs.append(Leg(pools[(payer_id, kind)], -part))
        key = f"charge:{provider.pk}:{request_id}"
        postings.append(Posting(TransactionKind.CHARGE, key, legs, payer_id))
        charged.append((usage_id, cost, key))

    written = postings_write(postings, actor=actor, now=now)
    charged = [(u, c, written[key]) for u, c, key in charged if key in written]
    with connection.cursor() as cursor:
        if charged:
            cursor.execute(
                "UPDATE billing_usagerecord u SET state = 'billed', cost_nanousd = c.cost, "
                "charge_id = c.txn, billed_at = %s, cost_error = '' "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS c(id, cost, txn) "
                "WHERE u.id = c.id",
                [
                    now,
                    [u for u, _, _ in charged],
                    [c for _, c, _ in charged],
                    [t for _, _, t in charged],
                ],
            )
        if zero:
            cursor.execute(
                "UPDATE billing_usagerecord SET state = 'zero_cost', cost_nanousd = 0, "
                "billed_at = %s, cost_error = '' WHERE id = ANY(%s)",
                [now, zero],
            )
    result.billed = len(charged)
    result.zero_cost = len(zero)
    result.charged_nanousd = sum(cost for _, cost, _ in charged)
    result.payers = set(payer_ids)
    return result


# The router writes usage records in its group commit (async psycopg, outside the ORM): the
# same row `usage_record_create` writes, idempotent on (provider, request ID).
ROUTER_USAGE_INSERT_SQL = """
INSERT INTO billing_usagerecord (
    provider_id, request_id, user_id, payer_id, hub_model_id, provider_model, task,
    http_status, prompt_tokens, completion_tokens, estimated_cost_nanousd, cost_nanousd, state,
    charge_id, created_at, billed_at, cost_attempts, cost_error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, NULL, %s, NULL, 0, '')
ON CONFLICT (provider_id, request_id) DO NOTHING
"""
# Successes without a request-ID header, counted against each provider (one id per answer).
ROUTER_MISSING_REQUEST_IDS_SQL = """
INSERT INTO billing_providerbillinghealth (provider_id, last_error, consecutive_failures,
    invalid_costs_total, unknown_ids_total, missing_request_ids_total)
SELECT provider_id, '', 0, 0, 0, count(*) FROM unnest(%s::bigint[]) AS t(provider_id)
GROUP BY provider_id
ON CONFLICT (provider_id) DO UPDATE SET missing_request_ids_total =
    billing_providerbillinghealth.missing_request_ids_total + EXCLUDED.missing_request_ids_total
"""
