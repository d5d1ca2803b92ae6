"""HTTP tests of the partner Model Mapping API: /api/partners/<provider>/models[...]."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import OrgPlan, Role
from accounts.tests.factories import MembershipFactory, UserFactory, bearer, token_for
from registry.models import Mapping, MappingHealth, MappingStatus, MappingType
from registry.tests.factories import (
    HubModelFactory,
    MappingFactory,
    ProviderFactory,
    TagFilterMappingFactory,
)

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
FLUX = "black-forest-labs/FLUX.1-dev"
GPT2 = "openai-community/gpt2"
VISION = "meta-llama/Llama-3.2-11B-Vision-Instruct"
FLUX_LORA_TAGS = ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"]
OBJECT_ID = re.compile(r"^[0-9a-f]{24}\Z")
UNKNOWN_ID = "0123456789abcdef01234567"


def models_url(slug: str = "together") -> str:
    return f"/api/partners/{slug}/models"


def member_headers(provider, role=Role.WRITE, scope="write", permissions=()) -> dict:
    """Authorization for a fresh user with `role` in `provider`'s organization."""
    user = UserFactory()
    MembershipFactory(user=user, organization=provider.organization, role=role)
    return bearer(token_for(user, scope, permissions))


def snapshot() -> list[tuple]:
    """Every mapping, every field a request could change."""
    return list(
        Mapping.objects.order_by("pk").values_list(
            "public_id", "provider__slug", "task", "type", "hub_model__model_id", "tags",
            "adapter_type", "provider_model", "status", "health", "updated_at",
        )
    )  # fmt: skip


@pytest.fixture
def provider():
    return ProviderFactory(slug="together")


@pytest.fixture
def catalog():
    """Hub models of several kinds."""
    return {
        LLAMA: HubModelFactory(
            model_id=LLAMA, pipeline_tag="text-generation", tags=["transformers", "conversational"]
        ),
        QWEN: HubModelFactory(
            model_id=QWEN, pipeline_tag="text-generation", tags=["conversational"]
        ),
        FLUX: HubModelFactory(model_id=FLUX, pipeline_tag="text-to-image", tags=["diffusers"]),
        GPT2: HubModelFactory(model_id=GPT2, pipeline_tag="text-generation", tags=["transformers"]),
        VISION: HubModelFactory(
            model_id=VISION, pipeline_tag="image-text-to-text", tags=["conversational", "vision"]
        ),
    }


@pytest.fixture
def writer(provider):
    return member_headers(provider)


# --- create ----------------------------------------------------------------------------------
def test_creating_a_single_model_mapping_returns_the_item_in_staging(
    api_client, provider, catalog, writer
):
    response = api_client.post(
        models_url(),
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "llama-3.1-8b-turbo"},
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content
    item = response.json()
    assert OBJECT_ID.match(item["_id"])
    assert item["task"] == "conversational"
    assert item["hfModel"] == LLAMA
    assert item["providerModel"] == "llama-3.1-8b-turbo"
    assert item["status"] == "staging"
    stored = Mapping.objects.get(public_id=item["_id"])
    assert stored.provider == provider
    assert stored.hub_model == catalog[LLAMA]
    assert stored.type == MappingType.SINGLE_MODEL
    assert stored.status == MappingStatus.STAGING


def test_creating_a_mapping_with_status_live_stores_it_live(api_client, catalog, writer):
    response = api_client.post(
        models_url(),
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "x", "status": "live"},
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "live"
    assert Mapping.objects.get(public_id=response.json()["_id"]).status == MappingStatus.LIVE


