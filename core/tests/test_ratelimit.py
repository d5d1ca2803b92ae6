"""The router's rate counter (core/ratelimit.py) against the test Redis: rates parse as DRF's
do, one shared pipelined connection hands each concurrent caller its own reply, a connection
Redis drops is made anew, and past the rate the check raises a 429 that says when to retry.
The end-to-end behaviour (429 in OpenAI's format with Retry-After, failing open without Redis)
is in tests/test_served_limits_e2e.py."""

import asyncio
import uuid

import pytest
import redis
from django.conf import settings

from core import ratelimit
from core.edge import RETRY_AFTER_SCOPE_KEY


@pytest.mark.parametrize(
    ("text", "count", "period_s"),
    [("600/min", 600, 60), ("10/s", 10, 1), ("5/hour", 5, 3600), ("1/day", 1, 86400)],
)
def test_rates_are_written_as_in_drf(text, count, period_s):
    rate = ratelimit.rate_parse(text)
    assert (rate.count, rate.period_s) == (count, period_s)


@pytest.mark.parametrize("text", ["600", "abc/min", "0/min", "5/week", ""])
def test_a_malformed_rate_is_refused(text):
    with pytest.raises(ValueError, match=r"600/min|at least 1"):
        ratelimit.rate_parse(text)


def test_concurrent_calls_on_the_shared_connection_each_get_their_own_reply():
    key = f"test:{uuid.uuid4().hex}"

    async def run():
        pipe = ratelimit.RedisPipe(settings.REDIS_URL)
        return await asyncio.gather(
            *(pipe.call("EVAL", ratelimit.INCREMENT_SCRIPT, 1, key, 60) for _ in range(300))
        )

    counts = asyncio.run(run())
    assert sorted(counts) == list(range(1, 301))
    assert 0 < redis.Redis.from_url(settings.REDIS_URL).ttl(key) <= 60


def test_a_connection_that_redis_drops_is_made_anew():
    async def run():
        pipe = ratelimit.RedisPipe(settings.REDIS_URL)
        client_id = await pipe.call("CLIENT", "ID")
        redis.Redis.from_url(settings.REDIS_URL).execute_command("CLIENT", "KILL", "ID", client_id)
        with pytest.raises(redis.RedisError):
            for _ in range(100):  # until the reader has seen the connection go
                await pipe.call("PING")
                await asyncio.sleep(0.01)
        return client_id, await pipe.call("CLIENT", "ID")

    old_id, new_id = asyncio.run(run())
    assert new_id != old_id


def test_past_the_rate_the_check_raises_a_429_with_the_wait():
    scope = {}
    token_id = uuid.uuid4().int % 10**9

    async def run():
        for _ in range(2):
            await ratelimit.rate_check(scope, "test", token_id, "2/min")
        await ratelimit.rate_check(scope, "test", token_id, "2/min")

    with pytest.raises(ratelimit.RateLimited) as refused:
        asyncio.run(run())
    assert refused.value.http_status == 429
    assert refused.value.code == "rate_limited"
    assert 1 <= refused.value.retry_after_s <= 60
    assert scope[RETRY_AFTER_SCOPE_KEY] == refused.value.retry_after_s
