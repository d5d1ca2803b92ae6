"""`:cheapest` follows the prices the price sync reads from each provider's `/v1/models`
(registry/pricesync.py; the real router and simulator)."""

import httpx

from registry.tasks import price_sync_provider
from router.tests.conftest import LLAMA, chat


def publish(sim: str, slug: str, model_id: str, input_usd: float, output_usd: float) -> None:
    entry = {"id": model_id, "pricing": {"input": input_usd, "output": output_usd}}
    response = httpx.put(f"{sim}/{slug}/_sim/models", json=[entry])
    assert response.status_code == 200, response.text


def test_cheapest_follows_a_price_change_after_the_next_sync(server, sim, catalog, pro_token):
    together, groq = catalog["together"], catalog["groq"]
    publish(sim, "together", "llama-turbo", 0.05, 0.07)
    publish(sim, "groq", "llama-3.1-8b-instant", 0.05, 0.08)
    price_sync_provider(together.id)
    price_sync_provider(groq.id)

    first = chat(server, pro_token, LLAMA + ":cheapest")
    assert first.status_code == 200, first.text
    assert first.headers["x-inference-provider"] == "together"

    publish(sim, "together", "llama-turbo", 0.05, 0.09)
    again = chat(server, pro_token, LLAMA + ":cheapest")
    assert again.headers["x-inference-provider"] == "together"  # not synced yet

    price_sync_provider(together.id)
    after = chat(server, pro_token, LLAMA + ":cheapest")
    assert after.status_code == 200, after.text
    assert after.headers["x-inference-provider"] == "groq"
