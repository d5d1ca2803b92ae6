"""May this payer start a request? The router asks before it forwards (DESIGN §3 Billing).

A charge for a request already served is never refused, so limits are enforced here, before
routing; a refusal becomes a 402 whose message is `Decision.reason`.

This module holds the rule (`decide`, from a payer's `PayerTerms`, its `PayerState` and the
new request's upper-bound estimate), the statements that read a payer's state, and the
housekeeping of reservations. The router's check-and-reserve, on its async connection, is
`billing.aio.payer_reserve`; `payer_may_start` is the same check for synchronous callers.

Bounded payers are every payer without pay-as-you-go and every organization with a spending
limit; the others (PRO users, team/enterprise organizations without a limit) may always start
and nothing is read. For a bounded payer the router reserves the request's upper bound (an
`InFlight` row) under a lock on the payer, so concurrent requests see each other.

"Pending" is the sum of `estimated_cost_nanousd` (the request's upper bound, docs/billing.md
"Spending limits: the bound") of the payer's usage records that are
- `pending` (served, cost not yet known) and still chargeable: never asked about yet, or first
  asked less than `BILLING_FAILED_AFTER_S` ago (the poller expires a record asked longer ago
  before it asks again, so a record stops counting exactly when it can no longer be
  charged), or
- `held` for review (charged only if a person approves it),
plus the payer's unexpired in-flight reservations (requests being served right now).

Rules (`E` = the new request's upper bound, at least 1 nano-USD):
- Payers without pay-as-you-go (free users, free organizations) may start only while they owe
  nothing (payg >= 0: a debt blocks them) and included + prepaid credits > pending. So they
  cannot run more than their credits plus one reservation in flight.
- An organization with a monthly spending limit may start when its credits cover pending + E
  (the request is paid from credits; a limit of $0 means "credits only"), else only while

      pay-as-you-go spend this month + (pending + E - credits) <= limit

  so the limit holds exactly when providers charge no more than the reservations.
  "Pay-as-you-go spend of month M" is minus the sum of the payer's `payg` legs of `charge`
  and `refund` transactions whose `period` is M (the request's UTC month; a refund nets its
  charge out). Transactions written before `period` existed (null) count by `created_at`.

Included credits are granted lazily (hourly beat, or the first charge of a month). Until this
month's grant is posted, the included pool still holds last month's rest, which the grant
expires; so the included credits that count are this month's amount (`monthly_credit_nanousd`).

Cost: one SQL statement, plus loading the payer's owner if it was not loaded with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts import plans
from billing.models import AccountKind, BillingAccount, InFlight, TransactionKind, UsageState
from billing.selectors import (
    MONTHLY_GRANT_KEYS,
    grant_key,
    month_bounds,
    month_label,
    oldest_open_period,
)
from core.money import format_usd

ALLOWED = "ok"
NO_CREDITS = "no_credits"
DEBT = "unpaid_balance"
SPENDING_LIMIT = "spending_limit_reached"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    code: str


# Balances of the payer's pools, whether this month's grant was posted, and its pending
# estimates (columns by name: `PayerState` is built from them). Enum values are parameters
# (`state_params`). The pending sum reads the partial indexes `billing_usage_payer_pending`
# and `billing_usage_payer_held`, and `billing_inflight_payer`.
_BALANCES = """
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(included)s), 0)::bigint AS included,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(prepaid)s), 0)::bigint AS prepaid,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(payg)s), 0)::bigint AS payg,
    EXISTS (SELECT 1 FROM billing_ledgertransaction WHERE idempotency_key = %(grant_key)s)
        AS granted,
    (SELECT coalesce(sum(greatest(o.left_nanousd, 0)), 0)::bigint FROM (
        SELECT (SELECT sum(e.amount_nanousd)
                  FROM billing_ledgertransaction t
                  JOIN billing_ledgerentry e ON e.transaction_id = t.id
                  JOIN billing_ledgeraccount p ON p.id = e.account_id
                 WHERE t.billing_account_id = %(payer)s AND t.kind = ANY(%(month_kinds)s)
                   AND t.period = g.period
                   AND p.billing_account_id = %(payer)s AND p.kind = %(included)s)
               AS left_nanousd
          FROM billing_ledgertransaction g
         WHERE g.billing_account_id = %(payer)s AND g.kind = %(grant)s
           AND g.idempotency_key LIKE %(monthly)s
           AND g.period < %(period)s AND g.period >= %(oldest_open)s
           AND NOT EXISTS (SELECT 1 FROM billing_ledgertransaction x
                            WHERE x.billing_account_id = %(payer)s AND x.kind = %(expiry)s
                              AND x.period = g.period)) o)
        AS included_old,
    (SELECT coalesce(sum(u.estimated_cost_nanousd), 0)::bigint
       FROM billing_usagerecord u
      WHERE u.payer_id = %(payer)s AND u.state = %(pending)s
        AND (u.first_asked_at IS NULL OR u.first_asked_at > %(window_start)s))
    + (SELECT coalesce(sum(u.estimated_cost_nanousd), 0)::bigint
       FROM billing_usagerecord u WHERE u.payer_id = %(payer)s AND u.state = %(held)s)
    + (SELECT coalesce(sum(f.estimated_cost_nanousd), 0)::bigint
       FROM billing_inflight f WHERE f.payer_id = %(payer)s AND f.expires_at > %(now)s)
        AS pending"""
# This month's pay-as-you-go spend: charges net of refunds, by the request's month (`period`;
# migration 0006 gave every earlier charge and refund one).
_PAYG_SPEND = """
    (SELECT coalesce(-sum(e.amount_nanousd), 0)::bigint
       FROM billing_ledgertransaction t
       JOIN billing_ledgerentry e ON e.transaction_id = t.id
       JOIN billing_ledgeraccount p ON p.id = e.account_id
      WHERE t.billing_account_id = %(payer)s AND t.kind IN (%(charge)s, %(refund)s)
        AND t.period = %(period)s
        AND p.billing_account_id = %(payer)s AND p.kind = %(payg)s)
        AS payg_spend"""
_FROM_POOLS = "\nFROM billing_ledgeraccount a WHERE a.billing_account_id = %(payer)s\n"
# Payers without pay-as-you-go: balances and pending.
BALANCES_SQL = "SELECT" + _BALANCES + _FROM_POOLS
# Organizations with a spending limit: the same, plus this month's pay-as-you-go spend.
BALANCES_SPEND_SQL = "SELECT" + _BALANCES + "," + _PAYG_SPEND + _FROM_POOLS


@dataclass(frozen=True)
class PayerState:
    included_nanousd: int  # this month's, see the module docstring
    prepaid_nanousd: int
    payg_nanousd: int  # negative = owed
    payg_spend_nanousd: int = 0  # this month; only read for organizations with a limit
    pending_nanousd: int = 0  # pending records and in-flight reservations (module docstring)

    @property
    def credits_nanousd(self) -> int:
        return max(self.included_nanousd, 0) + max(self.prepaid_nanousd, 0)


def state_params(payer_id: int, now: datetime) -> dict:
    """The parameters of `BALANCES_SQL` and `BALANCES_SPEND_SQL`."""
    start, end = month_bounds(now)
    return {
        "payer": payer_id,
        "grant_key": grant_key(payer_id, month_label(now)),
        "period": start.date(),
        "start": start,
        "end": end,
        "now": now,
        "window_start": now - timedelta(seconds=settings.BILLING_FAILED_AFTER_S),
        "included": AccountKind.INCLUDED,
        "prepaid": AccountKind.PREPAID,
        "payg": AccountKind.PAYG,
        "charge": TransactionKind.CHARGE,
        "refund": TransactionKind.REFUND,
        "pending": UsageState.PENDING,
        "held": UsageState.HELD,
        # What is left of earlier months still open (their charges may still come) is in the
        # included pool but is not this month's to spend (`included_old`).
        "grant": TransactionKind.GRANT,
        "expiry": TransactionKind.EXPIRY,
        "monthly": MONTHLY_GRANT_KEYS,
        "month_kinds": [k for k in TransactionKind.values if k != TransactionKind.TOP_UP],
        "oldest_open": oldest_open_period(now),
    }


@dataclass(frozen=True)
class PayerTerms:
    """What a payer's plan allows, from its owner's plan and settings (no balances)."""

    payer_id: int
    who: str
    has_payg: bool
    limit_nanousd: int | None
    monthly_credit_nanousd: int
    upgrade: str

    @property
    def always_allowed(self) -> bool:
        """Pay-as-you-go without a limit: no balance needs reading, nothing is reserved."""
        return self.has_payg and self.limit_nanousd is None

    @property
    def with_spend(self) -> bool:
        """Whether the check reads this month's pay-as-you-go spend (`BALANCES_SPEND_SQL`)."""
        return self.limit_nanousd is not None


