"""HTTP tests of the Hub API: /api/models/<namespace>/<name> and /api/models."""

import re
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, UserFactory, bearer, token_for
from registry.models import HubModel, MappingHealth, MappingStatus, ProviderState
from registry.tests.factories import (
    HubModelFactory,
    MappingFactory,
    ProviderFactory,
    TagFilterMappingFactory,
)

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LORA = "someone/flux-lora-ghibli"
FLUX_LORA_TAGS = ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"]
EXPAND_MAPPING = "expand=inferenceProviderMapping"


def model_url(model_id: str, query: str = "") -> str:
    return f"/api/models/{model_id}" + (f"?{query}" if query else "")


def member_headers(provider, role=Role.READ) -> dict:
    user = UserFactory()
    MembershipFactory(user=user, organization=provider.organization, role=role)
    return bearer(token_for(user, "write"))


def provider_mapping(api_client, model_id: str, headers=None) -> dict:
    response = api_client.get(model_url(model_id, EXPAND_MAPPING), **(headers or {}))
    assert response.status_code == 200, response.content
    return response.json()["inferenceProviderMapping"]


@pytest.fixture
def llama():
    return HubModelFactory(
        model_id=LLAMA, pipeline_tag="text-generation", tags=["transformers", "conversational"]
    )


@pytest.fixture
def lora():
    return HubModelFactory(
        model_id=LORA,
        pipeline_tag="text-to-image",
        tags=["diffusers", *FLUX_LORA_TAGS],
        adapter_weights_path="ghibli.safetensors",
    )


# --- model info: expand ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    [
        "expand=inferenceProviderMapping",
        "expand[]=inferenceProviderMapping",
        "expand%5B%5D=inferenceProviderMapping",
    ],
)
def test_expand_provider_mapping_returns_only_the_ids_and_the_mapping(api_client, llama, query):
    MappingFactory(provider=ProviderFactory(slug="together"), hub_model=llama)

    response = api_client.get(model_url(LLAMA, query))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "_id": llama.hub_id,
        "id": LLAMA,
        "inferenceProviderMapping": {
            "together": {
                "status": "live",
                "providerId": f"{LLAMA}-turbo",
                "task": "conversational",
            }
        },
    }
    assert re.fullmatch(r"[0-9a-f]{24}", body["_id"])


@pytest.mark.parametrize(
    "query",
    [
        "expand=inference&expand=inferenceProviderMapping",
        "expand[]=inference&expand[]=inferenceProviderMapping",
        "expand=inference,inferenceProviderMapping",
    ],
)
def test_several_expand_values_return_each_of_them(api_client, llama, query):
    MappingFactory(provider=ProviderFactory(slug="together"), hub_model=llama)

    body = api_client.get(model_url(LLAMA, query)).json()

    assert set(body) == {"_id", "id", "inference", "inferenceProviderMapping"}
    assert body["inference"] == "warm"
    assert list(body["inferenceProviderMapping"]) == ["together"]


def test_expand_inference_alone_does_not_return_the_mapping(api_client, llama):
    MappingFactory(provider=ProviderFactory(slug="together"), hub_model=llama)

    body = api_client.get(model_url(LLAMA, "expand[]=inference")).json()

    assert body == {"_id": llama.hub_id, "id": LLAMA, "inference": "warm"}


def test_without_expand_the_model_has_its_full_fields(api_client, llama):
    response = api_client.get(model_url(LLAMA))

    assert response.status_code == 200
    body = response.json()
    assert body["_id"] == llama.hub_id
    assert body["id"] == body["modelId"] == LLAMA
    assert body["author"] == "meta-llama"
    assert body["pipeline_tag"] == "text-generation"
    assert body["tags"] == ["transformers", "conversational"]
    assert body["createdAt"].endswith("Z")
    assert body["lastModified"].endswith("Z")
    assert "inferenceProviderMapping" not in body
    assert "inference" not in body


def test_an_unknown_expand_value_is_a_400_naming_expand(api_client, llama):
    response = api_client.get(model_url(LLAMA, "expand=inferenceProviderMappings"))

    assert response.status_code == 400
    assert "expand" in response.json()["fields"]
    assert "expand" in response.json()["error"]
    assert "inferenceProviderMappings" in response.json()["error"]


def test_an_unknown_model_is_a_repo_not_found_404(api_client):
    response = api_client.get(model_url("nobody/nothing", EXPAND_MAPPING))

    assert response.status_code == 404
    assert response.headers["X-Error-Code"] == "RepoNotFound"
    assert response.json() == {"error": "Repository not found"}


