"""What each plan includes: the one table every plan rule reads.

DESIGN §3 Accounts and Billing: monthly included credits are $0.10 for a free user, $2.00 for
a PRO user and $2.00 per seat for a team or enterprise organization; PRO users and team or
enterprise organizations have pay-as-you-go; only team and enterprise organizations can be
billed with `X-HF-Bill-To` and use the partner Model Mapping API. Nothing else in the code
spells "team or enterprise".
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import OrgPlan, UserPlan


@dataclass(frozen=True, slots=True)
class Plan:
    pay_as_you_go: bool  # may spend beyond its credits (billed at month end)
    bill_to: bool  # an organization that members may bill requests to (`X-HF-Bill-To`)
    partner_api: bool  # an organization whose providers may manage their mappings
    included_nanousd_per_seat: int  # monthly included credits; a user is one seat


FREE_USER_MONTHLY_NANOUSD = 100_000_000
PRO_USER_MONTHLY_NANOUSD = 2_000_000_000
ORG_SEAT_MONTHLY_NANOUSD = 2_000_000_000

USER_PLANS: dict[str, Plan] = {
    UserPlan.FREE: Plan(False, False, False, FREE_USER_MONTHLY_NANOUSD),
    UserPlan.PRO: Plan(True, False, False, PRO_USER_MONTHLY_NANOUSD),
}
ORG_PLANS: dict[str, Plan] = {
    OrgPlan.FREE: Plan(False, False, False, 0),
    OrgPlan.TEAM: Plan(True, True, True, ORG_SEAT_MONTHLY_NANOUSD),
    OrgPlan.ENTERPRISE: Plan(True, True, True, ORG_SEAT_MONTHLY_NANOUSD),
}
_NOTHING = Plan(False, False, False, 0)  # a plan value this code does not know grants nothing


def user_plan(plan: str) -> Plan:
    return USER_PLANS.get(plan, _NOTHING)


def org_plan(plan: str) -> Plan:
    return ORG_PLANS.get(plan, _NOTHING)


def monthly_credit_nanousd(
    *, user_plan_name: str | None = None, org_plan_name: str = "", seats: int = 0
) -> int:
    """Included credits per month: of a user (given `user_plan_name`) or an organization."""
    if user_plan_name is not None:
        return user_plan(user_plan_name).included_nanousd_per_seat
    return org_plan(org_plan_name).included_nanousd_per_seat * seats


def org_plans_with(entitlement: str) -> list[str]:
    """Organization plans granting `entitlement` (a `Plan` field), for messages."""
    return [name for name, plan in ORG_PLANS.items() if getattr(plan, entitlement)]
