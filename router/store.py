"""The router's data: an async PostgreSQL pool (psycopg 3) and short-lived in-process caches.

The hot path reads who the token belongs to, the model's candidate providers and the
providers' settings. Each is cached for ROUTER_CACHE_TTL_S seconds (default 5): a revoked
token, a new mapping or a changed organization setting takes effect within that time. Usage
records are written by `UsageWriter`, which commits the records of concurrent requests
together (group commit) and lets each request continue only once its record is durable.
Spending-limit reservations of the requests in progress are kept alive by one UPDATE every
ROUTER_RESERVATION_REFRESH_S (`Store._refresh_reservations`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from accounts import aio as accounts_aio
from accounts.aio import OrgRow
from accounts.tokens import token_hash
from billing import aio as billing_aio
from billing import limits
from billing.usage_row import UsageRow
from registry import aio as registry_aio
from registry.aio import ModelCandidates, ProviderRow

logger = logging.getLogger("router")


def conninfo() -> str:
    db = settings.DATABASES["default"]
    return make_conninfo(
        dbname=db["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=str(db.get("PORT") or "") or None,
        application_name="router",
    )


class TTLCache:
    """A dict whose entries expire; concurrent misses of one key share one load."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._data: dict[Any, tuple[float, Any]] = {}
        self._loading: dict[Any, asyncio.Future] = {}

    async def get(self, key, load: Callable[[], Coroutine[Any, Any, Any]]):
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(value)
        if self.ttl_s > 0:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (now + self.ttl_s, value)
        return value


@dataclass(frozen=True)
class Caller:
    """A token, its user, the user's organizations and own provider keys: what the router
    caches per token (rows of the accounts and registry ports)."""

    token_id: int
    token_role: str
    token_permissions: tuple[str, ...]
    revoked: bool
    user_id: int
    username: str
    user_active: bool
    plan: str
    provider_order: tuple[str, ...]
    orgs: dict[str, OrgRow] = field(default_factory=dict)  # lower-case name -> organization
    keys: dict[int, str] = field(default_factory=dict)  # provider id -> the user's own key

    @property
    def org_ids(self) -> frozenset[int]:
        return frozenset(o.id for o in self.orgs.values())


class Store:
    def __init__(self) -> None:
        ttl = settings.ROUTER_CACHE_TTL_S
        self.pool = AsyncConnectionPool(
            conninfo(),
            min_size=1,
            max_size=settings.ROUTER_DB_POOL_MAX_SIZE,
            open=False,
            kwargs={"autocommit": True},
        )
        self.callers = TTLCache(ttl)
        self.models = TTLCache(ttl)
        self.provider_models = TTLCache(ttl)
        self.providers = TTLCache(ttl)
        self.payers = TTLCache(3600.0)
        self.writer = UsageWriter(self)
        # Spending-limit reservations of requests this process is serving: kept alive by
        # `_refresh_reservations` until their request ends.
        self.live_reservations: set[int] = set()
        self._refresher: asyncio.Task | None = None

    async def open(self) -> None:
        await self.pool.open(wait=True)
        self.writer.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_reservations())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.writer.stop()
        await self.pool.close()

    async def caller(self, secret: str) -> Caller | None:
        digest = token_hash(secret)

        async def load() -> Caller | None:
            async with self.pool.connection() as conn:
                row = await accounts_aio.caller_get(conn, token_hash=digest)
                if row is None:
                    return None
                orgs = await accounts_aio.organizations_of(conn, user_id=row.user_id)
                keys = await registry_aio.provider_keys_of(conn, user_id=row.user_id)
            return Caller(
                token_id=row.token_id,
                token_role=row.token_role,
                token_permissions=tuple(row.token_permissions),
                revoked=row.token_revoked,
                user_id=row.user_id,
                username=row.username,
                user_active=row.user_active,
                plan=row.plan,
                provider_order=tuple(row.provider_order),
                orgs={o.name.lower(): o for o in orgs},
                keys=keys,
            )

        return await self.callers.get(digest, load)

    async def provider_table(self) -> dict[str, ProviderRow]:
        async def load() -> dict[str, ProviderRow]:
            async with self.pool.connection() as conn:
                return await registry_aio.providers_all(conn)

        return await self.providers.get("all", load)

    async def hub_model(self, model_id: str) -> ModelCandidates | None:
        async def load() -> ModelCandidates | None:
            async with self.pool.connection() as conn:
                return await registry_aio.chat_candidates(conn, model_id=model_id)

        return await self.models.get(model_id, load)

    async def provider_model(self, provider: ProviderRow, provider_model: str) -> ModelCandidates:
        async def load() -> ModelCandidates:
            async with self.pool.connection() as conn:
                return await registry_aio.chat_candidates_by_provider_model(
                    conn, provider_id=provider.id, provider_model=provider_model
                )

        return await self.provider_models.get((provider.id, provider_model), load)

    async def payer_id(self, *, user_id: int, org_id: int | None) -> int:
        async def load() -> int:
            async with self.pool.connection() as conn:
                payer = await billing_aio.payer_id_get(conn, user_id=user_id, org_id=org_id)
            if payer is not None:
                return payer
            return await sync_to_async(_create_billing_account, thread_sensitive=False)(
                user_id=user_id, org_id=org_id
            )

        # An organization's account is shared by its members: one cache entry for all of them.
        key = ("org", org_id) if org_id is not None else ("user", user_id)
        return await self.payers.get(key, load)

    async def reserve(
        self, terms: limits.PayerTerms, estimate: int, *, replaces: int | None = None
    ) -> tuple[limits.Decision, int | None]:
        """The payer's check and reservation (`billing.aio.payer_reserve`); `replaces` is
        dropped in the same transaction. A reservation is kept alive until
        `reservation_done` or `release`."""
        if terms.always_allowed:
            return limits.decide(terms, None), None
        self.live_reservations.discard(replaces)
        async with self.pool.connection() as conn:
            decision, reservation = await billing_aio.payer_reserve(
                conn,
                terms=terms,
                estimate_nanousd=estimate,
                now=datetime.now(UTC),
                ttl=timedelta(seconds=settings.ROUTER_RESERVATION_TTL_S),
                replaces=replaces,
            )
        if reservation is not None:
            self.live_reservations.add(reservation)
        return decision, reservation

    def reservation_done(self, reservation_id: int) -> None:
        """The reservation was released with its usage record: stop refreshing it."""
        self.live_reservations.discard(reservation_id)

    async def release(self, reservation_id: int) -> None:
        self.live_reservations.discard(reservation_id)
        async with self.pool.connection() as conn:
            await billing_aio.reservations_release(conn, reservation_ids=[reservation_id])

    async def _refresh_reservations(self) -> None:
        """Every ROUTER_RESERVATION_REFRESH_S, moves the expiry of all live reservations
        ROUTER_RESERVATION_TTL_S ahead in one UPDATE: a request (a stream) counts as long as it
        runs, and a dead router's reservations expire within the TTL."""
        while True:
            await asyncio.sleep(settings.ROUTER_RESERVATION_REFRESH_S)
            ids = sorted(self.live_reservations)
            if not ids:
                continue
            expires_at = datetime.now(UTC) + timedelta(seconds=settings.ROUTER_RESERVATION_TTL_S)
            try:
                async with self.pool.connection() as conn:
                    await billing_aio.reservations_refresh(
                        conn, reservation_ids=ids, expires_at=expires_at
                    )
            except Exception:  # the database may be restarting: the next round retries
                logger.exception("router: reservations not refreshed")


