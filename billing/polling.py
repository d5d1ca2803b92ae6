"""Cost polling: ask a provider what its requests cost, and charge what it answers.

Wire format (partner docs, "4. Billing"): POST the provider's cost URL with its bearer key and
`{"requestIds": [...]}` (at most 10,000); it answers `{"requests": [{"requestId",
"costNanoUsd"}]}`. Rules (DESIGN.md, Billing; issue 11, "a poller no provider can stall"):
- a non-negative integer is the cost; a non-integer number is rounded up;
- negative, non-numeric, missing or null costs are not applied: the record stays pending and
  the problem is written on it (`cost_error`) and counted in the provider's billing health;
  so is a cost above `BILLING_COST_MAX_NANOUSD`, a number literal longer than
  `COST_LITERAL_CHARS_MAX` or with an exponent beyond `COST_EXPONENT_MAX` (refused before any
  conversion, which is quadratic in the number of digits), and a value nested deeper than
  `JSON_DEPTH_MAX` (skipped without recursion, so the other IDs of the answer still apply);
- an ID answered twice with different costs is ambiguous and stays pending too;
- IDs we did not ask for are ignored (counted);
- `{"requests": null}` means "nothing yet";
- a timeout, a non-2xx answer, a body that is not the expected JSON, or a body over
  RESPONSE_BYTES_MAX changes nothing and is recorded as the provider's billing health.
Each batch is applied by `services.cost_batch_apply` (its own transaction, committed before
the next batch is asked for). A batch that fails to apply is bisected: the healthy halves are
applied, a single failing ID is marked invalid with the error, and the poll goes on.

A record whose cost failed to apply alone is applied alone in later polls, outside the
bisection budget.

One poll per provider at a time (a PostgreSQL advisory lock). The `failed_to_bill` window
(`BILLING_FAILED_AFTER_S`) counts from when the provider was first asked about a record
(`first_asked_at`, written for the records a batch leaves pending). A poll first expires the
records first asked a window ago (the limits check stops counting them at that same moment,
so nothing it stopped counting is charged), then asks about the rest: nothing becomes
`failed_to_bill` without having been asked, unless it cannot be asked at all (a provider
without a cost URL: then the window counts from `recorded_at`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q

from billing import services
from billing.models import ProviderBillingHealth, UsageRecord, UsageState
from core.money import ceil_nanousd, format_usd
from core.netguard import ResponseTooLarge, response_read_capped, url_refusal
from registry.models import Provider

logger = logging.getLogger(__name__)

BATCH_SIZE_MAX = 10_000
RESPONSE_BYTES_MAX = 50 * 1024 * 1024
# A cost is at most BILLING_COST_MAX_NANOUSD (< 2**63: 19 digits); a longer literal, or one
# whose exponent is larger than this, is refused as written, never converted.
COST_LITERAL_CHARS_MAX = 40
COST_EXPONENT_MAX = 30
# The answer is an object > "requests" list > entry objects > values: containers nested deeper
# than this are replaced by an invalid marker (an entry field's value may nest a little).
JSON_DEPTH_MAX = 6
# Calls of `cost_batch_apply` per batch while bisecting failures (one bad ID in 10,000 takes
# about 28); past it the rest stays pending for the next poll.
APPLY_ATTEMPTS_MAX = 64
# How a record's `cost_error` starts when its cost failed to apply on its own (not a bad value).
APPLY_FAILED = "could not be applied: "
# pg_try_advisory_lock(namespace, provider id): "bill" in ASCII.
POLL_LOCK_NAMESPACE = 0x62696C6C


class CostAnswerError(Exception):
    """The provider's answer as a whole is unusable; nothing of it is applied."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A JSON value refused while parsing (too long, out of range, too deep); it says why."""

    reason: str


@dataclass
class ParsedCosts:
    costs: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # request ID -> reason
    unknown: int = 0
    nothing_yet: bool = False


# --- parsing: bounded numbers, bounded depth, never recursion on input ------------------------
_TOO_LONG = Invalid(f"cost number longer than {COST_LITERAL_CHARS_MAX} characters")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE]([-+]?[0-9]+))?")