@pytest.mark.parametrize(
    "authorization",
    ["Bearer hf_" + "x" * 34, "Bearer not-a-token", "Basic dXNlcjpwYXNz"],
)
def test_an_invalid_token_on_the_public_model_endpoint_is_a_401(api_client, llama, authorization):
    response = api_client.get(model_url(LLAMA, EXPAND_MAPPING), HTTP_AUTHORIZATION=authorization)

    assert response.status_code == 401
    assert response.json()["error"]


# --- model info: resolution ------------------------------------------------------------------
def test_a_tag_filter_match_carries_the_adapter_and_its_weights(api_client, lora):
    TagFilterMappingFactory(provider=ProviderFactory(slug="fal-ai"), provider_model="flux-lora")

    mapping = provider_mapping(api_client, LORA)

    assert mapping == {
        "fal-ai": {
            "status": "live",
            "providerId": "flux-lora",
            "task": "text-to-image",
            "type": "tag-filter",
            "adapter": "lora",
            "adapterWeightsPath": "ghibli.safetensors",
        }
    }


def test_a_single_model_mapping_wins_over_a_tag_filter_of_the_same_provider(api_client, lora):
    fal = ProviderFactory(slug="fal-ai")
    TagFilterMappingFactory(provider=fal, provider_model="flux-lora")
    MappingFactory(provider=fal, hub_model=lora, task="text-to-image", provider_model="ghibli")

    mapping = provider_mapping(api_client, LORA)

    assert mapping == {
        "fal-ai": {"status": "live", "providerId": "ghibli", "task": "text-to-image"}
    }


def test_a_tag_filter_does_not_apply_to_a_model_lacking_one_of_its_tags(api_client):
    HubModelFactory(
        model_id="someone/sdxl-lora",
        pipeline_tag="text-to-image",
        tags=["lora", "base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0"],
        adapter_weights_path="x.safetensors",
    )
    HubModelFactory(model_id="someone/flux-finetune", pipeline_tag="text-to-image",
                    tags=["base_model:adapter:black-forest-labs/FLUX.1-dev"])  # fmt: skip
    TagFilterMappingFactory(provider=ProviderFactory(slug="fal-ai"))

    assert provider_mapping(api_client, "someone/sdxl-lora") == {}
    assert provider_mapping(api_client, "someone/flux-finetune") == {}


def test_providers_are_ordered_alphabetically_by_default(api_client, llama):
    for slug in ["together", "cerebras", "nebius", "fireworks-ai"]:
        MappingFactory(provider=ProviderFactory(slug=slug), hub_model=llama)

    mapping = provider_mapping(api_client, LLAMA)

    assert list(mapping) == ["cerebras", "fireworks-ai", "nebius", "together"]


def test_failing_mappings_come_last_with_status_error(api_client, llama):
    MappingFactory(provider=ProviderFactory(slug="aaa"), hub_model=llama, health="error")
    MappingFactory(provider=ProviderFactory(slug="zzz"), hub_model=llama, health="ok")
    MappingFactory(provider=ProviderFactory(slug="mmm"), hub_model=llama, health="unknown")
    MappingFactory(provider=ProviderFactory(slug="bbb"), hub_model=llama, health="error")

    mapping = provider_mapping(api_client, LLAMA)

    assert list(mapping) == ["mmm", "zzz", "aaa", "bbb"]
    assert [e["status"] for e in mapping.values()] == ["live", "live", "error", "error"]


@pytest.mark.parametrize(
    ("mappings", "warm"),
    [
        pytest.param([("live", "ok")], True, id="live-ok"),
        pytest.param([("live", "unknown")], True, id="live-unknown"),
        pytest.param([("live", "error"), ("live", "ok")], True, id="one-healthy-live"),
        pytest.param([("staging", "ok")], False, id="only-staging"),
        pytest.param([("live", "error")], False, id="only-error"),
        pytest.param([("staging", "ok"), ("live", "error")], False, id="staging-and-error"),
        pytest.param([], False, id="none"),
    ],
)
def test_inference_is_warm_only_with_a_live_healthy_mapping(api_client, llama, mappings, warm):
    viewer = UserFactory()
    for i, (status, health) in enumerate(mappings):
        provider = ProviderFactory(slug=f"provider-{i}")
        MembershipFactory(user=viewer, organization=provider.organization, role=Role.READ)
        MappingFactory(provider=provider, hub_model=llama, status=status, health=health)
    query = "expand=inference&expand=inferenceProviderMapping"

    body = api_client.get(model_url(LLAMA, query), **bearer(token_for(viewer, "read"))).json()

    assert len(body["inferenceProviderMapping"]) == len(mappings)  # the member sees them all
    if warm:
        assert body["inference"] == "warm"
    else:
        assert "inference" not in body