def test_creating_a_tag_filter_mapping_stores_its_tags_sorted(
    api_client, provider, catalog, writer
):
    response = api_client.post(
        models_url(),
        {
            "type": "tag-filter",
            "task": "text-to-image",
            "tags": ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"],
            "providerModel": "flux-lora",
            "adapterType": "lora",
        },
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content
    item = response.json()
    assert OBJECT_ID.match(item["_id"])
    assert item["type"] == "tag-filter"
    assert item["tags"] == ["base_model:adapter:black-forest-labs/FLUX.1-dev", "lora"]
    assert item["adapterType"] == "lora"
    assert item["status"] == "staging"
    assert "hfModel" not in item
    stored = Mapping.objects.get(public_id=item["_id"])
    assert stored.tags == ["base_model:adapter:black-forest-labs/FLUX.1-dev", "lora"]
    assert stored.hub_model is None
    assert stored.provider == provider


def test_an_image_text_to_text_model_tagged_conversational_can_serve_conversational(
    api_client, catalog, writer
):
    response = api_client.post(
        models_url(),
        {"task": "conversational", "hfModel": VISION, "providerModel": "vision"},
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content
    assert Mapping.objects.filter(hub_model=catalog[VISION], task="conversational").exists()


def test_a_model_can_be_mapped_for_its_own_pipeline_tag(api_client, catalog, writer):
    response = api_client.post(
        models_url(),
        {"task": "text-to-image", "hfModel": FLUX, "providerModel": "flux-dev"},
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content


# --- duplicates ------------------------------------------------------------------------------
def test_mapping_the_same_model_for_the_same_task_twice_is_a_conflict(
    api_client, provider, catalog, writer
):
    body = {"task": "conversational", "hfModel": LLAMA, "providerModel": "first"}
    assert api_client.post(models_url(), body, format="json", **writer).status_code == 201
    before = snapshot()

    again = api_client.post(
        models_url(), {**body, "providerModel": "second"}, format="json", **writer
    )

    assert again.status_code == 409, again.content
    assert again.json()["error_type"] == "conflict"
    assert LLAMA in again.json()["error"]
    assert snapshot() == before


def test_the_same_tag_set_in_another_order_is_a_conflict(api_client, provider, catalog, writer):
    body = {
        "type": "tag-filter",
        "task": "text-to-image",
        "tags": ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"],
        "providerModel": "flux-lora",
        "adapterType": "lora",
    }
    assert api_client.post(models_url(), body, format="json", **writer).status_code == 201
    before = snapshot()

    again = api_client.post(
        models_url(),
        {**body, "tags": ["base_model:adapter:black-forest-labs/FLUX.1-dev", "lora"]},
        format="json",
        **writer,
    )

    assert again.status_code == 409, again.content
    assert "tags" in again.json()["fields"]
    assert snapshot() == before


def test_the_same_model_for_another_task_is_not_a_conflict(api_client, catalog, writer):
    first = {"task": "conversational", "hfModel": LLAMA, "providerModel": "chat"}
    second = {"task": "text-generation", "hfModel": LLAMA, "providerModel": "completion"}

    assert api_client.post(models_url(), first, format="json", **writer).status_code == 201
    assert api_client.post(models_url(), second, format="json", **writer).status_code == 201
    assert Mapping.objects.filter(hub_model=catalog[LLAMA]).count() == 2


def test_the_same_tag_set_for_another_task_is_not_a_conflict(api_client, catalog, writer):
    body = {
        "type": "tag-filter",
        "task": "conversational",
        "tags": ["lora", f"base_model:adapter:{LLAMA}"],  # a chat model: two tasks
        "providerModel": "llama-lora",
        "adapterType": "lora",
    }

    assert api_client.post(models_url(), body, format="json", **writer).status_code == 201
    other = api_client.post(
        models_url(), {**body, "task": "text-generation"}, format="json", **writer
    )

    assert other.status_code == 201, other.content
    assert Mapping.objects.filter(type=MappingType.TAG_FILTER).count() == 2


def test_the_same_model_for_another_provider_is_not_a_conflict(
    api_client, provider, catalog, writer
):
    other = ProviderFactory(slug="fireworks-ai")
    MappingFactory(provider=other, hub_model=catalog[LLAMA], task="conversational")

    response = api_client.post(
        models_url(),
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "llama"},
        format="json",
        **writer,
    )

    assert response.status_code == 201, response.content
    assert Mapping.objects.filter(hub_model=catalog[LLAMA]).count() == 2


# --- authorization ---------------------------------------------------------------------------
ALLOWED = None

ACTORS = [
    pytest.param("anonymous", 401, "credentials", id="anonymous"),
    pytest.param("non_member", 403, "not a member", id="non-member"),
    pytest.param("read_member", 403, "role", id="read-member"),
    pytest.param("write_member_read_token", 403, "read-only", id="write-member-read-token"),
    pytest.param("write_member", ALLOWED, None, id="write-member"),
    pytest.param("admin_member", ALLOWED, None, id="admin-member"),
    pytest.param("fine_grained_no_permissions", 403, "org.write", id="fine-grained-none"),
    pytest.param("fine_grained_with_permissions", 403, "org.write", id="fine-grained-some"),
    pytest.param("fine_grained_org_write", ALLOWED, None, id="fine-grained-org-write"),
    pytest.param("other_provider_member", 403, "not a member", id="other-provider-member"),
    pytest.param("free_plan_write_member", 403, "'free' plan", id="free-plan"),
    pytest.param("team_plan_write_member", ALLOWED, None, id="team-plan"),
]

OPERATIONS = [
    pytest.param("create", 201, id="POST"),
    pytest.param("delete", 204, id="DELETE-id"),
    pytest.param("set_status", 200, id="PUT-id-status"),
    pytest.param("legacy_delete", 204, id="DELETE-hfModel"),
    pytest.param("legacy_set_status", 200, id="PUT-status"),
]


def actor_headers(actor: str, provider) -> dict:
    if actor == "anonymous":
        return {}
    if actor == "non_member":
        return bearer(token_for(UserFactory(), "write"))
    if actor == "read_member":
        return member_headers(provider, role=Role.READ)
    if actor == "write_member_read_token":
        return member_headers(provider, scope="read")
    if actor in ("write_member", "free_plan_write_member", "team_plan_write_member"):
        return member_headers(provider)
    if actor == "admin_member":
        return member_headers(provider, role=Role.ADMIN)
    if actor == "fine_grained_no_permissions":
        return member_headers(provider, scope="fine-grained")
    if actor == "fine_grained_with_permissions":
        return member_headers(
            provider, scope="fine-grained", permissions=["inference.serverless.write"]
        )
    if actor == "fine_grained_org_write":
        return member_headers(provider, scope="fine-grained", permissions=["org.write"])
    if actor == "other_provider_member":
        return member_headers(ProviderFactory(slug="fal-ai"), role=Role.ADMIN)
    raise AssertionError(actor)


def perform(api_client, operation: str, mapping, headers: dict):
    base = models_url(mapping.provider.slug)
    if operation == "create":
        body = {"task": "conversational", "hfModel": QWEN, "providerModel": "qwen"}
        return api_client.post(base, body, format="json", **headers)
    if operation == "delete":
        return api_client.delete(f"{base}/{mapping.public_id}", **headers)
    if operation == "set_status":
        url = f"{base}/{mapping.public_id}/status"
        return api_client.put(url, {"status": "live"}, format="json", **headers)
    if operation == "legacy_delete":
        return api_client.delete(f"{base}?hfModel={LLAMA}", **headers)
    if operation == "legacy_set_status":
        body = {"hfModel": LLAMA, "status": "live"}
        return api_client.put(f"{base}/status", body, format="json", **headers)
    raise AssertionError(operation)


def assert_performed(operation: str, mapping) -> None:
    if operation == "create":
        created = Mapping.objects.get(hub_model__model_id=QWEN)
        assert created.provider_id == mapping.provider_id
        assert created.provider_model == "qwen"
    elif operation in ("delete", "legacy_delete"):
        assert not Mapping.objects.filter(pk=mapping.pk).exists()
    else:
        mapping.refresh_from_db()
        assert mapping.status == MappingStatus.LIVE


@pytest.mark.parametrize(("operation", "success_status"), OPERATIONS)
@pytest.mark.parametrize(("actor", "refused_status", "message"), ACTORS)
def test_only_write_members_of_a_team_or_enterprise_provider_org_may_change_mappings(
    api_client, catalog, operation, success_status, actor, refused_status, message
):
    provider = ProviderFactory(slug="together")
    if actor == "free_plan_write_member":
        provider.organization.plan = OrgPlan.FREE
        provider.organization.save()
    elif actor == "team_plan_write_member":
        provider.organization.plan = OrgPlan.TEAM
        provider.organization.save()
    mapping = MappingFactory(
        provider=provider, hub_model=catalog[LLAMA], status=MappingStatus.STAGING
    )
    headers = actor_headers(actor, provider)
    before = snapshot()

    response = perform(api_client, operation, mapping, headers)

    if refused_status is ALLOWED:
        assert response.status_code == success_status, response.content
        assert_performed(operation, mapping)
    else:
        assert response.status_code == refused_status, response.content
        assert message in response.json()["error"]
        assert snapshot() == before


def test_a_read_member_is_told_which_role_is_needed(api_client, provider, catalog):
    response = api_client.post(
        models_url(),
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "x"},
        format="json",
        **member_headers(provider, role=Role.READ),
    )

    assert response.status_code == 403
    assert response.json()["error_type"] == "role_insufficient"
    assert "'read'" in response.json()["error"]
    assert "'write' or 'admin'" in response.json()["error"]


# --- not found -------------------------------------------------------------------------------
def test_listing_an_unknown_provider_is_not_found(api_client):
    response = api_client.get(models_url("nobody"))

    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"
    assert "nobody" in response.json()["error"]


def test_creating_for_an_unknown_provider_is_not_found(api_client, user, catalog):
    response = api_client.post(
        models_url("nobody"),
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "x"},
        format="json",
        **bearer(token_for(user, "write")),
    )

    assert response.status_code == 404
    assert "nobody" in response.json()["error"]
    assert not Mapping.objects.exists()


