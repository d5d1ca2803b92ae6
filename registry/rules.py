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
