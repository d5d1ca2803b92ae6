"""Price sync: each provider's `/v1/models` (the real simulator over HTTP) → its mappings'
prices and context length, exactly, with bad values refused and recorded
(docs/registry.md "Price sync")."""

import uuid

import httpx
import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse
from rest_framework.test import APIClient

from registry.models import MappingPriceHistory, PriceSync
from registry.tasks import price_sync_enqueue, price_sync_provider
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen3-32B"


def set_models(provider, models):
    response = httpx.put(f"{provider.base_url}/_sim/models", json=models)
    assert response.status_code == 200, response.text


def set_faults(provider, **faults):
    response = httpx.put(f"{provider.base_url}/_sim/faults", json=faults)
    assert response.status_code == 200, response.text


def model(model_id, input_usd, output_usd, context_length=131072):
    return {
        "id": model_id,
        "pricing": {"input": input_usd, "output": output_usd},
        "context_length": context_length,
    }


def prices(mapping):
    mapping.refresh_from_db()
    return (
        mapping.input_price_nanousd_per_mtok,
        mapping.output_price_nanousd_per_mtok,
        mapping.context_length,
    )


@pytest.fixture
def provider(simulator_url):
    """A fresh provider of the shared simulator process (its own slug, so its own state)."""
    slug = f"sim-{uuid.uuid4().hex[:8]}"
    base = f"{simulator_url}/{slug}"
    return ProviderFactory(slug=slug, base_url=base, api_key=f"sim-{slug}-key")


@pytest.fixture
def llama(provider):
    return MappingFactory(
        provider=provider, hub_model=HubModelFactory(model_id=LLAMA), provider_model=LLAMA
    )


def test_default_prices_land_exactly(provider, llama):
    qwen = MappingFactory(provider=provider, provider_model=QWEN)

    result = price_sync_provider(provider.id)

    assert prices(llama) == (180_000_000, 180_000_000, 131072)
    assert prices(qwen) == (100_000_000, 300_000_000, 40960)
    sync = PriceSync.objects.get(provider=provider)
    assert (sync.entries, sync.updated, sync.problems, sync.error) == (5, 2, [], "")
    assert result == {"entries": 5, "updated": 2, "error": ""}
    history = MappingPriceHistory.objects.get(mapping=llama)
    assert (history.input_price_nanousd_per_mtok, history.context_length) == (180_000_000, 131072)


def test_float_unsafe_decimals_are_exact_and_finer_than_a_nano_is_rounded_half_up(provider, llama):
    # 0.07 * 1e9 is 70000000.00000001 in floats; 0.1 + 0.2 style errors must not appear.
    set_models(provider, [])
    raw = (
        b'[{"id": "%s", "pricing": {"input": 0.07, "output": 0.29}, "context_length": 8192}]'
        % LLAMA.encode()
    )
    response = httpx.put(f"{provider.base_url}/_sim/models", content=raw)
    assert response.status_code == 200
    price_sync_provider(provider.id)
    assert prices(llama) == (70_000_000, 290_000_000, 8192)

    raw = b'[{"id": "%s", "pricing": {"input": 0.0000000005, "output": 1.23456789049}}]' % (
        LLAMA.encode()
    )
    httpx.put(f"{provider.base_url}/_sim/models", content=raw)
    price_sync_provider(provider.id)

    assert prices(llama) == (1, 1_234_567_890, 8192)  # 0.5 nano → 1; 890.49 nano → 890
    reasons = [p["reason"] for p in PriceSync.objects.get(provider=provider).problems]
    assert any("rounded" in r for r in reasons), reasons


@pytest.mark.parametrize("bad", ["missing_pricing", "negative", "string", "absurd", "not_json"])
def test_a_bad_answer_keeps_the_last_good_price_and_is_recorded(provider, llama, bad):
    price_sync_provider(provider.id)
    assert prices(llama) == (180_000_000, 180_000_000, 131072)

    set_faults(provider, models_bad=bad)
    price_sync_provider(provider.id)

    assert prices(llama) == (180_000_000, 180_000_000, 131072)
    sync = PriceSync.objects.get(provider=provider)
    assert sync.updated == 0
    if bad == "not_json":
        assert "not JSON" in sync.error
    else:
        assert sync.error == ""
        assert {p["model"] for p in sync.problems} >= {LLAMA}
    assert MappingPriceHistory.objects.filter(mapping=llama).count() == 1


