"""Cost polling: ask a provider what its requests cost, and charge what it answers.

Wire format (partner docs, "4. Billing"): POST the provider's cost URL with its bearer key and
`{"requestIds": [...]}` (at most 10,000); it answers `{"requests": [{"requestId",
"costNanoUsd"}]}`. Rules (DESIGN.md, Billing):
- a non-negative integer is the cost; a non-integer number is rounded up;
- negative, non-numeric, missing or null costs are not applied: the record stays pending and
  the problem is written on it (`cost_error`) and counted in the provider's billing health;
- an ID answered twice with different costs is ambiguous and stays pending too;
- IDs we did not ask for are ignored (counted);
- `{"requests": null}` means "nothing yet";
- a timeout, a non-2xx answer, a body that is not the expected JSON, or a body over
  RESPONSE_BYTES_MAX changes nothing and is recorded as the provider's billing health.
A record with no cost `FAILED_TO_BILL_AFTER` after its request becomes `failed_to_bill` and is
never charged. Each batch is applied by `services.cost_batch_apply` (its own transaction,
committed before the next batch is asked for).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing import services
from billing.models import ProviderBillingHealth, UsageRecord, UsageState
from core.money import ceil_nanousd
from registry.models import Provider

logger = logging.getLogger(__name__)

BATCH_SIZE_MAX = 10_000
RESPONSE_BYTES_MAX = 50 * 1024 * 1024


class CostAnswerError(Exception):
    """The provider's answer as a whole is unusable; nothing of it is applied."""


@dataclass
class ParsedCosts:
    costs: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # request ID -> reason
    unknown: int = 0
    nothing_yet: bool = False


def _cost_value(raw) -> int | str:
    """A valid cost in nano-USD, or a reason string why it is not."""
    if raw is None:
        return "cost is null"
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal):
        return "cost is not a number"
    if isinstance(raw, Decimal) and not raw.is_finite():
        return "cost is not finite"
    if raw < 0:
        return "cost is negative"
    return ceil_nanousd(raw)


def parse_cost_answer(body: bytes, asked: set[str]) -> ParsedCosts:
    """Validates a cost endpoint answer against the IDs we asked for."""
    try:
        data = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CostAnswerError(f"answer is not JSON: {exc}") from exc
    if not isinstance(data, dict) or "requests" not in data:
        raise CostAnswerError('answer is not an object with "requests"')
    parsed = ParsedCosts()
    entries = data["requests"]
    if entries is None:
        parsed.nothing_yet = True
        return parsed
    if not isinstance(entries, list):
        raise CostAnswerError('"requests" is not a list')
    for entry in entries:
        request_id = entry.get("requestId") if isinstance(entry, dict) else None
        if not isinstance(request_id, str) or request_id not in asked:
            parsed.unknown += 1
            continue
        if "costNanoUsd" not in entry:
            parsed.invalid[request_id] = "costNanoUsd is missing"
            continue
        value = _cost_value(entry["costNanoUsd"])
        if isinstance(value, str):
            parsed.invalid[request_id] = value
        elif request_id in parsed.costs and parsed.costs[request_id] != value:
            parsed.invalid[request_id] = "answered twice with different costs"
        elif request_id not in parsed.invalid:
            parsed.costs[request_id] = value
    for request_id in parsed.invalid:
        parsed.costs.pop(request_id, None)
    return parsed


@dataclass
class PollResult:
    batches: int = 0
    asked: int = 0
    billed: int = 0
    zero_cost: int = 0
    invalid: int = 0
    unknown: int = 0
    failed_to_bill: int = 0
    charged_nanousd: int = 0
    error: str = ""


def _record_health(
    provider: Provider, *, now: datetime, error: str = "", invalid: int = 0, unknown: int = 0
) -> None:
    health, _ = ProviderBillingHealth.objects.get_or_create(provider=provider)
    updates = {
        "last_poll_at": now,
        "invalid_costs_total": F("invalid_costs_total") + invalid,
        "unknown_ids_total": F("unknown_ids_total") + unknown,
    }
    if error:
        updates.update(
            last_error_at=now,
            last_error=error[:500],
            consecutive_failures=F("consecutive_failures") + 1,
        )
    else:
        updates.update(last_success_at=now, consecutive_failures=0)
    ProviderBillingHealth.objects.filter(pk=health.pk).update(**updates)


def expire_unbilled(*, provider: Provider, now: datetime) -> int:
    """Pending records older than the billing window become `failed_to_bill` (not charged)."""
    cutoff = now - timedelta(seconds=settings.BILLING_FAILED_AFTER_S)
    return UsageRecord.objects.filter(
        provider=provider, state=UsageState.PENDING, created_at__lt=cutoff
    ).update(state=UsageState.FAILED_TO_BILL)


