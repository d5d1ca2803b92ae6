"""Price sync, the reading half: fetch a provider's `/v1/models` and check each entry's prices
(docs/registry.md "Price sync"). The writes are `services.mapping_prices_sync`.

Prices are decimal USD per million tokens; they become integer nano-USD per million tokens,
converted exactly: the JSON is parsed with `Decimal` numbers, never floats (0.07 stays 0.07).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, DecimalException
from typing import Any
from urllib.parse import urljoin

import httpx
from django.conf import settings

from core.netguard import ResponseTooLarge, response_read_capped, url_refusal
from registry.models import Provider

NANO_PER_USD = Decimal(10**9)


class PriceFetchError(Exception):
    """The whole answer is unusable (refused URL, network error, HTTP error, not JSON...)."""


@dataclass
class PriceEntry:
    """One model of the answer: the values that passed the checks (None: keep the last good
    one), and why the others did not."""

    model_id: str
    input_nanousd_per_mtok: int | None = None
    output_nanousd_per_mtok: int | None = None
    context_length: int | None = None
    problems: list[str] = field(default_factory=list)


def models_url(provider: Provider) -> str:
    """The provider's chat route with `chat/completions` replaced by `models`, on its base."""
    route = provider.chat_route.replace("chat/completions", "models")
    return urljoin(provider.base_url.rstrip("/") + "/", route.lstrip("/"))


def models_fetch(provider: Provider, *, client: httpx.Client | None = None) -> Any:
    """GETs the provider's `/v1/models` with the platform key; the parsed JSON (Decimal
    numbers). Raises PriceFetchError."""
    url = models_url(provider)
    refusal = url_refusal(url)
    if refusal is not None:
        raise PriceFetchError(f"models URL refused: it {refusal}")
    own = client is None
    client = client or httpx.Client(
        timeout=httpx.Timeout(settings.PRICE_SYNC_TIMEOUT_S), follow_redirects=False
    )
    limit = settings.PRICE_SYNC_MAX_BYTES
    headers = {"Authorization": f"Bearer {provider.api_key}", "Accept": "application/json"}
    try:
        with client.stream("GET", url, headers=headers) as response:
            if not response.is_success:
                raise PriceFetchError(f"models endpoint answered HTTP {response.status_code}")
            body = response_read_capped(response, limit)
    except ResponseTooLarge as exc:
        raise PriceFetchError(str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise PriceFetchError(f"models endpoint timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise PriceFetchError(f"models endpoint unreachable: {exc}") from exc
    finally:
        if own:
            client.close()
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_constant)
    except (ValueError, RecursionError) as exc:
        raise PriceFetchError(f"answer is not JSON: {str(exc)[:200]}") from exc


def _constant(name: str) -> Decimal:
    """NaN, Infinity, -Infinity (Python's json accepts them): refused per price, later."""
    return Decimal(name)


def entries_parse(body: Any) -> list[PriceEntry]:
    """The entries of a `{"data": [...]}` answer; raises PriceFetchError if it has no list."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise PriceFetchError("answer has no `data` list")
    entries, seen = [], set()
    for item in data:
        model_id = item.get("id") if isinstance(item, dict) else None
        # A longer id matches no mapping (provider_model has 255 characters): never cut it,
        # or it could match one that it is not.
        if not isinstance(model_id, str) or not 0 < len(model_id) <= 255:
            continue
        entry = PriceEntry(model_id=model_id)
        if model_id in seen:
            entry.problems.append("listed more than once; the first entry counts")
            entries.append(entry)
            continue
        seen.add(model_id)
        pricing = item.get("pricing")
        if not isinstance(pricing, dict):
            entry.problems.append("pricing missing or not an object")
        else:
            entry.input_nanousd_per_mtok = _price(entry, "input", pricing.get("input"))
            entry.output_nanousd_per_mtok = _price(entry, "output", pricing.get("output"))
        entry.context_length = _context(entry, item.get("context_length"))
        entries.append(entry)
    return entries


def _price(entry: PriceEntry, name: str, value: Any) -> int | None:
    if value is None:
        entry.problems.append(f"{name} price missing or null")
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        entry.problems.append(f"{name} price is not a number ({type(value).__name__})")
        return None
    if not Decimal(value).is_finite():
        entry.problems.append(f"{name} price is not a finite number ({value})")
        return None
    try:
        nano = Decimal(value) * NANO_PER_USD
        exact = nano.to_integral_value(rounding=ROUND_HALF_UP)
    except DecimalException:  # beyond the context's exponent range
        entry.problems.append(f"{name} price is absurd ({str(value)[:40]})")
        return None
    if nano < 0:
        entry.problems.append(f"{name} price is negative ({value})")
        return None
    if nano > settings.PRICE_SYNC_MAX_NANOUSD_PER_MTOK:
        entry.problems.append(f"{name} price is absurd ({value} USD per million tokens)")
        return None
    if exact != nano:
        entry.problems.append(f"{name} price {value} rounded to {exact} nano-USD per Mtok")
    return int(exact)


def _context(entry: PriceEntry, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        entry.problems.append(f"context_length is not a positive integer ({str(value)[:40]})")
        return None
    return value
