"""Tag-filter mappings mean LoRA adapters (issue 12, finding 3).

The attack: a partner posts `{"type": "tag-filter", "task": "conversational", "tags":
["conversational"], ...}` and becomes a live provider of every chat model, so other users'
requests are routed and billed to it. A tag-filter mapping's tags must include `lora` and
exactly one `base_model:adapter:<id>` naming an existing hub model that supports the task;
anything else is a 400 naming `tags`. Rows written before the rule (or by hand) that break it
are ignored by every reader: the Hub API (model info and model list) and the router.
"""

import httpx
import pytest

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, UserFactory, bearer, token_for
from registry.models import Mapping
from registry.tests.factories import (
    HubModelFactory,
    MappingFactory,
    ProviderFactory,
    TagFilterMappingFactory,
)
from testsupport.processes import WebServer

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
FLUX = "black-forest-labs/FLUX.1-dev"
FLUX_LORA = "someone/flux-lora-ghibli"
LLAMA_LORA = "someone/llama-lora-pirate"
FLUX_ADAPTER = f"base_model:adapter:{FLUX}"
LLAMA_ADAPTER = f"base_model:adapter:{LLAMA}"
ATTACK = {
    "type": "tag-filter",
    "task": "conversational",
    "tags": ["conversational"],
    "adapterType": "lora",
    "providerModel": "x",
    "status": "live",
}


def models_url(slug: str) -> str:
    return f"/api/partners/{slug}/models"


def providers_of(api_client, model_id: str) -> dict:
    response = api_client.get(f"/api/models/{model_id}?expand[]=inferenceProviderMapping")
    assert response.status_code == 200, response.content
    return response.json()["inferenceProviderMapping"]


def listed(api_client, query: str) -> list[str]:
    response = api_client.get(f"/api/models?{query}")
    assert response.status_code == 200, response.content
    return [m["id"] for m in response.json()]


@pytest.fixture
def catalog(db):
    """Chat models served by `together`, a text-to-image base model and two LoRA adapters."""
    together = ProviderFactory(slug="together")
    models = {
        LLAMA: HubModelFactory(
            model_id=LLAMA, pipeline_tag="text-generation", tags=["transformers", "conversational"]
        ),
        QWEN: HubModelFactory(
            model_id=QWEN, pipeline_tag="text-generation", tags=["conversational"]
        ),
        FLUX: HubModelFactory(model_id=FLUX, pipeline_tag="text-to-image", tags=["diffusers"]),
        FLUX_LORA: HubModelFactory(
            model_id=FLUX_LORA,
            pipeline_tag="text-to-image",
            tags=["diffusers", "lora", FLUX_ADAPTER],
        ),
        LLAMA_LORA: HubModelFactory(
            model_id=LLAMA_LORA,
            pipeline_tag="text-generation",
            tags=["conversational", "lora", LLAMA_ADAPTER],
        ),
    }
    for model_id in (LLAMA, QWEN):
        MappingFactory(provider=together, hub_model=models[model_id], provider_model=model_id)
    return models


@pytest.fixture
def attacker():
    """A provider whose writer may use the partner API."""
    provider = ProviderFactory(slug="evil")
    user = UserFactory(username="evil-writer")
    MembershipFactory(user=user, organization=provider.organization, role=Role.WRITE)
    return provider, bearer(token_for(user, "write"))


# --- the attack through the partner API ------------------------------------------------------
@pytest.mark.django_db
def test_a_tag_filter_on_a_plain_task_tag_is_refused_and_hijacks_nothing(
    api_client, catalog, attacker
):
    provider, headers = attacker

    response = api_client.post(models_url("evil"), ATTACK, format="json", **headers)

    assert response.status_code == 400, response.content
    assert "tags" in response.json()["fields"]
    assert not Mapping.objects.filter(provider=provider).exists()
    # The unrelated chat models are still served by their own provider only.
    assert list(providers_of(api_client, LLAMA)) == ["together"]
    assert list(providers_of(api_client, QWEN)) == ["together"]
    assert listed(api_client, "inference_provider=evil") == []


