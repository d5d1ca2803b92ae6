"""Corrections by a person: refunding a charge, adjusting a pool. Each needs a reason."""

from __future__ import annotations

from django.db import transaction

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
from billing.services.accounts import accounts_lock, platform_account_get_or_create, pools_get
from billing.services.ledger import Leg, Posting, postings_write, transaction_post
from core.errors import DomainError


@transaction.atomic(durable=True)
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
    accounts_lock(leg.account_id for leg in legs)
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
    if pool not in PAYER_KINDS:
        raise DomainError(
            "validation_error", f"pool must be one of {', '.join(PAYER_KINDS)}.", field="pool"
        )
    account = pools_get(billing_account)[pool]
    balance = accounts_lock([account.pk])[account.pk]
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
            Leg(platform_account_get_or_create(AccountKind.ADJUSTMENTS).pk, -amount_nanousd),
        ],
        actor=actor,
        memo=memo,
        billing_account=billing_account,
    )
