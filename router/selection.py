"""Which provider serves a chat completion: the candidates of a hub model, filtered and
ordered by the `model` suffix policy. Pure functions over data the router loaded.

- Only conversational mappings of active providers; staging ones only for members of the
  provider's organization; never a provider the paying organization disabled (naming one
  explicitly is a 403).
- Per provider a single-model mapping beats a tag-filter one, then live beats staging, then
  healthy beats failing, then the oldest wins (as in the Hub API).
- Order: healthy before failing (health `error`), then by policy: `:fastest` (default) by
  measured throughput, `:cheapest` by output-token price, `:preferred` the Hub API order (the
  caller's provider order, then alphabetical). Unknown throughput or price sorts after known
  ones, in the Hub API order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.selectors import mapping_preference, provider_rank
from router.errors import RouterError

POLICIES = ("fastest", "cheapest", "preferred")
CHAT_TASK = "conversational"
ESTIMATE_MAX = 10**15  # nano-USD: $1,000,000


@dataclass(frozen=True)
class Candidate:
    provider_id: int
    slug: str
    organization_id: int
    provider_model: str
    type: str
    status: str
    health: str
    created_at: object
    input_price: int | None  # nano-USD per 1M tokens
    output_price: int | None
    throughput: float | None
    first_token_latency_ms: int | None
    context_length: int | None

    @property
    def usable(self) -> bool:
        return self.health != "error"

    def preference(self) -> tuple:
        return mapping_preference(self.type, self.status, self.health, self.created_at)


def provider_disabled(slug: str) -> RouterError:
    return RouterError(
        403, f"The provider {slug!r} is disabled by the organization you bill to.",
        "provider_disabled",
    )  # fmt: skip


def split_model(model: str) -> tuple[str, str]:
    """`namespace/name[:suffix]` -> (hub model id, suffix or "fastest")."""
    model_id, _, suffix = model.partition(":")
    return model_id, (suffix or "fastest")


def best_per_provider(
    candidates: Iterable[Candidate], *, member_of: frozenset[int]
) -> list[Candidate]:
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.status != "live" and c.organization_id not in member_of:
            continue
        current = best.get(c.slug)
        if current is None or c.preference() < current.preference():
            best[c.slug] = c
    return list(best.values())


def order(
    candidates: Sequence[Candidate],
    *,
    suffix: str,
    model_id: str,
    provider_order: Sequence[str],
    disabled: frozenset[str],
) -> list[Candidate]:
    """The candidates to try, in order; errors name the rule that left none."""
    rank = provider_rank(provider_order)

    def hub_key(c: Candidate) -> tuple:
        return (not c.usable, rank(c.slug))

    if suffix not in POLICIES:
        if suffix in disabled:
            raise provider_disabled(suffix)
        chosen = [c for c in candidates if c.slug == suffix]
        if not chosen:
            raise RouterError(
                404,
                f"The requested model '{model_id}' is not served by provider {suffix!r}.",
                "model_not_supported",
            )
        return chosen
    allowed = sorted((c for c in candidates if c.slug not in disabled), key=hub_key)
    if not allowed:
        raise RouterError(
            404,
            f"The requested model '{model_id}' is not supported by any provider you have enabled.",
            "model_not_supported",
        )
    if suffix == "fastest":
        allowed.sort(key=lambda c: (not c.usable, c.throughput is None, -(c.throughput or 0)))
    elif suffix == "cheapest":
        allowed.sort(key=lambda c: (not c.usable, c.output_price is None, c.output_price or 0))
    return allowed


def estimate_nanousd(candidate: Candidate, *, prompt_tokens: int, completion_tokens: int) -> int:
    """Cost from the provider's published prices, rounded up; 0 when prices are unknown.
    At most ESTIMATE_MAX (a column's range; far above any real request)."""
    total = (candidate.input_price or 0) * prompt_tokens + (
        candidate.output_price or 0
    ) * completion_tokens
    return min(-(-total // 1_000_000), ESTIMATE_MAX)
