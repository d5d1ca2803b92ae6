"""Fault switches of one simulated provider, and their validation.

A PUT of `/<slug>/_sim/faults` replaces all switches with `parse_faults(body)`; every switch
is optional and its default means "behave normally". See `simulator.app` for what each does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Scope = Literal["chat", "models", "costs", "all"]

SCOPES: tuple[str, ...] = ("chat", "models", "costs", "all")
FRACTION_SWITCHES: tuple[str, ...] = (
    "negative_costs",
    "float_costs",
    "string_costs",
    "missing_costs",
    "null_costs",
    "duplicate_ids",
    "withheld",
    "hostile_cost_fraction",
)
HOSTILE_COSTS: tuple[str, ...] = ("overflow", "huge_exponent", "deep", "absurd")
"""Values of `hostile_cost`: what the hit entries get as `costNanoUsd` (see simulator.costs)."""
BOMB_ENCODINGS: tuple[str, ...] = ("gzip", "deflate", "identity", "unsupported")
"""Values of `bomb_encoding`: how a `bomb_mb` answer is encoded (see simulator.bombs)."""
MODELS_BAD: tuple[str, ...] = ("missing_pricing", "negative", "string", "absurd", "not_json")
"""Values of `models_bad`: how `/v1/models` is broken (see simulator.app)."""
BOOL_SWITCHES: tuple[str, ...] = (
    "timeout",
    "requests_null",
    "garbage_body",
    "omit_request_id_header",
)
INT_SWITCHES: dict[str, tuple[int, int]] = {  # name: (min, max), inclusive
    "latency_ms": (0, 600_000),
    "chunk_delay_ms": (0, 60_000),
    "error_status": (400, 599),
    "unasked_ids": (0, 100_000),
    "huge_body_mb": (0, 512),
    "fixed_cost_nanousd": (0, 10**15),
    "break_stream_after": (0, 100_000),
    "bomb_mb": (0, 4096),
    "redirect_status": (300, 399),
}
DEFAULT_REQUEST_ID_HEADER = "Inference-Id"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,256}\Z")
_CONTENT_TYPE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,255}\Z")
_REDIRECT = re.compile(r"^https?://[\x21-\x7e]{1,2000}\Z")


class FaultError(ValueError):
    """A fault switch with a bad name or value; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Faults:
    """The switches of one provider (defaults: no fault)."""

    latency_ms: int = 0
    chunk_delay_ms: int = 0
    error_status: int = 0
    error_on: Scope = "all"
    timeout: bool = False
    negative_costs: float = 0.0
    float_costs: float = 0.0
    string_costs: float = 0.0
    missing_costs: float = 0.0
    null_costs: float = 0.0
    duplicate_ids: float = 0.0
    withheld: float = 0.0
    hostile_cost: str = ""
    hostile_cost_fraction: float = 0.0
    hostile_cost_prefix: str = ""
    unasked_ids: int = 0
    requests_null: bool = False
    garbage_body: bool = False
    huge_body_mb: int = 0
    fixed_cost_nanousd: int = 0
    break_stream_after: int = 0
    omit_request_id_header: bool = False
    request_id_header: str = DEFAULT_REQUEST_ID_HEADER
    api_key: str | None = None
    redirect_to: str = ""
    redirect_status: int = 302
    bomb_mb: int = 0
    bomb_encoding: str = "gzip"
    chat_content_type: str = ""
    models_bad: str = ""
    given: dict[str, Any] = field(default_factory=dict, compare=False)
    """The switches as they were set (what GET returns)."""

    def applies_to(self, endpoint: Scope) -> bool:
        """Whether `error_status` and `timeout` apply to this endpoint."""
        return self.error_on in ("all", endpoint)


def parse_faults(body: Any) -> Faults:
    """Validates a switch object; raises FaultError naming the first bad switch."""
    if not isinstance(body, dict):
        raise FaultError("body", "must be a JSON object of switches")
    values: dict[str, Any] = {}
    for name, value in body.items():
        values[name] = _parse_one(name, value)
    _check_hostile(values)
    return Faults(**values, given=dict(values))


def _check_hostile(values: dict[str, Any]) -> None:
    """`hostile_cost` says what, `hostile_cost_fraction` / `hostile_cost_prefix` which IDs:
    one without the other is refused rather than silently doing nothing."""
    selects = values.get("hostile_cost_fraction") or values.get("hostile_cost_prefix")
    if values.get("hostile_cost") and not selects:
        raise FaultError(
            "hostile_cost_fraction",
            "hostile_cost needs hostile_cost_fraction (> 0) or hostile_cost_prefix",
        )
    if selects and not values.get("hostile_cost"):
        raise FaultError("hostile_cost", f"must be one of {', '.join(HOSTILE_COSTS)}")


def _parse_one(name: str, value: Any) -> Any:
    if name in FRACTION_SWITCHES:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise FaultError(name, "must be a number between 0 and 1 (a fraction of the ids)")
        return float(value)
    if name in BOOL_SWITCHES:
        if not isinstance(value, bool):
            raise FaultError(name, "must be true or false")
        return value
    if name in INT_SWITCHES:
        low, high = INT_SWITCHES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FaultError(name, f"must be an integer between {low} and {high}")
        return value
    if name == "error_on":
        if value not in SCOPES:
            raise FaultError(name, f"must be one of {', '.join(SCOPES)}")
        return value
    if name == "hostile_cost":
        if value not in HOSTILE_COSTS:
            raise FaultError(name, f"must be one of {', '.join(HOSTILE_COSTS)}")
        return value
    if name == "bomb_encoding":
        if value not in BOMB_ENCODINGS:
            raise FaultError(name, f"must be one of {', '.join(BOMB_ENCODINGS)}")
        return value
    if name == "models_bad":
        if value not in MODELS_BAD:
            raise FaultError(name, f"must be one of {', '.join(MODELS_BAD)}")
        return value
    if name == "redirect_to":
        if not isinstance(value, str) or not _REDIRECT.match(value):
            raise FaultError(name, "must be an http:// or https:// URL (printable, no spaces)")
        return value
    if name == "chat_content_type":
        if not isinstance(value, str) or not _CONTENT_TYPE.match(value):
            raise FaultError(name, "must be a header value of 1-256 printable characters")
        return value
    if name == "hostile_cost_prefix":
        if not isinstance(value, str) or not _PRINTABLE.match(value):
            raise FaultError(name, "must be 1-256 printable ASCII characters without spaces")
        return value
    if name == "request_id_header":
        if not isinstance(value, str) or not _HEADER_NAME.match(value):
            raise FaultError(name, "must be an HTTP header name (1-64 token characters)")
        return value
    if name == "api_key":
        if not isinstance(value, str) or not _PRINTABLE.match(value):
            raise FaultError(name, "must be 1-256 printable ASCII characters without spaces")
        return value
    raise FaultError(name, "unknown fault switch")