@pytest.mark.parametrize("mapping_id", [UNKNOWN_ID, "xyz", UNKNOWN_ID.upper()])
def test_deleting_an_unknown_or_malformed_id_is_not_found(
    api_client, provider, catalog, writer, mapping_id
):
    MappingFactory(provider=provider, hub_model=catalog[LLAMA])
    before = snapshot()

    response = api_client.delete(f"{models_url()}/{mapping_id}", **writer)

    assert response.status_code == 404, response.content
    assert response.json()["error_type"] == "not_found"
    assert snapshot() == before


@pytest.mark.parametrize("mapping_id", [UNKNOWN_ID, "xyz"])
def test_setting_the_status_of_an_unknown_or_malformed_id_is_not_found(
    api_client, provider, catalog, writer, mapping_id
):
    MappingFactory(provider=provider, hub_model=catalog[LLAMA], status=MappingStatus.STAGING)
    before = snapshot()

    response = api_client.put(
        f"{models_url()}/{mapping_id}/status", {"status": "live"}, format="json", **writer
    )

    assert response.status_code == 404, response.content
    assert snapshot() == before


def test_deleting_another_providers_mapping_is_not_found_and_keeps_it(
    api_client, provider, catalog, writer
):
    theirs = MappingFactory(provider=ProviderFactory(slug="fal-ai"), hub_model=catalog[LLAMA])
    before = snapshot()

    response = api_client.delete(f"{models_url()}/{theirs.public_id}", **writer)

    assert response.status_code == 404, response.content
    assert Mapping.objects.filter(pk=theirs.pk).exists()
    assert snapshot() == before


