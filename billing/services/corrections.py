"""Corrections by a person: refunding a charge, adjusting a pool. Each needs a reason."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

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
from billing.selectors import period_of
from billing.services.accounts import accounts_lock, platform_account_get_or_create, pools_get
from billing.services.credits import AMOUNT_MAX_MESSAGE, AMOUNT_MAX_NANOUSD
from billing.services.ledger import Leg, Posting, postings_write, transaction_post
from core.errors import DomainError
from core.transactions import retry_on_conflict


@retry_on_conflict
@transaction.atomic(durable=True)
def charge_refund(*, usage_record: UsageRecord, actor: str, memo: str) -> LedgerTransaction | None:
    """Refunds a billed request in full: a `refund` transaction with every leg of its charge
    negated, so each pool gets back what it paid and the provider's payable drops by the cost.

    The charge itself stays (entries are never changed); the refund belongs to the charge's
    month (`period`), so it nets out of that month's spend, and the record is marked
    (`refunded_at`). Once per charge (idempotency key `refund:<charge id>`): a second call
    returns None. Included credits given back to a month that has already closed are in the
    pool again: spent with the month that is open, and what is left of them expires when it
    closes (`credits_expire_closed`).
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
    charge = LedgerTransaction.objects.get(pk=usage_record.charge_id)
    written = postings_write(
        [
            Posting(
                TransactionKind.REFUND,
                f"refund:{usage_record.charge_id}",
                legs,
                usage_record.payer_id,
                memo,
                charge.period or period_of(charge.created_at),
            )
        ],
        actor=actor,
    )
    if not written:
        return None
    UsageRecord.objects.filter(pk=usage_record.pk).update(refunded_at=timezone.now())
    return LedgerTransaction.objects.get(pk=written.popitem()[1])


@transaction.atomic
def ledger_adjust(
    *,
    billing_account: BillingAccount,
    pool: str,
    amount_nanousd: int,
    actor: str,
    memo: str,
    idempotency_key: str,
    kind: str = TransactionKind.ADJUSTMENT,
    now: datetime | None = None,
) -> LedgerTransaction | None:
    """A correction by a person: moves `amount` (signed) into one of the payer's pools.

    Joins the caller's transaction if there is one (the admin adjusts several payers all or
    nothing). Returns None if `idempotency_key` was already posted."""
    if not memo.strip():
        raise DomainError(
            "validation_error", "A reason is required for an adjustment.", field="memo"
        )
    if amount_nanousd == 0:
        raise DomainError("validation_error", "amount must not be zero.", field="amount")
    if abs(amount_nanousd) > AMOUNT_MAX_NANOUSD:
        raise DomainError("validation_error", AMOUNT_MAX_MESSAGE, field="amount")
    if pool not in PAYER_KINDS:
        raise DomainError(
            "validation_error", f"pool must be one of {', '.join(PAYER_KINDS)}.", field="pool"
        )
    account = pools_get(billing_account)[pool]
    adjustments = platform_account_get_or_create(AccountKind.ADJUSTMENTS).pk
    balance = accounts_lock([account.pk, adjustments])[account.pk]
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
            Leg(adjustments, -amount_nanousd),
        ],
        actor=actor,
        memo=memo,
        billing_account=billing_account,
        # Included credits belong to a month: an adjustment's, this one.
        period=period_of(now or timezone.now()) if pool == AccountKind.INCLUDED else None,
    )
