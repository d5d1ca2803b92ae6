"""Writes for the registry: providers, the hub model catalog, mappings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import plans
from accounts import rules as accounts_rules
from accounts import selectors as accounts_selectors
from accounts import services as accounts_services
from accounts.models import Organization, Role, SettingName, TokenRole, User
from accounts.services import Actor
from core import netguard
from core.errors import DomainError, Kind
from registry import rules, selectors
from registry.models import (
    MODEL_ID_MAX_LENGTH,
    MODEL_ID_PATTERN,
    PROVIDER_SLUG_PATTERN,
    AdapterType,
    HubModel,
    Mapping,
    MappingPriceHistory,
    MappingStatus,
    MappingType,
    PriceSync,
    Provider,
    ProviderKey,
)
from registry.pricesync import PriceEntry
from registry.task_types import TASKS, model_supports_task

TAGS_MAX = 20
TAG_MAX_LENGTH = 200
PROVIDER_MODEL_MAX_LENGTH = 255
# A provider model id: ASCII letters, digits and -_.:/@+ (`@cf/meta/…`, `gpt-oss:120b`); no
# leading `/` (checked by the first class), no `..` (checked apart).
_PROVIDER_MODEL_RE = re.compile(r"[A-Za-z0-9_.:@+-][A-Za-z0-9_.:/@+-]*\Z")
PARTNER_ROLES = frozenset({Role.WRITE, Role.ADMIN})
# The fine-grained permission a token needs to manage a provider's mappings.
MAPPING_WRITE_PERMISSION = "org.write"


# --- providers -----------------------------------------------------------------------------
def _validate_url(value: str, *, field: str, required: bool = True) -> str:
    if not value:
        if required:
            raise DomainError("validation_error", f"{field} is required.", field=field)
        return value
    try:
        URLValidator(schemes=["http", "https"])(value)
    except DjangoValidationError as exc:
        raise DomainError(
            "validation_error", f"{field}: {value!r} is not an http(s) URL.", field=field
        ) from exc
    return value


def _validate_upstream_url(value: str, *, field: str) -> None:
    """The router and the cost poller send the platform's key to this URL: refused when it
    points to loopback, link-local (cloud metadata) or private addresses not allowed by
    `UPSTREAM_ALLOWED_NETWORKS` (`core.netguard`). A host name is resolved now if it can be;
    one that does not resolve yet is accepted, as every connection checks its addresses
    again."""
    if not value:
        return
    reason = netguard.url_refusal(value, unresolvable_ok=True)
    if reason is not None:
        raise DomainError("validation_error", f"{field}: {value!r} {reason}.", field=field)


def first_cost_query_delay_max_s() -> int:
    """The longest first-query delay: a request is asked about at least one poll interval
    before its billing window (`BILLING_FAILED_AFTER_S`) could close."""
    return max(int(settings.BILLING_FAILED_AFTER_S - settings.BILLING_POLL_INTERVAL_S) - 1, 0)


def provider_settings_clean(
    *,
    base_url: str,
    cost_url: str,
    chat_route: str,
    request_id_header: str,
    first_cost_query_delay_s: int,
) -> dict:
    """Validated, normalized connection settings of a provider (service and admin alike)."""
    _validate_url(base_url, field="base_url")
    _validate_url(cost_url, field="cost_url", required=False)
    _validate_upstream_url(base_url, field="base_url")
    _validate_upstream_url(cost_url, field="cost_url")
    if not chat_route.startswith("/"):
        raise DomainError("validation_error", "chat_route must start with '/'.", field="chat_route")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", request_id_header):
        raise DomainError(
            "validation_error",
            "request_id_header must be an HTTP header name (letters, digits, '-').",
            field="request_id_header",
        )
    if first_cost_query_delay_s < 0:
        raise DomainError(
            "validation_error",
            "first_cost_query_delay_s must not be negative.",
            field="first_cost_query_delay_s",
        )
    delay_max_s = first_cost_query_delay_max_s()
    if first_cost_query_delay_s > delay_max_s:
        raise DomainError(
            "validation_error",
            f"first_cost_query_delay_s must be at most {delay_max_s} (the "
            f"{settings.BILLING_FAILED_AFTER_S} s billing window less a poll interval), so "
            "every request is asked about before it can fail to bill.",
            field="first_cost_query_delay_s",
        )
    return {
        "base_url": base_url.rstrip("/"),
        "cost_url": cost_url,
        "chat_route": chat_route,
        "request_id_header": request_id_header,
        "first_cost_query_delay_s": first_cost_query_delay_s,
    }


def provider_create(
    *,
    slug: str,
    organization: Organization,
    base_url: str,
    cost_url: str = "",
    api_key: str = "",
    chat_route: str = "/v1/chat/completions",
    request_id_header: str = "Inference-Id",
    first_cost_query_delay_s: int = 0,
    display_name: str = "",
) -> Provider:
    if not re.match(PROVIDER_SLUG_PATTERN, slug or ""):
        raise DomainError(
            "validation_error",
            f"Invalid provider slug {slug!r}: use lowercase letters, digits and '-'.",
            field="slug",
        )
    provider = Provider(
        slug=slug,
        display_name=display_name,
        organization=organization,
        api_key=api_key,
        **provider_settings_clean(
            base_url=base_url,
            cost_url=cost_url,
            chat_route=chat_route,
            request_id_header=request_id_header,
            first_cost_query_delay_s=first_cost_query_delay_s,
        ),
    )
    try:
        with transaction.atomic():
            provider.save()
    except IntegrityError as exc:
        raise DomainError(
            "conflict", f"A provider {slug!r} already exists.", field="slug", kind=Kind.CONFLICT
        ) from exc
    return provider


# --- partner access --------------------------------------------------------------------------
def partner_access_check(*, provider: Provider, user: User, token) -> None:
    """May this caller manage `provider`'s mappings? Raises a 403 naming the rule that failed.

    Rules (docs: "Model Mapping API" > Authentication): a `write` token, or a fine-grained
    token holding `org.write` (a browser session passes), held by a `write` or `admin` member
    of the provider's organization, and that organization on a team or enterprise plan.
    """
    org = provider.organization
    if token is not None and token.role == TokenRole.READ:
        raise DomainError(
            "token_read_only",
            "This is a read-only access token; managing mappings needs a write token or a "
            f"fine-grained token with the '{MAPPING_WRITE_PERMISSION}' permission.",
            kind=Kind.FORBIDDEN,
        )
    if token is not None and not accounts_rules.token_allows(
        role=token.role, permissions=token.permissions, permission=MAPPING_WRITE_PERMISSION
    ):
        raise DomainError(
            "permission_denied",
            f"This {token.role} access token does not have the '{MAPPING_WRITE_PERMISSION}' "
            "permission needed to manage a provider's mappings.",
            kind=Kind.FORBIDDEN,
        )
    membership = accounts_selectors.membership_get(user=user, organization=org)
    if membership is None:
        raise DomainError(
            "not_a_member",
            f"You are not a member of the organization '{org.name}' that owns provider "
            f"'{provider.slug}'.",
            kind=Kind.FORBIDDEN,
        )
    if membership.role not in PARTNER_ROLES:
        raise DomainError(
            "role_insufficient",
            f"Your role in '{org.name}' is '{membership.role}'; managing mappings needs "
            "'write' or 'admin'.",
            kind=Kind.FORBIDDEN,
        )
    if not plans.org_plan(org.plan).partner_api:
        raise DomainError(
            "plan_insufficient",
            f"The organization '{org.name}' is on the '{org.plan}' plan; the Model Mapping "
            f"API needs a {' or '.join(plans.org_plans_with('partner_api'))} plan.",
            kind=Kind.FORBIDDEN,
        )


# --- mappings --------------------------------------------------------------------------------
def normalize_tags(tags: Iterable[str], *, field: str = "tags") -> list[str]:
    """Validated, sorted tags: non-empty strings, no duplicates, bounded."""
    tags = list(tags)
    if not tags:
        raise DomainError("validation_error", f"{field} must not be empty.", field=field)
    if len(tags) > TAGS_MAX:
        raise DomainError("validation_error", f"{field}: at most {TAGS_MAX} tags.", field=field)
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise DomainError(
                "validation_error", f"{field}: every tag must be a non-empty string.", field=field
            )
        if len(tag) > TAG_MAX_LENGTH:
            raise DomainError(
                "validation_error",
                f"{field}: a tag is longer than {TAG_MAX_LENGTH} characters.",
                field=field,
            )
    duplicates = sorted({t for t in tags if tags.count(t) > 1})
    if duplicates:
        raise DomainError(
            "validation_error", f"{field}: duplicate tag {duplicates[0]!r}.", field=field
        )
    return sorted(tags)


def provider_model_clean(value: str, *, field: str = "providerModel") -> str:
    """A provider's own model id, as the router sends it (and some providers put it in the
    URL): 1 to 255 of letters, digits and `-_.:/@+`, not starting with `/`, without `..`. No
    whitespace, control characters, `?`, `#`, `%` or `\\`, so it cannot steer a request."""
    if not value or len(value) > PROVIDER_MODEL_MAX_LENGTH:
        raise DomainError(
            "validation_error",
            f"{field} must be 1 to {PROVIDER_MODEL_MAX_LENGTH} characters.",
            field=field,
        )
    if not _PROVIDER_MODEL_RE.match(value) or ".." in value:
        raise DomainError(
            "validation_error",
            f"{field} must be a model id: letters, digits and '-_.:/@+', not starting with "
            "'/' and without '..'.",
            field=field,
        )
    return value


def _validate_task(task: str) -> str:
    if task not in TASKS:
        raise DomainError("validation_error", f"task: unknown task {task!r}.", field="task")
    return task


def _validate_status(status: str) -> str:
    if status not in MappingStatus.values:
        raise DomainError(
            "validation_error",
            f"status: {status!r} is not one of {', '.join(MappingStatus.values)}.",
            field="status",
        )
    return status


def _base_model_supports(task: str):
    def supports(model_id: str) -> bool | None:
        base = HubModel.objects.filter(model_id=model_id).first()
        if base is None:
            return None
        return model_supports_task(pipeline_tag=base.pipeline_tag, tags=base.tags, task=task)

    return supports


def mapping_create(
    *,
    provider: Provider,
    created_by: User | None,
    task: str,
    provider_model: str,
    type: str = MappingType.SINGLE_MODEL,
    hf_model: str | None = None,
    tags: Iterable[str] | None = None,
    adapter_type: str | None = None,
    status: str = MappingStatus.STAGING,
) -> Mapping:
    _validate_task(task)
    _validate_status(status)
    provider_model_clean(provider_model)
    mapping = Mapping(
        provider=provider,
        task=task,
        type=type,
        provider_model=provider_model,
        status=status,
        created_by=created_by,
    )
    if type == MappingType.SINGLE_MODEL:
        if tags is not None or adapter_type is not None:
            field = "tags" if tags is not None else "adapterType"
            raise DomainError(
                "validation_error", f"{field} is only for tag-filter mappings.", field=field
            )
        if not hf_model:
            raise DomainError("validation_error", "hfModel is required.", field="hfModel")
        hub_model = HubModel.objects.filter(model_id=hf_model).first()
        if hub_model is None:
            raise DomainError(
                "model_not_found",
                f"hfModel: model {hf_model!r} does not exist on the Hub.",
                field="hfModel",
            )
        if not model_supports_task(
            pipeline_tag=hub_model.pipeline_tag, tags=hub_model.tags, task=task
        ):
            raise DomainError(
                "task_not_supported",
                f"Model {hf_model} (pipeline_tag {hub_model.pipeline_tag or 'none'!r}) does not "
                f"support task {task!r}.",
                field="task",
            )
        mapping.hub_model = hub_model
        duplicate = Mapping.objects.filter(
            provider=provider, task=task, hub_model=hub_model, type=type
        )
        what = f"{hf_model} for task {task!r}"
    elif type == MappingType.TAG_FILTER:
        if hf_model is not None:
            raise DomainError(
                "validation_error",
                "hfModel is not allowed in a tag-filter mapping.",
                field="hfModel",
            )
        if adapter_type != AdapterType.LORA:
            raise DomainError(
                "validation_error",
                "adapterType must be 'lora' (the only adapter type supported).",
                field="adapterType",
            )
        mapping.tags = normalize_tags(tags or [])
        rules.tag_filter_check(
            tags=mapping.tags, task=task, base_model_supports_task=_base_model_supports(task)
        )
        mapping.adapter_type = adapter_type
        duplicate = Mapping.objects.filter(
            provider=provider, task=task, tags=mapping.tags, type=type
        )
        what = f"tags {mapping.tags} for task {task!r}"
    else:
        raise DomainError(
            "validation_error",
            f"type: {type!r} is not 'single-model' or 'tag-filter'.",
            field="type",
        )

    conflict = DomainError(
        "conflict",
        f"Provider {provider.slug} already has a mapping for {what}.",
        field="hfModel" if type == MappingType.SINGLE_MODEL else "tags",
        kind=Kind.CONFLICT,
    )
    if duplicate.exists():
        raise conflict
    try:
        with transaction.atomic():
            mapping.save()
    except IntegrityError as exc:  # a concurrent request created it first
        raise conflict from exc
    return mapping


def mapping_set_status(*, mapping: Mapping, status: str) -> Mapping:
    _validate_status(status)
    if mapping.status != status:
        mapping.status = status
        mapping.save(update_fields=["status", "updated_at"])
    return mapping


def mapping_delete(*, mapping: Mapping) -> None:
    mapping.delete()


# --- hub model catalog -----------------------------------------------------------------------
@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int


class ImportRecordError(DomainError):
    def __init__(self, position: int, message: str):
        super().__init__("validation_error", f"record {position}: {message}", field="records")
        self.position = position


def _clean_record(position: int, record) -> dict:
    if not isinstance(record, MappingABC):
        raise ImportRecordError(position, "expected a JSON object")
    unknown = sorted(
        set(record)
        - {
            "id",
            "modelId",
            "_id",
            "pipeline_tag",
            "tags",
            "author",
            "adapterWeightsPath",
            "createdAt",
            "lastModified",
        }
    )
    if unknown:
        raise ImportRecordError(position, f"unknown field {unknown[0]!r}")
    model_id = record.get("id")
    if not isinstance(model_id, str) or not re.match(MODEL_ID_PATTERN, model_id):
        raise ImportRecordError(position, f"id {model_id!r} is not a namespace/name model id")
    if len(model_id) > MODEL_ID_MAX_LENGTH:
        raise ImportRecordError(position, "id is too long")
    # Absent or null means "none"; any other non-string (0, false, ...) is an error.
    pipeline_tag = record.get("pipeline_tag")
    if pipeline_tag is None:
        pipeline_tag = ""
    if not isinstance(pipeline_tag, str) or len(pipeline_tag) > 64:
        raise ImportRecordError(position, "pipeline_tag must be a short string or null")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(
        isinstance(t, str) and 0 < len(t) <= TAG_MAX_LENGTH for t in tags
    ):
        raise ImportRecordError(position, "tags must be a list of non-empty strings")
    author = record.get("author")
    if author is None or author == "":
        author = model_id.split("/", 1)[0]
    if not isinstance(author, str) or len(author) > 96:
        raise ImportRecordError(position, "author must be a string of at most 96 characters")
    weights = record.get("adapterWeightsPath")
    if weights is None:
        weights = ""
    if not isinstance(weights, str) or len(weights) > 500:
        raise ImportRecordError(position, "adapterWeightsPath must be a string")
    return {
        "model_id": model_id,
        "pipeline_tag": pipeline_tag,
        "tags": list(dict.fromkeys(tags)),  # drop repeats, keep order
        "author": author,
        "adapter_weights_path": weights,
    }


IMPORT_FIELDS = ("pipeline_tag", "tags", "author", "adapter_weights_path")
IMPORT_CHUNK = 5000


@transaction.atomic
def hub_models_import(*, records: Iterable, progress=None) -> ImportResult:
    """Creates or updates hub models from Hub-shaped records, all or nothing.

    Every record is validated before anything is written; a bad one raises
    `ImportRecordError` naming its position (1-based). Records for the same id: the last wins.
    """
    cleaned: dict[str, dict] = {}
    for position, record in enumerate(records, start=1):
        row = _clean_record(position, record)
        cleaned[row["model_id"]] = row
    ids = list(cleaned)
    now = timezone.now()
    created = updated = unchanged = 0
    for start in range(0, len(ids), IMPORT_CHUNK):
        chunk = ids[start : start + IMPORT_CHUNK]
        existing = {m.model_id: m for m in HubModel.objects.filter(model_id__in=chunk)}
        to_create, to_update = [], []
        for model_id in chunk:
            row = cleaned[model_id]
            current = existing.get(model_id)
            if current is None:
                to_create.append(HubModel(**row))
            elif any(getattr(current, f) != row[f] for f in IMPORT_FIELDS):
                for f in IMPORT_FIELDS:
                    setattr(current, f, row[f])
                current.modified_at = now
                to_update.append(current)
            else:
                unchanged += 1
        HubModel.objects.bulk_create(to_create, batch_size=1000)
        # bulk_update does not touch auto_now fields by itself, hence modified_at above.
        HubModel.objects.bulk_update(to_update, [*IMPORT_FIELDS, "modified_at"], batch_size=1000)
        created += len(to_create)
        updated += len(to_update)
        if progress:
            progress(min(start + IMPORT_CHUNK, len(ids)), len(ids))
    return ImportResult(created=created, updated=updated, unchanged=unchanged)


# --- users' and organizations' inference-provider settings -----------------------------------
# The values reference providers, so they are validated here; the columns on the user and the
# organization, the row locks and the audit trail (`SettingsChange`) are accounts' services.
# Custom keys (BYOK) are `ProviderKey` rows, logged masked.

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
    unknown = sorted(seen - selectors.provider_slugs_existing(slugs=seen))
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
    if order is not None:
        accounts_services.user_provider_order_set(user=user, actor=actor, order=order)
    if keys:
        locked = accounts_services.user_lock(user=user)  # held already if the order changed
        providers = selectors.provider_map(slugs=keys)
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
            accounts_services.settings_change_record(
                actor=actor, setting=SettingName.PROVIDER_KEY, user=locked, target=slug,
                before=current and current.masked, after=new.masked,
            )  # fmt: skip


@transaction.atomic
def user_provider_key_delete(*, user: User, provider_slug: str, actor: Actor) -> bool:
    """Removes the user's key for the provider; False if there was none."""
    locked = accounts_services.user_lock(user=user)
    key = (
        ProviderKey.objects.filter(user=locked, provider__slug=provider_slug)
        .select_related("provider")
        .first()
    )
    if key is None:
        return False
    key.delete()
    accounts_services.settings_change_record(
        actor=actor, setting=SettingName.PROVIDER_KEY, user=locked, target=provider_slug,
        before=key.masked, after=None,
    )  # fmt: skip
    return True


