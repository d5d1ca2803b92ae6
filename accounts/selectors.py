from django.db.models import QuerySet

from accounts.models import (
    AccessToken,
    Membership,
    Organization,
    Role,
    SettingsChange,
    User,
)
from accounts.tokens import token_hash
from core.errors import DomainError, Kind


def access_token_get_by_secret(*, secret: str) -> AccessToken | None:
    return AccessToken.objects.select_related("user").filter(token_hash=token_hash(secret)).first()


def access_token_list(*, user: User) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(user=user).order_by("-created_at")


def user_get(*, name: str) -> User | None:
    return User.objects.filter(username__iexact=name).first()


def organization_get(*, name: str) -> Organization | None:
    return Organization.objects.filter(name__iexact=name).first()


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name")
    )


def membership_get(*, user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def organization_get_for_admin(*, user: User, name: str) -> Organization:
    """The organization, if `user` administers it. Not found if unknown or if `user` is not a
    member (the same answer, so names stay private); forbidden for a member who is not an
    admin."""
    org = organization_get(name=name)
    membership = org and membership_get(user=user, organization=org)
    if not membership:
        raise DomainError("not_found", f"Organization {name!r} not found.", kind=Kind.NOT_FOUND)
    if membership.role != Role.ADMIN:
        raise DomainError(
            "permission_denied",
            f"Only admins of organization {org.name!r} can do this (your role is "
            f"{membership.role!r}).",
            kind=Kind.FORBIDDEN,
        )
    return org


def membership_list_for_organization(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("user__username")
    )


def name_taken(*, name: str) -> bool:
    """Users and organizations share one namespace (model ids are `namespace/name`)."""
    return (
        User.objects.filter(username__iexact=name).exists()
        or Organization.objects.filter(name__iexact=name).exists()
    )


# --- inference-provider settings (read by the registry's Hub API and the router) -------------
def provider_order_for(*, user: User | None) -> tuple[str, ...]:
    """The caller's preferred providers, most preferred first; empty for anonymous callers or
    users without a preference (the registry then applies its default order). Reads the user
    row already loaded by authentication: no query."""
    if user is None or not user.is_authenticated:
        return ()
    return tuple(user.provider_order)


def organization_disabled_providers(*, organization: Organization) -> frozenset[str]:
    """Providers the router must never choose when `organization` pays."""
    return frozenset(organization.disabled_providers)


def settings_change_list(
    *, user: User | None = None, organization: Organization | None = None
) -> QuerySet[SettingsChange]:
    changes = SettingsChange.objects.all()
    if user is not None:
        changes = changes.filter(user=user)
    if organization is not None:
        changes = changes.filter(organization=organization)
    return changes.order_by("-created_at", "-id")
