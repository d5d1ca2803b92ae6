"""Credits: the monthly included grant (and expiry of what is left of the last one), prepaid
top-ups and extra included credits granted by a person.

Included credits are granted per UTC calendar month, lazily: by the hourly job
(`credits_ensure_month_many`) or at a payer's first charge of the month
(`charging.cost_batch_apply` calls `credits_grant_month_due` inside its transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from billing.models import (
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerTransaction,
    TransactionKind,
)
from billing.selectors import grant_key, month_label, monthly_credit_nanousd_get
from billing.services.accounts import accounts_lock, platform_account_get_or_create, pools_get
from billing.services.ledger import Leg, Posting, postings_write, transaction_post
from core.errors import DomainError
from core.transactions import requires_atomic


@requires_atomic
def credits_grant_month_due(
    *,
    billing_accounts: Sequence[BillingAccount],
    now: datetime | None = None,
    actor: str = "credits",
) -> int:
    """Grants this month's included credits (UTC calendar months) to those of these accounts
    that do not have them yet, inside the caller's transaction; returns how many it granted.

    Before a month's grant, whatever is left of earlier included credits expires. Both are
    posted under the included pools' locks with per-month idempotency keys, so running this
    any number of times, concurrently or late, grants once and expires once per month. A
    fixed number of statements for any number of accounts.
    """
    label = month_label(now or timezone.now())
    by_id = {a.pk: a for a in billing_accounts}

    def missing() -> set[int]:
        keys = [grant_key(pk, label) for pk in by_id]
        done = LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list(
            "billing_account_id", flat=True
        )
        return set(by_id) - set(done)

    if not missing():
        return 0
    included = dict(
        LedgerAccount.objects.filter(
            billing_account_id__in=list(by_id), kind=AccountKind.INCLUDED
        ).values_list("billing_account_id", "pk")
    )
    balances = accounts_lock(included.values())
    todo = missing()  # again, under the locks: a concurrent call may have granted
    expired = platform_account_get_or_create(AccountKind.CREDITS_EXPIRED).pk
    granted = platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk
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
        amount = monthly_credit_nanousd_get(billing_account=by_id[pk])
        memo = f"monthly included credits {label}" if amount else f"no included credits for {label}"
        postings.append(
            Posting(
                TransactionKind.GRANT,
                grant_key(pk, label),
                [Leg(pool, amount), Leg(granted, -amount)] if amount else [],
                pk,
                memo,
            )
        )
    postings_write(postings, actor=actor, now=now)
    return len(todo)


@transaction.atomic(durable=True)
def credits_ensure_month_many(
    *,
    billing_accounts: Sequence[BillingAccount],
    now: datetime | None = None,
    actor: str = "credits",
) -> int:
    """`credits_grant_month_due` in a transaction of its own (the hourly job, commands);
    returns how many accounts got this month's grant now."""
    return credits_grant_month_due(billing_accounts=billing_accounts, now=now, actor=actor)


def credits_ensure_month(
    *, billing_account: BillingAccount, now: datetime | None = None, actor: str = "credits"
) -> bool:
    """`credits_ensure_month_many` for one account; True if it granted now."""
    return bool(credits_ensure_month_many(billing_accounts=[billing_account], now=now, actor=actor))


# (billing account id, "YYYY-MM") pairs whose monthly grant this process has seen committed.
_granted_months: set[tuple[int, str]] = set()
_GRANTED_MONTHS_MAX = 500_000  # about 50 MB; cleared (not evicted) when full


def payers_without_grant(payer_ids: Sequence[int], now: datetime) -> set[int]:
    """Those of `payer_ids` without this month's grant yet; asks the database only about
    payers this process has not seen granted this month (one query), so a steady stream of
    cost batches does not look the same 10,000 grants up on every batch.

    Multi-process semantics: every process (each Celery prefork child, each web worker) has its
    own memory, shared with no one and never invalidated, and none of that is needed: a grant
    is never undone (the ledger is append-only), so "granted" stays true everywhere once it is.
    Only grants read back from the database are remembered, and the only caller,
    `cost_batch_apply`, asks at the start of its own durable transaction, before it posts
    anything, so what it reads (and remembers) is committed. A process that has not seen a
    grant just asks; a stale "not granted" costs one locked re-check in
    `credits_grant_month_due`, never a second grant. Kept because it measurably helps
    (bench/cost_ingest.py, 2-core machine: end to end 1.49x the floor with it, 1.76x without).
    """
    label = month_label(now)
    unknown = [p for p in payer_ids if (p, label) not in _granted_months]
    if not unknown:
        return set()
    done = set(
        LedgerTransaction.objects.filter(
            idempotency_key__in=[grant_key(p, label) for p in unknown]
        ).values_list("billing_account_id", flat=True)
    )
    if len(_granted_months) > _GRANTED_MONTHS_MAX:
        _granted_months.clear()
    _granted_months.update((p, label) for p in done)
    return set(unknown) - done


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
    prepaid = pools_get(billing_account)[AccountKind.PREPAID]
    return transaction_post(
        kind=TransactionKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        legs=[
            Leg(prepaid.pk, amount_nanousd),
            Leg(platform_account_get_or_create(AccountKind.CASH).pk, -amount_nanousd),
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
    credits_grant_month_due(billing_accounts=[billing_account], now=now)
    included = pools_get(billing_account)[AccountKind.INCLUDED]
    return transaction_post(
        kind=TransactionKind.GRANT,
        idempotency_key=f"grant_extra:{idempotency_key}",
        legs=[
            Leg(included.pk, amount_nanousd),
            Leg(platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk, -amount_nanousd),
        ],
        actor=actor,
        memo=memo,
        billing_account=billing_account,
    )