def test_setting_the_status_of_another_providers_mapping_is_not_found_and_keeps_it(
    api_client, provider, catalog, writer
):
    theirs = MappingFactory(
        provider=ProviderFactory(slug="fal-ai"),
        hub_model=catalog[LLAMA],
        status=MappingStatus.STAGING,
    )
    before = snapshot()

    response = api_client.put(
        f"{models_url()}/{theirs.public_id}/status", {"status": "live"}, format="json", **writer
    )

    assert response.status_code == 404, response.content
    theirs.refresh_from_db()
    assert theirs.status == MappingStatus.STAGING
    assert snapshot() == before


# --- validation ------------------------------------------------------------------------------
def tag_filter(**overrides) -> dict:
    body = {
        "type": "tag-filter",
        "task": "text-to-image",
        "tags": FLUX_LORA_TAGS,
        "providerModel": "flux-lora",
        "adapterType": "lora",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def single(**overrides) -> dict:
    body = {"task": "conversational", "hfModel": LLAMA, "providerModel": "llama"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


INVALID_BODIES = [
    pytest.param(single(hfModel=FLUX), "task", "does not support task", id="text-to-image-as-chat"),
    pytest.param(
        single(hfModel=GPT2), "task", "does not support task", id="untagged-text-generation-as-chat"
    ),
    pytest.param(
        single(task="text-to-image"), "task", "does not support task", id="chat-model-as-image"
    ),
    pytest.param(single(hfModel="nobody/nothing"), "hfModel", "nobody/nothing", id="unknown-model"),
    pytest.param(single(task="dancing"), "task", "dancing", id="unknown-task"),
    pytest.param(single(task=...), "task", "required", id="missing-task"),
    pytest.param(single(hfModel=...), "hfModel", "required", id="missing-hfModel"),
    pytest.param(
        single(providerModel=...), "providerModel", "required", id="missing-providerModel"
    ),
    pytest.param(single(providerModel=""), "providerModel", "", id="empty-providerModel"),
    pytest.param(single(providerModel="x" * 256), "providerModel", "255", id="long-providerModel"),
    pytest.param(single(status="prod"), "status", "prod", id="status-prod"),
    pytest.param(single(colour="blue"), "colour", "Unknown field", id="unknown-field"),
    pytest.param(single(tags=["lora"]), "tags", "tag-filter", id="tags-in-single-model"),
    pytest.param(single(adapterType="lora"), "adapterType", "", id="adapterType-in-single-model"),
    pytest.param(single(type="multi-model"), "type", "multi-model", id="unknown-type"),
    pytest.param(tag_filter(tags=[]), "tags", "empty", id="tags-empty"),
    pytest.param(tag_filter(tags=...), "tags", "empty", id="tags-missing"),
    pytest.param(tag_filter(tags=["lora", "lora"]), "tags", "duplicate", id="tags-duplicate"),
    pytest.param(tag_filter(tags=["lora", ""]), "tags.1", "blank", id="tags-with-an-empty-tag"),
    pytest.param(tag_filter(adapterType="dora"), "adapterType", "lora", id="adapterType-dora"),
    pytest.param(tag_filter(adapterType=...), "adapterType", "lora", id="adapterType-missing"),
    pytest.param(tag_filter(hfModel=FLUX), "hfModel", "tag-filter", id="hfModel-in-tag-filter"),
    pytest.param(tag_filter(status="prod"), "status", "prod", id="tag-filter-status-prod"),
    pytest.param(tag_filter(task="dancing"), "task", "dancing", id="tag-filter-unknown-task"),
]


@pytest.mark.parametrize(("body", "field", "fragment"), INVALID_BODIES)
def test_an_invalid_create_is_a_400_naming_the_field_and_writes_nothing(
    api_client, catalog, writer, body, field, fragment
):
    response = api_client.post(models_url(), body, format="json", **writer)

    assert response.status_code == 400, response.content
    error = response.json()
    assert field in error["fields"], error
    assert field in error["error"], error
    assert fragment in error["error"], error
    assert error["error_type"]
    assert not Mapping.objects.exists()


def test_a_json_list_body_is_a_400(api_client, catalog, writer):
    response = api_client.post(models_url(), [single()], format="json", **writer)

    assert response.status_code == 400, response.content
    assert "JSON object" in response.json()["error"]
    assert "non_field_errors" in response.json()["fields"]
    assert not Mapping.objects.exists()


def test_a_malformed_json_body_is_a_400(api_client, catalog, writer):
    response = api_client.post(
        models_url(), data='{"task": "conversational",', content_type="application/json", **writer
    )

    assert response.status_code == 400, response.content
    assert response.json()["error_type"] == "parse_error"
    assert "JSON" in response.json()["error"]
    assert not Mapping.objects.exists()


# --- status ----------------------------------------------------------------------------------
def test_setting_the_status_to_live_shows_it_live(api_client, provider, catalog, writer):
    mapping = MappingFactory(
        provider=provider, hub_model=catalog[LLAMA], status=MappingStatus.STAGING
    )

    response = api_client.put(
        f"{models_url()}/{mapping.public_id}/status", {"status": "live"}, format="json", **writer
    )

    assert response.status_code == 200, response.content
    assert response.json()["_id"] == mapping.public_id
    assert response.json()["status"] == "live"
    listed = api_client.get(models_url()).json()
    assert listed["conversational"][LLAMA]["status"] == "live"
    mapping.refresh_from_db()
    assert mapping.status == MappingStatus.LIVE


def test_setting_the_status_back_to_staging_works(api_client, provider, catalog, writer):
    mapping = MappingFactory(provider=provider, hub_model=catalog[LLAMA], status="live")

    response = api_client.put(
        f"{models_url()}/{mapping.public_id}/status", {"status": "staging"}, format="json", **writer
    )

    assert response.status_code == 200, response.content
    mapping.refresh_from_db()
    assert mapping.status == MappingStatus.STAGING


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"status": "prod"}, "status", id="bad-status"),
        pytest.param({}, "status", id="missing-status"),
        pytest.param({"status": "live", "colour": "blue"}, "colour", id="unknown-field"),
    ],
)
def test_an_invalid_status_change_is_a_400_and_changes_nothing(
    api_client, provider, catalog, writer, body, field
):
    mapping = MappingFactory(
        provider=provider, hub_model=catalog[LLAMA], status=MappingStatus.STAGING
    )
    before = snapshot()

    response = api_client.put(
        f"{models_url()}/{mapping.public_id}/status", body, format="json", **writer
    )

    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert field in response.json()["error"]
    assert snapshot() == before


