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

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from accounts import plans
from billing.models import BillingAccount, InFlight
from billing.selectors import month_bounds
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
    + (SELECT coalesce(sum(f.estimated_cost_nanousd), 0)::bigint
       FROM billing_inflight f WHERE f.payer_id = %(payer)s AND f.expires_at > %(now)s)
FROM billing_ledgeraccount a WHERE a.billing_account_id = %(payer)s
"""
# Serializes limit checks of one payer, so that reservations see each other.
_LOCK_PAYER_SQL = "SELECT id FROM billing_billingaccount WHERE id = %(payer)s FOR UPDATE"
_RESERVE_SQL = """
INSERT INTO billing_inflight (payer_id, estimated_cost_nanousd, created_at, expires_at)
VALUES (%(payer)s, %(estimate)s, %(now)s, %(expires)s) RETURNING id
"""
RELEASE_SQL = "DELETE FROM billing_inflight WHERE id = ANY(%s)"
# A request still in flight after this long no longer counts (its router probably died).
IN_FLIGHT_TTL = timedelta(minutes=15)


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


def _state_params(payer_id: int, now: datetime) -> dict:
    start, end = month_bounds(now)
    return {
        "payer": payer_id,
        "grant_key": f"grant:{payer_id}:{start:%Y-%m}",
        "start": start,
        "end": end,
        "now": now,
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


def _state_from_row(terms: PayerTerms, row, *, with_spend: bool) -> PayerState:
    included, prepaid, payg, granted, *rest = row
    if not granted:
        included = terms.monthly_credit_nanousd
    spend, pending = rest if with_spend else (0, 0)
    return PayerState(
        included_nanousd=included,
        prepaid_nanousd=prepaid,
        payg_nanousd=payg,
        payg_spend_nanousd=spend,
        pending_nanousd=pending,
    )


def payer_state(
    *, billing_account: BillingAccount, now: datetime, with_spend: bool = False
) -> PayerState:
    """Balances (and, with `with_spend`, this month's payg spend and pending estimates)."""
    terms = payer_terms(billing_account=billing_account)
    with connection.cursor() as cursor:
        cursor.execute(
            _BALANCES_SPEND_SQL if with_spend else _BALANCES_SQL,
            _state_params(billing_account.pk, now),
        )
        row = cursor.fetchone()
    return _state_from_row(terms, row, with_spend=with_spend)


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


async def payer_reserve(
    conn, *, terms: PayerTerms, estimate_nanousd: int, now: datetime
) -> tuple[Decision, int | None]:
    """The router's check, on an async psycopg connection: the decision and, for a payer with
    a spending limit, the id of the in-flight reservation of `estimate_nanousd` it holds
    (release it with RELEASE_SQL in the transaction that records the usage).

    A payer with a limit is locked for the check, so concurrent requests are decided one after
    the other and each sees the reservations of the ones before it: the limit can be passed by
    at most one request's cost (the last one allowed)."""
    if terms.always_allowed:
        return decide(terms, None), None
    with_spend = terms.limit_nanousd is not None
    params = _state_params(terms.payer_id, now)
    async with conn.transaction():
        if with_spend:
            await conn.execute(_LOCK_PAYER_SQL, params)
        cursor = await conn.execute(_BALANCES_SPEND_SQL if with_spend else _BALANCES_SQL, params)
        state = _state_from_row(terms, await cursor.fetchone(), with_spend=with_spend)
        decision = decide(terms, state)
        if not (decision.allowed and with_spend):
            return decision, None
        cursor = await conn.execute(
            _RESERVE_SQL,
            {**params, "estimate": max(estimate_nanousd, 0), "expires": now + IN_FLIGHT_TTL},
        )
        (reservation_id,) = await cursor.fetchone()
    return decision, reservation_id


def in_flight_expired_delete(*, now: datetime | None = None) -> int:
    """Deletes reservations that expired (they no longer count); returns how many."""
    deleted, _ = InFlight.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