def _parse_int(literal: str) -> int | Invalid:
    return _TOO_LONG if len(literal) > COST_LITERAL_CHARS_MAX else int(literal)


def _parse_float(literal: str) -> Decimal | Invalid:
    if len(literal) > COST_LITERAL_CHARS_MAX:
        return _TOO_LONG
    match = _NUMBER_RE.fullmatch(literal)
    if match is None:  # the scanner only hands over JSON numbers; defensive
        return Invalid("cost is not a number")
    if match.group(1) and abs(int(match.group(1))) > COST_EXPONENT_MAX:
        return Invalid(f"cost number exponent beyond ±{COST_EXPONENT_MAX}")
    return Decimal(literal)


def _parse_constant(name: str) -> Invalid:
    return Invalid("cost is not finite")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)
_scan = _DECODER.scan_once  # the C scanner: one JSON value at an index
_WS = re.compile(r"[ \t\n\r]*")
# Skipping an over-deep value: runs of other characters, whole strings, runs of brackets.
_SKIP = re.compile(r'[^"\[\]{}]+|"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+', re.DOTALL)
_TOO_DEEP = Invalid(f"value nested deeper than {JSON_DEPTH_MAX} levels")


def _skip_container(s: str, idx: int) -> int:
    """The index just past the container (array or object) starting at `idx`, without building
    or validating it: brackets outside strings are counted, a run at a time."""
    depth = 0
    while True:
        match = _SKIP.match(s, idx)
        if match is None:
            raise json.JSONDecodeError("Unterminated value", s, idx)
        token = match.group()
        if token[0] in "[{":
            depth += len(token)
        elif token[0] in "]}":
            if len(token) >= depth:
                return idx + depth
            depth -= len(token)
        idx = match.end()


def _scan_value(s: str, idx: int) -> tuple[object, int]:
    try:
        return _scan(s, idx)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", s, exc.value) from None


def _key_at(s: str, idx: int) -> tuple[str, int]:
    """An object key and the index of its value."""
    if not s.startswith('"', idx):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, idx)
    key, idx = _scan_value(s, idx)
    idx = _WS.match(s, idx).end()
    if not s.startswith(":", idx):
        raise json.JSONDecodeError("Expecting ':' delimiter", s, idx)
    return key, _WS.match(s, idx + 1).end()  # type: ignore[return-value]


def _loads_bounded(s: str) -> object:
    """`json.loads` for an answer the recursive parser refused (RecursionError): iterative,
    with an explicit stack. Containers up to `JSON_DEPTH_MAX` deep are first handed whole to the
    C scanner (at most JSON_DEPTH_MAX attempts re-read any byte) and built here only if that
    recursed too deep; deeper ones become `Invalid` and are skipped with `_skip_container`."""
    stack: list[list] = []  # frames [container, key of its next value]
    idx = _WS.match(s, 0).end()
    while True:
        # At a value.
        char = s[idx : idx + 1]
        value: object
        if char in ("[", "{"):
            if len(stack) >= JSON_DEPTH_MAX:
                value, idx = _TOO_DEEP, _skip_container(s, idx)
            else:
                try:
                    value, idx = _scan(s, idx)
                except RecursionError:
                    frame: list = [[] if char == "[" else {}, None]
                    stack.append(frame)
                    idx = _WS.match(s, idx + 1).end()
                    if not s.startswith("]" if char == "[" else "}", idx):
                        if char == "{":
                            frame[1], idx = _key_at(s, idx)
                        continue  # its first value
                    value, idx = stack.pop()[0], idx + 1
        else:
            value, idx = _scan_value(s, idx)
        # After a value: store it in its container, then a separator or the container's end.
        while True:
            if not stack:
                if _WS.match(s, idx).end() != len(s):
                    raise json.JSONDecodeError("Extra data", s, idx)
                return value
            frame = stack[-1]
            container = frame[0]
            if isinstance(container, list):
                container.append(value)
            else:
                container[frame[1]] = value
            idx = _WS.match(s, idx).end()
            char = s[idx : idx + 1]
            if char == ",":
                idx = _WS.match(s, idx + 1).end()
                if isinstance(container, dict):
                    frame[1], idx = _key_at(s, idx)
                break  # the next value
            if char == ("]" if isinstance(container, list) else "}"):
                value, idx = stack.pop()[0], idx + 1
                continue
            raise json.JSONDecodeError("Expecting ',' delimiter", s, idx)


