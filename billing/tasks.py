"""Thin Celery tasks: take ids, call a service. Safe to run twice (exactly-once is enforced by
the database, see services.cost_batch_apply)."""

import logging

from celery import shared_task
from django.db.models import Exists, OuterRef

from billing import limits, polling, services
from billing.models import BillingAccount, UsageRecord, UsageState
from registry.models import Provider

logger = logging.getLogger(__name__)


@shared_task(name="billing.tasks.cost_poll_enqueue")
def cost_poll_enqueue() -> int:
    """Beat, every minute: one poll per provider with pending records, whatever its state (a
    suspended provider is still asked until its records resolve; one without a cost URL has
    them expire once their window has passed)."""
    pending = UsageRecord.objects.filter(provider=OuterRef("pk"), state=UsageState.PENDING)
    ids = list(Provider.objects.filter(Exists(pending)).values_list("id", flat=True))
    for provider_id in ids:
        cost_poll_provider.delay(provider_id)
    return len(ids)


@shared_task(name="billing.tasks.cost_poll_provider")
def cost_poll_provider(provider_id: int) -> dict:
    provider = Provider.objects.filter(pk=provider_id).first()
    if provider is None:
        return {}
    result = polling.cost_poll_provider(provider=provider)
    return {
        "billed": result.billed,
        "asked": result.asked,
        "error": result.error,
        "skipped": result.skipped,
    }


@shared_task(name="billing.tasks.credits_ensure_month_all")
def credits_ensure_month_all() -> int:
    """Beat, hourly: this month's grant, and the expiry of months whose billing has closed,
    for every billing account.

    Idempotent per (account, month); charges also grant lazily on first use. Each account is
    its own transaction: one that fails (logged with its id) never stops the others.
    """
    posted = 0
    accounts = BillingAccount.objects.select_related("user", "organization").order_by("pk")
    for account in accounts.iterator(chunk_size=500):
        try:
            posted += services.credits_ensure_month(billing_account=account)
        except Exception:
            logger.exception("credits: billing account %s failed; going on", account.pk)
    return posted


@shared_task(name="billing.tasks.in_flight_expire")
def in_flight_expire() -> int:
    """Beat, hourly: removes spending-limit reservations of requests that never finished."""
    return limits.in_flight_expired_delete()
