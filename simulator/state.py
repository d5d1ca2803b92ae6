"""In-memory state of the simulated providers (one process; nothing is persisted)."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from simulator.costs import id_prefix
from simulator.faults import Faults

REMEMBERED_IDS = 1_000_000
"""Issued request IDs remembered per provider (for statistics only; the oldest are dropped)."""
MAX_PATHS = 1_000
"""Distinct request lines counted per provider (`Stats.paths`) and, times ten, in the hit log;
any further ones are counted under `(other)`."""
OTHER = "(other)"

DEFAULT_MODELS: tuple[dict[str, Any], ...] = (
    {
        "id": "meta-llama/Llama-3.1-8B-Instruct",
        "owned_by": "meta-llama",
        "pricing": {"input": 0.18, "output": 0.18},
        "context_length": 131072,
    },
    {
        "id": "meta-llama/Llama-3.3-70B-Instruct",
        "owned_by": "meta-llama",
        "pricing": {"input": 0.88, "output": 0.88},
        "context_length": 131072,
    },
    {
        "id": "openai/gpt-oss-120b",
        "owned_by": "openai",
        "pricing": {"input": 0.15, "output": 0.6},
        "context_length": 131072,
    },
    {
        "id": "Qwen/Qwen3-32B",
        "owned_by": "Qwen",
        "pricing": {"input": 0.1, "output": 0.3},
        "context_length": 40960,
    },
    {
        "id": "deepseek-ai/DeepSeek-V3.1",
        "owned_by": "deepseek-ai",
        "pricing": {"input": 0.6, "output": 1.7},
        "context_length": 163840,
    },
)
MODELS_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z, the `created` of default models


@dataclass
class Stats:
    """Counters of one provider, as `GET /<slug>/_sim/stats` returns them."""

    chat_requests: int = 0
    chat_streams: int = 0
    streams_completed: int = 0  # every message, then [DONE], sent
    streams_abandoned: int = 0  # the client went away before the end
    models_requests: int = 0
    cost_requests: int = 0
    ids_asked: int = 0
    ids_answered: int = 0
    ids_asked_issued: int = 0
    ids_issued: int = 0
    # "METHOD /path" (relative to the provider, query included) -> requests; control requests
    # (`/_sim/...`) are not counted.
    paths: dict[str, int] = field(default_factory=dict)


@dataclass
class ProviderState:
    """One simulated provider: its switches, model list, counters and issued IDs."""

    slug: str
    faults: Faults = field(default_factory=Faults)
    models: list[dict[str, Any]] | None = None  # None: the default list
    stats: Stats = field(default_factory=Stats)
    issued: set[str] = field(default_factory=set)
    issued_order: deque[str] = field(default_factory=deque)

    @property
    def api_key(self) -> str:
        return self.faults.api_key or f"sim-{self.slug}-key"

    def issue_request_id(self) -> str:
        """A fresh `sim-<slug>-<24 hex>` ID, remembered (bounded) for statistics."""
        request_id = id_prefix(self.slug) + secrets.token_hex(12)
        self.stats.ids_issued += 1
        self.issued.add(request_id)
        self.issued_order.append(request_id)
        if len(self.issued_order) > REMEMBERED_IDS:
            self.issued.discard(self.issued_order.popleft())
        return request_id

    def model_list(self) -> list[dict[str, Any]]:
        """The `/v1/models` items: defaults filled in for `object`, `created`, `owned_by`."""
        source = DEFAULT_MODELS if self.models is None else self.models
        return [
            {
                "id": model["id"],
                "object": "model",
                "created": MODELS_CREATED,
                "owned_by": self.slug,
                **model,
            }
            for model in source
        ]

    def stats_json(self) -> dict[str, Any]:
        return {**vars(self.stats), "ids_remembered": len(self.issued)}


def count(counts: dict[str, int], key: str, limit: int) -> None:
    """Adds one to `counts[key]`, or to `counts["(other)"]` once `limit` keys exist."""
    if key not in counts and len(counts) >= limit:
        key = OTHER
    counts[key] = counts.get(key, 0) + 1


class HitLog:
    """Every request the process received, as "METHOD raw-path[?query]" -> count (the path as
    sent, percent-escapes and all). Not cleared by the resets: a request that reset the
    simulator stays visible. `GET /_sim/hits` reads it, `DELETE /_sim/hits` clears it."""

    def __init__(self, limit: int = 10 * MAX_PATHS) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, method: str, raw_path: bytes, query: bytes) -> None:
        key = f"{method} {raw_path.decode('latin-1')}"
        if query:
            key += "?" + query.decode("latin-1")
        count(self.counts, key, self.limit)


class Registry:
    """Provider states by slug, created on first use."""

    def __init__(self) -> None:
        self._providers: dict[str, ProviderState] = {}

    def get(self, slug: str) -> ProviderState:
        state = self._providers.get(slug)
        if state is None:
            state = self._providers[slug] = ProviderState(slug)
        return state

    def reset(self, slug: str | None = None) -> None:
        """Forgets one provider (or all of them): switches, models, counters, issued IDs."""
        if slug is None:
            self._providers.clear()
        else:
            self._providers.pop(slug, None)
