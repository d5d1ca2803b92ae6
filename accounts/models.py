"""Users, organizations, memberships, access tokens and the audit trail of their settings.

Users' custom provider keys (BYOK) reference providers, so they live in `registry`
(`registry.models.ProviderKey`).

Names follow the Hub's rules (letters, digits, `-`, `_`, `.`; no leading or trailing
punctuation; at most 96 characters) and are unique case-insensitively, because they become the
`namespace` of model ids and the value of `X-HF-Bill-To`.
"""

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

from core.ids import object_id

NAME_MAX_LENGTH = 96
# \Z, not $: "$" also matches before a trailing newline, which would let "bob\n" in.
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?\Z"
name_validator = RegexValidator(
    NAME_PATTERN,
    "Use 1 to 96 ASCII letters, digits, '-', '_' or '.', starting and ending with a letter "
    "or digit.",
    code="invalid_name",
)


class UserPlan(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "PRO"


class OrgPlan(models.TextChoices):
    FREE = "free", "Free"
    TEAM = "team", "Team"
    ENTERPRISE = "enterprise", "Enterprise"


class Role(models.TextChoices):
    """A member's role in an organization."""

    READ = "read", "read"
    WRITE = "write", "write"
    ADMIN = "admin", "admin"


class TokenRole(models.TextChoices):
    READ = "read", "read"
    WRITE = "write", "write"
    FINE_GRAINED = "fine-grained", "fine-grained"


class UserManager(DjangoUserManager):
    def get_by_natural_key(self, username):
        return self.get(username__iexact=username)


class User(AbstractUser):
    hub_id = models.CharField(max_length=24, unique=True, default=object_id, editable=False)
    username = models.CharField(
        "name",
        max_length=NAME_MAX_LENGTH,
        unique=True,
        validators=[name_validator],
        error_messages={"unique": "A user with that name already exists."},
    )
    fullname = models.CharField(max_length=255, blank=True)
    plan = models.CharField(max_length=16, choices=UserPlan.choices, default=UserPlan.FREE)
    # Provider slugs, most preferred first: the Hub API's mapping order and `:preferred` in the
    # router. Providers not listed follow in the default order. Kept on the user row so that
    # authenticating a request already loads it (no query on the Hub API's hot path).
    provider_order = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    objects = UserManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("username"), name="accounts_user_name_ci_unique"),
            models.CheckConstraint(
                condition=Q(plan__in=UserPlan.values), name="accounts_user_plan_valid"
            ),
        ]

    @property
    def name(self) -> str:
        return self.username

    @property
    def is_pro(self) -> bool:
        return self.plan == UserPlan.PRO


SEATS_MAX = 100_000


class Organization(models.Model):
    hub_id = models.CharField(max_length=24, unique=True, default=object_id, editable=False)
    name = models.CharField(max_length=NAME_MAX_LENGTH, unique=True, validators=[name_validator])
    fullname = models.CharField(max_length=255, blank=True)
    plan = models.CharField(max_length=16, choices=OrgPlan.choices, default=OrgPlan.FREE)
    # Bounded so that seats x the per-seat credit cannot overflow a balance.
    seats = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(SEATS_MAX)]
    )
    # Pay-as-you-go spend per calendar month (UTC) may not pass this; null means no limit.
    spending_limit_nanousd = models.BigIntegerField(null=True, blank=True)
    # Provider slugs the router must never choose when this organization pays.
    disabled_providers = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    members = models.ManyToManyField(User, through="Membership", related_name="organizations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="accounts_organization_name_ci_unique"),
            models.CheckConstraint(
                condition=Q(plan__in=OrgPlan.values), name="accounts_organization_plan_valid"
            ),
            models.CheckConstraint(
                condition=Q(seats__gte=1), name="accounts_organization_seats_min"
            ),
            models.CheckConstraint(
                condition=Q(seats__lte=SEATS_MAX), name="accounts_organization_seats_max"
            ),
            models.CheckConstraint(
                condition=Q(spending_limit_nanousd__isnull=True) | Q(spending_limit_nanousd__gte=0),
                name="accounts_organization_spending_limit_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_enterprise(self) -> bool:
        return self.plan == OrgPlan.ENTERPRISE


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.READ)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "user__username"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization"], name="accounts_membership_user_org_unique"
            ),
            models.CheckConstraint(
                condition=Q(role__in=Role.values), name="accounts_membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user.username} in {self.organization.name} ({self.role})"


class AccessToken(models.Model):
    """A user's API token. Only its SHA-256 is stored; the secret is shown once, at creation."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=TokenRole.choices, default=TokenRole.READ)
    # Only for fine-grained tokens: the permissions granted (see accounts.permissions).
    permissions = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, so a person can tell tokens apart ("hf_AbCd…").
    token_prefix = models.CharField(max_length=10, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=TokenRole.values), name="accounts_accesstoken_role_valid"
            ),
            models.CheckConstraint(
                condition=Q(role=TokenRole.FINE_GRAINED) | Q(permissions=[]),
                name="accounts_accesstoken_permissions_only_fine_grained",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…, {self.role})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class SettingsSource(models.TextChoices):
    API = "api", "API"
    ADMIN = "admin", "admin"
    COMMAND = "command", "command"


class SettingName(models.TextChoices):
    PROVIDER_ORDER = "provider_order", "provider order"
    PROVIDER_KEY = "provider_key", "custom provider key"
    SPENDING_LIMIT = "spending_limit", "spending limit"
    DISABLED_PROVIDERS = "disabled_providers", "disabled providers"


class SettingsChange(models.Model):
    """Who changed which inference-provider setting of a user or organization, and when.

    Append-only. Custom keys appear masked (`…abcd`), never in clear.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept when the actor's account is deleted.
    actor_name = models.CharField(max_length=NAME_MAX_LENGTH, blank=True)
    source = models.CharField(max_length=8, choices=SettingsSource.choices)
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.CASCADE, related_name="settings_changes"
    )
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="settings_changes",
    )
    setting = models.CharField(max_length=32, choices=SettingName.choices)
    # For a key: the provider slug; otherwise empty.
    target = models.CharField(max_length=64, blank=True)
    old_value = models.JSONField(null=True, blank=True)
    new_value = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, organization__isnull=True)
                | Q(user__isnull=True, organization__isnull=False),
                name="accounts_settingschange_one_subject",
            ),
            models.CheckConstraint(
                condition=Q(source__in=SettingsSource.values),
                name="accounts_settingschange_source_valid",
            ),
            models.CheckConstraint(
                condition=Q(setting__in=SettingName.values),
                name="accounts_settingschange_setting_valid",
            ),
        ]

    def __str__(self) -> str:
        subject = self.user or self.organization
        target = f" {self.target}" if self.target else ""
        return f"{self.get_setting_display()}{target} of {subject} by {self.actor_name or '?'}"