# --- delete ----------------------------------------------------------------------------------
def test_a_deleted_mapping_leaves_the_list_and_cannot_be_deleted_twice(
    api_client, provider, catalog, writer
):
    mapping = MappingFactory(provider=provider, hub_model=catalog[LLAMA])
    kept = MappingFactory(provider=provider, hub_model=catalog[QWEN])
    url = f"{models_url()}/{mapping.public_id}"

    first = api_client.delete(url, **writer)

    assert first.status_code == 204, first.content
    listed = api_client.get(models_url()).json()
    assert LLAMA not in listed["conversational"]
    assert listed["conversational"][QWEN]["_id"] == kept.public_id
    assert api_client.delete(url, **writer).status_code == 404


def test_a_tag_filter_mapping_can_be_deleted_by_id(api_client, provider, writer):
    mapping = TagFilterMappingFactory(provider=provider)

    response = api_client.delete(f"{models_url()}/{mapping.public_id}", **writer)

    assert response.status_code == 204, response.content
    assert not Mapping.objects.exists()


# --- deprecated forms ------------------------------------------------------------------------
@pytest.fixture
def two_providers_mapping_llama(provider, catalog):
    other = ProviderFactory(slug="fireworks-ai")
    return {
        "chat": MappingFactory(
            provider=provider, hub_model=catalog[LLAMA], task="conversational", status="staging"
        ),
        "completion": MappingFactory(
            provider=provider, hub_model=catalog[LLAMA], task="text-generation", status="staging"
        ),
        "other_model": MappingFactory(provider=provider, hub_model=catalog[QWEN], status="staging"),
        "tag_filter": TagFilterMappingFactory(provider=provider, status="staging"),
        "other_provider": MappingFactory(
            provider=other, hub_model=catalog[LLAMA], status="staging"
        ),
    }