@transaction.atomic
def organization_provider_settings_update(
    *,
    organization: Organization,
    actor: Actor,
    spending_limit_nanousd: int | None = accounts_services.UNSET,
    disabled_providers: Sequence[str] | None = None,
) -> Organization:
    """Sets the monthly spending limit (None: no limit) and/or replaces the set of disabled
    providers; arguments left out are unchanged."""
    changes: dict = {}
    if spending_limit_nanousd is not accounts_services.UNSET:
        changes["spending_limit_nanousd"] = accounts_services.spending_limit_clean(
            spending_limit_nanousd
        )
    if disabled_providers is not None:
        changes["disabled_providers"] = sorted(
            provider_slugs_clean(disabled_providers, field="disabledProviders")
        )
    return accounts_services.organization_provider_settings_set(
        organization=organization, actor=actor, **changes
    )


PRICE_FIELDS = ("input_price_nanousd_per_mtok", "output_price_nanousd_per_mtok", "context_length")


def mapping_prices_sync(
    *, provider: Provider, entries: Sequence[PriceEntry] | None, error: str = ""
) -> PriceSync:
    """Applies one price sync of `provider` (registry/pricesync.py read it): each entry's good
    values go to the provider's mappings whose provider_model is its id, a history row per
    mapping whose values change; refused values keep the last good one. Records the sync
    (when, counts, problems; `error` and no entries if the whole answer failed). Running it
    twice with the same entries changes nothing the second time."""
    now = timezone.now()
    problems: list[dict[str, str]] = []
    updated = 0
    with transaction.atomic():
        # One sync of a provider at a time (a redelivered task may overlap a running one).
        Provider.objects.select_for_update().filter(pk=provider.pk).first()
        by_model: dict[str, list[Mapping]] = {}
        if entries:
            ids = {entry.model_id for entry in entries}
            mappings = Mapping.objects.select_for_update().filter(
                provider=provider, provider_model__in=ids
            )
            for mapping in mappings.order_by("pk"):
                by_model.setdefault(mapping.provider_model, []).append(mapping)
        for entry in entries or ():
            problems.extend({"model": entry.model_id, "reason": r} for r in entry.problems)
            new = {
                "input_price_nanousd_per_mtok": entry.input_nanousd_per_mtok,
                "output_price_nanousd_per_mtok": entry.output_nanousd_per_mtok,
                "context_length": entry.context_length,
            }
            for mapping in by_model.pop(entry.model_id, []):
                changed = [
                    name
                    for name, value in new.items()
                    if value is not None and getattr(mapping, name) != value
                ]
                if not changed:
                    continue
                for name in changed:
                    setattr(mapping, name, new[name])
                mapping.save(update_fields=[*changed, "updated_at"])
                MappingPriceHistory.objects.create(
                    mapping=mapping,
                    valid_from=now,
                    **{name: getattr(mapping, name) for name in PRICE_FIELDS},
                )
                updated += 1
        sync, _ = PriceSync.objects.update_or_create(
            provider=provider,
            defaults={
                "synced_at": now,
                "entries": len(entries or ()),
                "updated": updated,
                "problems": problems[:1000],
                "error": error[:2000],
            },
        )
    return sync
