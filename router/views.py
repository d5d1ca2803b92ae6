"""`GET /v1/models` and `GET /v1/models/<namespace>/<name>`: the OpenAI-style model list of the
router, with each model's providers (status, pricing, context length, capabilities, latency and
throughput; null while endpoint validation and price sync have not measured them).

Plain Django views (not on the proxy's hot path). Lists live conversational mappings of active
providers; a provider whose last validation failed shows `"status": "error"`. Public, like the
Hub's router.
"""

from __future__ import annotations

from collections import defaultdict

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from registry.models import Mapping, MappingHealth, MappingStatus, ProviderState
from registry.task_types import CONVERSATIONAL
from router.errors import RouterError


def _usd_per_mtok(nanousd: int | None) -> float | None:
    return None if nanousd is None else nanousd / 1_000_000_000


def _provider_entry(m: Mapping) -> dict:
    priced = (
        m.input_price_nanousd_per_mtok is not None or m.output_price_nanousd_per_mtok is not None
    )
    return {
        "provider": m.provider.slug,
        "status": "error" if m.health == MappingHealth.ERROR else "live",
        "context_length": m.context_length,
        "pricing": {
            "input": _usd_per_mtok(m.input_price_nanousd_per_mtok),
            "output": _usd_per_mtok(m.output_price_nanousd_per_mtok),
        }
        if priced
        else None,
        "supports_tools": m.supports_tools,
        "supports_structured_output": m.supports_structured_output,
        "first_token_latency_ms": m.first_token_latency_ms,
        "throughput": m.throughput_tps,
        "is_model_author": m.provider.organization.name == m.hub_model.author,
    }


def _models(model_id: str | None = None) -> list[dict]:
    mappings = (
        Mapping.objects.filter(
            task=CONVERSATIONAL,
            status=MappingStatus.LIVE,
            provider__state=ProviderState.ACTIVE,
            hub_model__isnull=False,
        )
        .select_related("hub_model", "provider__organization")
        .order_by("hub_model__model_id", "provider__slug")
    )
    if model_id is not None:
        mappings = mappings.filter(hub_model__model_id=model_id)
    grouped: dict[str, list[Mapping]] = defaultdict(list)
    for mapping in mappings:
        grouped[mapping.hub_model.model_id].append(mapping)
    return [
        {
            "id": model_id,
            "object": "model",
            "created": int(entries[0].hub_model.created_at.timestamp()),
            "owned_by": entries[0].hub_model.author,
            "providers": [_provider_entry(m) for m in entries],
        }
        for model_id, entries in grouped.items()
    ]


@require_GET
def model_list(request):
    return JsonResponse({"object": "list", "data": _models()})


@require_GET
def model_detail(request, model_id: str):
    models = _models(model_id)
    if not models:
        error = RouterError(
            404, f"The model '{model_id}' is not served by any provider.", "model_not_found"
        )
        return JsonResponse(error.as_dict(), status=404)
    return JsonResponse(models[0])


@csrf_exempt  # no cookie is read; a POST (what clients send) must get this 404, not a CSRF 403
def unknown_path(request, *args, **kwargs):
    """Any other `/v1/` path served by Django: a 404 in OpenAI's shape, which clients parse."""
    error = RouterError(404, f"No endpoint at {request.path}.", "not_found")
    return JsonResponse(error.as_dict(), status=404)