def test_the_deprecated_delete_removes_only_this_providers_mappings_of_the_model(
    api_client, writer, two_providers_mapping_llama
):
    mappings = two_providers_mapping_llama

    response = api_client.delete(f"{models_url()}?hfModel={LLAMA}", **writer)

    assert response.status_code == 204, response.content
    remaining = set(Mapping.objects.values_list("pk", flat=True))
    assert remaining == {
        mappings["other_model"].pk,
        mappings["tag_filter"].pk,
        mappings["other_provider"].pk,
    }


def test_the_deprecated_delete_without_hf_model_is_a_400(
    api_client, writer, two_providers_mapping_llama
):
    before = snapshot()

    response = api_client.delete(models_url(), **writer)

    assert response.status_code == 400, response.content
    assert "hfModel" in response.json()["fields"]
    assert "hfModel" in response.json()["error"]
    assert snapshot() == before


def test_the_deprecated_delete_of_an_unmapped_model_is_not_found(
    api_client, writer, catalog, two_providers_mapping_llama
):
    before = snapshot()

    unmapped = api_client.delete(f"{models_url()}?hfModel={FLUX}", **writer)
    unknown = api_client.delete(f"{models_url()}?hfModel=nobody/nothing", **writer)

    assert unmapped.status_code == 404, unmapped.content
    assert unknown.status_code == 404, unknown.content
    assert snapshot() == before


def test_the_deprecated_delete_of_a_model_only_another_provider_maps_is_not_found(
    api_client, writer, catalog, provider
):
    theirs = MappingFactory(provider=ProviderFactory(slug="fal-ai"), hub_model=catalog[LLAMA])

    response = api_client.delete(f"{models_url()}?hfModel={LLAMA}", **writer)

    assert response.status_code == 404, response.content
    assert Mapping.objects.filter(pk=theirs.pk).exists()