def test_staging_mappings_are_hidden_from_anonymous_callers_and_non_members(api_client, llama):
    together = ProviderFactory(slug="together")
    MappingFactory(provider=together, hub_model=llama, status=MappingStatus.STAGING)
    MappingFactory(provider=ProviderFactory(slug="nebius"), hub_model=llama)
    outsider = bearer(token_for(UserFactory(), "write"))
    member_of_another = member_headers(ProviderFactory(slug="groq"), role=Role.ADMIN)

    assert list(provider_mapping(api_client, LLAMA)) == ["nebius"]
    assert list(provider_mapping(api_client, LLAMA, outsider)) == ["nebius"]
    assert list(provider_mapping(api_client, LLAMA, member_of_another)) == ["nebius"]


def test_staging_mappings_are_visible_to_members_of_the_providers_org(api_client, llama):
    together = ProviderFactory(slug="together")
    MappingFactory(provider=together, hub_model=llama, status=MappingStatus.STAGING)
    MappingFactory(provider=ProviderFactory(slug="nebius"), hub_model=llama)

    mapping = provider_mapping(api_client, LLAMA, member_headers(together, role=Role.READ))

    assert list(mapping) == ["nebius", "together"]
    assert mapping["together"]["status"] == "staging"


def test_a_staging_tag_filter_is_visible_only_to_members(api_client, lora):
    fal = ProviderFactory(slug="fal-ai")
    TagFilterMappingFactory(provider=fal, status=MappingStatus.STAGING)

    assert provider_mapping(api_client, LORA) == {}
    assert provider_mapping(api_client, LORA, member_headers(fal))["fal-ai"]["status"] == "staging"


def test_suspended_providers_never_appear(api_client, llama):
    suspended = ProviderFactory(slug="suspended-co", state=ProviderState.SUSPENDED)
    MappingFactory(provider=suspended, hub_model=llama)
    MappingFactory(provider=ProviderFactory(slug="together"), hub_model=llama)

    assert list(provider_mapping(api_client, LLAMA)) == ["together"]
    assert list(provider_mapping(api_client, LLAMA, member_headers(suspended))) == ["together"]
    listed = api_client.get("/api/models?inference_provider=suspended-co").json()
    assert listed == []


def test_a_suspended_providers_mapping_does_not_make_a_model_warm(api_client, llama):
    suspended = ProviderFactory(slug="suspended-co", state=ProviderState.SUSPENDED)
    MappingFactory(provider=suspended, hub_model=llama)

    body = api_client.get(model_url(LLAMA, "expand=inference")).json()
    listed = api_client.get("/api/models?inference=warm").json()

    assert "inference" not in body
    assert listed == []


# --- model list ------------------------------------------------------------------------------
@pytest.fixture
def served():
    """Four models; together serves a/one and b/two, groq b/two and c/three, d/four is unserved."""
    together = ProviderFactory(slug="together")
    groq = ProviderFactory(slug="groq")
    one = HubModelFactory(model_id="a/one", author="a", pipeline_tag="text-generation")
    two = HubModelFactory(model_id="b/two", author="b", pipeline_tag="text-to-image", tags=[])
    three = HubModelFactory(model_id="c/three", author="c", pipeline_tag="text-generation")
    HubModelFactory(model_id="d/four", author="d", pipeline_tag="text-generation")
    MappingFactory(provider=together, hub_model=one)
    MappingFactory(provider=together, hub_model=two, task="text-to-image")
    MappingFactory(provider=groq, hub_model=two, task="text-to-image")
    MappingFactory(provider=groq, hub_model=three, health=MappingHealth.ERROR)
    return {"together": together, "groq": groq}


