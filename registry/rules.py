"""Pure rules about who may use which mapping and provider, shared by the Hub API (the ORM
side) and the router (async rows). Each is written once; errors are `DomainError`s that each
edge renders in its own format."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from core.errors import DomainError, Kind
from registry.models import MappingHealth, MappingStatus, MappingType


def mapping_visible(
    *, status: str, provider_organization_id: int, member_of: Collection[int]
) -> bool:
    """A `live` mapping is usable by everyone; a `staging` one only by members of the
    provider's organization (DESIGN §3 Registry). `registry.selectors._visible` is its SQL
    form for list filters; a test pins that both agree."""
    return status == MappingStatus.LIVE or provider_organization_id in member_of


# A tag-filter mapping serves LoRA adapters: its tags are `lora` and one
# `base_model:adapter:<hub model id>` (plus, optionally, narrowing tags). Anything broader (a
# task tag such as `conversational`) would make one provider serve every model carrying it.
LORA_TAG = "lora"
ADAPTER_TAG_PREFIX = "base_model:adapter:"


def tag_filter_base_model(tags: Collection[str]) -> str | None:
    """The hub model id whose LoRA adapters a tag-filter mapping with these tags serves, or
    None when the tags do not have the shape of one (`lora` and exactly one non-empty
    `base_model:adapter:<id>`). Readers ignore mappings for which this is None
    (`registry.selectors` and `registry.aio` apply it in SQL too); the partner API also
    requires the base model to exist and support the task (`tag_filter_check`)."""
    if LORA_TAG not in tags:
        return None
    bases = [t[len(ADAPTER_TAG_PREFIX) :] for t in tags if t.startswith(ADAPTER_TAG_PREFIX)]
    if len(bases) != 1 or not bases[0]:
        return None
    return bases[0]


def tag_filter_shape_sql(tags: str, *, lora: str, prefix: str) -> str:
    """`tag_filter_base_model(tags) is not None` in SQL, for the readers that filter in the
    database: `tags` is the array column, `lora` and `prefix` the placeholders binding
    `LORA_TAG` and `ADAPTER_TAG_PREFIX` (`prefix` appears twice). A test pins that both
    agree."""
    count = f"SELECT count(*) FROM unnest({tags}) AS adapter_tag(tag)"  # noqa: S608 (names only)
    return (
        f"({lora} = ANY({tags}) AND NOT ({prefix} = ANY({tags})) AND "
        f"({count} WHERE starts_with(adapter_tag.tag, {prefix})) = 1)"
    )


def tag_filter_applies(*, mapping_tags: Collection[str], model_tags: Collection[str]) -> bool:
    """Does a tag-filter mapping apply to a hub model? Only a LoRA-shaped one, and only to
    models carrying all its tags."""
    return tag_filter_base_model(mapping_tags) is not None and set(model_tags).issuperset(
        mapping_tags
    )


def tag_filter_check(
    *, tags: Collection[str], task: str, base_model_supports_task: Callable[[str], bool | None]
) -> str:
    """Raises a 400 naming `tags` unless the tags name LoRA adapters of one existing hub
    model that supports `task`; returns that model's id. `base_model_supports_task(id)` is
    None for an unknown model, else whether it supports the task."""
    base = tag_filter_base_model(tags)
    if base is None:
        raise DomainError(
            "validation_error",
            f"tags: a tag-filter mapping serves LoRA adapters; its tags must include "
            f"{LORA_TAG!r} and exactly one '{ADAPTER_TAG_PREFIX}<hub model id>'.",
            field="tags",
        )
    supported = base_model_supports_task(base)
    if supported is None:
        raise DomainError(
            "validation_error",
            f"tags: the base model {base!r} does not exist on the Hub.",
            field="tags",
        )
    if not supported:
        raise DomainError(
            "validation_error",
            f"tags: the base model {base!r} does not support task {task!r}.",
            field="tags",
        )
    return base


def mapping_usable(*, health: str) -> bool:
    """A mapping whose last validation failed leaves automatic selection."""
    return health != MappingHealth.ERROR


def mapping_preference(kind: str, status: str, health: str, created_at) -> tuple:
    """Sort key choosing one mapping per provider (lowest wins): a single-model mapping beats
    a tag-filter one, then live beats staging, then healthy beats failing, then the oldest.
    The Hub API and the router both choose with it."""
    return (
        kind != MappingType.SINGLE_MODEL,
        status != MappingStatus.LIVE,
        not mapping_usable(health=health),
        created_at,
    )


def provider_rank(provider_order: Sequence[str]) -> Callable[[str], tuple]:
    """Sort key of provider slugs: the caller's preferred ones first, in their order, then the
    default order. The Hub API and the router both order with it."""
    preferred = {slug: i for i, slug in enumerate(provider_order)}
    # Until usage exists (billing), the default order after preferences is alphabetical.
    return lambda slug: (preferred.get(slug, len(preferred)), slug)


def provider_enabled_check(*, slug: str, disabled: Collection[str]) -> None:
    """An organization's disabled providers are never used for requests it pays for; naming
    one explicitly is refused."""
    if slug in disabled:
        raise DomainError(
            "provider_disabled",
            f"The provider {slug!r} is disabled by the organization you bill to.",
            kind=Kind.FORBIDDEN,
        )


def provider_active_check(*, slug: str, active: bool) -> None:
    if not active:
        raise DomainError(
            "provider_suspended", f"The provider {slug!r} is suspended.", kind=Kind.FORBIDDEN
        )
