"""The simulator's cost endpoint, as pure functions a caller can reproduce.

Costs depend on the request ID alone, never on whether the simulator issued it, so a test or a
benchmark can fabricate IDs (`sim-<slug>-<anything>`) and know the expected answer:

    cost_nanousd(request_id) = 1_000 + int(sha256(request_id).hexdigest()[:8], 16) % 2_000_000

(sha256 of the UTF-8 bytes; the result is always an integer in [1_000, 2_000_999] nano-USD.)

Fraction-based faults pick their victims with `affected(request_id, fraction, salt)`, where
`salt` is the switch name (`"negative_costs"`, `"withheld"`, ...): the first 8 hex digits of
sha256(`<salt>:<request_id>`), read as a number in [0, 1), are compared with the fraction. So a
test can predict exactly which IDs a switch hits, and different switches hit different IDs.

`hostile_cost` answers, for the IDs it hits, a cost no well-behaved provider sends and no
`json.dumps` of a Python value produces (`1e1000000`, a 10,000-deep array): such a cost is a
`RawJson` in the entry, spliced into the answer as is by `entries_json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from simulator.faults import Faults

MAX_IDS_PER_REQUEST = 10_000
"""The cost endpoint answers 413 when asked for more IDs than this in one request."""

COST_CORRUPTIONS = (
    "withheld",
    "missing_costs",
    "null_costs",
    "string_costs",
    "float_costs",
    "negative_costs",
)
"""Per-ID corruption switches, in precedence order: an ID hit by several gets the first."""

HOSTILE_DEPTH = 10_000
HOSTILE_COST_JSON: dict[str, str] = {
    "overflow": str(2**63),  # one past the largest signed 64-bit integer
    "huge_exponent": "1e1000000",  # 9 characters; converting it exactly takes most of a minute
    "deep": "[" * HOSTILE_DEPTH + "]" * HOSTILE_DEPTH,  # an array 10**4 levels deep
    "absurd": str(10**17),  # $100,000,000: a plausible integer, an impossible request cost
}
"""The raw JSON text of `costNanoUsd` for each value of the `hostile_cost` switch."""

_SCALE = 2**32


@dataclass(frozen=True, slots=True)
class RawJson:
    """JSON text put into the answer as written (never through json.dumps)."""

    text: str


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def entries_json(entries: list[dict[str, Any]]) -> bytes:
    """The JSON text of a `requests` list, with any `RawJson` cost spliced in as written."""
    if not any(isinstance(entry.get("costNanoUsd"), RawJson) for entry in entries):
        return _dumps(entries)
    parts = []
    for entry in entries:
        cost = entry.get("costNanoUsd")
        if isinstance(cost, RawJson):
            rid = _dumps(entry["requestId"])
            parts.append(b'{"requestId":' + rid + b',"costNanoUsd":' + cost.text.encode() + b"}")
        else:
            parts.append(_dumps(entry))
    return b"[" + b",".join(parts) + b"]"


def cost_nanousd(request_id: str) -> int:
    """The (well-formed) cost of a request, in nano-USD, from its ID alone."""
    # int.from_bytes of the first 4 digest bytes == int(hexdigest()[:8], 16), only faster.
    head = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big")
    return 1_000 + head % 2_000_000


def affected(request_id: str, fraction: float, salt: str) -> bool:
    """Whether a fraction-based fault named `salt` hits `request_id`.

    `fraction` 0 hits nothing and 1 hits everything; in between, about that share of IDs.
    """
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    head = int.from_bytes(hashlib.sha256(f"{salt}:{request_id}".encode()).digest()[:4], "big")
    return head < fraction * _SCALE


def hostile_hit(request_id: str, faults: Faults) -> bool:
    """Whether `hostile_cost` hits this ID: it starts with `hostile_cost_prefix`, or
    `affected(request_id, hostile_cost_fraction, "hostile_cost")`."""
    if not faults.hostile_cost:
        return False
    prefix = faults.hostile_cost_prefix
    if prefix and request_id.startswith(prefix):
        return True
    return affected(request_id, faults.hostile_cost_fraction, "hostile_cost")


def id_prefix(slug: str) -> str:
    """IDs starting with this prefix belong to the provider `slug`."""
    return f"sim-{slug}-"


def unasked_id(slug: str, n: int) -> str:
    """The n-th (0-based) ID that the `unasked_ids` switch adds to answers of `slug`."""
    return id_prefix(slug) + hashlib.sha256(f"unasked:{slug}:{n}".encode()).hexdigest()[:24]


def cost_entries(slug: str, request_ids: Iterable[str], faults: Faults) -> list[dict[str, Any]]:
    """The `requests` list of a cost answer for the (deduplicated) asked IDs.

    IDs that do not start with `sim-<slug>-` are left out (unknown to this provider). An ID hit
    by `hostile_cost` gets its `RawJson` cost (before any other switch); the
    per-ID corruption switches apply in the order of `COST_CORRUPTIONS`; `duplicate_ids` then
    appends, after all regular entries, a second copy of each hit ID whose cost is twice the
    true one; `unasked_ids` appends entries for IDs nobody asked for (see `unasked_id`).
    """
    prefix = id_prefix(slug)
    mine = [rid for rid in request_ids if rid.startswith(prefix)]
    if faults.fixed_cost_nanousd:
        return [{"requestId": rid, "costNanoUsd": faults.fixed_cost_nanousd} for rid in mine]
    active = [(name, getattr(faults, name)) for name in COST_CORRUPTIONS if getattr(faults, name)]
    hostile = HOSTILE_COST_JSON.get(faults.hostile_cost)
    if not active and hostile is None:
        entries = [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)} for rid in mine]
    else:
        entries = []
        for rid in mine:
            if hostile is not None and hostile_hit(rid, faults):
                entries.append({"requestId": rid, "costNanoUsd": RawJson(hostile)})
                continue
            entry = _corrupted_entry(rid, active)
            if entry is not None:
                entries.append(entry)
    if faults.duplicate_ids:
        answered = [entry["requestId"] for entry in entries]
        entries.extend(
            {"requestId": rid, "costNanoUsd": 2 * cost_nanousd(rid)}
            for rid in answered
            if affected(rid, faults.duplicate_ids, "duplicate_ids")
        )
    entries.extend(
        {"requestId": (rid := unasked_id(slug, n)), "costNanoUsd": cost_nanousd(rid)}
        for n in range(faults.unasked_ids)
    )
    return entries


def _corrupted_entry(request_id: str, active: list[tuple[str, float]]) -> dict[str, Any] | None:
    """One entry under the active corruption switches; None when the ID is withheld."""
    cost = cost_nanousd(request_id)
    for name, fraction in active:
        if not affected(request_id, fraction, name):
            continue
        if name == "withheld":
            return None
        if name == "missing_costs":
            return {"requestId": request_id}
        if name == "null_costs":
            return {"requestId": request_id, "costNanoUsd": None}
        if name == "string_costs":
            return {"requestId": request_id, "costNanoUsd": str(cost)}
        if name == "float_costs":
            return {"requestId": request_id, "costNanoUsd": cost + 0.5}
        return {"requestId": request_id, "costNanoUsd": -cost}  # negative_costs
    return {"requestId": request_id, "costNanoUsd": cost}
