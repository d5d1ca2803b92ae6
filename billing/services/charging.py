"""Charging: applying the costs providers report to pending usage records.

Fed by `billing.polling` (one call per answered batch). Accounts are locked in primary-key order
before their balances are read, so concurrent batches neither deadlock nor lose updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from billing.models import (
    PAYER_KINDS,
    AccountKind,
    BillingAccount,
    LedgerAccount,
    TransactionKind,
    UsageState,
)
from billing.services.accounts import accounts_lock, provider_payable_get_or_create
from billing.services.credits import credits_grant_month_due, payers_without_grant
from billing.services.ledger import Leg, Posting, postings_write
from registry.models import Provider


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


_PENDING_LOCK_SQL = (
    "SELECT id, request_id, payer_id FROM billing_usagerecord "
    "WHERE provider_id = %(provider)s AND request_id = ANY(%(request_ids)s) "
    "AND state = %(pending)s ORDER BY id FOR UPDATE"
)
_BILLED_SQL = (
    "UPDATE billing_usagerecord u SET state = %(billed)s, cost_nanousd = c.cost, "
    "charge_id = c.txn, billed_at = %(now)s, cost_error = '' "
    "FROM unnest(%(ids)s::bigint[], %(costs)s::bigint[], %(txns)s::bigint[]) AS c(id, cost, txn) "
    "WHERE u.id = c.id"
)
_ZERO_COST_SQL = (
    "UPDATE billing_usagerecord SET state = %(zero_cost)s, cost_nanousd = 0, "
    "billed_at = %(now)s, cost_error = '' WHERE id = ANY(%(ids)s)"
)


@transaction.atomic(durable=True)
def cost_batch_apply(
    *,
    provider: Provider,
    costs: Mapping[str, int],
    now: datetime | None = None,
    actor: str = "cost-poller",
) -> BatchResult:
    """Charges the provider-reported costs (validated non-negative integers) of pending usage
    records, all in one database transaction (committed on return), with a fixed number of
    statements.

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
            _PENDING_LOCK_SQL,
            {"provider": provider.pk, "request_ids": request_ids, "pending": UsageState.PENDING},
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
    payable = provider_payable_get_or_create(provider=provider).pk
    ungranted = payers_without_grant(payer_ids, now)
    if ungranted:
        # Every account this batch touches is locked in primary-key order first (no
        # deadlocks); then, lazily at a payer's first charge of the month, its credits.
        accounts_lock([*pools.values(), payable])
        credits_grant_month_due(
            billing_accounts=list(
                BillingAccount.objects.filter(pk__in=ungranted).select_related(
                    "user", "organization"
                )
            ),
            now=now,
        )
    balances = accounts_lock([*pools.values(), payable])
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
                _BILLED_SQL,
                {
                    "billed": UsageState.BILLED,
                    "now": now,
                    "ids": [u for u, _, _ in charged],
                    "costs": [c for _, c, _ in charged],
                    "txns": [t for _, _, t in charged],
                },
            )
        if zero:
            cursor.execute(
                _ZERO_COST_SQL, {"zero_cost": UsageState.ZERO_COST, "now": now, "ids": zero}
            )
    result.billed = len(charged)
    result.zero_cost = len(zero)
    result.charged_nanousd = sum(cost for _, cost, _ in charged)
    result.payers = set(payer_ids)
    return result
