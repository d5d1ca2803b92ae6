"""May this payer start a request? The router asks before it forwards (DESIGN §3 Billing).

A charge for a request already served is never refused, so limits are enforced here, before
routing; a refusal becomes a 402 whose message is `Decision.reason`.

This module holds the rule (`decide`, from a payer's `PayerTerms` and `PayerState`), the
statements that read a payer's state, and the housekeeping of reservations. The router's
check-and-reserve, on its async connection, is `billing.aio.payer_reserve`; `payer_may_start`
is the same check for synchronous callers.

Rules:
- Payers without pay-as-you-go (free users, free organizations) may start a request only while
  included + prepaid credits > 0 and they owe nothing (payg >= 0): a debt blocks them.
- PRO users and team/enterprise organizations have pay-as-you-go: they may always start,
  except an organization with a monthly spending limit, which is refused once

      pay-as-you-go spend this month + pending estimates beyond its credits >= limit

  and it has no credits left beyond its pending estimates. "Pay-as-you-go spend this month"
  is, from the ledger, the sum of the negative payg entries of `charge` transactions created
  in the current calendar month (UTC), as a positive number. "Pending estimates" is the sum of
  `estimated_cost_nanousd` of the payer's usage records still `pending` (served, cost not yet
  known) plus the unexpired in-flight reservations (requests being served right now; the
  router reserves under a lock on the payer, so concurrent requests see each other).
  Pending charges are paid from credits first (included, then prepaid), so only the
  part of the estimates the remaining credits do not cover will be pay-as-you-go; and while
  credits remain, a new request is paid from them, not from pay-as-you-go (so a limit of $0
  means "credits only", not "nothing").

Included credits are granted lazily (hourly beat, or the first charge of a month). Until this
month's grant is posted, the included pool still holds last month's rest, which the grant
expires; so the included credits that count are this month's amount (`monthly_credit_nanousd`).

Cost: one SQL statement, plus loading the payer's owner if it was not loaded with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from accounts import plans
from billing.models import AccountKind, BillingAccount, InFlight, TransactionKind, UsageState
from billing.selectors import grant_key, month_bounds, month_label
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


# Balances of the payer's pools, and whether this month's grant was posted (columns by name:
# `PayerState` is built from them). Enum values are parameters (`state_params`).
BALANCES_SQL = """
SELECT
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(included)s), 0)::bigint AS included,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(prepaid)s), 0)::bigint AS prepaid,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(payg)s), 0)::bigint AS payg,
    EXISTS (SELECT 1 FROM billing_ledgertransaction WHERE idempotency_key = %(grant_key)s)
        AS granted
FROM billing_ledgeraccount a WHERE a.billing_account_id = %(payer)s
"""
# The same, plus this month's pay-as-you-go spend and the pending estimates.
BALANCES_SPEND_SQL = """
SELECT
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(included)s), 0)::bigint AS included,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(prepaid)s), 0)::bigint AS prepaid,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = %(payg)s), 0)::bigint AS payg,
    EXISTS (SELECT 1 FROM billing_ledgertransaction WHERE idempotency_key = %(grant_key)s)
        AS granted,
    (SELECT coalesce(-sum(e.amount_nanousd), 0)::bigint
       FROM billing_ledgertransaction t
       JOIN billing_ledgerentry e ON e.transaction_id = t.id
       JOIN billing_ledgeraccount p ON p.id = e.account_id
      WHERE t.billing_account_id = %(payer)s AND t.kind = %(charge)s
        AND t.created_at >= %(start)s AND t.created_at < %(end)s
        AND p.billing_account_id = %(payer)s AND p.kind = %(payg)s AND e.amount_nanousd < 0)
        AS payg_spend,
    (SELECT coalesce(sum(u.estimated_cost_nanousd), 0)::bigint
       FROM billing_usagerecord u WHERE u.payer_id = %(payer)s AND u.state = %(pending)s)
    + (SELECT coalesce(sum(f.estimated_cost_nanousd), 0)::bigint
       FROM billing_inflight f WHERE f.payer_id = %(payer)s AND f.expires_at > %(now)s)
        AS pending
