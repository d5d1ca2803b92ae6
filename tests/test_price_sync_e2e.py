"""End-to-end price sync: a real Celery worker and beat (1-second interval) read the
simulator's `/v1/models` and the mapping's prices follow it, bad answers included."""

import httpx
import pytest

from registry.models import Mapping, PriceSync
from registry.tests.factories import MappingFactory
from testsupport.processes import celery_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def publish(provider, input_usd, output_usd):
    entry = {"id": LLAMA, "pricing": {"input": input_usd, "output": output_usd}}
    assert httpx.put(f"{provider.base_url}/_sim/models", json=[entry]).status_code == 200


def output_price(mapping) -> int | None:
    return Mapping.objects.get(pk=mapping.pk).output_price_nanousd_per_mtok


def test_beat_and_worker_keep_prices_in_step_with_the_provider(provider, tmp_path):
    mapping = MappingFactory(provider=provider, provider_model=LLAMA)
    publish(provider, 0.1, 0.07)

    with celery_processes(tmp_path, "worker", "beat", PRICE_SYNC_INTERVAL_S="1") as procs:
        logs = lambda: "\n".join(p.output() for p in procs)  # noqa: E731
        assert wait_for(lambda: output_price(mapping) == 70_000_000, timeout_s=60), logs()

        httpx.put(f"{provider.base_url}/_sim/faults", json={"models_bad": "negative"})
        assert wait_for(
            lambda: PriceSync.objects.filter(provider=provider, problems__0__model=LLAMA).exists(),
            timeout_s=30,
        ), logs()
        assert output_price(mapping) == 70_000_000

        httpx.put(f"{provider.base_url}/_sim/faults", json={})
        publish(provider, 0.1, 0.123456789)
        assert wait_for(lambda: output_price(mapping) == 123_456_789, timeout_s=30), logs()
    assert Mapping.objects.get(pk=mapping.pk).input_price_nanousd_per_mtok == 100_000_000