def _fetch(client: httpx.Client, provider: Provider, request_ids: list[str]) -> bytes:
    headers = {"Authorization": f"Bearer {provider.api_key}"}
    try:
        with client.stream(
            "POST", provider.cost_url, json={"requestIds": request_ids}, headers=headers
        ) as response:
            if not response.is_success:
                raise CostAnswerError(f"cost endpoint answered HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > RESPONSE_BYTES_MAX:
                    raise CostAnswerError(f"answer larger than {RESPONSE_BYTES_MAX} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException as exc:
        raise CostAnswerError(f"cost endpoint timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise CostAnswerError(f"cost endpoint unreachable: {exc}") from exc


def _next_batch(
    provider: Provider, ready_before: datetime, after: tuple[datetime, int] | None, size: int
) -> list[tuple[datetime, int, str]]:
    """The next pending records, oldest first, after the keyset `after` (created_at, id).

    The row comparison `(created_at, id) > (...)` is an index range on the partial index of
    pending records; the equivalent OR of two conditions made PostgreSQL scan from the start
    of the index on every batch (seen with a million pending records in bench/cost_ingest.py).
    """
    sql = (
        "SELECT created_at, id, request_id FROM billing_usagerecord "
        "WHERE provider_id = %(provider)s AND state = %(pending)s "
        "AND created_at <= %(ready_before)s "
    )
    params = {
        "provider": provider.pk,
        "pending": UsageState.PENDING,
        "ready_before": ready_before,
        "size": size,
    }
    if after:
        sql += "AND (created_at, id) > (%(after_created_at)s, %(after_id)s) "
        params.update(after_created_at=after[0], after_id=after[1])
    sql += "ORDER BY created_at, id LIMIT %(size)s"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def cost_poll_provider(
    *,
    provider: Provider,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE_MAX,
    client: httpx.Client | None = None,
    progress: Callable[[int, PollResult], None] | None = None,
) -> PollResult:
    """One polling cycle: every pending record old enough, oldest first, in batches."""
    now = now or timezone.now()
    batch_size = min(batch_size, BATCH_SIZE_MAX)
    result = PollResult(failed_to_bill=expire_unbilled(provider=provider, now=now))
    if not provider.cost_url:
        result.error = "provider has no cost URL"
        _record_health(provider, now=now, error=result.error)
        return result
    ready_before = now - timedelta(seconds=provider.first_cost_query_delay_s)
    own_client = client is None
    client = client or httpx.Client(timeout=httpx.Timeout(settings.BILLING_COST_TIMEOUT_S))
    after: tuple[datetime, int] | None = None
    try:
        while True:
            rows = _next_batch(provider, ready_before, after, batch_size)
            if not rows:
                break
            after = rows[-1][:2]
            request_ids = [r[2] for r in rows]
            result.batches += 1
            result.asked += len(request_ids)
            try:
                parsed = parse_cost_answer(_fetch(client, provider, request_ids), set(request_ids))
            except CostAnswerError as exc:
                result.error = str(exc)
                logger.warning("cost poll of %s failed: %s", provider.slug, exc)
                break  # nothing applied; the records stay pending for the next cycle
            applied = services.cost_batch_apply(provider=provider, costs=parsed.costs, now=now)
            if parsed.invalid:
                _mark_invalid(provider, parsed.invalid)
            result.billed += applied.billed
            result.zero_cost += applied.zero_cost
            result.charged_nanousd += applied.charged_nanousd
            result.invalid += len(parsed.invalid)
            result.unknown += parsed.unknown
            if progress:
                progress(result.batches, result)
            if len(rows) < batch_size:
                break
    finally:
        if own_client:
            client.close()
    _record_health(
        provider, now=now, error=result.error, invalid=result.invalid, unknown=result.unknown
    )
    return result


def _mark_invalid(provider: Provider, invalid: dict[str, str]) -> None:
    """Notes on each record why its cost was not applied (it stays pending)."""
    by_reason: dict[str, list[str]] = {}
    for request_id, reason in invalid.items():
        by_reason.setdefault(reason, []).append(request_id)
    with transaction.atomic():
        for reason, ids in by_reason.items():
            UsageRecord.objects.filter(
                provider=provider, request_id__in=ids, state=UsageState.PENDING
            ).update(cost_error=reason[:300], cost_attempts=F("cost_attempts") + 1)
