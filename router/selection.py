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

Also the arithmetic of a request's upper-bound cost (`prices_nanousd_per_mtok`, `cost_nanousd`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.errors import DomainError, Kind
from registry.aio import ChatCandidate, ModelCandidates
from registry.rules import mapping_visible, provider_enabled_check, provider_rank

POLICIES = ("fastest", "cheapest", "preferred")
ESTIMATE_MAX = 10**15  # nano-USD: $1,000,000


def split_model(model: str) -> tuple[str, str]:
    """`namespace/name[:suffix]` -> (hub model id, suffix or "fastest")."""
    model_id, _, suffix = model.partition(":")
    return model_id, (suffix or "fastest")


def best_per_provider(
    candidates: Iterable[ChatCandidate], *, member_of: frozenset[int]
) -> list[ChatCandidate]:
    best: dict[str, ChatCandidate] = {}
    for c in candidates:
        if not mapping_visible(
            status=c.status, provider_organization_id=c.organization_id, member_of=member_of
        ):
            continue
        current = best.get(c.slug)
        if current is None or c.preference() < current.preference():
            best[c.slug] = c
    return list(best.values())


def order(
    candidates: Sequence[ChatCandidate],
    *,
    suffix: str,
    model_id: str,
    provider_order: Sequence[str],
    disabled: frozenset[str],
) -> list[ChatCandidate]:
    """The candidates to try, in order; errors name the rule that left none."""
    rank = provider_rank(provider_order)

    def hub_key(c: ChatCandidate) -> tuple:
        return (not c.usable, rank(c.slug))

    if suffix not in POLICIES:
        provider_enabled_check(slug=suffix, disabled=disabled)
        chosen = [c for c in candidates if c.slug == suffix]
        if not chosen:
            raise DomainError(
                "model_not_supported",
                f"The requested model '{model_id}' is not served by provider {suffix!r}.",
                kind=Kind.NOT_FOUND,
            )
        return chosen
    allowed = sorted((c for c in candidates if c.slug not in disabled), key=hub_key)
    if not allowed:
        raise DomainError(
            "model_not_supported",
            f"The requested model '{model_id}' is not supported by any provider you have enabled.",
            kind=Kind.NOT_FOUND,
        )
    if suffix == "fastest":
        allowed.sort(
            key=lambda c: (not c.usable, c.throughput_tps is None, -(c.throughput_tps or 0))
        )
    elif suffix == "cheapest":
        allowed.sort(
            key=lambda c: (
                not c.usable,
                c.output_price_nanousd_per_mtok is None,
                c.output_price_nanousd_per_mtok or 0,
            )
        )
    return allowed


def prices_nanousd_per_mtok(
    candidate: ChatCandidate, model: ModelCandidates, *, default_input: int, default_output: int
) -> tuple[int, int]:
    """(input, output) price per million tokens for an upper-bound estimate: the mapping's own,
    else the highest any mapping of the model publishes (any provider), else the default. A
    missing price is never 0."""

    def pick(own: int | None, highest: int | None, default: int) -> int:
        return own if own is not None else highest if highest is not None else default

    return (
        pick(candidate.input_price_nanousd_per_mtok, model.max_input_price_nanousd_per_mtok,
             default_input),
        pick(candidate.output_price_nanousd_per_mtok, model.max_output_price_nanousd_per_mtok,
             default_output),
    )  # fmt: skip


def cost_nanousd(prices: tuple[int, int], *, prompt_tokens: int, completion_tokens: int) -> int:
    """Tokens at (input, output) prices per million, rounded up; at most ESTIMATE_MAX (a
    column's range; far above any real request)."""
    total = prices[0] * max(prompt_tokens, 0) + prices[1] * max(completion_tokens, 0)
    return min(-(-total // 1_000_000), ESTIMATE_MAX)
