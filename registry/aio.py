"""The router's async port to the registry: providers, a model's chat candidates, and the
user's own provider keys (BYOK).

Owns its SQL and its row mapping: columns bind by name into the dataclasses below, so adding
a column cannot shift a field, and enum values are parameters, never literals. Filters that are
rules (active providers only, the conversational task) are WHERE clauses; the rules that
depend on the caller (staging visibility, disabled providers, preference) are
`registry.rules`, the same functions the Hub API applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row, kwargs_row

from core.fields import decrypt
from registry.models import MappingType, ProviderKey, ProviderState
from registry.rules import (
    ADAPTER_TAG_PREFIX,
    LORA_TAG,
    mapping_preference,
    mapping_usable,
    tag_filter_shape_sql,
)
from registry.task_types import CONVERSATIONAL


@dataclass(frozen=True, slots=True)
class ProviderRow:
    id: int
    slug: str
    organization_id: int
    base_url: str
    chat_route: str
    api_key: str  # decrypted; never log it
    request_id_header: str
    state: str
    billable: bool  # has a cost URL; without one its requests could never be billed

    @property
    def active(self) -> bool:
        return self.state == ProviderState.ACTIVE


@dataclass(frozen=True, slots=True)
class ChatCandidate:
    """A conversational mapping of an active provider that applies to a hub model."""

    provider_id: int
    slug: str
    organization_id: int
    provider_model: str
    type: str
    status: str
    health: str
    created_at: datetime
    input_price_nanousd_per_mtok: int | None
    output_price_nanousd_per_mtok: int | None
    throughput_tps: float | None
    first_token_latency_ms: int | None
    context_length: int | None

    @property
    def usable(self) -> bool:
        return mapping_usable(health=self.health)

    def preference(self) -> tuple:
        return mapping_preference(self.type, self.status, self.health, self.created_at)


@dataclass(frozen=True, slots=True)
class ModelCandidates:
    hub_model_id: str  # "" when a provider's model maps to no hub model (tag-filter only)
    candidates: tuple[ChatCandidate, ...]
    # The highest prices any provider (active or not, billable or not) publishes for this hub
    # model's chat mappings: what an unpriced mapping's upper-bound estimate uses. None when
    # no mapping of the model has one.
    max_input_price_nanousd_per_mtok: int | None = None
    max_output_price_nanousd_per_mtok: int | None = None


_PROVIDERS_SQL = """
SELECT id, slug, organization_id, base_url, chat_route, api_key, request_id_header, state,
       cost_url <> '' AS billable
FROM registry_provider
"""


# Tag-filter mappings apply only when LoRA-shaped (`registry.rules.tag_filter_base_model`):
# a row such as tags ["conversational"] would otherwise claim every chat model.
def _lora_shaped(tags: str) -> str:
    return tag_filter_shape_sql(tags, lora="%(lora_tag)s", prefix="%(adapter_tag_prefix)s")


_CANDIDATE_COLUMNS = """
    m.provider_id, p.slug, p.organization_id, m.provider_model, m.type, m.status, m.health,
    m.created_at, m.input_price_nanousd_per_mtok, m.output_price_nanousd_per_mtok,
    m.throughput_tps, m.first_token_latency_ms, m.context_length
"""
# The highest published prices of the hub model `hm` over all the chat mappings that apply to
# it (any provider, any state): one scan of them, joined once per hub model.
_MAX_PRICES = f"""
LEFT JOIN LATERAL (
    SELECT max(x.input_price_nanousd_per_mtok) AS max_input_price_nanousd_per_mtok,
           max(x.output_price_nanousd_per_mtok) AS max_output_price_nanousd_per_mtok
    FROM registry_mapping x
    WHERE x.task = %(task)s AND ((x.type = %(single_model)s AND x.hub_model_id = hm.id)
          OR (x.type = %(tag_filter)s AND x.tags <@ hm.tags AND {_lora_shaped("x.tags")}))
) mp ON true
"""  # noqa: S608 (constants only)
# Every conversational mapping of an active provider with a cost URL (one without could never
# bill its requests: not routable) that applies to the model: its own single-model mappings
# and the tag-filter ones whose tags it carries (staging too: what the caller may see is
# decided per request). No row for an unknown model; one row with NULL candidate columns for
# a known model that nothing serves.
_MODEL_CANDIDATES_SQL = f"""
SELECT hm.model_id AS hub_model_id, mp.*, c.*
FROM registry_hubmodel hm
{_MAX_PRICES}
LEFT JOIN LATERAL (
    SELECT {_CANDIDATE_COLUMNS}
    FROM registry_mapping m JOIN registry_provider p ON p.id = m.provider_id
    WHERE m.task = %(task)s AND p.state = %(active)s AND p.cost_url <> ''
      AND ((m.type = %(single_model)s AND m.hub_model_id = hm.id)
           OR (m.type = %(tag_filter)s AND m.tags <@ hm.tags AND {_lora_shaped("m.tags")}))
) c ON true
WHERE hm.model_id = %(model_id)s
"""  # noqa: S608 (constants only)
# The named-provider route: the body's `model` is the provider's own model id.
_PROVIDER_MODEL_CANDIDATES_SQL = f"""
SELECT coalesce(hm.model_id, '') AS hub_model_id, mp.*, {_CANDIDATE_COLUMNS}
FROM registry_mapping m
JOIN registry_provider p ON p.id = m.provider_id
LEFT JOIN registry_hubmodel hm ON hm.id = m.hub_model_id
{_MAX_PRICES}
WHERE m.provider_id = %(provider_id)s AND m.provider_model = %(provider_model)s
  AND m.task = %(task)s
  AND (m.type = %(single_model)s OR {_lora_shaped("m.tags")})