def test_the_deprecated_status_change_sets_this_providers_mappings_of_the_model(
    api_client, writer, two_providers_mapping_llama
):
    mappings = two_providers_mapping_llama

    response = api_client.put(
        f"{models_url()}/status", {"hfModel": LLAMA, "status": "live"}, format="json", **writer
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert sorted(item["_id"] for item in body) == sorted(
        [mappings["chat"].public_id, mappings["completion"].public_id]
    )
    assert {item["status"] for item in body} == {"live"}
    statuses = {name: Mapping.objects.get(pk=m.pk).status for name, m in mappings.items()}
    assert statuses == {
        "chat": "live",
        "completion": "live",
        "other_model": "staging",
        "tag_filter": "staging",
        "other_provider": "staging",
    }


@pytest.mark.parametrize(
    ("body", "status_code", "field"),
    [
        pytest.param({"status": "live"}, 400, "hfModel", id="missing-hfModel"),
        pytest.param({"hfModel": LLAMA, "status": "prod"}, 400, "status", id="bad-status"),
        pytest.param({"hfModel": LLAMA}, 400, "status", id="missing-status"),
        pytest.param(
            {"hfModel": LLAMA, "status": "live", "colour": "blue"}, 400, "colour", id="unknown"
        ),
        pytest.param({"hfModel": FLUX, "status": "live"}, 404, "hfModel", id="unmapped-model"),
    ],
)
def test_an_invalid_deprecated_status_change_changes_nothing(
    api_client, writer, two_providers_mapping_llama, body, status_code, field
):
    before = snapshot()

    response = api_client.put(f"{models_url()}/status", body, format="json", **writer)

    assert response.status_code == status_code, response.content
    assert field in response.json()["fields"]
    assert snapshot() == before


# --- list ------------------------------------------------------------------------------------
def test_the_list_is_public_and_has_the_docs_shape_exactly(api_client, provider):
    canny = HubModelFactory(
        model_id="black-forest-labs/FLUX.1-Canny-dev", pipeline_tag="text-to-image", tags=[]
    )
    depth = HubModelFactory(
        model_id="black-forest-labs/FLUX.1-Depth-dev", pipeline_tag="text-to-image", tags=[]
    )
    r1 = HubModelFactory(model_id="deepseek-ai/DeepSeek-R1")
    llama2 = HubModelFactory(model_id="meta-llama/Llama-2-70b-hf", tags=[])
    mixtral = HubModelFactory(model_id="mistralai/Mixtral-8x7B-v0.1", tags=[])
    m = {
        "canny": MappingFactory(
            provider=provider, hub_model=canny, task="text-to-image",
            provider_model="black-forest-labs/FLUX.1-canny",
        ),
        "depth": MappingFactory(
            provider=provider, hub_model=depth, task="text-to-image",
            provider_model="black-forest-labs/FLUX.1-depth",
        ),
        "sdxl": TagFilterMappingFactory(
            provider=provider, task="text-to-image", provider_model="sdxl-lora-mutualized",
            tags=["base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0", "lora"],
        ),
        "r1": MappingFactory(
            provider=provider, hub_model=r1, task="conversational",
            provider_model="deepseek-ai/DeepSeek-R1",
        ),
        "llama2": MappingFactory(
            provider=provider, hub_model=llama2, task="text-generation",
            provider_model="meta-llama/Llama-2-70b-hf",
        ),
        "mixtral": MappingFactory(
            provider=provider, hub_model=mixtral, task="text-generation",
            provider_model="mistralai/Mixtral-8x7B-v0.1",
        ),
    }  # fmt: skip
    MappingFactory(provider=ProviderFactory(slug="fal-ai"), hub_model=r1)  # not listed

    response = api_client.get(models_url())

    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "text-to-image": {
            "black-forest-labs/FLUX.1-Canny-dev": {
                "_id": m["canny"].public_id,
                "providerId": "black-forest-labs/FLUX.1-canny",
                "status": "live",
            },
            "black-forest-labs/FLUX.1-Depth-dev": {
                "_id": m["depth"].public_id,
                "providerId": "black-forest-labs/FLUX.1-depth",
                "status": "live",
            },
            "tag-filter=base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0,lora": {
                "_id": m["sdxl"].public_id,
                "status": "live",
                "providerId": "sdxl-lora-mutualized",
                "adapterType": "lora",
                "tags": ["base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0", "lora"],
            },
        },
        "conversational": {
            "deepseek-ai/DeepSeek-R1": {
                "_id": m["r1"].public_id,
                "providerId": "deepseek-ai/DeepSeek-R1",
                "status": "live",
            }
        },
        "text-generation": {
            "meta-llama/Llama-2-70b-hf": {
                "_id": m["llama2"].public_id,
                "providerId": "meta-llama/Llama-2-70b-hf",
                "status": "live",
            },
            "mistralai/Mixtral-8x7B-v0.1": {
                "_id": m["mixtral"].public_id,
                "providerId": "mistralai/Mixtral-8x7B-v0.1",
                "status": "live",
            },
        },
    }
    # Key order inside entries is the docs' too.
    assert list(body["conversational"]["deepseek-ai/DeepSeek-R1"]) == [
        "_id",
        "providerId",
        "status",
    ]
    tag_entry = body["text-to-image"][
        "tag-filter=base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0,lora"
    ]
    assert list(tag_entry) == ["_id", "status", "providerId", "adapterType", "tags"]
    assert all(OBJECT_ID.match(e["_id"]) for group in body.values() for e in group.values())