def _loads(body: bytes) -> object:
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    try:
        return _DECODER.decode(text)
    except RecursionError:
        return _loads_bounded(text)


def _cost_value(raw) -> int | str:
    """A valid cost in nano-USD, or a reason string why it is not."""
    if isinstance(raw, Invalid):
        return raw.reason
    if raw is None:
        return "cost is null"
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal):
        return "cost is not a number"
    if isinstance(raw, Decimal) and not raw.is_finite():
        return "cost is not finite"
    if raw < 0:
        return "cost is negative"
    cap = settings.BILLING_COST_MAX_NANOUSD
    if raw > cap:  # compared before rounding: an int(...) of nothing huge
        return f"cost above the cap of {format_usd(cap)} per request"
    value = ceil_nanousd(raw)
    if value > cap:
        return f"cost above the cap of {format_usd(cap)} per request"
    return value


def parse_cost_answer(body: bytes, asked: set[str]) -> ParsedCosts:
    """Validates a cost endpoint answer against the IDs we asked for."""
    try:
        data = _loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CostAnswerError(f"answer is not JSON: {str(exc)[:200]}") from exc
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


# --- the poll ---------------------------------------------------------------------------------
@dataclass
class PollResult:
    batches: int = 0
    asked: int = 0
    billed: int = 0
    zero_cost: int = 0
    held: int = 0
    invalid: int = 0
    unknown: int = 0
    failed_to_bill: int = 0
    charged_nanousd: int = 0
    error: str = ""
    skipped: str = ""  # why nothing was done (another poll of the provider is running)


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
    """Pending records whose billing window has passed become `failed_to_bill` (not charged).

    The window counts from the first time the provider was asked about the record; a record
    never asked expires only if it cannot be asked (no cost URL), counting from when it was
    written (`recorded_at`, the database's clock)."""
    cutoff = now - timedelta(seconds=settings.BILLING_FAILED_AFTER_S)
    window_passed = Q(first_asked_at__lt=cutoff)
    if not provider.cost_url:
        window_passed |= Q(first_asked_at__isnull=True, recorded_at__lt=cutoff)
    return UsageRecord.objects.filter(
        window_passed, provider=provider, state=UsageState.PENDING
    ).update(state=UsageState.FAILED_TO_BILL)


def _client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(settings.BILLING_COST_TIMEOUT_S))


def cost_url_refusal(url: str) -> str | None:
    """Why the cost URL may not be asked (its host is, or resolves to, an internal address not
    in UPSTREAM_ALLOWED_NETWORKS: the provider's key must not go there), or None. A host that
    does not resolve is left to fail on its own. Checked before every batch, so a name that
    starts resolving to an internal address is caught; a name re-bound between this check and
    the connection is not (`core.netguard`)."""
    return url_refusal(url, unresolvable_ok=True)