FROM billing_ledgeraccount a WHERE a.billing_account_id = %(payer)s
"""


@dataclass(frozen=True)
class PayerState:
    included_nanousd: int  # this month's, see the module docstring
    prepaid_nanousd: int
    payg_nanousd: int  # negative = owed
    payg_spend_nanousd: int = 0  # this month; only read for organizations with a limit
    pending_nanousd: int = 0  # likewise

    @property
    def credits_nanousd(self) -> int:
        return max(self.included_nanousd, 0) + max(self.prepaid_nanousd, 0)


def state_params(payer_id: int, now: datetime) -> dict:
    """The parameters of `BALANCES_SQL` and `BALANCES_SPEND_SQL`."""
    start, end = month_bounds(now)
    return {
        "payer": payer_id,
        "grant_key": grant_key(payer_id, month_label(now)),
        "start": start,
        "end": end,
        "now": now,
        "included": AccountKind.INCLUDED,
        "prepaid": AccountKind.PREPAID,
        "payg": AccountKind.PAYG,
        "charge": TransactionKind.CHARGE,
        "pending": UsageState.PENDING,
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
        """Pay-as-you-go without a limit: no balance needs reading."""
        return self.has_payg and self.limit_nanousd is None


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
        included_nanousd=row["included"] if row["granted"] else terms.monthly_credit_nanousd,
        prepaid_nanousd=row["prepaid"],
        payg_nanousd=row["payg"],
        payg_spend_nanousd=row.get("payg_spend", 0),
        pending_nanousd=row.get("pending", 0),
    )


def payer_state(
    *, billing_account: BillingAccount, now: datetime, with_spend: bool = False
) -> PayerState:
    """Balances (and, with `with_spend`, this month's payg spend and pending estimates)."""
    terms = payer_terms(billing_account=billing_account)
    with connection.cursor() as cursor:
        cursor.execute(
            BALANCES_SPEND_SQL if with_spend else BALANCES_SQL,
            state_params(billing_account.pk, now),
        )
        names = [column.name for column in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
    return state_from_row(terms, row)


def decide(terms: PayerTerms, state: PayerState | None) -> Decision:
    """The rules of the module docstring. `state` may be None when `terms.always_allowed`."""
    if terms.always_allowed:
        return Decision(True, "", ALLOWED)
    who = terms.who
    if not terms.has_payg:
        if state.payg_nanousd < 0:
            return Decision(
                False,
                f"{who} has an unpaid balance of {format_usd(-state.payg_nanousd)} from "
                "requests that cost more than its credits; new requests are refused until "
                "it is settled.",
                DEBT,
            )
        if state.credits_nanousd <= 0:
            return Decision(
                False,
                f"{who} has no credits left (its plan includes "
                f"{format_usd(terms.monthly_credit_nanousd)} per month); buy "
                f"prepaid credits or {terms.upgrade} to continue.",
                NO_CREDITS,
            )
        return Decision(True, "", ALLOWED)

    if state.credits_nanousd > state.pending_nanousd:
        return Decision(True, "", ALLOWED)  # the next request is paid from credits
    limit = terms.limit_nanousd
    used = state.payg_spend_nanousd + state.pending_nanousd - state.credits_nanousd
    if used >= limit:
        return Decision(
            False,
            f"{who} reached its monthly spending limit of {format_usd(limit)} "
            f"({format_usd(used)} spent or pending).",
            SPENDING_LIMIT,
        )
    return Decision(True, "", ALLOWED)


def payer_may_start(*, billing_account: BillingAccount, now: datetime | None = None) -> Decision:
    """Whether `billing_account` may start a new request now; `reason` is the 402 message."""
    terms = payer_terms(billing_account=billing_account)
    if terms.always_allowed:
        return decide(terms, None)
    state = payer_state(
        billing_account=billing_account,
        now=now or timezone.now(),
        with_spend=terms.limit_nanousd is not None,
    )
    return decide(terms, state)


def in_flight_expired_delete(*, now: datetime | None = None) -> int:
    """Deletes reservations that expired (they no longer count); returns how many."""
    deleted, _ = InFlight.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
