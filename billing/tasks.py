"""Thin Celery tasks: take ids, call a service. Safe to run twice (exactly-once is enforced by
the database, see services.cost_batch_apply)."""

from celery import shared_task

from billing import limits, polling, services
from billing.models import BillingAccount
from registry.models import Provider, ProviderState


@shared_task(name="billing.tasks.cost_poll_enqueue")
def cost_poll_enqueue() -> int:
    """Beat, every minute: one poll per active provider with a cost endpoint."""
    ids = list(
        Provider.objects.filter(state=ProviderState.ACTIVE)
        .exclude(cost_url="")
        .values_list("id", flat=True)
    )
    for provider_id in ids:
        cost_poll_provider.delay(provider_id)
    return len(ids)


@shared_task(name="billing.tasks.cost_poll_provider")
def cost_poll_provider(provider_id: int) -> dict:
    provider = Provider.objects.filter(pk=provider_id, state=ProviderState.ACTIVE).first()
    if provider is None:
        return {}
    result = polling.cost_poll_provider(provider=provider)
    return {"billed": result.billed, "asked": result.asked, "error": result.error}


@shared_task(name="billing.tasks.credits_ensure_month_all")
def credits_ensure_month_all() -> int:
    """Beat, hourly: this month's grant (and last month's expiry) for every billing account.

    Idempotent per (account, month); charges also do it lazily on first use.
    """
    posted = 0
    accounts = BillingAccount.objects.select_related("user", "organization").order_by("pk")
    for account in accounts.iterator(chunk_size=500):
        posted += services.credits_ensure_month(billing_account=account)
    return posted


@shared_task(name="billing.tasks.in_flight_expire")
def in_flight_expire() -> int:
    """Beat, hourly: removes spending-limit reservations of requests that never finished."""
    return limits.in_flight_expired_delete()
