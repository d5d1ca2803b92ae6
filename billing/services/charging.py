"""Charging: applying the costs providers report to pending usage records.

Fed by `billing.polling` (one call per answered batch) and by review (`billing.services.review`,
a held cost a person approved). Rules:
- a charge belongs to its request's month (UTC): its ledger `period`, the included credits it
  draws from and the spending limit it counts against are that month's, whenever it is
  polled;
- it is paid from that month's included credits, then prepaid credits, then pay-as-you-go;
- a cost far above the request's estimate (more than `BILLING_REVIEW_FACTOR` times it, and
  more than `BILLING_REVIEW_MIN_NANOUSD`) is not charged: the record is `held` for review
  (`held_for_review`);
- every account a batch touches (payer pools, the provider's payable, the platform accounts a
  lazy grant moves) is locked once, in primary-key order, before anything is posted: the one
  global order of every posting path, so concurrent batches and admin actions neither
  deadlock nor lose updates (and a deadlock or serialization failure reruns the batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from django.conf import settings
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
from billing.selectors import period_of, period_start
from billing.services.accounts import (
    accounts_lock,
    platform_account_get_or_create,
    pools_ensure,
    provider_payable_get_or_create,
)
from billing.services.credits import (
    credits_grant_month_due,
    grants_due,
    included_left,
    open_periods,
)
from billing.services.ledger import Leg, Posting, postings_write
from core.money import format_usd
from core.transactions import requires_atomic, retry_on_conflict
from registry.models import Provider


@dataclass
class BatchResult:
    billed: int = 0
    zero_cost: int = 0
    held: int = 0  # costs far above their request's estimate, waiting for review
    already_done: int = 0  # asked, but no longer pending (billed by another run, ...)
    charged_nanousd: int = 0
    payers: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class ChargeRow:
    """A locked usage record and the cost to charge for it."""

    usage_id: int
    request_id: str
    payer_id: int
    period: date  # its request's month
    estimate_nanousd: int
    cost_nanousd: int


def _split(amount: int, *, included: int, prepaid: int) -> dict[str, int]:
    """How much of a charge each pool pays: the included credits it may use, then prepaid,
    then pay-as-you-go."""
    from_included = min(amount, max(included, 0))
    from_prepaid = min(amount - from_included, max(prepaid, 0))
    return {
        AccountKind.INCLUDED: from_included,
        AccountKind.PREPAID: from_prepaid,
        AccountKind.PAYG: amount - from_included - from_prepaid,
    }


def held_for_review(*, cost_nanousd: int, estimate_nanousd: int) -> bool:
    """A cost far above what the request could plausibly cost is not charged unreviewed.
    A record without an estimate (0: ingested without one, or recorded before estimates had
    a floor) has no bound to compare with; only the poller's absolute cap applies to it."""
    if estimate_nanousd <= 0:
        return False
    bound = max(
        estimate_nanousd * settings.BILLING_REVIEW_FACTOR, settings.BILLING_REVIEW_MIN_NANOUSD
    )
    return cost_nanousd > bound


