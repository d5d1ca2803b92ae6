"""Request rates counted in Redis, so that every web process shares one count.

Rates are written as in DRF's throttling settings, `"<count>/<period>"` with the period `s`,
`min`, `h` or `day` (only its first letter counts): `"600/min"`. `rate_check` counts a request
against a fixed window per key (one Redis round trip on a connection shared by the process:
a script that increments the window's counter and sets its expiry on the first hit) and raises
`RateLimited` past the rate; the edge adds its `Retry-After` (seconds to the window's end) to
the 429 (`core.edge`).

Redis unreachable: the request is allowed (fail open) and a warning logged, at most once per
`FAIL_OPEN_S`, during which Redis is not asked again, so a dead Redis costs requests nothing.
A limit that a Redis outage lifts is the trade-off: the alternative refuses all traffic.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import redis.asyncio
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from core.edge import RETRY_AFTER_SCOPE_KEY
from core.errors import DomainError, Kind

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 0.25  # a slow Redis fails open rather than slowing every request
FAIL_OPEN_S = 10.0  # after a Redis error, requests are not counted for this long
PERIODS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INCREMENT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period_s: int
    text: str


@functools.lru_cache(maxsize=64)
def rate_parse(text: str) -> Rate:
    """`"600/min"` -> Rate(600, 60); the format of DRF's DEFAULT_THROTTLE_RATES."""
    count, _, period = text.partition("/")
    try:
        rate = Rate(int(count), PERIODS_S[period.strip()[:1]], text)
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a rate such as '600/min'") from None
    if rate.count < 1:
        raise ValueError(f"{text!r}: the count must be at least 1")
    return rate


class RateLimited(DomainError):
    """More requests than the rate allows: a 429 in each API's format, with Retry-After."""

    def __init__(self, *, rate: Rate, retry_after_s: int):
        super().__init__(
            "rate_limited",
            f"Rate limit exceeded: {rate.text} per token. Retry after {retry_after_s} s.",
            kind=Kind.FORBIDDEN,  # the closest kind; the status is 429 (below)
        )
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return 429


class FailOpen:
    """Remembers a Redis failure: skip counting for FAIL_OPEN_S and warn once per period."""

    def __init__(self) -> None:
        self.until = 0.0

    def active(self) -> bool:
        return self.until > 0 and time.monotonic() < self.until

    def failed(self, what: str, exc: BaseException) -> None:
        self.until = time.monotonic() + FAIL_OPEN_S
        logger.warning(
            "rate limit not applied (%s): Redis unreachable (%s: %s); requests are allowed "
            "for the next %g s",
            what,
            type(exc).__name__,
            exc,
            FAIL_OPEN_S,
        )


class RedisPipe:
    """One Redis connection for all of an event loop's rate checks, pipelined: a call writes its
    command at once and waits for its reply; Redis answers in order, so one reader task hands
    each reply to the oldest waiting call. redis-py opens the connection (URL, AUTH, TLS) and
    parses the replies; only the sharing is ours. A pooled redis-py command costs about 60 µs of
    CPU (the router's throughput at 32 clients fell by a fifth), this about 20 to 35 µs."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None
        self.reader: asyncio.Task | None = None
        self.waiters: deque[asyncio.Future] = deque()
        self.connecting = asyncio.Lock()
        self.closing: set[asyncio.Task] = set()

    async def call(self, *args):
        """The command's reply; raises RedisError, OSError or TimeoutError when Redis does not
        answer within REDIS_TIMEOUT_S (then the connection is dropped, and made anew next)."""
        conn = self.conn or await self._connect()
        reply = asyncio.get_running_loop().create_future()
        self.waiters.append(reply)
        try:
            await conn.send_packed_command(conn.pack_command(*args), check_health=False)
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                return await reply
        except (RedisError, OSError, TimeoutError) as exc:
            self._drop(conn, exc)
            raise

    async def _connect(self):
        async with self.connecting:
            if self.conn is None:
                pool = redis.asyncio.ConnectionPool.from_url(
                    self.url, socket_connect_timeout=REDIS_TIMEOUT_S
                )
                async with asyncio.timeout(2 * REDIS_TIMEOUT_S):
                    conn = await pool.get_connection()
                self.conn = conn
                self.reader = asyncio.create_task(self._read(conn))
            return self.conn

    async def _read(self, conn) -> None:
        try:
            while True:
                try:
                    reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except ResponseError as exc:  # an error reply: the caller's
                    reply = exc
                waiter = self.waiters.popleft()  # IndexError: a reply nobody asked for
                if waiter.done():  # its caller gave up (cancelled)
                    continue
                if isinstance(reply, Exception):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except Exception as exc:  # the connection is gone
            self._drop(conn, exc)

    def _drop(self, conn, exc: BaseException) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        self.reader = None
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(RedisConnectionError(f"Redis connection lost: {exc!r}"))
        task = asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)


class WindowCounter:
    """Fixed-window counters in Redis for the asyncio side (the router): one atomic script per
    request (increment the window's counter, set its expiry on the first hit). One connection
    per event loop (a redis.asyncio connection belongs to the loop that opened it)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: RedisPipe | None = None
        self.fail_open = FailOpen()

    def _ready(self) -> RedisPipe:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._pipe is None:
            self._pipe = RedisPipe(settings.REDIS_URL)
            self._loop = loop
        return self._pipe

    async def hit(self, key: str, rate: Rate) -> int | None:
        """Counts a request; None if within the rate, else the seconds to the window's end."""
        if self.fail_open.active():
            return None
        now = time.time()
        window = int(now // rate.period_s)
        try:
            count = await self._ready().call(
                "EVAL", INCREMENT_SCRIPT, 1, f"ratelimit:{key}:{window}", rate.period_s
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self.fail_open.failed(key.partition(":")[0], exc)
            return None
        if count <= rate.count:
            return None
        return max(1, math.ceil((window + 1) * rate.period_s - now))


counter = WindowCounter()


async def rate_check(scope, name: str, key: object, rate_text: str) -> None:
    """Counts one request of `key` (e.g. a token id) against the `name` limit; raises
    RateLimited past `rate_text` and records the wait in the ASGI `scope` for the edge."""
    rate = rate_parse(rate_text)
    retry_after_s = await counter.hit(f"{name}:{key}", rate)
    if retry_after_s is not None:
        scope[RETRY_AFTER_SCOPE_KEY] = retry_after_s
        raise RateLimited(rate=rate, retry_after_s=retry_after_s)
