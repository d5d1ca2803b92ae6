"""Billing's async port: everything the router (async psycopg, outside the ORM) does to billing
tables goes through these functions, on an `AsyncConnection` the router passes in.

The router holds no billing SQL. The statements shared with a synchronous writer are defined
once beside it and imported here by name (`billing.usage_row.USAGE_ROW_INSERT_SQL`,
`billing.limits.BALANCES_SQL`); the rest is defined here. Rows are read by column name
(`dict_row` / `class_row`) and enum values are bound as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row

from billing.limits import (
    BALANCES_SPEND_SQL,
    BALANCES_SQL,
    Decision,
    PayerTerms,
    decide,
    state_from_row,
    state_params,
)
from billing.usage_row import (
    HEALTH_COUNT_SQL,
    RETURNING_KEY,
    STORED_ROWS_SQL,
    USAGE_ROW_INSERT_SQL,
    UsageRow,
    health_counts,
    reused_rows,
    split_repeated_keys,
    usage_row_params,
)

# Successes without a request-ID header, counted against each provider (one id per answer).
MISSING_REQUEST_IDS_SQL = HEALTH_COUNT_SQL["missing_request_ids_total"]
# The billing account of a user or an organization.
PAYER_SQL = {
    "user": "SELECT id FROM billing_billingaccount WHERE user_id = %s",
    "org": "SELECT id FROM billing_billingaccount WHERE organization_id = %s",
}
# Serializes the checks of one payer, so that reservations see each other.
LOCK_PAYER_SQL = "SELECT id FROM billing_billingaccount WHERE id = %(payer)s FOR UPDATE"
RESERVE_SQL = """
INSERT INTO billing_inflight (payer_id, estimated_cost_nanousd, created_at, expires_at)
VALUES (%(payer)s, %(estimate)s, %(now)s, %(expires)s) RETURNING id
"""
RELEASE_SQL = "DELETE FROM billing_inflight WHERE id = ANY(%s)"
# A reservation whose router stops refreshing it (`reservations_refresh`: it died) stops
# counting this long after its last refresh.
IN_FLIGHT_TTL = timedelta(minutes=15)
REFRESH_SQL = "UPDATE billing_inflight SET expires_at = %(expires)s WHERE id = ANY(%(ids)s)"


@dataclass(frozen=True, slots=True)
class _Id:
    id: int


async def usage_rows_insert(conn: AsyncConnection, rows: Sequence[UsageRow]) -> None:
    """Writes usage rows (one pipelined round trip), idempotent on (provider, request ID): a
    row whose key is taken by the same request (a retry) writes nothing; by another request
    (the provider reused an ID), it is stored under a key of its own and counted in billing
    health (`billing.usage_row.reused_rows`), as are request IDs too long to store."""
    if not rows:
        return
    first, repeated = split_repeated_keys(rows)
    async with conn.cursor() as cursor:
        await cursor.executemany(USAGE_ROW_INSERT_SQL, [usage_row_params(r) for r in first])
        # Every row new (the usual case): nothing to compare, no second round trip.
        conflicted = [*first, *repeated] if cursor.rowcount < len(rows) else []
        reused = []
        if conflicted:
            async with conn.cursor(row_factory=dict_row) as stored_cursor:
                await stored_cursor.execute(
                    STORED_ROWS_SQL,
                    ([r.provider_id for r in conflicted], [r.request_id for r in conflicted]),
                )
                stored = await stored_cursor.fetchall()
            reused = reused_rows(rows, conflicted, stored)
            if reused:  # rare: RETURNING tells which are new (a retry's are not)
                await cursor.executemany(
                    USAGE_ROW_INSERT_SQL + RETURNING_KEY,
                    [usage_row_params(r) for r in reused],
                    returning=True,
                )
                new = set()
                while True:
                    new.update(key for (key,) in await cursor.fetchall())
                    if not cursor.nextset():
                        break
                reused = [r for r in reused if r.request_id in new]
        for column, provider_ids in health_counts([*rows, *reused]).items():
            if provider_ids:
                await cursor.execute(HEALTH_COUNT_SQL[column], (provider_ids,))


async def missing_request_ids_count(conn: AsyncConnection, *, provider_ids: Sequence[int]) -> None:
    """Counts one success without a request ID per element of `provider_ids` (repeat a
    provider's id once per answer) in each provider's billing health."""
    if provider_ids:
        await conn.execute(MISSING_REQUEST_IDS_SQL, (list(provider_ids),))


async def payer_id_get(conn: AsyncConnection, *, user_id: int, org_id: int | None) -> int | None:
    """The billing account id of the organization `org_id` if given, else of the user; None if
    it has none yet (create it with `billing.services.billing_account_id_get_or_create`)."""
    kind, owner = ("org", org_id) if org_id is not None else ("user", user_id)
    async with conn.cursor(row_factory=class_row(_Id)) as cursor:
        await cursor.execute(PAYER_SQL[kind], (owner,))
        row = await cursor.fetchone()
    return row.id if row else None


async def payer_reserve(
    conn: AsyncConnection,
    *,
    terms: PayerTerms,
    estimate_nanousd: int,
    now: datetime,
    ttl: timedelta = IN_FLIGHT_TTL,
    replaces: int | None = None,
) -> tuple[Decision, int | None]:
    """The router's check (`billing.limits.decide`) for a request whose upper bound is
    `estimate_nanousd`: the decision and, for a bounded payer (every payer but
    `terms.always_allowed`), the id of the in-flight reservation of that bound it holds (keep
    it alive with `reservations_refresh`, release it with `reservations_release` in the
    transaction that records the usage). `replaces`: a reservation of the same request to
    drop first (fail-over to a provider with other prices re-estimates).

    The payer is locked for the check, so concurrent requests are decided one after the other
    and each sees the reservations of the ones before it. One transaction, four statements."""
    if terms.always_allowed:
        return decide(terms, None), None
    params = state_params(terms.payer_id, now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(LOCK_PAYER_SQL, params)
        if replaces is not None:
            await cursor.execute(RELEASE_SQL, ([replaces],))
        await cursor.execute(BALANCES_SPEND_SQL if terms.with_spend else BALANCES_SQL, params)
        state = state_from_row(terms, await cursor.fetchone())
        estimate = max(estimate_nanousd, 0)
        decision = decide(terms, state, estimate_nanousd=estimate)
        if not decision.allowed:
            return decision, None
        await cursor.execute(RESERVE_SQL, {**params, "estimate": estimate, "expires": now + ttl})
        reservation = await cursor.fetchone()
    return decision, reservation["id"]


async def reservations_refresh(
    conn: AsyncConnection, *, reservation_ids: Sequence[int], expires_at: datetime
) -> None:
    """Moves the expiry of these in-flight reservations (requests still being served, streams
    included) to `expires_at`: one statement for all of them."""
    if reservation_ids:
        await conn.execute(REFRESH_SQL, {"ids": list(reservation_ids), "expires": expires_at})


async def reservations_release(conn: AsyncConnection, *, reservation_ids: Sequence[int]) -> None:
    """Deletes these in-flight reservations (their requests were recorded or never started)."""
    if reservation_ids:
        await conn.execute(RELEASE_SQL, (list(reservation_ids),))
