"""Writes for accounts. Views, admin, management commands and tests all go through these."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

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
    Role,
    TokenRole,
    User,
    UserPlan,
    name_validator,
)
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from accounts.tokens import DISPLAY_PREFIX_LENGTH, token_generate, token_hash
from core.errors import ApiError, Conflict

TOKEN_NAME_MAX_LENGTH = 100
FULLNAME_MAX_LENGTH = 255


def _validate_name(name: str, *, field: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise ApiError(f"{field} is required.", field=field)
    try:
        name_validator(name)
    except DjangoValidationError as exc:
        raise ApiError(f"Invalid {field} {name!r}: {exc.messages[0]}", field=field) from exc
    return name


def _validate_choice(value: str, choices: Iterable[str], *, field: str) -> str:
    allowed = list(choices)
    if value not in allowed:
        raise ApiError(
            f"Invalid {field} {value!r}: expected one of {', '.join(allowed)}.", field=field
        )
    return value


def _validate_fullname(fullname: str) -> None:
    if len(fullname) > FULLNAME_MAX_LENGTH:
        raise ApiError(
            f"fullname is longer than {FULLNAME_MAX_LENGTH} characters.", field="fullname"
        )


def _save_named(obj: User | Organization, name: str) -> None:
    """Saves a new user or organization; losing a race for the name is a 409."""
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError as exc:
        raise Conflict(f"The name {name!r} is already taken.", field="name") from exc


def _ensure_name_free(name: str) -> None:
    if selectors.name_taken(name=name):
        raise Conflict(
            f"The name {name!r} is already taken by a user or an organization.", field="name"
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
        raise ApiError("seats must be a whole number of at least 1.", field="seats")
    if spending_limit_nanousd is not None and spending_limit_nanousd < 0:
        raise ApiError(
            "spending_limit_nanousd must not be negative.", field="spending_limit_nanousd"
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
        raise ApiError("name is required.", field="name")
    if len(name) > TOKEN_NAME_MAX_LENGTH:
        raise ApiError(f"name is longer than {TOKEN_NAME_MAX_LENGTH} characters.", field="name")
    _validate_choice(role, TokenRole.values, field="role")
    permissions = sorted(set(permissions))
    if role != TokenRole.FINE_GRAINED and permissions:
        raise ApiError(
            "permissions can only be given to a fine-grained token.", field="permissions"
        )
    unknown = [p for p in permissions if p not in FINE_GRAINED_PERMISSIONS]
    if unknown:
        raise ApiError(
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