def listed_ids(api_client, query: str, headers=None) -> list[str]:
    response = api_client.get(f"/api/models?{query}", **(headers or {}))
    assert response.status_code == 200, response.content
    return [m["id"] for m in response.json()]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("inference_provider=together", ["a/one", "b/two"]),
        ("inference_provider=groq", ["b/two", "c/three"]),
        ("inference_provider=together,groq", ["a/one", "b/two", "c/three"]),
        ("inference_provider=together&inference_provider=groq", ["a/one", "b/two", "c/three"]),
        ("inference_provider=all", ["a/one", "b/two", "c/three"]),
        ("inference_provider=nobody", []),
        ("", ["a/one", "b/two", "c/three", "d/four"]),
        ("pipeline_tag=text-generation", ["a/one", "c/three", "d/four"]),
        ("inference_provider=all&pipeline_tag=text-generation", ["a/one", "c/three"]),
        ("author=c", ["c/three"]),
        ("search=t", ["b/two", "c/three"]),
        ("search=THREE", ["c/three"]),
        ("inference=warm", ["a/one", "b/two"]),
        ("inference=warm&inference_provider=groq", ["b/two"]),
    ],
)
def test_the_model_list_filters(api_client, served, query, expected):
    assert listed_ids(api_client, query) == expected


def test_the_model_list_by_provider_counts_staging_only_for_members(api_client, served):
    MappingFactory(
        provider=served["groq"],
        hub_model=HubModel.objects.get(model_id="d/four"),
        status=MappingStatus.STAGING,
    )

    anonymous = listed_ids(api_client, "inference_provider=groq")
    member = listed_ids(api_client, "inference_provider=groq", member_headers(served["groq"]))

    assert anonymous == ["b/two", "c/three"]
    assert member == ["b/two", "c/three", "d/four"]


def test_the_model_list_by_provider_includes_tag_filter_matches(api_client, lora):
    TagFilterMappingFactory(provider=ProviderFactory(slug="fal-ai"))
    HubModelFactory(model_id="someone/other", pipeline_tag="text-to-image", tags=["lora"])

    assert listed_ids(api_client, "inference_provider=fal-ai") == [LORA]


def test_the_model_list_refuses_an_unknown_inference_filter(api_client, served):
    response = api_client.get("/api/models?inference=cold")

    assert response.status_code == 400
    assert "inference" in response.json()["fields"]


def next_link(response) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    url = urlsplit(match.group(1))
    return f"{url.path}?{url.query}"


def collect_pages(api_client, url: str) -> tuple[list[str], int]:
    ids, pages = [], 0
    while url:
        response = api_client.get(url)
        assert response.status_code == 200, response.content
        ids += [m["id"] for m in response.json()]
        pages += 1
        assert pages < 50, "pagination does not end"
        url = next_link(response)
    return ids, pages


def test_the_link_header_pages_through_every_model_once_in_id_order(api_client):
    model_ids = [f"org-{i % 3}/model-{i:02d}" for i in range(11)]
    for model_id in reversed(model_ids):
        HubModelFactory(model_id=model_id)

    ids, pages = collect_pages(api_client, "/api/models?limit=3")

    assert ids == sorted(model_ids)
    assert pages == 4


def test_the_link_header_keeps_the_filters(api_client):
    provider = ProviderFactory(slug="together")
    for i in range(7):
        model = HubModelFactory(model_id=f"org/served-{i}")
        MappingFactory(provider=provider, hub_model=model)
        HubModelFactory(model_id=f"org/unserved-{i}")

    ids, pages = collect_pages(
        api_client,
        "/api/models?inference_provider=together&limit=2&expand=inferenceProviderMapping",
    )

    assert ids == [f"org/served-{i}" for i in range(7)]
    assert pages == 4


def test_a_page_that_ends_the_list_has_no_link_header(api_client):
    for i in range(3):
        HubModelFactory(model_id=f"org/model-{i}")

    exact = api_client.get("/api/models?limit=3")
    more = api_client.get("/api/models?limit=2")

    assert len(exact.json()) == 3
    assert "Link" not in exact.headers
    assert len(more.json()) == 2
    assert "Link" in more.headers


@pytest.mark.parametrize("limit", ["abc", "0", "-1", "1.5", ""])
def test_a_bad_limit_is_a_400_naming_limit(api_client, limit):
    HubModelFactory()

    response = api_client.get(f"/api/models?limit={limit}")

    assert response.status_code == 400, response.content
    assert "limit" in response.json()["fields"]
    assert "limit" in response.json()["error"]


def test_a_huge_limit_is_capped(api_client):
    HubModel.objects.bulk_create(
        [HubModel(model_id=f"bulk/model-{i:04d}", author="bulk") for i in range(1001)]
    )

    response = api_client.get("/api/models?limit=1000000000000")

    assert response.status_code == 200
    assert len(response.json()) == 1000
    assert "Link" in response.headers


