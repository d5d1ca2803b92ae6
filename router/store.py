"""The router's data: an async PostgreSQL pool (psycopg 3) and short-lived in-process caches.

The hot path reads who the token belongs to, the model's candidate providers and the
providers' settings. Each is cached for ROUTER_CACHE_TTL_S seconds (default 5): a revoked
token, a new mapping or a changed organization setting takes effect within that time. Usage
records are written by `UsageWriter`, which commits the records of concurrent requests
together (group commit) and lets each request continue only once its record is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from accounts import selectors as accounts_selectors
from accounts import services as accounts_services
from accounts.tokens import token_hash
from billing import limits
from billing import selectors as billing_selectors
from billing import services as billing_services
from core.fields import decrypt
from registry import selectors as registry_selectors
from router.selection import CHAT_TASK, Candidate

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
class Org:
    id: int
    name: str
    plan: str
    seats: int
    limit_nanousd: int | None
    disabled: frozenset[str]


@dataclass(frozen=True)
class Caller:
    token_id: int
    token_role: str
    token_permissions: tuple[str, ...]
    revoked: bool
    user_id: int
    username: str
    user_active: bool
    plan: str
    provider_order: tuple[str, ...]
    orgs: dict[str, Org] = field(default_factory=dict)  # lower-case name -> org
    keys: dict[int, str] = field(default_factory=dict)  # provider id -> the user's own key

    @property
    def org_ids(self) -> frozenset[int]:
        return frozenset(o.id for o in self.orgs.values())


@dataclass(frozen=True)
class ProviderInfo:
    id: int
    slug: str
    organization_id: int
    base_url: str
    chat_route: str
    api_key: str
    request_id_header: str
    active: bool


@dataclass(frozen=True)
class HubModelCandidates:
    model_id: str
    candidates: tuple[Candidate, ...]


# The statements belong to the apps whose tables they touch (their selectors and services).
_CALLER_SQL = accounts_selectors.ROUTER_CALLER_SQL
_ORGS_SQL = accounts_selectors.ROUTER_ORGANIZATIONS_SQL
_KEYS_SQL = accounts_selectors.ROUTER_PROVIDER_KEYS_SQL
_TOUCH_TOKENS_SQL = accounts_services.ROUTER_TOKENS_TOUCH_SQL
_PROVIDERS_SQL = registry_selectors.ROUTER_PROVIDERS_SQL
_MODEL_SQL = registry_selectors.ROUTER_CHAT_CANDIDATES_SQL
_PROVIDER_MODEL_SQL = registry_selectors.ROUTER_CHAT_CANDIDATES_BY_PROVIDER_MODEL_SQL
_PAYER_SQL = billing_selectors.ROUTER_PAYER_SQL
_INSERT_USAGE_SQL = billing_services.ROUTER_USAGE_INSERT_SQL
_MISSING_IDS_SQL = billing_services.ROUTER_MISSING_REQUEST_IDS_SQL


def _candidate(row) -> Candidate:
    return Candidate(*row)


@dataclass
class UsageRow:
    provider_id: int
    request_id: str
    user_id: int
    payer_id: int
    hub_model_id: str
    provider_model: str
    http_status: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    estimated_cost_nanousd: int
    state: str
    created_at: datetime
    task: str = CHAT_TASK
    missing_request_id: bool = False  # a success without the provider's request-ID header

    def params(self) -> tuple:
        return (self.provider_id, self.request_id[:255], self.user_id, self.payer_id,
                self.hub_model_id[:200], self.provider_model[:255], self.task,
                self.http_status, self.prompt_tokens, self.completion_tokens,
                max(self.estimated_cost_nanousd, 0), self.state, self.created_at)  # fmt: skip


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

    async def open(self) -> None:
        await self.pool.open(wait=True)
        self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()
        await self.pool.close()

    async def _fetch(self, sql: str, params) -> list[tuple]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def caller(self, secret: str) -> Caller | None:
        digest = token_hash(secret)

        async def load() -> Caller | None:
            rows = await self._fetch(_CALLER_SQL, (digest,))
            if not rows:
                return None
            t_id, role, perms, revoked, u_id, name, active, plan, order = rows[0]
            orgs = {
                r[1].lower(): Org(r[0], r[1], r[2], r[3], r[4], frozenset(r[5]))
                for r in await self._fetch(_ORGS_SQL, (u_id,))
            }
            keys = {r[0]: decrypt(r[1]) for r in await self._fetch(_KEYS_SQL, (u_id,))}
            return Caller(t_id, role, tuple(perms), revoked, u_id, name, active, plan,
                          tuple(order), orgs, keys)  # fmt: skip

        return await self.callers.get(digest, load)

    async def provider_table(self) -> dict[str, ProviderInfo]:
        async def load() -> dict[str, ProviderInfo]:
            rows = await self._fetch(_PROVIDERS_SQL, ())
            return {
                r[1]: ProviderInfo(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    decrypt(r[5]) if r[5] else "",
                    r[6],
                    r[7] == "active",
                )
                for r in rows
            }

        return await self.providers.get("all", load)

    async def hub_model(self, model_id: str) -> HubModelCandidates | None:
        async def load() -> HubModelCandidates | None:
            rows = await self._fetch(_MODEL_SQL, (model_id,))
            if not rows:
                return None
            return HubModelCandidates(
                rows[0][0], tuple(_candidate(r[1:]) for r in rows if r[2] is not None)
            )

        return await self.models.get(model_id, load)

    async def provider_model(
        self, provider: ProviderInfo, provider_model: str
    ) -> tuple[str, tuple[Candidate, ...]]:
        async def load():
            rows = await self._fetch(
                _PROVIDER_MODEL_SQL,
                (provider.id, provider_model),
            )
            hub_ids = [r[0] for r in rows]
            return (hub_ids[0] if hub_ids else ""), tuple(_candidate(r[1:]) for r in rows)

        return await self.provider_models.get((provider.id, provider_model), load)

    async def payer_id(self, *, user_id: int, org_id: int | None) -> int:
        kind, owner = ("org", org_id) if org_id is not None else ("user", user_id)

        async def load() -> int:
            rows = await self._fetch(_PAYER_SQL[kind], (owner,))
            if rows:
                return rows[0][0]
            return await sync_to_async(_create_billing_account, thread_sensitive=False)(kind, owner)

        return await self.payers.get((kind, owner), load)

    async def reserve(self, terms: limits.PayerTerms, estimate: int):
        if terms.always_allowed:
            return limits.decide(terms, None), None
        async with self.pool.connection() as conn:
            return await limits.payer_reserve(
                conn, terms=terms, estimate_nanousd=estimate, now=datetime.now(UTC)
            )

    async def release(self, reservation_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(limits.RELEASE_SQL, ([reservation_id],))


def _create_billing_account(kind: str, owner: int) -> int:
    from accounts.models import Organization, User
    from billing import services

    if kind == "user":
        return services.billing_account_for_user(user=User.objects.get(pk=owner)).pk
    org = Organization.objects.get(pk=owner)
    return services.billing_account_for_organization(organization=org).pk


@dataclass
class _Pending:
    row: UsageRow
    reservation_id: int | None
    token_id: int | None
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

    async def write(self, row: UsageRow, *, reservation_id: int | None, token_id: int | None):
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(row, reservation_id, token_id, done))
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
        missing_ids = [p.row.provider_id for p in batch if p.row.missing_request_id]
        error: BaseException | None = None
        for attempt in range(retries):
            try:
                async with self.store.pool.connection() as conn, conn.transaction():
                    async with conn.cursor() as cursor:
                        await cursor.executemany(
                            _INSERT_USAGE_SQL,
                            [p.row.params() for p in batch],
                        )
                    if reservations:
                        await conn.execute(limits.RELEASE_SQL, (reservations,))
                    if missing_ids:
                        await conn.execute(_MISSING_IDS_SQL, (missing_ids,))
                    if tokens:
                        stale = datetime.fromtimestamp(now.timestamp() - touch_every, UTC)
                        await conn.execute(_TOUCH_TOKENS_SQL, (now, tokens, stale))
            except Exception as exc:  # the database may be restarting: retry, then report
                error = exc
                if attempt + 1 < retries:
                    await asyncio.sleep(0.05 * 2**attempt)
                continue
            for token_id in tokens:
                self._touched[token_id] = mono
            return None
        return error
