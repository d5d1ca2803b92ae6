"""Writes for accounts. Views, admin, management commands and tests all go through these."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts import selectors
from accounts.models import (
    SEATS_MAX,
    AccessToken,
    Membership,
    Organization,
    OrgPlan,
    Role,
    SettingName,
    SettingsChange,
    SettingsSource,
    TokenRole,
    User,
    UserPlan,
    name_validator,
)
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from accounts.rules import token_create_check
from accounts.tokens import DISPLAY_PREFIX_LENGTH, token_generate, token_hash
from core.errors import DomainError, Kind
from core.transactions import requires_atomic

TOKEN_NAME_MAX_LENGTH = 100
FULLNAME_MAX_LENGTH = 255


def _validate_name(name: str, *, field: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise DomainError("validation_error", f"{field} is required.", field=field)
    try:
        name_validator(name)
    except DjangoValidationError as exc:
        raise DomainError(
            "validation_error", f"Invalid {field} {name!r}: {exc.messages[0]}", field=field
        ) from exc
    return name


def _validate_choice(value: str, choices: Iterable[str], *, field: str) -> str:
    allowed = list(choices)
    if value not in allowed:
        raise DomainError(
            "validation_error",
            f"Invalid {field} {value!r}: expected one of {', '.join(allowed)}.",
            field=field,
        )
    return value


def _validate_fullname(fullname: str) -> None:
    if len(fullname) > FULLNAME_MAX_LENGTH:
        raise DomainError(
            "validation_error",
            f"fullname is longer than {FULLNAME_MAX_LENGTH} characters.",
            field="fullname",
        )


def _save_named(obj: User | Organization, name: str) -> None:
    """Saves a new user or organization; losing a race for the name is a 409."""
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError as exc:
        raise DomainError(
            "conflict", f"The name {name!r} is already taken.", field="name", kind=Kind.CONFLICT
        ) from exc


def _ensure_name_free(name: str) -> None:
    if selectors.name_taken(name=name):
        raise DomainError(
            "conflict",
            f"The name {name!r} is already taken by a user or an organization.",
            field="name",
            kind=Kind.CONFLICT,
        )


@transaction.atomic
def user_create(
    *,
    name: str,
    email: str = "",
    plan: str = UserPlan.FREE,
    fullname: str = "",
    is_staff: bool = False,
    password: str | None = None,
) -> User:
    _validate_name(name)
    _validate_choice(plan, UserPlan.values, field="plan")
    _validate_fullname(fullname)
    _ensure_name_free(name)
    user = User(
        username=name,
        email=email,
        plan=plan,
        fullname=fullname,
        is_staff=is_staff,
        is_superuser=is_staff,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    _save_named(user, name)
    return user


@transaction.atomic
def organization_create(
    *,
    name: str,
    fullname: str = "",
    plan: str = OrgPlan.FREE,
    seats: int = 1,
    spending_limit_nanousd: int | None = None,
    members: Sequence[tuple[User, str]] = (),
) -> Organization:
    _validate_name(name)
    _validate_choice(plan, OrgPlan.values, field="plan")
    if isinstance(seats, bool) or not isinstance(seats, int) or not 1 <= seats <= SEATS_MAX:
        raise DomainError(
            "validation_error",
            f"seats must be a whole number from 1 to {SEATS_MAX:,}.",
            field="seats",
        )
    spending_limit_clean(spending_limit_nanousd, field="spending_limit_nanousd")
    _validate_fullname(fullname)
    _ensure_name_free(name)
    org = Organization(
        name=name,
        fullname=fullname,
        plan=plan,
        seats=seats,
        spending_limit_nanousd=spending_limit_nanousd,
    )
    _save_named(org, name)
    for user, role in members:
        membership_set(organization=org, user=user, role=role)
    return org


def membership_set(*, organization: Organization, user: User, role: str) -> Membership:
    """Adds `user` to `organization` with `role`, or changes the role of a member."""
    _validate_choice(role, Role.values, field="role")
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


def membership_remove(*, organization: Organization, user: User) -> bool:
    deleted, _ = Membership.objects.filter(organization=organization, user=user).delete()
    return bool(deleted)


def access_token_create(
    *,
    user: User,
    name: str,
    role: str = TokenRole.READ,
    permissions: Sequence[str] = (),
    secret: str | None = None,
    created_with: AccessToken | None = None,
) -> tuple[AccessToken, str]:
    """Creates a token and returns it with its secret, the only time the secret exists.

    `created_with` is the token that asks (the API passes the request's token; None for an
    admin session, a command or demo data): a token never creates one with more rights than
    it has (`rules.token_create_check`, a 403). `secret` is for demo data only (a token
    documented in the README); normally it is drawn at random.
    """
    name = (name or "").strip()
    if not name:
        raise DomainError("validation_error", "name is required.", field="name")
    if len(name) > TOKEN_NAME_MAX_LENGTH:
        raise DomainError(
            "validation_error",
            f"name is longer than {TOKEN_NAME_MAX_LENGTH} characters.",
            field="name",
        )
    _validate_choice(role, TokenRole.values, field="role")
    permissions = sorted(set(permissions))
    if role != TokenRole.FINE_GRAINED and permissions:
        raise DomainError(
            "validation_error",
            "permissions can only be given to a fine-grained token.",
            field="permissions",
        )
    unknown = [p for p in permissions if p not in FINE_GRAINED_PERMISSIONS]
    if unknown:
        raise DomainError(
            "validation_error",
            f"Unknown permission {unknown[0]!r}; known: {', '.join(FINE_GRAINED_PERMISSIONS)}.",
            field="permissions",
        )
    if created_with is not None:
        token_create_check(
            creator_role=created_with.role,
            creator_permissions=created_with.permissions,
            role=role,
            permissions=permissions,
        )
    secret = secret or token_generate()
    token = AccessToken.objects.create(
        user=user,
        name=name,
        role=role,
        permissions=permissions,
        token_hash=token_hash(secret),
        token_prefix=secret[:DISPLAY_PREFIX_LENGTH],
    )
    return token, secret


def access_token_revoke(*, token: AccessToken) -> AccessToken:
    """Revokes the token; revoking a revoked token changes nothing."""
    AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    return token


def access_token_touch(*, token: AccessToken) -> None:
    """Records use of the token, at most once per TOKEN_LAST_USED_RESOLUTION_S.

    One conditional UPDATE, and none at all while the last recorded use is recent, so a busy
    token does not turn every request into a write.
    """
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.TOKEN_LAST_USED_RESOLUTION_S)
    if token.last_used_at is not None and token.last_used_at >= stale_before:
        return
    AccessToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before), pk=token.pk
    ).update(last_used_at=now)
    token.last_used_at = now


# --- settings changes (the audit trail) ------------------------------------------------------
# A user's provider order and custom keys (BYOK); an organization's spending limit and disabled
# providers. The services that validate and write them live with what they reference
# (`registry.services`: provider slugs, provider keys); each change is one transaction that
# locks the subject row (`user_lock`, `organization_lock`) and appends a `SettingsChange`
# naming who made it (`settings_change_record`); custom keys are logged masked.


@dataclass(frozen=True)
class Actor:
    """Who makes a settings change, for the audit trail."""

    user: User | None
    source: str = SettingsSource.API

    @property
    def name(self) -> str:
        return self.user.username if self.user is not None else "system"


def settings_change_record(
    *,
    actor: Actor,
    setting: str,
    before: Any,
    after: Any,
    user: User | None = None,
    organization: Organization | None = None,
    target: str = "",
) -> SettingsChange:
    """Appends one entry to the settings history of `user` or `organization` (exactly one)."""
    _validate_choice(setting, SettingName.values, field="setting")
    if (user is None) == (organization is None):
        raise ValueError("a settings change has exactly one subject: a user or an organization")
    return SettingsChange.objects.create(
        actor=actor.user,
        actor_name=actor.name,
        source=actor.source,
        user=user,
        organization=organization,
        setting=setting,
        target=target,
        old_value=before,
        new_value=after,
    )


@requires_atomic
def user_lock(*, user: User) -> User:
    """The user's row, locked until the transaction ends: serializes settings changes of one
    user, so the audit trail's old values are exact."""
    return User.objects.select_for_update().get(pk=user.pk)


