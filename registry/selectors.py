"""Reads for the registry: who serves which hub model, in which order, for whom.

Resolution of a hub model's providers (the Hub API's `inferenceProviderMapping`):
- candidates are the model's single-model mappings and every tag-filter mapping whose tags the
  model carries, of active providers; a tag-filter mapping counts only when LoRA-shaped (`lora`
  and one `base_model:adapter:<id>`, `registry.rules.tag_filter_base_model`), so a row with a
  task tag such as `conversational` cannot claim every chat model;
- a `staging` mapping is visible only to members of the provider's organization;
- one entry per provider: a single-model mapping beats a tag-filter one, then live beats
  staging, then healthy beats failing, then the oldest wins;
- order: usable entries first, in the caller's provider order (the caller's preference when
  set, else usage over 7 days, else alphabetical), then entries whose last validation failed,
  shown with status "error".
All of it takes a constant number of queries, whatever the number of models or mappings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import BooleanField, Exists, F, Func, OuterRef, Q, QuerySet

from accounts import selectors as accounts_selectors
from registry.models import (
    HubModel,
    Mapping,
    MappingHealth,
    MappingStatus,
    MappingType,
    Provider,
    ProviderKey,
    ProviderState,
)
from registry.rules import (
    ADAPTER_TAG_PREFIX,
    LORA_TAG,
    mapping_preference,
    mapping_usable,
    mapping_visible,
    provider_rank,
    tag_filter_applies,
    tag_filter_shape_sql,
)


@dataclass(frozen=True)
class Viewer:
    """Who is asking: decides staging visibility and provider order."""

    organization_ids: frozenset[int] = frozenset()
    # Provider slugs in the caller's order of preference (empty: no preference).
    provider_order: Sequence[str] = field(default_factory=tuple)


ANONYMOUS = Viewer()


def viewer_for(user) -> Viewer:
    if user is None or not user.is_authenticated:
        return ANONYMOUS
    org_ids = frozenset(user.memberships.values_list("organization_id", flat=True))
    return Viewer(
        organization_ids=org_ids,
        provider_order=accounts_selectors.provider_order_for(user=user),
    )


def provider_get(*, slug: str) -> Provider | None:
    return Provider.objects.select_related("organization").filter(slug=slug).first()


def provider_list() -> QuerySet[Provider]:
    return Provider.objects.select_related("organization").order_by("slug")


def mapping_get(*, provider: Provider, public_id: str) -> Mapping | None:
    return (
        Mapping.objects.select_related("hub_model")
        .filter(provider=provider, public_id=public_id)
        .first()
    )


def mapping_list_for_hf_model(*, provider: Provider, hf_model: str) -> QuerySet[Mapping]:
    return Mapping.objects.filter(
        provider=provider, type=MappingType.SINGLE_MODEL, hub_model__model_id=hf_model
    )


def hub_model_get(*, model_id: str) -> HubModel | None:
    return HubModel.objects.filter(model_id=model_id).first()


# --- partner list ----------------------------------------------------------------------------
def mapping_item(mapping: Mapping) -> dict:
    """One mapping as the partner API shows it after a create or a status change."""
    item = {"_id": mapping.public_id, "type": mapping.type, "task": mapping.task}
    if mapping.type == MappingType.SINGLE_MODEL:
        item["hfModel"] = mapping.hub_model.model_id
    else:
        item["tags"] = list(mapping.tags)
        item["adapterType"] = mapping.adapter_type
    item.update(
        providerModel=mapping.provider_model,
        providerId=mapping.provider_model,
        status=mapping.status,
        health=mapping.health,
    )
    return item


def partner_mapping_list(*, provider: Provider, status: str | None = None) -> dict:
    """The public `GET /api/partners/<provider>/models`: grouped by task, then keyed by hub
    model id or `tag-filter=<sorted tags>`, exactly as the partner docs show."""
    rows = Mapping.objects.filter(provider=provider)
    if status:
        rows = rows.filter(status=status)
    rows = rows.order_by("task", "created_at", "id").values_list(
        "public_id", "task", "type", "hub_model__model_id", "tags", "adapter_type",
        "provider_model", "status",
    )  # fmt: skip
    grouped: dict[str, dict] = {}
    for public_id, task, kind, model_id, tags, adapter_type, provider_model, state in rows:
        group = grouped.setdefault(task, {})
        if kind == MappingType.SINGLE_MODEL:
            group[model_id] = {"_id": public_id, "providerId": provider_model, "status": state}
        else:
            group["tag-filter=" + ",".join(tags)] = {
                "_id": public_id,
                "status": state,
                "providerId": provider_model,
                "adapterType": adapter_type,
                "tags": tags,
            }
    return grouped


# --- provider resolution for hub models --------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    hub_model_id: int | None
    task: str
    type: str
    tags: tuple[str, ...]
    adapter_type: str
    provider_model: str
    status: str
    health: str
    created_at: object
    slug: str
    organization_id: int

    @property
    def usable(self) -> bool:
        return mapping_usable(health=self.health)

    def preference(self) -> tuple:
        return mapping_preference(self.type, self.status, self.health, self.created_at)


_ROW_FIELDS = (
    "hub_model_id", "task", "type", "tags", "adapter_type", "provider_model", "status",
    "health", "created_at", "provider__slug", "provider__organization_id",
)  # fmt: skip


def _visible(viewer: Viewer) -> Q:
    """`registry.rules.mapping_visible` as a filter, for the model list's EXISTS queries (a
    test pins that both agree). Resolving a model's providers applies the rule itself
    (`_resolve`), so the candidate queries below do not filter on visibility."""
    if viewer.organization_ids:
        return Q(status=MappingStatus.LIVE) | Q(
            provider__organization_id__in=viewer.organization_ids
        )
    return Q(status=MappingStatus.LIVE)


class _LoraShaped(Func):
    """`registry.rules.tag_filter_base_model(tags) is not None` as an ORM filter: tag-filter
    mappings that are not LoRA-shaped (e.g. a lone `conversational` tag) never apply."""

    output_field = BooleanField()

    def as_sql(self, compiler, connection, **extra):
        tags_sql, tags_params = compiler.compile(self.source_expressions[0])
        if tags_params:
            raise ValueError("_LoraShaped expects a column")
        sql = tag_filter_shape_sql(tags_sql, lora="%s", prefix="%s")
        return sql, [LORA_TAG, ADAPTER_TAG_PREFIX, ADAPTER_TAG_PREFIX]


def _tag_filter_applies(model_tags) -> Q:
    """Tag-filter mappings that apply to a model carrying `model_tags` (a list or an
    OuterRef): LoRA-shaped, with all their tags carried by the model."""
    return Q(type=MappingType.TAG_FILTER, tags__contained_by=model_tags) & Q(_LoraShaped(F("tags")))


def _candidate_rows(models: Sequence[HubModel]) -> list[_Row]:
    """Mappings of active providers that may apply to these models, staging ones included:
    who may see them is decided per viewer in `_resolve`."""
    if not models:
        return []
    all_tags = sorted({tag for m in models for tag in m.tags})
    applies = Q(type=MappingType.SINGLE_MODEL, hub_model_id__in=[m.pk for m in models])
    if all_tags:
        applies |= _tag_filter_applies(all_tags)
    rows = Mapping.objects.filter(applies, provider__state=ProviderState.ACTIVE).values_list(
        *_ROW_FIELDS
    )
    return [_Row(r[0], r[1], r[2], tuple(r[3]), *r[4:]) for r in rows]


@dataclass(frozen=True)
class ProviderMapping:
    """The resolved providers of one hub model, in selection order."""

    entries: list[tuple[str, dict]]  # (provider slug, entry)
    warm: bool

    def as_dict(self) -> dict:
        return dict(self.entries)

    def as_list(self, model_id: str) -> list[dict]:
        return [{"provider": slug, "hfModelId": model_id, **e} for slug, e in self.entries]


def _resolve(model: HubModel, rows: Iterable[_Row], viewer: Viewer) -> ProviderMapping:
    model_tags = set(model.tags)
    best: dict[str, _Row] = {}
    for row in rows:
        if not mapping_visible(
            status=row.status,
            provider_organization_id=row.organization_id,
            member_of=viewer.organization_ids,
        ):
            continue
        if row.type == MappingType.SINGLE_MODEL:
            if row.hub_model_id != model.pk:
                continue
        elif not tag_filter_applies(mapping_tags=row.tags, model_tags=model_tags):
            continue
        current = best.get(row.slug)
        if current is None or row.preference() < current.preference():
            best[row.slug] = row
    sort_key = provider_rank(viewer.provider_order)
    ordered = sorted(best.values(), key=lambda r: (not r.usable, sort_key(r.slug)))
    entries = []
    for row in ordered:
        entry = {
            "status": row.status if row.usable else "error",
            "providerId": row.provider_model,
            "task": row.task,
        }
        if row.type == MappingType.TAG_FILTER:
            entry["type"] = MappingType.TAG_FILTER
            entry["adapter"] = row.adapter_type
            entry["adapterWeightsPath"] = model.adapter_weights_path
        entries.append((row.slug, entry))
    warm = any(r.status == MappingStatus.LIVE and r.usable for r in best.values())
    return ProviderMapping(entries=entries, warm=warm)


def provider_mapping_for_models(
    *, models: Sequence[HubModel], viewer: Viewer = ANONYMOUS
) -> dict[int, ProviderMapping]:
    """Resolved providers for many hub models in one query: {hub model pk: ProviderMapping}."""
    rows = _candidate_rows(models)
    return {m.pk: _resolve(m, rows, viewer) for m in models}


def provider_mapping_for_model(*, model: HubModel, viewer: Viewer = ANONYMOUS) -> ProviderMapping:
    return provider_mapping_for_models(models=[model], viewer=viewer)[model.pk]


# The Hub API's hottest path (every client resolves a model before each first call): the model
# and its candidate mappings in one round trip of hand-written SQL. Building the same query
# with the ORM cost ~1.5 ms of Python per request (bench/registry_api.py); this costs ~0.3 ms.
# It selects exactly what `_candidate_rows` selects for one model; tests pin both.
_LORA_SHAPED = tag_filter_shape_sql("m.tags", lora="%(lora_tag)s", prefix="%(adapter_tag_prefix)s")
_LOOKUP_SQL = f"""
SELECT hm.id, hm.hub_id, hm.model_id, hm.author, hm.pipeline_tag, hm.tags,
       hm.adapter_weights_path, hm.created_at, hm.modified_at,
       c.hub_model_id, c.task, c.type, c.tags, c.adapter_type, c.provider_model, c.status,
       c.health, c.created_at, c.slug, c.organization_id
