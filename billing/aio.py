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
from billing.usage_row import USAGE_ROW_INSERT_SQL, UsageRow, usage_row_params

# Successes without a request-ID header, counted against each provider (one id per answer).
MISSING_REQUEST_IDS_SQL = """
INSERT INTO billing_providerbillinghealth (provider_id, last_error, consecutive_failures,
    invalid_costs_total, unknown_ids_total, missing_request_ids_total)
SELECT provider_id, '', 0, 0, 0, count(*) FROM unnest(%s::bigint[]) AS t(provider_id)
GROUP BY provider_id
ON CONFLICT (provider_id) DO UPDATE SET missing_request_ids_total =
    billing_providerbillinghealth.missing_request_ids_total + EXCLUDED.missing_request_ids_total
"""
# The billing account of a user or an organization.
PAYER_SQL = {
    "user": "SELECT id FROM billing_billingaccount WHERE user_id = %s",
    "org": "SELECT id FROM billing_billingaccount WHERE organization_id = %s",
}
# Serializes limit checks of one payer, so that reservations see each other.
LOCK_PAYER_SQL = "SELECT id FROM billing_billingaccount WHERE id = %(payer)s FOR UPDATE"
RESERVE_SQL = """
INSERT INTO billing_inflight (payer_id, estimated_cost_nanousd, created_at, expires_at)
VALUES (%(payer)s, %(estimate)s, %(now)s, %(expires)s) RETURNING id
"""
RELEASE_SQL = "DELETE FROM billing_inflight WHERE id = ANY(%s)"
# A request still in flight after this long no longer counts (its router probably died).
IN_FLIGHT_TTL = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class _Id:
    id: int


async def usage_rows_insert(conn: AsyncConnection, rows: Sequence[UsageRow]) -> None:
    """Writes usage rows (one pipelined round trip), idempotent on (provider, request ID)."""
    if rows:
        async with conn.cursor() as cursor:
            await cursor.executemany(USAGE_ROW_INSERT_SQL, [usage_row_params(r) for r in rows])


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
    conn: AsyncConnection, *, terms: PayerTerms, estimate_nanousd: int, now: datetime
) -> tuple[Decision, int | None]:
    """The router's check (`billing.limits.decide`): the decision and, for a payer with a
    spending limit, the id of the in-flight reservation of `estimate_nanousd` it holds
    (release it with `reservations_release` in the transaction that records the usage).

    A payer with a limit is locked for the check, so concurrent requests are decided one after
    the other and each sees the reservations of the ones before it: the limit can be passed by
    at most one request's cost (the last one allowed)."""
    if terms.always_allowed:
        return decide(terms, None), None
    with_spend = terms.limit_nanousd is not None
    params = state_params(terms.payer_id, now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        if with_spend:
            await cursor.execute(LOCK_PAYER_SQL, params)
        await cursor.execute(BALANCES_SPEND_SQL if with_spend else BALANCES_SQL, params)
        decision = decide(terms, state_from_row(terms, await cursor.fetchone()))
        if not (decision.allowed and with_spend):
            return decision, None
        await cursor.execute(
            RESERVE_SQL,
            {**params, "estimate": max(estimate_nanousd, 0), "expires": now + IN_FLIGHT_TTL},
        )
        reservation = await cursor.fetchone()
    return decision, reservation["id"]


async def reservations_release(conn: AsyncConnection, *, reservation_ids: Sequence[int]) -> None:
    """Deletes these in-flight reservations (their requests were recorded or never started)."""
    if reservation_ids:
        await conn.execute(RELEASE_SQL, (list(reservation_ids),))
