"""Pure rules about callers, shared by the API (DRF) and the router (async ASGI).

Each is written once and raises `DomainError`; the API renders it in the Hub's JSON format and
the router in OpenAI's. They read plain values (a role, a permission list, an organization's
name and plan), so the ORM side and the router's rows can both call them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from accounts import plans
from accounts.models import TokenRole
from core.errors import DomainError, Kind

INFERENCE_SERVERLESS_WRITE = "inference.serverless.write"

# Fine-grained permissions a token can carry, with what each allows (shown in the admin).
FINE_GRAINED_PERMISSIONS = {
    INFERENCE_SERVERLESS_WRITE: "Make calls to inference providers through the router",
    "inference.endpoints.infer.write": "Make calls to inference endpoints",
    "user.billing.read": "Read the user's billing usage",
    "org.read": "Read organizations the user belongs to",
    "org.write": "Manage organizations the user administers (including their provider mappings)",
    "tokens.write": "Create and revoke the user's access tokens",
    "user.settings.write": (
        "Change the user's settings: inference provider order and custom provider keys"
    ),
}
# Permissions that only read; a `read` token carries these.
READ_PERMISSIONS = frozenset({"user.billing.read", "org.read"})


def token_allows(*, role: str, permissions: Collection[str], permission: str) -> bool:
    """`read` tokens may only read; `write` tokens may do everything their user may do;
    `fine-grained` tokens exactly what their permission list names."""
    if role == TokenRole.WRITE:
        return True
    if role == TokenRole.READ:
        return permission in READ_PERMISSIONS
    return role == TokenRole.FINE_GRAINED and permission in permissions


def token_permission_check(*, role: str, permissions: Collection[str], permission: str) -> None:
    if not token_allows(role=role, permissions=permissions, permission=permission):
        raise DomainError(
            "insufficient_permissions",
            f"This {role} access token does not have the '{permission}' permission.",
            kind=Kind.FORBIDDEN,
        )


def token_create_check(
    *,
    creator_role: str | None,
    creator_permissions: Collection[str],
    role: str,
    permissions: Collection[str],
) -> None:
    """May a token with `creator_role`/`creator_permissions` create a token with `role` and
    `permissions`? Never one with more rights than it has: a `write` token (or a browser
    session: `creator_role` None) may create any; a fine-grained one only fine-grained tokens
    whose permissions are a subset of its own (a `read` token reads what a fine-grained token
    may not, and a `write` token does everything); a `read` token none."""
    if creator_role is None or creator_role == TokenRole.WRITE:
        return
    if creator_role != TokenRole.FINE_GRAINED or role != TokenRole.FINE_GRAINED:
        raise DomainError(
            "permission_denied",
            f"role: this {creator_role} access token may only create fine-grained tokens "
            f"(not a {role!r} token) with permissions it holds itself.",
            field="role",
            kind=Kind.FORBIDDEN,
        )
    extra = sorted(set(permissions) - set(creator_permissions))
    if extra:
        raise DomainError(
            "permission_denied",
            f"permissions: this access token cannot grant {', '.join(map(repr, extra))}, which "
            "it does not hold itself.",
            field="permissions",
            kind=Kind.FORBIDDEN,
        )


def inference_call_check(*, role: str, permissions: Collection[str]) -> None:
    """May this token call inference providers (the router)? A write token, or a
    fine-grained one holding `inference.serverless.write`; never a read token."""
    if role == TokenRole.READ or not token_allows(
        role=role, permissions=permissions, permission=INFERENCE_SERVERLESS_WRITE
    ):
        raise DomainError(
            "insufficient_permissions",
            f"This {role} access token does not have the '{INFERENCE_SERVERLESS_WRITE}' "
            "permission needed to call inference providers.",
            kind=Kind.FORBIDDEN,
        )


class NamedOrg(Protocol):
    name: str
    plan: str


def bill_to_check(
    *,
    requested: str,
    org: NamedOrg | None,
    field: str = "X-HF-Bill-To",
    user_name: str | None = None,
) -> None:
    """May a user bill requests to the organization named `requested`? `org` is that
    organization if the user is a member of it, else None (an unknown organization reads as
    "not a member", so names stay private). Its plan must allow bill-to (`accounts.plans`)."""
    if org is None:
        raise DomainError(
            "bill_to_not_member",
            f"{user_name!r} is not a member of {requested!r}."  # a service records for a user
            if user_name
            else f"You are not a member of the organization {requested!r}; you cannot bill "
            "requests to it.",
            field=field,
            kind=Kind.FORBIDDEN,
        )
    if not plans.org_plan(org.plan).bill_to:
        raise DomainError(
            "bill_to_plan",
            f"The organization {org.name!r} is on the {org.plan!r} plan; billing requests to "
            f"an organization needs a {' or '.join(plans.org_plans_with('bill_to'))} plan.",
            field=field,
            kind=Kind.FORBIDDEN,
        )
