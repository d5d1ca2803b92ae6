"""Thin Celery tasks of the registry: take ids, call a service. Safe to run twice."""

from __future__ import annotations

from celery import shared_task

from registry import pricesync, services
from registry.models import Provider, ProviderState


@shared_task(name="registry.tasks.price_sync_enqueue")
def price_sync_enqueue() -> int:
    """Beat, every PRICE_SYNC_INTERVAL_S: one price sync per active provider with a base URL."""
    ids = list(
        Provider.objects.filter(state=ProviderState.ACTIVE)
        .exclude(base_url="")
        .values_list("id", flat=True)
    )
    for provider_id in ids:
        price_sync_provider.delay(provider_id)
    return len(ids)


@shared_task(name="registry.tasks.price_sync_provider")
def price_sync_provider(provider_id: int) -> dict:
    """GETs the provider's `/v1/models` and applies it (`services.mapping_prices_sync`)."""
    provider = Provider.objects.filter(pk=provider_id).first()
    if provider is None or not provider.base_url:
        return {}
    try:
        entries = pricesync.entries_parse(pricesync.models_fetch(provider))
    except pricesync.PriceFetchError as exc:
        sync = services.mapping_prices_sync(provider=provider, entries=None, error=str(exc))
    else:
        sync = services.mapping_prices_sync(provider=provider, entries=entries)
    return {"entries": sync.entries, "updated": sync.updated, "error": sync.error}