"""  # noqa: S608 (constants only)
_PROVIDER_KEYS_SQL = f"""
SELECT provider_id, key FROM {ProviderKey._meta.db_table} WHERE user_id = %(user_id)s
"""  # noqa: S608 (a table name from the model)


def _params(**extra) -> dict:
    return {
        "task": CONVERSATIONAL,
        "active": ProviderState.ACTIVE,
        "single_model": MappingType.SINGLE_MODEL,
        "tag_filter": MappingType.TAG_FILTER,
        "lora_tag": LORA_TAG,
        "adapter_tag_prefix": ADAPTER_TAG_PREFIX,
        **extra,
    }


def _candidate_row(
    hub_model_id: str,
    max_input_price_nanousd_per_mtok: int | None,
    max_output_price_nanousd_per_mtok: int | None,
    provider_id: int | None,
    **columns,
):
    candidate = None if provider_id is None else ChatCandidate(provider_id=provider_id, **columns)
    return (
        hub_model_id,
        candidate,
        max_input_price_nanousd_per_mtok,
        max_output_price_nanousd_per_mtok,
    )


def _model_candidates(rows, hub_model_id: str) -> ModelCandidates:
    first = rows[0] if rows else (hub_model_id, None, None, None)
    return ModelCandidates(
        hub_model_id=first[0],
        candidates=tuple(row[1] for row in rows if row[1] is not None),
        max_input_price_nanousd_per_mtok=first[2],
        max_output_price_nanousd_per_mtok=first[3],
    )


async def providers_all(conn: AsyncConnection) -> dict[str, ProviderRow]:
    """Every provider (active or suspended) by slug, with its API key decrypted."""
    async with conn.cursor(row_factory=class_row(ProviderRow)) as cursor:
        await cursor.execute(_PROVIDERS_SQL)
        rows = await cursor.fetchall()
    return {
        r.slug: ProviderRow(
            id=r.id,
            slug=r.slug,
            organization_id=r.organization_id,
            base_url=r.base_url,
            chat_route=r.chat_route,
            api_key=decrypt(r.api_key) if r.api_key else "",
            request_id_header=r.request_id_header,
            state=r.state,
            billable=r.billable,
        )
        for r in rows
    }


async def chat_candidates(conn: AsyncConnection, *, model_id: str) -> ModelCandidates | None:
    """The hub model's chat candidates; None for an unknown model."""
    async with conn.cursor(row_factory=kwargs_row(_candidate_row)) as cursor:
        await cursor.execute(_MODEL_CANDIDATES_SQL, _params(model_id=model_id))
        rows = await cursor.fetchall()
    if not rows:
        return None
    return _model_candidates(rows, "")


async def chat_candidates_by_provider_model(
    conn: AsyncConnection, *, provider_id: int, provider_model: str
) -> ModelCandidates:
    """The provider's chat mappings whose provider model id is `provider_model` (of active
    or suspended providers: the caller checks the provider first)."""
    async with conn.cursor(row_factory=kwargs_row(_candidate_row)) as cursor:
        await cursor.execute(
            _PROVIDER_MODEL_CANDIDATES_SQL,
            _params(provider_id=provider_id, provider_model=provider_model),
        )
        rows = await cursor.fetchall()
    return _model_candidates(rows, "")


async def provider_keys_of(conn: AsyncConnection, *, user_id: int) -> dict[int, str]:
    """The user's own provider keys, decrypted: {provider id: key}. Never log them."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_PROVIDER_KEYS_SQL, {"user_id": user_id})
        return {r["provider_id"]: decrypt(r["key"]) for r in await cursor.fetchall()}