FROM registry_hubmodel hm
LEFT JOIN LATERAL (
    SELECT m.*, p.slug, p.organization_id
    FROM (
        SELECT * FROM registry_mapping m
        WHERE m.type = %(single_model)s AND m.hub_model_id = hm.id
        UNION ALL
        SELECT * FROM registry_mapping m
        WHERE m.type = %(tag_filter)s AND m.tags <@ hm.tags AND {_LORA_SHAPED}
    ) m
    JOIN registry_provider p ON p.id = m.provider_id AND p.state = %(active)s
) c ON true
WHERE hm.model_id = %(model_id)s
"""  # noqa: S608 (constants only)


def hub_model_lookup(
    *, model_id: str, viewer: Viewer = ANONYMOUS
) -> tuple[HubModel | None, ProviderMapping | None]:
    """A hub model and its resolved providers, in one query. (None, None) if unknown."""
    with connection.cursor() as cursor:
        cursor.execute(
            _LOOKUP_SQL,
            {
                "single_model": MappingType.SINGLE_MODEL,
                "tag_filter": MappingType.TAG_FILTER,
                "active": ProviderState.ACTIVE,
                "model_id": model_id,
                "lora_tag": LORA_TAG,
                "adapter_tag_prefix": ADAPTER_TAG_PREFIX,
            },
        )
        rows = cursor.fetchall()
    if not rows:
        return None, None
    first = rows[0]
    model = HubModel(
        id=first[0], hub_id=first[1], model_id=first[2], author=first[3],
        pipeline_tag=first[4], tags=first[5], adapter_weights_path=first[6],
        created_at=first[7], modified_at=first[8],
    )  # fmt: skip
    candidates = [_Row(r[9], r[10], r[11], tuple(r[12]), *r[13:]) for r in rows if r[10]]
    return model, _resolve(model, candidates, viewer)


# --- model list --------------------------------------------------------------------------------
def _served(viewer: Viewer, providers: Sequence[str] | None, *, warm_only: bool = False):
    """Q for hub models with at least one visible mapping of an active provider in
    `providers` (None: any provider)."""
    mappings = Mapping.objects.filter(_visible(viewer), provider__state=ProviderState.ACTIVE)
    if providers is not None:
        mappings = mappings.filter(provider__slug__in=providers)
    if warm_only:
        mappings = mappings.filter(status=MappingStatus.LIVE).exclude(health=MappingHealth.ERROR)
    single = mappings.filter(type=MappingType.SINGLE_MODEL, hub_model_id=OuterRef("pk"))
    by_tags = mappings.filter(_tag_filter_applies(OuterRef("tags")))
    return Exists(single) | Exists(by_tags)


def hub_model_list(
    *,
    viewer: Viewer = ANONYMOUS,
    providers: Sequence[str] | None = None,
    any_provider: bool = False,
    warm: bool = False,
    pipeline_tag: str | None = None,
    author: str | None = None,
    search: str | None = None,
    after: str | None = None,
    limit: int,
) -> list[HubModel]:
    """One page of hub models ordered by id, starting after the id `after` (keyset paging)."""
    models = HubModel.objects.all()
    if providers or any_provider:
        models = models.filter(_served(viewer, None if any_provider else providers))
    if warm:
        models = models.filter(_served(viewer, None, warm_only=True))
    if pipeline_tag:
        models = models.filter(pipeline_tag=pipeline_tag)
    if author:
        models = models.filter(author=author)
    if search:
        models = models.filter(model_id__icontains=search)
    if after:
        models = models.filter(model_id__gt=after)
    return list(models.order_by("model_id")[:limit])


def provider_slugs_existing(*, slugs: Iterable[str]) -> set[str]:
    """Which of `slugs` name a provider (active or suspended)."""
    return set(Provider.objects.filter(slug__in=list(slugs)).values_list("slug", flat=True))


def provider_map(*, slugs: Iterable[str]) -> dict[str, Provider]:
    return {p.slug: p for p in Provider.objects.filter(slug__in=list(slugs))}


# --- users' custom provider keys (BYOK) -------------------------------------------------------
def user_provider_key(*, user, provider_slug: str) -> str | None:
    """The user's own key for the provider, decrypted; None if not set.

    For the router only, to send to that provider. Never log or return it.
    """
    row = ProviderKey.objects.filter(user=user, provider__slug=provider_slug).first()
    return row.key if row is not None else None


def user_provider_key_list(*, user) -> QuerySet[ProviderKey]:
    return (
        ProviderKey.objects.filter(user=user).select_related("provider").order_by("provider__slug")
    )
