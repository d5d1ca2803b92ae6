"""The caller rules (`accounts.rules`) and the plan table (`accounts.plans`): each written once,
called by the API and by the router."""

import ast
from pathlib import Path

import pytest

from accounts import plans, rules
from accounts.models import OrgPlan, TokenRole, UserPlan
from core.errors import DomainError, Kind

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("accounts", "registry", "billing", "router", "core")


class Org:
    def __init__(self, name: str, plan: str):
        self.name, self.plan = name, plan


def test_a_team_or_enterprise_organization_of_the_user_can_be_billed():
    for plan in (OrgPlan.TEAM, OrgPlan.ENTERPRISE):
        rules.bill_to_check(requested="acme", org=Org("acme", plan))


def test_bill_to_a_non_member_organization_is_forbidden_and_names_the_header():
    with pytest.raises(DomainError) as refused:
        rules.bill_to_check(requested="acme", org=None)
    assert (refused.value.code, refused.value.kind) == ("bill_to_not_member", Kind.FORBIDDEN)
    assert refused.value.field == "X-HF-Bill-To"
    assert refused.value.http_status == 403


def test_bill_to_a_free_organization_is_forbidden_and_says_which_plans_may():
    with pytest.raises(DomainError, match="team or enterprise") as refused:
        rules.bill_to_check(requested="acme", org=Org("acme", OrgPlan.FREE), field="billTo")
    assert (refused.value.code, refused.value.field) == ("bill_to_plan", "billTo")


@pytest.mark.parametrize(
    ("role", "permissions", "allowed"),
    [
        (TokenRole.WRITE, [], True),
        (TokenRole.READ, [], False),
        (TokenRole.FINE_GRAINED, [rules.INFERENCE_SERVERLESS_WRITE], True),
        (TokenRole.FINE_GRAINED, ["org.read"], False),
        ("unknown-role", [rules.INFERENCE_SERVERLESS_WRITE], False),
    ],
)
def test_only_write_and_inference_tokens_may_call_inference(role, permissions, allowed):
    if allowed:
        rules.inference_call_check(role=role, permissions=permissions)
        return
    with pytest.raises(DomainError) as refused:
        rules.inference_call_check(role=role, permissions=permissions)
    assert (refused.value.code, refused.value.kind) == ("insufficient_permissions", Kind.FORBIDDEN)


def test_a_read_token_may_read_but_not_write():
    assert rules.token_allows(role=TokenRole.READ, permissions=[], permission="org.read")
    assert not rules.token_allows(role=TokenRole.READ, permissions=[], permission="org.write")


def test_the_plan_table_gives_each_plan_its_entitlements():
    assert plans.monthly_credit_nanousd(user_plan_name=UserPlan.FREE) == 100_000_000
    assert plans.monthly_credit_nanousd(user_plan_name=UserPlan.PRO) == 2_000_000_000
    assert plans.monthly_credit_nanousd(org_plan_name=OrgPlan.TEAM, seats=3) == 6_000_000_000
    assert plans.monthly_credit_nanousd(org_plan_name=OrgPlan.FREE, seats=3) == 0
    assert plans.user_plan(UserPlan.PRO).pay_as_you_go
    assert not plans.user_plan(UserPlan.FREE).pay_as_you_go
    assert plans.org_plans_with("bill_to") == [OrgPlan.TEAM, OrgPlan.ENTERPRISE]
    assert plans.org_plans_with("partner_api") == [OrgPlan.TEAM, OrgPlan.ENTERPRISE]
    assert not plans.org_plan("no-such-plan").pay_as_you_go  # unknown plans grant nothing


def _production_sources():
    for app in PRODUCTION:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "tests" in path.parts or "migrations" in path.parts:
                continue
            yield path, ast.parse(path.read_text())


def _string_constants(tree) -> list[str]:
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


@pytest.mark.parametrize(
    ("code", "home"),
    [
        ("bill_to_not_member", "accounts/rules.py"),
        ("bill_to_plan", "accounts/rules.py"),
        ("insufficient_permissions", "accounts/rules.py"),
        ("provider_disabled", "registry/rules.py"),
        ("provider_suspended", "registry/rules.py"),
    ],
)
def test_each_rule_error_is_raised_in_one_place(code, home):
    """The router and the API reach these rules through one function each: the error code is
    written in exactly one production module."""
    places = [
        str(path.relative_to(ROOT))
        for path, tree in _production_sources()
        if code in _string_constants(tree)
    ]
    assert places == [home]


def test_team_or_enterprise_is_spelled_only_in_the_plan_table():
    """Every "team or enterprise" check reads `accounts.plans`; no other module names the
    paying organization plans."""
    places = set()
    for path, tree in _production_sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "OrgPlan"
                and node.attr in ("TEAM", "ENTERPRISE")
            ):
                places.add(str(path.relative_to(ROOT)))
    assert places <= {"accounts/plans.py", "accounts/models.py"}, places
