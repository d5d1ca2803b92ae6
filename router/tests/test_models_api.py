"""GET /v1/models and /v1/models/<id>: the router's OpenAI-style model list."""

import pytest
from rest_framework.test import APIClient

from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def served():
    llama = HubModelFactory(model_id=LLAMA)
    groq = ProviderFactory(slug="groq")
    together = ProviderFactory(slug="together")
    MappingFactory(provider=groq, hub_model=llama, status="live", context_length=131072,
                   input_price_nanousd_per_mtok=50_000_000,
                   output_price_nanousd_per_mtok=80_000_000, throughput_tps=812.5,
                   first_token_latency_ms=120, supports_tools=True,
                   supports_structured_output=False)  # fmt: skip
    MappingFactory(provider=together, hub_model=llama, status="live", health="error")
    MappingFactory(provider=ProviderFactory(slug="staging-only"), hub_model=llama,
                   status="staging")  # fmt: skip
    MappingFactory(provider=ProviderFactory(slug="gone", state="suspended"), hub_model=llama,
                   status="live")  # fmt: skip
    MappingFactory(hub_model=HubModelFactory(model_id="nobody/staging"), status="staging")
    return llama


def test_the_list_shows_live_providers_of_active_providers_with_their_facts(served):
    response = APIClient().get("/v1/models")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [LLAMA]
    (model,) = body["data"]
    assert model["object"] == "model"
    assert model["owned_by"] == "meta-llama"
    groq, together = model["providers"]
    assert groq == {
        "provider": "groq", "status": "live", "context_length": 131072,
        "pricing": {"input": 0.05, "output": 0.08}, "supports_tools": True,
        "supports_structured_output": False, "first_token_latency_ms": 120,
        "throughput": 812.5, "is_model_author": False,
    }  # fmt: skip
    assert together["provider"] == "together"
    assert together["status"] == "error"
    assert together["pricing"] is None
    assert together["throughput"] is None


def test_one_model(served):
    response = APIClient().get(f"/v1/models/{LLAMA}")

    assert response.status_code == 200
    assert response.json()["id"] == LLAMA
    assert [p["provider"] for p in response.json()["providers"]] == ["groq", "together"]


@pytest.mark.parametrize("model_id", ["nobody/staging", "no/such-model"])
def test_a_model_nobody_serves_live_is_an_openai_shaped_404(served, model_id):
    response = APIClient().get(f"/v1/models/{model_id}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert model_id in response.json()["error"]["message"]


def test_an_unknown_v1_path_is_an_openai_shaped_404(db):
    response = APIClient().get("/v1/embeddings")

    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "code"}


def test_an_unknown_v1_path_is_served_by_the_router_not_the_hub_api_format(db):
    response = APIClient().post("/v1/no/such/thing", {}, format="json")

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "No endpoint at /v1/no/such/thing.",
            "type": "not_found_error",
            "code": "not_found",
        }
    }


def test_the_list_is_read_only(served):
    assert APIClient().post("/v1/models", {}).status_code == 405


def test_a_post_to_an_unknown_v1_path_is_the_routers_404_even_with_csrf_checks_on(db):
    """Clients POST (`/v1/embeddings`, `/v1/responses`); CSRF protection (for browser
    sessions) must not turn that into a Hub-format 403."""
    client = APIClient(enforce_csrf_checks=True)
    response = client.post("/v1/embeddings", {"input": "x"}, format="json")

    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "code"}