@requires_atomic
def organization_lock(*, organization: Organization) -> Organization:
    """The organization's row, locked until the transaction ends (see `user_lock`)."""
    return Organization.objects.select_for_update().get(pk=organization.pk)


# 10^9 USD: far above any real limit, far below BigInteger's range.
SPENDING_LIMIT_MAX_NANOUSD = 10**18
UNSET: Any = object()


@requires_atomic
def user_provider_order_set(*, user: User, actor: Actor, order: list[str]) -> None:
    """Replaces the user's provider order and records the change (nothing if unchanged).

    `order` must already be validated against the providers (`registry.services.
    user_provider_settings_update` does it)."""
    locked = user_lock(user=user)
    if list(locked.provider_order) == order:
        return
    settings_change_record(
        actor=actor, setting=SettingName.PROVIDER_ORDER, user=locked,
        before=list(locked.provider_order), after=order,
    )  # fmt: skip
    User.objects.filter(pk=user.pk).update(provider_order=order)
    user.provider_order = order


def spending_limit_clean(value: int | None, *, field: str = "spendingLimit") -> int | None:
    """A monthly spending limit in nano-USD (None: no limit), or a 400 naming `field`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DomainError("validation_error", f"{field} must be a number of USD.", field=field)
    if value < 0:
        raise DomainError("validation_error", f"{field} must not be negative.", field=field)
    if value > SPENDING_LIMIT_MAX_NANOUSD:
        raise DomainError(
            "validation_error",
            f"{field} must be at most {SPENDING_LIMIT_MAX_NANOUSD // 10**9} USD.",
            field=field,
        )
    return value


@requires_atomic
def organization_provider_settings_set(
    *,
    organization: Organization,
    actor: Actor,
    spending_limit_nanousd: int | None = UNSET,
    disabled_providers: list[str] | None = None,
) -> Organization:
    """Writes the organization's spending limit and/or disabled providers, recording each
    change; arguments left out are unchanged. Values must already be clean
    (`spending_limit_clean`; `disabled_providers` sorted and validated against the providers by
    `registry.services.organization_provider_settings_update`)."""
    updates: dict[str, Any] = {}
    locked = organization_lock(organization=organization)
    if (
        spending_limit_nanousd is not UNSET
        and spending_limit_nanousd != locked.spending_limit_nanousd
    ):
        settings_change_record(
            actor=actor, setting=SettingName.SPENDING_LIMIT, organization=locked,
            before=locked.spending_limit_nanousd, after=spending_limit_nanousd,
        )  # fmt: skip
        updates["spending_limit_nanousd"] = spending_limit_nanousd
    if disabled_providers is not None and disabled_providers != sorted(locked.disabled_providers):
        settings_change_record(
            actor=actor, setting=SettingName.DISABLED_PROVIDERS, organization=locked,
            before=sorted(locked.disabled_providers), after=disabled_providers,
        )  # fmt: skip
        updates["disabled_providers"] = disabled_providers
    if updates:
        Organization.objects.filter(pk=locked.pk).update(**updates)
        for name, value in updates.items():
            setattr(organization, name, value)
    return organization