def test_the_list_of_a_provider_without_mappings_is_an_empty_object(api_client, provider):
    response = api_client.get(models_url())

    assert response.status_code == 200
    assert response.json() == {}


def test_the_list_shows_the_tag_filter_key_sorted_after_a_create_in_any_order(
    api_client, provider, catalog, writer
):
    api_client.post(
        models_url(),
        tag_filter(tags=["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"]),
        format="json",
        **writer,
    )

    listed = api_client.get(models_url()).json()

    assert list(listed["text-to-image"]) == [
        "tag-filter=base_model:adapter:black-forest-labs/FLUX.1-dev,lora"
    ]


@pytest.fixture
def live_and_staging(provider, catalog):
    return {
        "live": MappingFactory(provider=provider, hub_model=catalog[LLAMA], status="live"),
        "staging": MappingFactory(provider=provider, hub_model=catalog[QWEN], status="staging"),
        "staging_tags": TagFilterMappingFactory(provider=provider, status="staging"),
    }


def test_the_list_filters_live_mappings(api_client, live_and_staging):
    response = api_client.get(models_url() + "?status=live")

    assert response.status_code == 200
    assert response.json() == {
        "conversational": {
            LLAMA: {
                "_id": live_and_staging["live"].public_id,
                "providerId": live_and_staging["live"].provider_model,
                "status": "live",
            }
        }
    }


def test_the_list_filters_staging_mappings(api_client, live_and_staging):
    response = api_client.get(models_url() + "?status=staging")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"conversational", "text-to-image"}
    assert list(body["conversational"]) == [QWEN]
    assert list(body["text-to-image"]) == [
        "tag-filter=base_model:adapter:black-forest-labs/FLUX.1-dev,lora"
    ]
    assert {e["status"] for group in body.values() for e in group.values()} == {"staging"}


def test_the_list_without_a_filter_shows_live_and_staging(api_client, live_and_staging):
    body = api_client.get(models_url()).json()

    assert set(body["conversational"]) == {LLAMA, QWEN}
    assert len(body["text-to-image"]) == 1


def test_the_list_refuses_an_unknown_status_filter(api_client, live_and_staging):
    response = api_client.get(models_url() + "?status=bogus")

    assert response.status_code == 400
    assert "status" in response.json()["fields"]
    assert "status" in response.json()["error"]


def test_the_list_takes_the_same_number_of_queries_for_3_or_60_mappings(api_client, provider):
    def add_mappings(start: int, count: int) -> None:
        tasks = ["conversational", "text-generation", "text-to-image", "feature-extraction"]
        for i in range(start, start + count):
            task = tasks[i % len(tasks)]
            if i % 3 == 0:
                TagFilterMappingFactory(
                    provider=provider, task=task, tags=sorted(["lora", f"base_model:adapter:b/{i}"])
                )
            else:
                MappingFactory(
                    provider=provider,
                    task=task,
                    hub_model=HubModelFactory(model_id=f"org/model-{i}", pipeline_tag=task),
                    status="live" if i % 2 else "staging",
                )

    add_mappings(0, 3)
    with CaptureQueriesContext(connection) as few:
        small = api_client.get(models_url())
    add_mappings(3, 57)
    with CaptureQueriesContext(connection) as many:
        large = api_client.get(models_url())

    assert small.status_code == large.status_code == 200
    assert sum(len(group) for group in small.json().values()) == 3
    assert sum(len(group) for group in large.json().values()) == 60
    assert len(large.json()) == 4
    assert len(many.captured_queries) == len(few.captured_queries)
    assert len(many.captured_queries) <= 3


def test_the_list_is_served_without_health_or_other_private_fields(api_client, provider, catalog):
    MappingFactory(provider=provider, hub_model=catalog[LLAMA], health=MappingHealth.ERROR)

    entry = api_client.get(models_url()).json()["conversational"][LLAMA]

    assert set(entry) == {"_id", "providerId", "status"}