@pytest.mark.parametrize("cursor", ["garbage", "!!!!", "%FF%FE"])
def test_a_garbage_cursor_is_a_400(api_client, cursor):
    HubModelFactory()

    response = api_client.get(f"/api/models?cursor={cursor}")

    assert response.status_code == 400, response.content
    assert "cursor" in response.json()["fields"]


def test_the_list_returns_the_mapping_in_list_form(api_client, llama, lora):
    MappingFactory(provider=ProviderFactory(slug="together"), hub_model=llama)
    MappingFactory(provider=ProviderFactory(slug="cerebras"), hub_model=llama, provider_model="c")
    TagFilterMappingFactory(provider=ProviderFactory(slug="fal-ai"))

    response = api_client.get("/api/models?inference_provider=all&expand=inferenceProviderMapping")

    assert response.status_code == 200
    assert response.json() == [
        {
            "_id": llama.hub_id,
            "id": LLAMA,
            "inferenceProviderMapping": [
                {
                    "provider": "cerebras",
                    "hfModelId": LLAMA,
                    "status": "live",
                    "providerId": "c",
                    "task": "conversational",
                },
                {
                    "provider": "together",
                    "hfModelId": LLAMA,
                    "status": "live",
                    "providerId": f"{LLAMA}-turbo",
                    "task": "conversational",
                },
            ],
        },
        {
            "_id": lora.hub_id,
            "id": LORA,
            "inferenceProviderMapping": [
                {
                    "provider": "fal-ai",
                    "hfModelId": LORA,
                    "status": "live",
                    "providerId": "flux-lora",
                    "task": "text-to-image",
                    "type": "tag-filter",
                    "adapter": "lora",
                    "adapterWeightsPath": "ghibli.safetensors",
                }
            ],
        },
    ]


def test_the_list_with_expand_inference_marks_warm_models(api_client, served):
    body = api_client.get("/api/models?expand=inference").json()

    assert {m["id"]: m.get("inference") for m in body} == {
        "a/one": "warm",
        "b/two": "warm",
        "c/three": None,
        "d/four": None,
    }
    assert all(set(m) <= {"_id", "id", "inference"} for m in body)


def test_the_list_datetimes_end_in_z(api_client, llama):
    body = api_client.get("/api/models").json()

    assert body[0]["createdAt"].endswith("Z")
    assert body[0]["lastModified"].endswith("Z")

    expanded = api_client.get("/api/models?expand=createdAt&expand=lastModified").json()
    assert set(expanded[0]) == {"_id", "id", "createdAt", "lastModified"}
    assert expanded[0]["createdAt"].endswith("Z")


def test_the_list_refuses_an_unknown_expand_value(api_client, llama):
    response = api_client.get("/api/models?expand=bogus")

    assert response.status_code == 400
    assert "expand" in response.json()["fields"]


def test_the_expanded_list_takes_the_same_number_of_queries_for_3_or_40_models(api_client):
    providers = [ProviderFactory(slug=s) for s in ["cerebras", "fal-ai", "groq", "together"]]
    for base in range(3):
        TagFilterMappingFactory(
            provider=providers[1], tags=sorted(["lora", f"base_model:adapter:base/{base}"])
        )

    def add_models(start: int, count: int) -> None:
        for i in range(start, start + count):
            model = HubModelFactory(
                model_id=f"org/model-{i:03d}",
                tags=["conversational", "lora", f"base_model:adapter:base/{i % 3}"],
                adapter_weights_path=f"w{i}.safetensors",
            )
            MappingFactory(provider=providers[0], hub_model=model)
            MappingFactory(provider=providers[2], hub_model=model, health="error")
            MappingFactory(provider=providers[3], hub_model=model, status="staging")

    url = "/api/models?expand=inferenceProviderMapping&expand=inference"
    add_models(0, 3)
    with CaptureQueriesContext(connection) as few:
        small = api_client.get(url)
    add_models(3, 37)
    with CaptureQueriesContext(connection) as many:
        large = api_client.get(url)

    assert small.status_code == large.status_code == 200
    assert len(small.json()) == 3
    assert len(large.json()) == 40
    for model in large.json():
        providers_seen = [e["provider"] for e in model["inferenceProviderMapping"]]
        assert providers_seen == ["cerebras", "fal-ai", "groq"]  # together is staging
        assert model["inference"] == "warm"
    assert len(many.captured_queries) == len(few.captured_queries)
    assert len(many.captured_queries) <= 3