@pytest.mark.parametrize(
    "pricing",
    [
        {"input": None, "output": 0.2},
        {"input": True, "output": 0.2},
        {"input": [1], "output": 0.2},
        {"input": -0.0001, "output": 0.2},
        {"input": 1000.000000001, "output": 0.2},
        {"output": 0.2},
        {"input": 10**400, "output": 0.2},
    ],
)
def test_each_bad_input_price_keeps_its_last_value_but_the_good_output_lands(
    provider, llama, pricing
):
    price_sync_provider(provider.id)
    set_models(provider, [{"id": LLAMA, "pricing": pricing, "context_length": 4096}])

    price_sync_provider(provider.id)

    assert prices(llama) == (180_000_000, 200_000_000, 4096)
    (problem,) = PriceSync.objects.get(provider=provider).problems
    assert problem["model"] == LLAMA
    assert problem["reason"].startswith("input price")


@pytest.mark.parametrize(
    "constant", [b"NaN", b"Infinity", b"-Infinity", b"1e999999999", b"-1e999999999"]
)
def test_non_finite_or_huge_numbers_are_refused(provider, llama, constant):
    price_sync_provider(provider.id)
    raw = b'[{"id": "%s", "pricing": {"input": %s, "output": 0.2}}]' % (LLAMA.encode(), constant)
    response = httpx.put(f"{provider.base_url}/_sim/models", content=raw)
    assert response.status_code == 200  # (the simulator answers 1e999999999 as Infinity)
    price_sync_provider(provider.id)

    assert prices(llama)[:2] == (180_000_000, 200_000_000)
    (problem,) = PriceSync.objects.get(provider=provider).problems
    assert problem["reason"].startswith("input price is not a finite number")


def test_a_second_run_with_unchanged_prices_writes_no_history(provider, llama):
    price_sync_provider(provider.id)
    price_sync_provider(provider.id)

    assert MappingPriceHistory.objects.filter(mapping=llama).count() == 1
    assert PriceSync.objects.get(provider=provider).updated == 0

    set_models(provider, [model(LLAMA, 0.2, 0.25)])
    price_sync_provider(provider.id)

    rows = list(MappingPriceHistory.objects.filter(mapping=llama).order_by("valid_from", "id"))
    assert [(r.input_price_nanousd_per_mtok, r.output_price_nanousd_per_mtok) for r in rows] == [
        (180_000_000, 180_000_000),
        (200_000_000, 250_000_000),
    ]


def test_only_mappings_of_that_provider_and_model_change(provider, llama):
    other = MappingFactory(
        provider=ProviderFactory(slug="other-prov"), provider_model=LLAMA, hub_model=llama.hub_model
    )
    price_sync_provider(provider.id)

    assert prices(other) == (None, None, None)


def test_http_error_and_timeout_are_recorded(provider, llama):
    set_faults(provider, error_status=503, error_on="models")
    price_sync_provider(provider.id)

    sync = PriceSync.objects.get(provider=provider)
    assert "HTTP 503" in sync.error
    assert prices(llama) == (None, None, None)


