"""Writes for accounts. Views, admin, management commands and tests all go through these."""

from __future__ import annotations

import re
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
    AccessToken,
    Membership,
    Organization,
    OrgPlan,
    ProviderKey,
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
from accounts.tokens import DISPLAY_PREFIX_LENGTH, token_generate, token_hash
from core.errors import DomainError, Kind
from registry import selectors as registry_selectors

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
    if not isinstance(seats, int) or seats < 1:
        raise DomainError(
            "validation_error", "seats must be a whole number of at least 1.", field="seats"
        )
    if spending_limit_nanousd is not None and spending_limit_nanousd < 0:
        raise DomainError(
            "validation_error",
            "spending_limit_nanousd must not be negative.",
            field="spending_limit_nanousd",
        )
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
) -> tuple[AccessToken, str]:
    """Creates a token and returns it with its secret, the only time the secret exists.

    `secret` is for demo data only (a token documented in the README); normally it is drawn
    at random.
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


# --- inference-provider settings ------------------------------------------------------------
# A user's provider order and custom keys (BYOK); an organization's spending limit and disabled
# providers. Every change is one transaction that also appends a `SettingsChange` naming who
# made it; custom keys are logged masked.

PROVIDER_KEY_MIN_LENGTH = 8
PROVIDER_KEY_MAX_LENGTH = 1024
# The last 4 characters are shown only for keys at least this long, so that what is shown
# stays a small part of the key.
PROVIDER_KEY_SHOW_LAST4_FROM = 16
# Keys travel in an HTTP header: printable ASCII, no spaces or control characters (a newline
# would let a key inject headers into the provider request).
_PROVIDER_KEY_RE = re.compile(r"[\x21-\x7e]+\Z")
# Generous upper bound for a list of provider slugs (there are a few dozen providers).
PROVIDER_LIST_MAX_LENGTH = 200
# 10^9 USD: far above any real limit, far below BigInteger's range.
SPENDING_LIMIT_MAX_NANOUSD = 10**18


@dataclass(frozen=True)
class Actor:
    """Who makes a settings change, for the audit trail."""

    user: User | None
    source: str = SettingsSource.API

    @property
    def name(self) -> str:
        return self.user.username if self.user is not None else "system"


def _record_change(
    actor: Actor, *, setting: str, old, new, user=None, organization=None, target: str = ""
) -> None:
    SettingsChange.objects.create(
        actor=actor.user,
        actor_name=actor.name,
        source=actor.source,
        user=user,
        organization=organization,
        setting=setting,
        target=target,
        old_value=old,
        new_value=new,
    )


def provider_slugs_clean(value, *, field: str) -> list[str]:
    """A list of existing provider slugs without repeats, or a 400 naming `field`."""
    if not isinstance(value, list | tuple):
        raise DomainError(
            "validation_error", f"{field} must be a list of provider names.", field=field
        )
    if len(value) > PROVIDER_LIST_MAX_LENGTH:
        raise DomainError(
            "validation_error",
            f"{field} has more than {PROVIDER_LIST_MAX_LENGTH} entries.",
            field=field,
        )
    seen: set[str] = set()
    for index, slug in enumerate(value):
        if not isinstance(slug, str) or not slug:
            raise DomainError(
                "validation_error",
                f"{field}[{index}] must be a provider name (a non-empty string).",
                field=field,
            )
        if slug in seen:
            raise DomainError(
                "validation_error", f"{field} names {slug!r} more than once.", field=field
            )
        seen.add(slug)
    unknown = sorted(seen - registry_selectors.provider_slugs_existing(slugs=seen))
    if unknown:
        raise DomainError(
            "validation_error",
            f"{field} names unknown provider(s): {', '.join(map(repr, unknown))}.",
            field=field,
        )
    return list(value)


def provider_key_clean(value, *, field: str) -> str:
    if not isinstance(value, str):
        raise DomainError("validation_error", f"{field} must be a string.", field=field)
    if not value:
        raise DomainError("validation_error", f"{field} must not be empty.", field=field)
    if len(value) < PROVIDER_KEY_MIN_LENGTH:
        raise DomainError(
            "validation_error",
            f"{field} is shorter than {PROVIDER_KEY_MIN_LENGTH} characters: not a provider key.",
            field=field,
        )
    if len(value) > PROVIDER_KEY_MAX_LENGTH:
        raise DomainError(
            "validation_error",
            f"{field} is longer than {PROVIDER_KEY_MAX_LENGTH} characters.",
            field=field,
        )
    if not _PROVIDER_KEY_RE.match(value):
        raise DomainError(
            "validation_error",
            f"{field} may only contain printable ASCII characters without spaces.",
            field=field,
        )
    return value


def _lock_user(user: User) -> User:
    """Serializes settings changes of one user, so the audit trail's old values are exact."""
    return User.objects.select_for_update().get(pk=user.pk)


