"""The simulator's cost endpoint, as pure functions a caller can reproduce.

Costs depend on the request ID alone, never on whether the simulator issued it, so a test or a
benchmark can fabricate IDs (`sim-<slug>-<anything>`) and know the expected answer:

    cost_nanousd(request_id) = 1_000 + int(sha256(request_id).hexdigest()[:8], 16) % 2_000_000

(sha256 of the UTF-8 bytes; the result is always an integer in [1_000, 2_000_999] nano-USD.)

Fraction-based faults pick their victims with `affected(request_id, fraction, salt)`, where
`salt` is the switch name (`"negative_costs"`, `"withheld"`, ...): the first 8 hex digits of
sha256(`<salt>:<request_id>`), read as a number in [0, 1), are compared with the fraction. So a
test can predict exactly which IDs a switch hits, and different switches hit different IDs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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

_SCALE = 2**32


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


def id_prefix(slug: str) -> str:
    """IDs starting with this prefix belong to the provider `slug`."""
    return f"sim-{slug}-"


def unasked_id(slug: str, n: int) -> str:
    """The n-th (0-based) ID that the `unasked_ids` switch adds to answers of `slug`."""
    return id_prefix(slug) + hashlib.sha256(f"unasked:{slug}:{n}".encode()).hexdigest()[:24]


def cost_entries(slug: str, request_ids: Iterable[str], faults: Faults) -> list[dict[str, Any]]:
    """The `requests` list of a cost answer for the (deduplicated) asked IDs.

    IDs that do not start with `sim-<slug>-` are left out (unknown to this provider). The
    per-ID corruption switches apply in the order of `COST_CORRUPTIONS`; `duplicate_ids` then
    appends, after all regular entries, a second copy of each hit ID whose cost is twice the
    true one; `unasked_ids` appends entries for IDs nobody asked for (see `unasked_id`).
    """
    prefix = id_prefix(slug)
    mine = [rid for rid in request_ids if rid.startswith(prefix)]
    if faults.fixed_cost_nanousd:
        return [{"requestId": rid, "costNanoUsd": faults.fixed_cost_nanousd} for rid in mine]
    active = [(name, getattr(faults, name)) for name in COST_CORRUPTIONS if getattr(faults, name)]
    if not active:
        entries = [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)} for rid in mine]
    else:
        entries = []
        for rid in mine:
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