def terms_for(
    *,
    payer_id: int,
    user_name: str = "",
    user_plan: str = "",
    org_name: str = "",
    org_plan: str = "",
    org_seats: int = 0,
    org_limit_nanousd: int | None = None,
) -> PayerTerms:
    """A payer's terms from its owner's plan (a user's, or an organization's if `org_name`)."""
    if not org_name:
        return PayerTerms(
            payer_id=payer_id,
            who=f"User {user_name}",
            has_payg=plans.user_plan(user_plan).pay_as_you_go,
            limit_nanousd=None,
            monthly_credit_nanousd=plans.monthly_credit_nanousd(user_plan_name=user_plan),
            upgrade="upgrade to PRO",
        )
    has_payg = plans.org_plan(org_plan).pay_as_you_go
    return PayerTerms(
        payer_id=payer_id,
        who=f"Organization {org_name}",
        has_payg=has_payg,
        limit_nanousd=org_limit_nanousd if has_payg else None,
        monthly_credit_nanousd=plans.monthly_credit_nanousd(
            org_plan_name=org_plan, seats=org_seats
        ),
        upgrade="upgrade the organization to a Team or Enterprise plan",
    )


def payer_terms(*, billing_account: BillingAccount) -> PayerTerms:
    if billing_account.organization_id:
        org = billing_account.organization
        return terms_for(
            payer_id=billing_account.pk,
            org_name=org.name,
            org_plan=org.plan,
            org_seats=org.seats,
            org_limit_nanousd=org.spending_limit_nanousd,
        )
    user = billing_account.user
    return terms_for(payer_id=billing_account.pk, user_name=user.username, user_plan=user.plan)


