"""Providers, hub models and the mappings between them.

A mapping says "provider P serves task T for hub model M under its own id X". It is either
`single-model` (one hub model) or `tag-filter` (every hub model carrying all its tags, for LoRA
adapters). Uniqueness and shape rules are database constraints; the services check them first
to give precise errors.
"""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from core.fields import EncryptedTextField
from core.ids import object_id

PROVIDER_SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z"
# `namespace/name`, the Hub's repo id rules (letters, digits, `-`, `_`, `.`).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z"
MODEL_ID_MAX_LENGTH = 193


class ProviderState(models.TextChoices):
    ACTIVE = "active", "active"
    SUSPENDED = "suspended", "suspended"


class MappingType(models.TextChoices):
    SINGLE_MODEL = "single-model", "single-model"
    TAG_FILTER = "tag-filter", "tag-filter"


class MappingStatus(models.TextChoices):
    STAGING = "staging", "staging"
    LIVE = "live", "live"


class MappingHealth(models.TextChoices):
    UNKNOWN = "unknown", "unknown"
    OK = "ok", "ok"
    ERROR = "error", "error"


class AdapterType(models.TextChoices):
    LORA = "lora", "lora"


class Provider(models.Model):
    slug = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(PROVIDER_SLUG_PATTERN, "Lowercase letters, digits and '-'.")],
    )
    display_name = models.CharField(max_length=100, blank=True)
    # The Hub organization whose members manage this provider's mappings.
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="providers"
    )
    base_url = models.URLField(max_length=500, help_text="e.g. https://api.together.xyz")
    chat_route = models.CharField(max_length=200, default="/v1/chat/completions")
    # Used by the router and the cost poller; encrypted at rest, never shown back.
    api_key = EncryptedTextField(blank=True)
    cost_url = models.URLField(max_length=500, blank=True)
    request_id_header = models.CharField(max_length=100, default="Inference-Id")
    first_cost_query_delay_s = models.PositiveIntegerField(
        default=0, help_text="Seconds to wait after a request before asking for its cost."
    )
    state = models.CharField(
        max_length=16, choices=ProviderState.choices, default=ProviderState.ACTIVE
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=ProviderState.values), name="registry_provider_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.state == ProviderState.ACTIVE


class HubModel(models.Model):
    hub_id = models.CharField(max_length=24, unique=True, default=object_id, editable=False)
    model_id = models.CharField(
        "id",
        max_length=MODEL_ID_MAX_LENGTH,
        unique=True,
        validators=[RegexValidator(MODEL_ID_PATTERN, "Expected namespace/name.")],
    )
    author = models.CharField(max_length=96)
    pipeline_tag = models.CharField(max_length=64, blank=True)
    tags = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    adapter_weights_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_id"]
        indexes = [
            GinIndex(fields=["tags"], name="registry_hubmodel_tags_gin"),
            models.Index(fields=["pipeline_tag", "model_id"], name="registry_hubmodel_pipeline"),
            models.Index(fields=["author", "model_id"], name="registry_hubmodel_author"),
        ]

    def __str__(self) -> str:
        return self.model_id


