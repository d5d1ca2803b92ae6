"""May this payer start a request? The router asks before it forwards (DESIGN §3 Billing).

A charge for a request already served is never refused, so limits are enforced here, before
routing; a refusal becomes a 402 whose message is `Decision.reason`.

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
  known). Pending charges are paid from credits first (included, then prepaid), so only the
  part of the estimates the remaining credits do not cover will be pay-as-you-go; and while
  credits remain, a new request is paid from them, not from pay-as-you-go (so a limit of $0
  means "credits only", not "nothing").

Included credits are granted lazily (hourly beat, or the first charge of a month). Until this
month's grant is posted, the included pool still holds last month's rest, which the grant
expires; so the included credits that count are this month's amount (`monthly_credit_nanousd`).

Cost: one SQL statement, plus loading the payer's owner if it was not loaded with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone

from accounts.models import OrgPlan, UserPlan
from billing.models import BillingAccount
from billing.selectors import month_bounds
from billing.services import monthly_credit_nanousd
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


# Balances of the payer's pools, and whether this month's grant was posted.
_BALANCES_SQL = """
SELECT
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'included'), 0)::bigint,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'prepaid'), 0)::bigint,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'payg'), 0)::bigint,
    EXISTS (SELECT 1 FROM billing_ledgertransaction WHERE idempotency_key = %(grant_key)s)
FROM billing_ledgeraccount a WHERE a.billing_account_id = %(payer)s
"""
# The same, plus this month's pay-as-you-go spend and the pending estimates.
_BALANCES_SPEND_SQL = """
SELECT
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'included'), 0)::bigint,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'prepaid'), 0)::bigint,
    coalesce(sum(a.balance_nanousd) FILTER (WHERE a.kind = 'payg'), 0)::bigint,
    EXISTS (SELECT 1 FROM billing_ledgertransaction WHERE idempotency_key = %(grant_key)s),
    (SELECT coalesce(-sum(e.amount_nanousd), 0)::bigint
       FROM billing_ledgertransaction t
       JOIN billing_ledgerentry e ON e.transaction_id = t.id
       JOIN billing_ledgeraccount p ON p.id = e.account_id
      WHERE t.billing_account_id = %(payer)s AND t.kind = 'charge'
        AND t.created_at >= %(start)s AND t.created_at < %(end)s
        AND p.billing_account_id = %(payer)s AND p.kind = 'payg' AND e.amount_nanousd < 0),
    (SELECT coalesce(sum(u.estimated_cost_nanousd), 0)::bigint
       FROM billing_usagerecord u WHERE u.payer_id = %(payer)s AND u.state = 'pending')
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


def payer_state(
    *, billing_account: BillingAccount, now: datetime, with_spend: bool = False
) -> PayerState:
    """Balances (and, with `with_spend`, this month's payg spend and pending estimates)."""
    start, end = month_bounds(now)
    params = {
        "payer": billing_account.pk,
        "grant_key": f"grant:{billing_account.pk}:{start:%Y-%m}",
        "start": start,
        "end": end,
    }
    with connection.cursor() as cursor:
        cursor.execute(_BALANCES_SPEND_SQL if with_spend else _BALANCES_SQL, params)
        row = cursor.fetchone()
    included, prepaid, payg, granted, *rest = row
    if not granted:
        included = monthly_credit_nanousd(billing_account)
    spend, pending = rest if with_spend else (0, 0)
    return PayerState(
        included_nanousd=included,
        prepaid_nanousd=prepaid,
        payg_nanousd=payg,
        payg_spend_nanousd=spend,
        pending_nanousd=pending,
    )


def payer_may_start(*, billing_account: BillingAccount, now: datetime | None = None) -> Decision:
    """Whether `billing_account` may start a new request now; `reason` is the 402 message."""
    now = now or timezone.now()
    org = billing_account.organization if billing_account.organization_id else None
    if org is None:
        who = f"User {billing_account.user.username}"
        has_payg = billing_account.user.plan == UserPlan.PRO
        upgrade = "upgrade to PRO"
    else:
        who = f"Organization {org.name}"
        has_payg = org.plan in (OrgPlan.TEAM, OrgPlan.ENTERPRISE)
        upgrade = "upgrade the organization to a Team or Enterprise plan"
    limit = org.spending_limit_nanousd if org is not None and has_payg else None
    if has_payg and limit is None:
        return Decision(True, "", ALLOWED)

    state = payer_state(billing_account=billing_account, now=now, with_spend=limit is not None)
    if not has_payg:
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
                f"{format_usd(monthly_credit_nanousd(billing_account))} per month); buy "
                f"prepaid credits or {upgrade} to continue.",
                NO_CREDITS,
            )
        return Decision(True, "", ALLOWED)

    if state.credits_nanousd > state.pending_nanousd:
        return Decision(True, "", ALLOWED)  # the next request is paid from credits
    used = state.payg_spend_nanousd + state.pending_nanousd - state.credits_nanousd
    if used >= limit:
        return Decision(
            False,
            f"{who} reached its monthly spending limit of {format_usd(limit)} "
            f"({format_usd(used)} spent or pending).",
            SPENDING_LIMIT,
        )
    return Decision(True, "", ALLOWED)