BAD_TAGS = [
    pytest.param("conversational", ["conversational"], id="no-lora-no-base"),
    pytest.param("conversational", ["lora"], id="lora-without-base-model"),
    pytest.param("conversational", [LLAMA_ADAPTER], id="base-model-without-lora"),
    pytest.param("conversational", ["lora", "conversational", "transformers"], id="task-tags"),
    pytest.param(
        "conversational",
        ["lora", LLAMA_ADAPTER, f"base_model:adapter:{QWEN}"],
        id="two-base-models",
    ),
    pytest.param("conversational", ["lora", "base_model:adapter:"], id="empty-base-model"),
    pytest.param(
        "conversational", ["lora", "base_model:adapter:nobody/nothing"], id="unknown-base-model"
    ),
    pytest.param("conversational", ["lora", FLUX_ADAPTER], id="base-model-without-the-task"),
    pytest.param("text-to-image", ["lora", LLAMA_ADAPTER], id="chat-base-for-images"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("task", "tags"), BAD_TAGS)
def test_a_tag_filter_must_name_lora_and_one_existing_base_model_supporting_the_task(
    api_client, catalog, attacker, task, tags
):
    provider, headers = attacker
    body = {**ATTACK, "task": task, "tags": tags}

    response = api_client.post(models_url("evil"), body, format="json", **headers)

    assert response.status_code == 400, response.content
    assert set(response.json()["fields"]) == {"tags"}
    assert "tags" in response.json()["error"]
    assert not Mapping.objects.filter(provider=provider).exists()


@pytest.mark.django_db
def test_a_lora_tag_filter_serves_only_the_adapters_of_its_base_model(
    api_client, catalog, attacker
):
    _, headers = attacker
    body = {**ATTACK, "tags": [LLAMA_ADAPTER, "lora"], "providerModel": "llama-lora"}

    response = api_client.post(models_url("evil"), body, format="json", **headers)

    assert response.status_code == 201, response.content
    assert providers_of(api_client, LLAMA_LORA)["evil"]["providerId"] == "llama-lora"
    assert "evil" not in providers_of(api_client, LLAMA)
    assert "evil" not in providers_of(api_client, QWEN)
    assert "evil" not in providers_of(api_client, FLUX_LORA)
    assert listed(api_client, "inference_provider=evil") == [LLAMA_LORA]


@pytest.mark.django_db
def test_a_single_model_mapping_still_wins_over_a_lora_tag_filter(api_client, catalog, attacker):
    provider, _ = attacker
    TagFilterMappingFactory(
        provider=provider,
        task="conversational",
        tags=sorted(["lora", LLAMA_ADAPTER]),
        provider_model="any-lora",
    )
    MappingFactory(provider=provider, hub_model=catalog[LLAMA_LORA], provider_model="pirate")

    assert providers_of(api_client, LLAMA_LORA)["evil"]["providerId"] == "pirate"


# --- rows that break the rule (written before it, or by hand) are ignored ---------------------
OLD_BAD_TAGS = [
    pytest.param(["conversational"], id="task-tag"),
    pytest.param(["conversational", "lora"], id="lora-and-task-tag"),
    pytest.param(["lora"], id="lora-only"),
    pytest.param(["conversational", LLAMA_ADAPTER], id="base-without-lora"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("tags", OLD_BAD_TAGS)
def test_an_old_tag_filter_row_breaking_the_rule_is_ignored_by_the_hub_api(
    api_client, catalog, attacker, tags
):
    provider, _ = attacker
    TagFilterMappingFactory(provider=provider, task="conversational", tags=sorted(tags),
                            provider_model="hijack")  # fmt: skip

    for model_id in (LLAMA, QWEN, LLAMA_LORA):
        assert "evil" not in providers_of(api_client, model_id), model_id
    assert listed(api_client, "inference_provider=evil") == []
    assert "evil" not in str(api_client.get("/api/models?expand=inferenceProviderMapping").json())


# --- the router ignores them too -------------------------------------------------------------
@pytest.fixture(scope="module")
def web_server(tmp_path_factory, django_db_setup, django_db_blocker):
    server = WebServer(tmp_path_factory.mktemp("web") / "uvicorn.log").start()
    yield server
    server.stop()


def _chat(server: str, token: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _chat_requests(sim: str, slug: str) -> int:
    return httpx.get(f"{sim}/{slug}/_sim/stats", timeout=10).json()["chat_requests"]


@pytest.mark.e2e
def test_an_old_hijacking_row_does_not_route_other_users_requests(
    web_server, transactional_db, simulator_url
):
    def sim_provider(slug: str):
        return ProviderFactory(
            slug=slug,
            base_url=f"{simulator_url}/{slug}",
            cost_url=f"{simulator_url}/{slug}/costs",
            api_key=f"sim-{slug}-key",
        )

    try:
        llama = HubModelFactory(
            model_id=LLAMA, pipeline_tag="text-generation", tags=["conversational"]
        )
        MappingFactory(provider=sim_provider("together"), hub_model=llama, provider_model="llama")
        hijacker = sim_provider("hijacker")
        TagFilterMappingFactory(provider=hijacker, task="conversational",
                                tags=["conversational"], provider_model="hijack")  # fmt: skip
        token = token_for(UserFactory(username="victim", plan="pro"), "write")

        named = _chat(web_server.url, token, f"{LLAMA}:hijacker")
        for policy in ("", ":fastest", ":cheapest"):
            automatic = _chat(web_server.url, token, LLAMA + policy)
            assert automatic.status_code == 200, automatic.text
            assert automatic.headers["x-inference-provider"] == "together"

        assert named.status_code == 404, named.text
        assert named.json()["error"]["code"] == "model_not_supported"
        assert _chat_requests(simulator_url, "hijacker") == 0
    finally:
        httpx.post(f"{simulator_url}/_sim/reset", timeout=10)


# --- the rule and its SQL form agree ----------------------------------------------------------
SHAPES = [
    ["lora", FLUX_ADAPTER],
    ["lora", FLUX_ADAPTER, "style-anime"],
    ["lora"],
    [FLUX_ADAPTER],
    ["conversational"],
    ["lora", FLUX_ADAPTER, LLAMA_ADAPTER],
    ["lora", "base_model:adapter:"],
    ["lora", "base_model:adapter:", FLUX_ADAPTER],
    ["LoRA", FLUX_ADAPTER],
    ["lora", "base_model:adapterx"],
    ["lora", "base_model:" + FLUX],
    ["lora", "base_model%adapter%x"],
]


@pytest.mark.django_db
def test_the_sql_form_of_the_lora_shape_selects_exactly_what_the_rule_accepts():
    from django.db.models import F

    from registry import rules, selectors

    provider = ProviderFactory(slug="shapes")
    mappings = {
        TagFilterMappingFactory(provider=provider, tags=sorted(tags)).pk: tags for tags in SHAPES
    }

    in_sql = set(
        Mapping.objects.filter(selectors._LoraShaped(F("tags"))).values_list("pk", flat=True)
    )

    expected = {pk for pk, tags in mappings.items() if rules.tag_filter_base_model(tags)}
    assert in_sql == expected
    assert len(expected) == 2