def test_an_internal_url_not_allowed_is_refused_and_recorded(llama, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    provider = llama.provider

    price_sync_provider(provider.id)

    sync = PriceSync.objects.get(provider=provider)
    assert "refused" in sync.error and "internal address" in sync.error
    assert prices(llama) == (None, None, None)
    stats = httpx.get(f"{provider.base_url}/_sim/stats").json()
    assert stats["models_requests"] == 0


def test_metadata_address_is_refused(db):
    provider = ProviderFactory(slug="meta", base_url="http://169.254.169.254/latest")
    price_sync_provider(provider.id)
    assert "internal address" in PriceSync.objects.get(provider=provider).error


def test_the_route_follows_the_chat_route_and_sends_the_platform_key(provider, llama):
    provider.chat_route = "/openai/v1/chat/completions"
    provider.save()
    set_faults(provider, api_key="nobody-knows")  # the simulator's /v1/models needs no key
    price_sync_provider(provider.id)

    paths = httpx.get(f"{provider.base_url}/_sim/stats").json()["paths"]
    assert paths == {"GET /openai/v1/models": 1}
    assert prices(llama)[0] == 180_000_000


def test_enqueue_covers_active_providers_only(provider):
    ProviderFactory(slug="asleep", state="suspended", base_url=provider.base_url)
    app = price_sync_enqueue.app
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        assert price_sync_enqueue() == 1
    finally:
        app.conf.task_always_eager = eager
    assert PriceSync.objects.filter(provider=provider).exists()
    assert not PriceSync.objects.filter(provider__slug="asleep").exists()


def test_v1_models_shows_the_synced_pricing_and_context_length(provider, llama):
    set_models(provider, [model(LLAMA, 0.07, 0.29, 65536)])
    price_sync_provider(provider.id)

    body = APIClient().get("/v1/models").json()
    (entry,) = [m for m in body["data"] if m["id"] == LLAMA]
    (mine,) = [p for p in entry["providers"] if p["provider"] == provider.slug]
    assert mine["pricing"] == {"input": 0.07, "output": 0.29}
    assert mine["context_length"] == 65536


def test_admin_provider_page_shows_the_last_sync_and_its_problems(provider, llama, staff_client):
    set_faults(provider, models_bad="negative")
    price_sync_provider(provider.id)

    page = staff_client.get(reverse("admin:registry_provider_change", args=[provider.pk]))

    assert page.status_code == 200
    text = page.content.decode()
    assert "Last price sync" in text
    assert "input price is negative" in text
    assert LLAMA in text


def test_a_model_listed_twice_counts_once_and_is_recorded(provider, llama):
    set_models(provider, [model(LLAMA, 0.2, 0.2), model(LLAMA, 0.001, 0.001)])
    price_sync_provider(provider.id)

    assert prices(llama)[:2] == (200_000_000, 200_000_000)
    (problem,) = PriceSync.objects.get(provider=provider).problems
    assert "more than once" in problem["reason"]


def test_an_overlong_id_is_not_cut_to_match_a_mapping(provider):
    mapping = MappingFactory(provider=provider, provider_model="a" * 255)
    set_models(provider, [model("a" * 255 + "b", 0.2, 0.2)])
    price_sync_provider(provider.id)

    assert prices(mapping) == (None, None, None)


def test_an_answer_over_the_size_cap_is_an_error(provider, llama, settings):
    settings.PRICE_SYNC_MAX_BYTES = 500
    price_sync_provider(provider.id)

    assert "larger than 500 bytes" in PriceSync.objects.get(provider=provider).error
    assert prices(llama) == (None, None, None)


def test_a_timeout_is_recorded(provider, llama, settings):
    settings.PRICE_SYNC_TIMEOUT_S = 0.3
    set_faults(provider, timeout=True, error_on="models")
    price_sync_provider(provider.id)

    assert "timed out" in PriceSync.objects.get(provider=provider).error


def test_price_history_rows_cannot_be_changed_but_go_with_their_mapping(provider, llama):
    price_sync_provider(provider.id)
    row = MappingPriceHistory.objects.get(mapping=llama)

    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        MappingPriceHistory.objects.filter(pk=row.pk).update(output_price_nanousd_per_mtok=1)

    llama.delete()
    assert not MappingPriceHistory.objects.filter(pk=row.pk).exists()


def test_admin_mapping_page_shows_its_price_history(provider, llama, staff_client):
    price_sync_provider(provider.id)
    set_models(provider, [model(LLAMA, 0.2, 0.25)])
    price_sync_provider(provider.id)

    page = staff_client.get(reverse("admin:registry_mapping_change", args=[llama.pk]))

    assert page.status_code == 200
    text = page.content.decode()
    assert "price history" in text
    assert "250000000" in text and "180000000" in text