class Mapping(models.Model):
    public_id = models.CharField(
        "_id", max_length=24, unique=True, default=object_id, editable=False
    )
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="mappings")
    task = models.CharField(max_length=64)
    type = models.CharField(
        max_length=16, choices=MappingType.choices, default=MappingType.SINGLE_MODEL
    )
    hub_model = models.ForeignKey(
        HubModel, on_delete=models.CASCADE, null=True, blank=True, related_name="mappings"
    )
    # Tag-filter mappings only: sorted, without duplicates (so equal sets compare equal).
    tags = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    adapter_type = models.CharField(max_length=16, choices=AdapterType.choices, blank=True)
    provider_model = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=MappingStatus.choices, default=MappingStatus.STAGING
    )
    health = models.CharField(
        max_length=16, choices=MappingHealth.choices, default=MappingHealth.UNKNOWN
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    # What the router knows of the provider model; null until price sync and endpoint
    # validation fill them (or an admin does). Prices: nano-USD per 1M tokens.
    input_price_nanousd_per_mtok = models.BigIntegerField(null=True, blank=True)
    output_price_nanousd_per_mtok = models.BigIntegerField(null=True, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    supports_tools = models.BooleanField(null=True, blank=True)
    supports_structured_output = models.BooleanField(null=True, blank=True)
    first_token_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    throughput_tps = models.FloatField(
        null=True, blank=True, help_text="Measured output tokens per second."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "task", "created_at"]
        indexes = [
            GinIndex(
                fields=["tags"],
                name="registry_mapping_tags_gin",
                condition=Q(type="tag-filter"),
            ),
            models.Index(fields=["provider", "task", "created_at"], name="registry_mapping_list"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "task", "hub_model"],
                condition=Q(type="single-model"),
                name="registry_mapping_single_model_unique",
            ),
            models.UniqueConstraint(
                fields=["provider", "task", "tags"],
                condition=Q(type="tag-filter"),
                name="registry_mapping_tag_filter_unique",
            ),
            models.CheckConstraint(
                condition=(
                    Q(type="single-model", hub_model__isnull=False, tags=[], adapter_type="")
                    | (
                        Q(type="tag-filter", hub_model__isnull=True, adapter_type="lora")
                        & ~Q(tags=[])
                    )
                ),
                name="registry_mapping_shape_valid",
            ),
            models.CheckConstraint(
                condition=Q(status__in=MappingStatus.values), name="registry_mapping_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(health__in=MappingHealth.values), name="registry_mapping_health_valid"
            ),
        ]

    def __str__(self) -> str:
        target = self.hub_model.model_id if self.hub_model_id else self.tag_key
        return f"{self.provider.slug}: {self.task} {target} -> {self.provider_model}"

    @property
    def tag_key(self) -> str:
        """The key of a tag-filter mapping in the partner list: `tag-filter=a,b`."""
        return "tag-filter=" + ",".join(self.tags)


class ProviderKey(models.Model):
    """A user's own key for one provider (BYOK): the router sends it instead of the platform's,
    and the request is not charged. Encrypted at rest; only the last 4 characters are shown.

    Moved from `accounts` (table `accounts_providerkey`, renamed by migration 0003)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_keys"
    )
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="user_keys")
    key = EncryptedTextField()
    last4 = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user__username", "provider__slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "provider"], name="registry_providerkey_user_provider_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.slug} key of {self.user.username} (…{self.last4})"

    @property
    def masked(self) -> str:
        return f"…{self.last4}"  # just "…" for a short key, whose last 4 would say too much


class PriceSync(models.Model):
    """The last price sync of one provider (`GET <base>/v1/models`; docs/registry.md)."""

    provider = models.OneToOneField(Provider, on_delete=models.CASCADE, related_name="price_sync")
    synced_at = models.DateTimeField()
    entries = models.PositiveIntegerField(default=0, help_text="Models in the answer.")
    updated = models.PositiveIntegerField(default=0, help_text="Mappings whose values changed.")
    # [{"model": id, "reason": text}]: values refused (the last good one was kept).
    problems = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, help_text="Why the whole answer failed, if it did.")

    def __str__(self) -> str:
        return f"price sync of {self.provider_id} at {self.synced_at:%Y-%m-%d %H:%M:%S}"


class MappingPriceHistory(models.Model):
    """Append-only: a mapping's prices and context length from `valid_from` on, written when
    a sync changes one of them (so a usage record's estimate can be explained later)."""

    mapping = models.ForeignKey(Mapping, on_delete=models.CASCADE, related_name="price_history")
    input_price_nanousd_per_mtok = models.BigIntegerField(null=True)
    output_price_nanousd_per_mtok = models.BigIntegerField(null=True)
    context_length = models.PositiveIntegerField(null=True)
    valid_from = models.DateTimeField()

    class Meta:
        ordering = ["mapping", "valid_from", "id"]
        indexes = [models.Index(fields=["mapping", "valid_from"])]

    def __str__(self) -> str:
        return f"prices of mapping {self.mapping_id} from {self.valid_from:%Y-%m-%d %H:%M:%S}"