_PENDING_LOCK_SQL = (
    "SELECT id, request_id, payer_id, created_at, estimated_cost_nanousd "
    "FROM billing_usagerecord "
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
_HELD_SQL = (
    "UPDATE billing_usagerecord u SET state = %(held)s, cost_nanousd = c.cost, "
    "cost_error = c.reason "
    "FROM unnest(%(ids)s::bigint[], %(costs)s::bigint[], %(reasons)s::text[]) "
    "AS c(id, cost, reason) WHERE u.id = c.id"
)
_HELD_COUNT_SQL = (
    "INSERT INTO billing_providerbillinghealth (provider_id, last_error, consecutive_failures, "
    "invalid_costs_total, unknown_ids_total, missing_request_ids_total, "
    "reused_request_ids_total, long_request_ids_total, held_costs_total) "
    "VALUES (%(provider)s, '', 0, 0, 0, 0, 0, 0, %(held)s) "
    "ON CONFLICT (provider_id) DO UPDATE SET held_costs_total = "
    "billing_providerbillinghealth.held_costs_total + EXCLUDED.held_costs_total"
)


@retry_on_conflict
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
    A cost far above its request's estimate is held for review instead (`held_for_review`).
    """
    now = now or timezone.now()
    result = BatchResult()
    if not costs:
        return result
    with connection.cursor() as cursor:
        cursor.execute(
            _PENDING_LOCK_SQL,
            {"provider": provider.pk, "request_ids": list(costs), "pending": UsageState.PENDING},
        )
        pending = cursor.fetchall()
    result.already_done = len(costs) - len(pending)
    rows = [
        ChargeRow(
            usage_id, request_id, payer_id, period_of(created_at), estimate, costs[request_id]
        )
        for usage_id, request_id, payer_id, created_at, estimate in pending
    ]
    held = [
        r
        for r in rows
        if held_for_review(cost_nanousd=r.cost_nanousd, estimate_nanousd=r.estimate_nanousd)
    ]
    if held:
        _hold(provider.pk, held)
        result.held = len(held)
    held_ids = {r.usage_id for r in held}
    charged = charge_rows(
        provider=provider,
        rows=[r for r in rows if r.usage_id not in held_ids],
        now=now,
        actor=actor,
    )
    result.billed = charged.billed
    result.zero_cost = charged.zero_cost
    result.charged_nanousd = charged.charged_nanousd
    result.payers = charged.payers
    return result


def _hold(provider_id: int, rows: Sequence[ChargeRow]) -> None:
    factor = settings.BILLING_REVIEW_FACTOR
    with connection.cursor() as cursor:
        cursor.execute(
            _HELD_SQL,
            {
                "held": UsageState.HELD,
                "ids": [r.usage_id for r in rows],
                "costs": [r.cost_nanousd for r in rows],
                "reasons": [
                    f"held for review: cost {format_usd(r.cost_nanousd)} is over {factor}x the "
                    f"estimate {format_usd(r.estimate_nanousd)}"
                    for r in rows
                ],
            },
        )
        cursor.execute(_HELD_COUNT_SQL, {"provider": provider_id, "held": len(rows)})


@requires_atomic
def charge_rows(
    *, provider: Provider, rows: Sequence[ChargeRow], now: datetime, actor: str
) -> BatchResult:
    """Charges these locked records of `provider` (inside the caller's transaction): zero
    costs become `zero_cost`, the others one `charge` transaction each, in their request's
    month."""
    result = BatchResult()
    zero = [r.usage_id for r in rows if r.cost_nanousd == 0]
    rows = [r for r in rows if r.cost_nanousd > 0]
    if rows:
        _charge(provider, rows, now, actor, result)
    if zero:
        with connection.cursor() as cursor:
            cursor.execute(
                _ZERO_COST_SQL, {"zero_cost": UsageState.ZERO_COST, "now": now, "ids": zero}
            )
        result.zero_cost = len(zero)
    return result


def _charge(
    provider: Provider, rows: Sequence[ChargeRow], now: datetime, actor: str, result: BatchResult
) -> None:
    payer_ids = sorted({r.payer_id for r in rows})

    def pools_of() -> dict[tuple[int, str], int]:
        return {
            (billing_account_id, kind): pk
            for pk, billing_account_id, kind in LedgerAccount.objects.filter(
                billing_account_id__in=payer_ids
            ).values_list("pk", "billing_account_id", "kind")
        }

    pools = pools_of()
    if len(pools) < len(payer_ids) * len(PAYER_KINDS):
        # An account that lost its pools to a crash gets them back here (rare: looked for
        # only when some are missing, so a batch of healthy payers pays one query).
        pools_ensure(*BillingAccount.objects.filter(pk__in=payer_ids))
        pools = pools_of()
    payable = provider_payable_get_or_create(provider=provider).pk
    due = grants_due({(r.payer_id, r.period) for r in rows})
    platform = []
    if due:
        platform = [platform_account_get_or_create(AccountKind.CREDITS_GRANTED).pk]
    # The one global lock order: every account this batch may move, by primary key.
    lock_ids = [*pools.values(), payable, *platform]
    balances = accounts_lock(lock_ids)
    if due:
        by_id = {
            a.pk: a
            for a in BillingAccount.objects.filter(pk__in={p for p, _ in due}).select_related(
                "user", "organization"
            )
        }
        for period in sorted({d for _, d in due}):  # oldest month first: grants stay monotonic
            credits_grant_month_due(
                billing_accounts=[by_id[p] for p, d in due if d == period],
                now=now,
                month=period,
                locked=True,
            )
        balances = accounts_lock(lock_ids)

    # The included credits each (payer, month) may still use: a month that is not open (never
    # granted, or expired) has none; the only open month has the whole pool; with several
    # open months (the half hour after a month's end) each has what is left of its own.
    opened = open_periods(payer_ids, now=max(now, *(period_start(r.period) for r in rows)))
    several = sorted({(p, d) for p, periods in opened.items() if len(periods) > 1 for d in periods})
    left = included_left(several)
    running = {
        payer_id: {kind: balances[pools[(payer_id, kind)]] for kind in PAYER_KINDS}
        for payer_id in payer_ids
    }

    def usable(payer_id: int, period: date) -> int:
        periods = opened.get(payer_id, [])
        if period not in periods:
            return 0
        if len(periods) == 1:
            return running[payer_id][AccountKind.INCLUDED]
        return min(left[(payer_id, period)], running[payer_id][AccountKind.INCLUDED])

    charged, postings = [], []
    for r in rows:
        legs = [Leg(payable, r.cost_nanousd)]
        parts = _split(
            r.cost_nanousd,
            included=usable(r.payer_id, r.period),
            prepaid=running[r.payer_id][AccountKind.PREPAID],
        )
        for kind, part in parts.items():
            if part:
                running[r.payer_id][kind] -= part
                legs.append(Leg(pools[(r.payer_id, kind)], -part))
        if parts[AccountKind.INCLUDED] and (r.payer_id, r.period) in left:
            left[(r.payer_id, r.period)] -= parts[AccountKind.INCLUDED]
        key = f"charge:{provider.pk}:{r.request_id}"
        postings.append(Posting(TransactionKind.CHARGE, key, legs, r.payer_id, "", r.period))
        charged.append((r.usage_id, r.cost_nanousd, key))

    written = postings_write(postings, actor=actor, now=now, locked=True)
    charged = [(u, c, written[key]) for u, c, key in charged if key in written]
    if charged:
        with connection.cursor() as cursor:
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
    result.billed = len(charged)
    result.charged_nanousd = sum(cost for _, cost, _ in charged)
    result.payers = set(payer_ids)