@transaction.atomic
def user_provider_settings_update(
    *,
    user: User,
    actor: Actor,
    order: Sequence[str] | None = None,
    keys: dict[str, str] | None = None,
) -> None:
    """Replaces the user's provider order (if given) and sets or replaces the custom keys
    named in `keys` (other keys are kept). All or nothing: one bad value changes nothing."""
    if order is not None:
        order = provider_slugs_clean(order, field="order")
    if keys is not None:
        if not isinstance(keys, dict):
            raise DomainError(
                "validation_error", "keys must be an object of provider name to key.", field="keys"
            )
        provider_slugs_clean(list(keys), field="keys")
        keys = {slug: provider_key_clean(key, field=f"keys.{slug}") for slug, key in keys.items()}
    locked = _lock_user(user)
    if order is not None and list(locked.provider_order) != order:
        _record_change(
            actor, setting=SettingName.PROVIDER_ORDER, user=locked,
            old=list(locked.provider_order), new=order,
        )  # fmt: skip
        User.objects.filter(pk=user.pk).update(provider_order=order)
        user.provider_order = order
    if keys:
        providers = registry_selectors.provider_map(slugs=keys)
        existing = {k.provider_id: k for k in ProviderKey.objects.filter(user=locked)}
        for slug, key in keys.items():
            provider = providers[slug]
            current = existing.get(provider.pk)
            if current is not None and current.key == key:
                continue
            last4 = key[-4:] if len(key) >= PROVIDER_KEY_SHOW_LAST4_FROM else ""
            new = ProviderKey(user=locked, provider=provider, key=key, last4=last4)
            if current is not None:
                new.pk, new.created_at = current.pk, current.created_at
            new.save()
            _record_change(
                actor, setting=SettingName.PROVIDER_KEY, user=locked, target=slug,
                old=current and current.masked, new=new.masked,
            )  # fmt: skip


@transaction.atomic
def user_provider_key_delete(*, user: User, provider_slug: str, actor: Actor) -> bool:
    """Removes the user's key for the provider; False if there was none."""
    locked = _lock_user(user)
    key = (
        ProviderKey.objects.filter(user=locked, provider__slug=provider_slug)
        .select_related("provider")
        .first()
    )
    if key is None:
        return False
    key.delete()
    _record_change(
        actor, setting=SettingName.PROVIDER_KEY, user=locked, target=provider_slug,
        old=key.masked, new=None,
    )  # fmt: skip
    return True


_UNSET: Any = object()


@transaction.atomic
def organization_provider_settings_update(
    *,
    organization: Organization,
    actor: Actor,
    spending_limit_nanousd: int | None = _UNSET,
    disabled_providers: Sequence[str] | None = None,
) -> Organization:
    """Sets the monthly spending limit (None: no limit) and/or replaces the set of disabled
    providers; arguments left out are unchanged."""
    updates: dict[str, Any] = {}
    if spending_limit_nanousd is not _UNSET and spending_limit_nanousd is not None:
        if isinstance(spending_limit_nanousd, bool) or not isinstance(spending_limit_nanousd, int):
            raise DomainError(
                "validation_error", "spendingLimit must be a number of USD.", field="spendingLimit"
            )
        if spending_limit_nanousd < 0:
            raise DomainError(
                "validation_error", "spendingLimit must not be negative.", field="spendingLimit"
            )
        if spending_limit_nanousd > SPENDING_LIMIT_MAX_NANOUSD:
            raise DomainError(
                "validation_error",
                f"spendingLimit must be at most {SPENDING_LIMIT_MAX_NANOUSD // 10**9} USD.",
                field="spendingLimit",
            )
    if disabled_providers is not None:
        disabled_providers = sorted(
            provider_slugs_clean(disabled_providers, field="disabledProviders")
        )
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    if (
        spending_limit_nanousd is not _UNSET
        and spending_limit_nanousd != locked.spending_limit_nanousd
    ):
        _record_change(
            actor, setting=SettingName.SPENDING_LIMIT, organization=locked,
            old=locked.spending_limit_nanousd, new=spending_limit_nanousd,
        )  # fmt: skip
        updates["spending_limit_nanousd"] = spending_limit_nanousd
    if disabled_providers is not None and disabled_providers != sorted(locked.disabled_providers):
        _record_change(
            actor, setting=SettingName.DISABLED_PROVIDERS, organization=locked,
            old=sorted(locked.disabled_providers), new=disabled_providers,
        )  # fmt: skip
        updates["disabled_providers"] = disabled_providers
    if updates:
        Organization.objects.filter(pk=locked.pk).update(**updates)
        for name, value in updates.items():
            setattr(organization, name, value)
    return organization


# The router's `access_token_touch`, for many tokens at once (async, in its group commit).
ROUTER_TOKENS_TOUCH_SQL = """
UPDATE accounts_accesstoken SET last_used_at = %s
WHERE id = ANY(%s) AND (last_used_at IS NULL OR last_used_at < %s)
"""
