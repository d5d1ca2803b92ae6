"""The router's store on the test database: group commit, and a refused record not losing
the others committed with it."""

import asyncio
from datetime import UTC, datetime

import pytest

from billing.models import UsageRecord
from billing.tests.factories import payer_for_new_user
from billing.usage_row import UsageRow
from registry.tests.factories import ProviderFactory
from router.store import Store

pytestmark = pytest.mark.django_db(transaction=True)


def row(provider, payer, request_id: str, *, user_id=None) -> UsageRow:
    return UsageRow.build(
        provider_id=provider.pk, request_id=request_id, user_id=user_id or payer.user_id,
        payer_id=payer.pk, hub_model_id="a/b", provider_model="b", task="conversational",
        http_status=200, prompt_tokens=3, completion_tokens=5, estimated_cost_nanousd=10,
        byok=False, created_at=datetime.now(UTC),
    )  # fmt: skip


def write_all(rows) -> list:
    async def run():
        store = Store()
        await store.open()
        try:
            return await asyncio.gather(
                *(store.writer.write(r, reservation_id=None, token_id=None) for r in rows),
                return_exceptions=True,
            )
        finally:
            await store.close()

    return asyncio.run(run())


def test_concurrent_records_are_all_committed_once():
    provider, payer = ProviderFactory(), payer_for_new_user(plan="pro")
    rows = [row(provider, payer, f"req-{i}") for i in range(200)]

    results = write_all([*rows, *rows[:50]])  # 50 duplicate deliveries

    assert results == [None] * 250
    assert UsageRecord.objects.count() == 200


def test_a_record_the_database_refuses_does_not_lose_the_others():
    provider, payer = ProviderFactory(), payer_for_new_user(plan="pro")
    good = [row(provider, payer, f"ok-{i}") for i in range(20)]
    bad = row(provider, payer, "no-such-user", user_id=10**12)

    results = write_all([*good[:10], bad, *good[10:]])

    assert [r is None for r in results] == [True] * 10 + [False] + [True] * 10
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == sorted(
        r.request_id for r in good
    )