def _fetch(client: httpx.Client, provider: Provider, request_ids: list[str]) -> bytes:
    headers = {"Authorization": f"Bearer {provider.api_key}"}
    refusal = cost_url_refusal(provider.cost_url)
    if refusal is not None:
        raise CostAnswerError(f"cost URL refused: it {refusal}")
    try:
        with client.stream(
            "POST", provider.cost_url, json={"requestIds": request_ids}, headers=headers
        ) as response:
            if not response.is_success:
                raise CostAnswerError(f"cost endpoint answered HTTP {response.status_code}")
            return response_read_capped(response, RESPONSE_BYTES_MAX)
    except ResponseTooLarge as exc:
        raise CostAnswerError(str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise CostAnswerError(f"cost endpoint timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise CostAnswerError(f"cost endpoint unreachable: {exc}") from exc


def _next_batch(
    provider: Provider,
    ready_before: datetime,
    window_start: datetime,
    after: tuple[datetime, int] | None,
    size: int,
) -> list[tuple[datetime, int, str, str]]:
    """The next pending records (created_at, id, request ID, cost error), oldest first, after
    the keyset `after` (created_at, id); not those first asked before `window_start` (their
    window has passed: they expire).

    The row comparison `(created_at, id) > (...)` is an index range on the partial index of
    pending records; the equivalent OR of two conditions made PostgreSQL scan from the start
    of the index on every batch (seen with a million pending records in bench/cost_ingest.py).
    """
    sql = (
        "SELECT created_at, id, request_id, cost_error FROM billing_usagerecord "
        "WHERE provider_id = %(provider)s AND state = %(pending)s "
        "AND created_at <= %(ready_before)s "
        "AND (first_asked_at IS NULL OR first_asked_at >= %(window_start)s) "
    )
    params = {
        "provider": provider.pk,
        "pending": UsageState.PENDING,
        "ready_before": ready_before,
        "window_start": window_start,
        "size": size,
    }
    if after:
        sql += "AND (created_at, id) > (%(after_created_at)s, %(after_id)s) "
        params.update(after_created_at=after[0], after_id=after[1])
    sql += "ORDER BY created_at, id LIMIT %(size)s"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _mark_asked(usage_ids: list[int], now: datetime) -> None:
    """The first ask starts a record's billing window: written for the records of a batch
    still pending once its answer was handled (an unusable answer, a cost not yet known or
    invalid), not for those it charged (writing every row twice cost a quarter of a batch's
    time in bench/cost_ingest.py). A poll that dies between asking and this leaves the window
    unstarted: the record is asked again, never expired early."""
    if not usage_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_usagerecord SET first_asked_at = %(now)s "
            "WHERE id = ANY(%(ids)s) AND first_asked_at IS NULL",
            {"now": now, "ids": usage_ids},
        )


def _database_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


@contextmanager
def _poll_lock(provider: Provider) -> Iterator[bool]:
    """One poll per provider at a time: a session-level advisory lock, released at the end (or
    with the session, if the worker dies). Yields whether this poll got it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [POLL_LOCK_NAMESPACE, provider.pk])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", [POLL_LOCK_NAMESPACE, provider.pk]
                    )
            except BaseException as exc:
                # The session is unusable, or the unlock was interrupted (a soft time limit
                # fired inside it): end the session, which releases the lock, so that no pool
                # hands it out still holding it; an interruption then goes on.
                logger.exception("cost poll of %s: unlock failed; closing", provider.slug)
                if connection.connection is not None:
                    connection.connection.close()
                connection.close()
                if not isinstance(exc, DatabaseError):
                    raise


def _apply_isolated(
    provider: Provider,
    costs: dict[str, int],
    now: datetime,
    result: PollResult,
    suspects: set[str] = frozenset(),
) -> dict[str, str]:
    """Applies `costs`; a failing application is bisected so that the healthy records still
    apply. Returns the IDs that failed alone, with the error (class and message).

    `suspects` (IDs whose cost failed to apply alone in an earlier poll) are applied last, one
    per transaction, outside the bisection budget: a few records that always fail cannot use
    it up poll after poll and leave the healthy ones of their batch to expire unapplied."""
    failed: dict[str, str] = {}
    for request_id in sorted(suspects & costs.keys()):
        try:
            applied = services.cost_batch_apply(
                provider=provider, costs={request_id: costs[request_id]}, now=now
            )
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # isolated, as below
            failed[request_id] = f"{APPLY_FAILED}{type(exc).__name__}: {exc}".strip()[:300]
            result.error = f"cost of {request_id!r} could not be applied: {failed[request_id]}"
            continue
        _count(result, applied)
    costs = {i: c for i, c in costs.items() if i not in suspects}
    parts = [list(costs)] if costs else []
    attempts = 0
    while parts:
        ids = parts.pop()
        if attempts >= APPLY_ATTEMPTS_MAX:
            left = len(ids) + sum(len(p) for p in parts)
            result.error = f"{left} cost(s) left for the next poll after {attempts} attempts; " + (
                result.error
            )
            break
        attempts += 1
        try:
            applied = services.cost_batch_apply(
                provider=provider, costs={i: costs[i] for i in ids}, now=now
            )
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # isolated: anything a batch can raise (DataError, ...)
            logger.warning("cost poll of %s: %d cost(s) failed: %r", provider.slug, len(ids), exc)
            if len(ids) == 1:
                failed[ids[0]] = f"{APPLY_FAILED}{type(exc).__name__}: {exc}".strip()[:300]
                result.error = f"cost of {ids[0]!r} could not be applied: {failed[ids[0]]}"
            else:
                middle = len(ids) // 2
                parts += [ids[middle:], ids[:middle]]
            continue
        _count(result, applied)
    return failed


def _count(result: PollResult, applied) -> None:
    result.billed += applied.billed
    result.zero_cost += applied.zero_cost
    result.held += applied.held
    result.charged_nanousd += applied.charged_nanousd


def cost_poll_provider(
    *,
    provider: Provider,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE_MAX,
    client: httpx.Client | None = None,
    progress: Callable[[int, PollResult], None] | None = None,
) -> PollResult:
    """One polling cycle: ask about every pending record old enough, oldest first, in batches;
    then expire the records whose window has passed. Returns at once, doing nothing, if
    another poll of the provider is running."""
    with _poll_lock(provider) as acquired:
        if not acquired:
            return PollResult(skipped="another poll of this provider is running")
        return _poll(
            provider=provider,
            now=now or _database_now(),
            batch_size=min(batch_size, BATCH_SIZE_MAX),
            client=client,
            progress=progress,
        )


def _poll(
    *,
    provider: Provider,
    now: datetime,
    batch_size: int,
    client: httpx.Client | None,
    progress: Callable[[int, PollResult], None] | None,
) -> PollResult:
    # Records asked about longer ago than the window (and, for a provider without a cost URL,
    # records never asked that are older) expire first: they will never be asked again, so
    # the limits check, which stops counting them at the same moment, never sees a record
    # that can still be charged leave its count.
    result = PollResult(failed_to_bill=expire_unbilled(provider=provider, now=now))
    if provider.cost_url:
        own_client = client is None
        client = client or _client()
        try:
            _ask_all(provider, now, batch_size, client, progress, result)
        finally:
            if own_client:
                client.close()
    else:
        result.error = "provider has no cost URL"
    _record_health(
        provider, now=now, error=result.error, invalid=result.invalid, unknown=result.unknown
    )
    return result


def _ask_all(
    provider: Provider,
    now: datetime,
    batch_size: int,
    client: httpx.Client,
    progress: Callable[[int, PollResult], None] | None,
    result: PollResult,
) -> None:
    ready_before = now - timedelta(seconds=provider.first_cost_query_delay_s)
    window_start = now - timedelta(seconds=settings.BILLING_FAILED_AFTER_S)
    after: tuple[datetime, int] | None = None
    while True:
        rows = _next_batch(provider, ready_before, window_start, after, batch_size)
        if not rows:
            return
        after = rows[-1][:2]
        request_ids = [r[2] for r in rows]
        result.batches += 1
        result.asked += len(request_ids)
        try:
            parsed = parse_cost_answer(_fetch(client, provider, request_ids), set(request_ids))
        except CostAnswerError as exc:
            result.error = str(exc)
            logger.warning("cost poll of %s failed: %s", provider.slug, exc)
            _mark_asked([r[1] for r in rows], now)
            return  # nothing applied; the records stay pending for the next cycle
        suspects = {r[2] for r in rows if r[3].startswith(APPLY_FAILED)}
        failed = _apply_isolated(provider, parsed.costs, now, result, suspects)
        invalid = {**parsed.invalid, **failed}
        if invalid:
            _mark_invalid(provider, invalid)
        # Those still pending: no usable cost in the answer, or one that failed to apply.
        _mark_asked([r[1] for r in rows if r[2] not in parsed.costs or r[2] in failed], now)
        result.invalid += len(invalid)
        result.unknown += parsed.unknown
        if progress:
            progress(result.batches, result)
        if len(rows) < batch_size:
            return


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