def state_from_row(terms: PayerTerms, row: Mapping[str, Any]) -> PayerState:
    """A `PayerState` from a row of `BALANCES_SQL` or `BALANCES_SPEND_SQL`, by column name."""
    return PayerState(
        # Once this month is granted, the pool less what earlier months still open keep;
        # before, this month's amount (what the pool holds is earlier months').
        included_nanousd=(
            max(row["included"] - row["included_old"], 0)
            if row["granted"]
            else terms.monthly_credit_nanousd
        ),
        prepaid_nanousd=row["prepaid"],
        payg_nanousd=row["payg"],
        payg_spend_nanousd=row.get("payg_spend", 0),
        pending_nanousd=row.get("pending", 0),
    )


def payer_state(
    *, billing_account: BillingAccount, now: datetime, with_spend: bool = False
) -> PayerState:
    """Balances and pending estimates (and, with `with_spend`, this month's payg spend)."""
    terms = payer_terms(billing_account=billing_account)
    with connection.cursor() as cursor:
        cursor.execute(
            BALANCES_SPEND_SQL if with_spend else BALANCES_SQL,
            state_params(billing_account.pk, now),
        )
        names = [column.name for column in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
    return state_from_row(terms, row)


def decide(terms: PayerTerms, state: PayerState | None, *, estimate_nanousd: int = 1) -> Decision:
    """The rules of the module docstring for a new request whose upper bound is
    `estimate_nanousd` (at least 1). `state` may be None when `terms.always_allowed`."""
    if terms.always_allowed:
        return Decision(True, "", ALLOWED)
    who = terms.who
    pending = state.pending_nanousd
    if not terms.has_payg:
        if state.payg_nanousd < 0:
            return Decision(
                False,
                f"{who} has an unpaid balance of {format_usd(-state.payg_nanousd)} from "
                "requests that cost more than its credits; new requests are refused until "
                "it is settled.",
                DEBT,
            )
        if state.credits_nanousd <= pending:
            in_use = (
                f" beyond {format_usd(pending)} reserved for requests not yet billed"
                if pending > 0
                else ""
            )
            return Decision(
                False,
                f"{who} has no credits left{in_use} (its plan includes "
                f"{format_usd(terms.monthly_credit_nanousd)} per month); buy "
                f"prepaid credits or {terms.upgrade} to continue.",
                NO_CREDITS,
            )
        return Decision(True, "", ALLOWED)

    estimate = max(estimate_nanousd, 1)
    if state.credits_nanousd >= pending + estimate:
        return Decision(True, "", ALLOWED)  # the request is paid from credits
    limit = terms.limit_nanousd
    used = state.payg_spend_nanousd + pending - state.credits_nanousd
    if used + estimate > limit:
        if used >= limit:
            reason = (
                f"{who} reached its monthly spending limit of {format_usd(limit)} "
                f"({format_usd(used)} spent or pending)."
            )
        else:
            reason = (
                f"{who} would pass its monthly spending limit of {format_usd(limit)} "
                f"({format_usd(used)} spent or pending) with this request, which may cost "
                f"up to {format_usd(estimate)}; set max_tokens lower or raise the limit."
            )
        return Decision(False, reason, SPENDING_LIMIT)
    return Decision(True, "", ALLOWED)


def payer_may_start(
    *, billing_account: BillingAccount, now: datetime | None = None, estimate_nanousd: int = 1
) -> Decision:
    """Whether `billing_account` may start a new request whose upper bound is
    `estimate_nanousd` now; `reason` is the 402 message."""
    terms = payer_terms(billing_account=billing_account)
    if terms.always_allowed:
        return decide(terms, None)
    state = payer_state(
        billing_account=billing_account, now=now or timezone.now(), with_spend=terms.with_spend
    )
    return decide(terms, state, estimate_nanousd=estimate_nanousd)


def in_flight_expired_delete(*, now: datetime | None = None) -> int:
    """Deletes reservations that expired (they no longer count); returns how many."""
    deleted, _ = InFlight.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