def _create_billing_account(*, user_id: int, org_id: int | None) -> int:
    """The payer's billing account, created with its pools on its first request (sync: the
    billing service runs in the ORM)."""
    from billing.services import billing_account_id_get_or_create

    return billing_account_id_get_or_create(user_id=user_id, organization_id=org_id)


@dataclass
class _Pending:
    row: UsageRow
    reservation_id: int | None
    token_id: int | None
    missing_request_id: bool  # a success without the provider's request-ID header
    done: asyncio.Future


class UsageWriter:
    """Group commit: records queued by concurrent requests are inserted together, in one
    transaction that also releases their spending-limit reservations; each `write` returns
    once its record is committed (so a router killed after answering has recorded it)."""

    MAX_BATCH = 500
    RETRIES = 3

    def __init__(self, store: Store):
        self.store = store
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._touched: dict[int, float] = {}
        self._busy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Waits until every queued record is committed, then stops."""
        if self._task is not None:
            while self._queue or self._busy:
                await asyncio.sleep(0.01)
            self._task.cancel()

    async def write(
        self,
        row: UsageRow,
        *,
        reservation_id: int | None,
        token_id: int | None,
        missing_request_id: bool = False,
    ):
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(row, reservation_id, token_id, missing_request_id, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            try:
                while self._queue:
                    batch = self._queue[: self.MAX_BATCH]
                    self._queue = self._queue[self.MAX_BATCH :]
                    await self._commit(batch)
            finally:
                self._busy = False

    async def _commit(self, batch: list[_Pending]) -> None:
        """Commits a batch. If it fails, each record is retried in a transaction of its own,
        so one record the database refuses cannot lose the others."""
        error = await self._try_commit(batch, retries=1 if len(batch) > 1 else self.RETRIES)
        if error is not None and len(batch) > 1:
            for pending in batch:
                await self._commit([pending])
            return
        for pending in batch:
            if error is None:
                pending.done.set_result(None)
            else:
                logger.error("router: usage record not written: %s", type(error).__name__)
                pending.done.set_exception(error)

    async def _try_commit(self, batch: list[_Pending], *, retries: int) -> BaseException | None:
        now = datetime.now(UTC)
        touch_every = settings.TOKEN_LAST_USED_RESOLUTION_S
        mono = time.monotonic()
        tokens = sorted({
            p.token_id
            for p in batch
            if p.token_id is not None and self._touched.get(p.token_id, -1e9) < mono - touch_every
        })  # fmt: skip
        reservations = [p.reservation_id for p in batch if p.reservation_id is not None]
        missing_ids = [p.row.provider_id for p in batch if p.missing_request_id]
        error: BaseException | None = None
        for attempt in range(retries):
            try:
                async with self.store.pool.connection() as conn, conn.transaction():
                    await billing_aio.usage_rows_insert(conn, [p.row for p in batch])
                    if reservations:
                        await billing_aio.reservations_release(conn, reservation_ids=reservations)
                    if missing_ids:
                        await billing_aio.missing_request_ids_count(conn, provider_ids=missing_ids)
                    if tokens:
                        stale = datetime.fromtimestamp(now.timestamp() - touch_every, UTC)
                        await accounts_aio.tokens_touch(
                            conn, token_ids=tokens, now=now, stale_before=stale
                        )
            except Exception as exc:  # the database may be restarting: retry, then report
                error = exc
                if attempt + 1 < retries:
                    await asyncio.sleep(0.05 * 2**attempt)
                continue
            for token_id in tokens:
                self._touched[token_id] = mono
            return None
        return error
