"""demo_load loads the hub model catalog, the providers and their mappings from fixtures/."""

import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import Organization, User
from accounts.tests.factories import bearer
from demo.management.commands.demo_load import DEFAULT_FILE
from registry.models import HubModel, Mapping, MappingStatus, MappingType, Provider
from registry.task_types import model_supports_task

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def load_json(name: str):
    return json.loads((DEFAULT_FILE.parent / name).read_text())


DEMO = json.loads(DEFAULT_FILE.read_text())
HUB_MODELS = load_json(DEMO["catalog"]["hub_models"])
PROVIDERS = load_json(DEMO["catalog"]["providers"])


def demo_load() -> None:
    call_command("demo_load", stdout=io.StringIO(), stderr=io.StringIO())


def counts() -> dict[str, int]:
    return {
        "hub_models": HubModel.objects.count(),
        "providers": Provider.objects.count(),
        "mappings": Mapping.objects.count(),
        "organizations": Organization.objects.count(),
        "users": User.objects.count(),
    }


def test_demo_load_imports_every_hub_model_of_the_fixture():
    demo_load()

    assert HubModel.objects.count() == len(HUB_MODELS)
    assert set(HubModel.objects.values_list("model_id", flat=True)) == {r["id"] for r in HUB_MODELS}


def test_demo_load_creates_every_provider_with_its_organization():
    demo_load()

    providers = {
        p.slug: p for p in Provider.objects.select_related("organization").order_by("slug")
    }
    assert set(providers) == {spec["slug"] for spec in PROVIDERS}
    for spec in PROVIDERS:
        provider = providers[spec["slug"]]
        assert provider.organization.name.lower() == spec["org"].lower()
        assert provider.display_name == spec["name"]
        assert provider.chat_route == (spec.get("chat_route") or "/v1/chat/completions")
        assert provider.api_key  # the router and cost poller need one
        assert provider.is_active


def test_demo_load_creates_every_mapping_of_the_fixture_with_its_status():
    demo_load()

    assert Mapping.objects.count() == sum(len(spec["mappings"]) for spec in PROVIDERS)
    for spec in PROVIDERS:
        stored = {
            (m.task, m.hub_model.model_id if m.hub_model_id else tuple(m.tags)): (
                m.provider_model,
                m.status,
            )
            for m in Mapping.objects.filter(provider__slug=spec["slug"]).select_related("hub_model")
        }
        expected = {
            (
                m["task"],
                m["hfModel"] if m.get("type", MappingType.SINGLE_MODEL) == MappingType.SINGLE_MODEL
                else tuple(sorted(m["tags"])),
            ): (m["providerModel"], m.get("status", MappingStatus.LIVE))
            for m in spec["mappings"]
        }  # fmt: skip
        assert stored == expected, spec["slug"]


def test_demo_load_a_second_time_creates_nothing_new():
    demo_load()
    first = counts()
    hub_models = dict(HubModel.objects.values_list("model_id", "modified_at"))

    demo_load()

    assert counts() == first
    assert dict(HubModel.objects.values_list("model_id", "modified_at")) == hub_models


def test_after_demo_load_the_hub_api_lists_the_fixture_s_live_providers_of_a_model():
    demo_load()
    fixture_ids = {
        spec["slug"]: m["providerModel"]
        for spec in PROVIDERS
        for m in spec["mappings"]
        if m.get("hfModel") == LLAMA and m.get("status", MappingStatus.LIVE) == MappingStatus.LIVE
    }
    assert fixture_ids  # the fixture does map this model

    response = APIClient().get(f"/api/models/{LLAMA}?expand[]=inferenceProviderMapping")

    assert response.status_code == 200, response.content
    listed = response.json()["inferenceProviderMapping"]
    live = {slug: entry for slug, entry in listed.items() if entry["status"] == "live"}
    assert live
    assert set(fixture_ids) <= set(live)
    for slug, entry in live.items():
        assert entry["providerId"] == fixture_ids[slug]


def test_the_demo_token_can_add_a_mapping_to_the_demo_provider_of_its_organization():
    demo_load()
    token = DEMO["tokens"][0]
    assert token["user"] == "demo"
    together = next(spec for spec in PROVIDERS if spec["slug"] == "together")
    assert together["org"] in {org["name"] for org in DEMO["organizations"]}
    mapped = {m["hfModel"] for m in together["mappings"] if m.get("hfModel")}
    task = "conversational"
    candidate = next(
        r["id"]
        for r in HUB_MODELS
        if r["id"] not in mapped
        and model_supports_task(
            pipeline_tag=r.get("pipeline_tag") or "", tags=r.get("tags", []), task=task
        )
    )
    mappings_before = Mapping.objects.filter(provider__slug="together").count()

    response = APIClient().post(
        "/api/partners/together/models",
        {"task": task, "hfModel": candidate, "providerModel": "demo/new-model"},
        format="json",
        **bearer(token["token"]),
    )

    assert response.status_code == 201, response.content
    assert response.json()["hfModel"] == candidate
    assert response.json()["status"] == MappingStatus.STAGING
    assert Mapping.objects.filter(provider__slug="together").count() == mappings_before + 1
    created = Mapping.objects.get(provider__slug="together", hub_model__model_id=candidate)
    assert created.created_by == User.objects.get(username=token["user"])
    listed = APIClient().get("/api/partners/together/models").json()
    assert listed[task][candidate]["providerId"] == "demo/new-model"


def test_demo_settings_apply_once_and_survive_a_reload():
    demo_load()
    demo = User.objects.get(username="demo")
    org = Organization.objects.get(name="demo-org")
    assert demo.provider_order == DEMO["settings"]["users"]["demo"]["order"]
    assert org.disabled_providers == ["hyperbolic"]
    token = DEMO["tokens"][0]["token"]
    response = APIClient().get(
        f"/api/models/{LLAMA}?expand=inferenceProviderMapping", **bearer(token)
    )
    served = list(response.json()["inferenceProviderMapping"])
    preferred = [slug for slug in demo.provider_order if slug in served]
    assert len(preferred) >= 2  # the fixture maps the model to several preferred providers
    assert served[: len(preferred)] == preferred

    demo.provider_order = ["groq"]
    demo.save()
    demo_load()

    assert User.objects.get(username="demo").provider_order == ["groq"]
