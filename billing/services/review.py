"""Review of held costs: a cost far above its request's estimate is `held` (not charged) until a
person approves it (then it is charged, in its request's month, like any other) or rejects it
(`rejected`: never charged). Each decision needs a reason, which is kept on the record."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from billing.models import AccountKind, LedgerAccount, UsageRecord, UsageState
from billing.selectors import period_of
from billing.services.accounts import (
    accounts_lock,
    platform_account_get_or_create,
    provider_payable_get_or_create,
)
from billing.services.charging import ChargeRow, charge_rows
from core.errors import DomainError
from core.transactions import retry_on_conflict
from registry.models import Provider

_HELD_LOCK_SQL = (
    "SELECT id, provider_id, request_id, payer_id, created_at, estimated_cost_nanousd, "
    "cost_nanousd FROM billing_usagerecord WHERE id = ANY(%s) AND state = %s "
    "ORDER BY id FOR UPDATE"
)


def _reason(memo: str) -> str:
    if not memo.strip():
        raise DomainError(
            "validation_error", "A reason is required to review a held cost.", field="memo"
        )
    return memo.strip()


def _lock_held(usage_records: Iterable[UsageRecord]) -> list[tuple]:
    ids = sorted({r.pk for r in usage_records})
    with connection.cursor() as cursor:
        cursor.execute(_HELD_LOCK_SQL, [ids, UsageState.HELD])
        return cursor.fetchall()


@retry_on_conflict
@transaction.atomic(durable=True)
def held_costs_approve(
    *, usage_records: Iterable[UsageRecord], actor: str, memo: str, now: datetime | None = None
) -> int:
    """Charges the held costs of these records (those still `held`; others are skipped) in
    their requests' months; returns how many were charged."""
    reason = _reason(memo)
    now = now or timezone.now()
    by_provider: dict[int, list[ChargeRow]] = {}
    for usage_id, provider_id, request_id, payer_id, created_at, estimate, cost in _lock_held(
        usage_records
    ):
        by_provider.setdefault(provider_id, []).append(
            ChargeRow(usage_id, request_id, payer_id, period_of(created_at), estimate, cost)
        )
    providers = list(Provider.objects.filter(pk__in=list(by_provider)).order_by("pk"))
    # Every account any of the charges may move, locked at once in the global order.
    payers = {r.payer_id for rows in by_provider.values() for r in rows}
    accounts_lock(
        [
            *LedgerAccount.objects.filter(billing_account_id__in=payers).values_list(
                "pk", flat=True
            ),
            *(provider_payable_get_or_create(provider=p).pk for p in providers),
            platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk,
        ]
    )
    charged = 0
    for provider in providers:
        charged += charge_rows(
            provider=provider, rows=by_provider[provider.pk], now=now, actor=actor
        ).billed
    ids = [r.usage_id for rows in by_provider.values() for r in rows]
    UsageRecord.objects.filter(pk__in=ids).update(cost_error=f"approved by {actor}: {reason}"[:300])
    return charged


@transaction.atomic(durable=True)
def held_costs_reject(*, usage_records: Iterable[UsageRecord], actor: str, memo: str) -> int:
    """Rejects the held costs of these records (never charged); returns how many."""
    reason = _reason(memo)
    ids = [row[0] for row in _lock_held(usage_records)]
    return UsageRecord.objects.filter(pk__in=ids).update(
        state=UsageState.REJECTED,
        estimated_cost_nanousd=0,
        cost_error=f"rejected by {actor}: {reason}"[:300],
    )
