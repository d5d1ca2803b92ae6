from django.db.models import QuerySet

from accounts.models import (
    AccessToken,
    Membership,
    Organization,
    ProviderKey,
    SettingsChange,
    User,
)
from accounts.tokens import token_hash


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


def user_provider_key(*, user: User, provider_slug: str) -> str | None:
    """The user's own key for the provider, decrypted; None if not set.

    For the router only, to send to that provider. Never log or return it.
    """
    row = ProviderKey.objects.filter(user=user, provider__slug=provider_slug).first()
    return row.key if row is not None else None


def user_provider_key_list(*, user: User) -> QuerySet[ProviderKey]:
    return (
        ProviderKey.objects.filter(user=user).select_related("provider").order_by("provider__slug")
    )


def settings_change_list(
    *, user: User | None = None, organization: Organization | None = None
) -> QuerySet[SettingsChange]:
    changes = SettingsChange.objects.all()
    if user is not None:
        changes = changes.filter(user=user)
    if organization is not None:
        changes = changes.filter(organization=organization)
    return changes.order_by("-created_at", "-id")


# --- raw reads for the router (async psycopg, outside the ORM; see router/store.py) -----------
ROUTER_CALLER_SQL = """
SELECT t.id, t.role, t.permissions, t.revoked_at IS NOT NULL, u.id, u.username, u.is_active,
       u.plan, u.provider_order
FROM accounts_accesstoken t JOIN accounts_user u ON u.id = t.user_id
WHERE t.token_hash = %s
"""
ROUTER_ORGANIZATIONS_SQL = """
SELECT o.id, o.name, o.plan, o.seats, o.spending_limit_nanousd, o.disabled_providers
FROM accounts_membership m JOIN accounts_organization o ON o.id = m.organization_id
WHERE m.user_id = %s
"""
# Keys come back encrypted (`core.fields.decrypt`).
ROUTER_PROVIDER_KEYS_SQL = "SELECT provider_id, key FROM accounts_providerkey WHERE user_id = %s"
