"""The router's async port to accounts: who a token belongs to, and their organizations.

Owns its SQL and its row mapping: columns bind by name into the dataclasses below (psycopg's
`class_row`), so adding a column cannot shift a field, and enum values are parameters, never
literals. The router keeps the results in its caches (`router.store`); the rules it applies to
them are `accounts.rules`, the same functions the API calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import class_row


@dataclass(frozen=True, slots=True)
class CallerRow:
    token_id: int
    token_role: str
    token_permissions: list[str]
    token_revoked: bool
    user_id: int
    username: str
    user_active: bool
    plan: str
    provider_order: list[str]


@dataclass(frozen=True, slots=True)
class OrgRow:
    id: int
    name: str
    plan: str
    seats: int
    spending_limit_nanousd: int | None
    disabled_providers: list[str]


_CALLER_SQL = """
SELECT t.id AS token_id, t.role AS token_role, t.permissions AS token_permissions,
       t.revoked_at IS NOT NULL AS token_revoked, u.id AS user_id, u.username,
       u.is_active AS user_active, u.plan, u.provider_order
FROM accounts_accesstoken t JOIN accounts_user u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s
"""
_ORGANIZATIONS_SQL = """
SELECT o.id, o.name, o.plan, o.seats, o.spending_limit_nanousd, o.disabled_providers
FROM accounts_membership m JOIN accounts_organization o ON o.id = m.organization_id
WHERE m.user_id = %(user_id)s
"""
# `accounts.services.access_token_touch` for many tokens at once (the router's group commit).
_TOKENS_TOUCH_SQL = """
UPDATE accounts_accesstoken SET last_used_at = %(now)s
WHERE id = ANY(%(token_ids)s) AND (last_used_at IS NULL OR last_used_at < %(stale_before)s)
"""


async def caller_get(conn: AsyncConnection, *, token_hash: str) -> CallerRow | None:
    """The token with this hash and its user, or None."""
    async with conn.cursor(row_factory=class_row(CallerRow)) as cursor:
        await cursor.execute(_CALLER_SQL, {"token_hash": token_hash})
        return await cursor.fetchone()


async def organizations_of(conn: AsyncConnection, *, user_id: int) -> list[OrgRow]:
    """The organizations the user is a member of."""
    async with conn.cursor(row_factory=class_row(OrgRow)) as cursor:
        await cursor.execute(_ORGANIZATIONS_SQL, {"user_id": user_id})
        return await cursor.fetchall()


async def tokens_touch(
    conn: AsyncConnection, *, token_ids: Sequence[int], now: datetime, stale_before: datetime
) -> None:
    """Records the tokens' last use, skipping those written since `stale_before`."""
    await conn.execute(
        _TOKENS_TOUCH_SQL,
        {"now": now, "token_ids": list(token_ids), "stale_before": stale_before},
    )
