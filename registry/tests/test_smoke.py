import pytest

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, bearer, token_for
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def test_create_list_resolve_and_delete_a_mapping(api_client, user):
    provider = ProviderFactory(slug="together")
    MembershipFactory(user=user, organization=provider.organization, role=Role.WRITE)
    HubModelFactory(model_id="meta-llama/Llama-3.1-8B-Instruct")
    token = token_for(user, "write")

    created = api_client.post(
        "/api/partners/together/models",
        {"task": "conversational", "hfModel": "meta-llama/Llama-3.1-8B-Instruct",
         "providerModel": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"},
        format="json", **bearer(token),
    )  # fmt: skip
    assert created.status_code == 201, created.content
    mapping_id = created.json()["_id"]

    listed = api_client.get("/api/partners/together/models").json()
    assert listed["conversational"]["meta-llama/Llama-3.1-8B-Instruct"]["_id"] == mapping_id

    url = "/api/models/meta-llama/Llama-3.1-8B-Instruct?expand[]=inferenceProviderMapping"
    assert api_client.get(url).json()["inferenceProviderMapping"] == {}  # staging, anonymous
    mine = api_client.get(url, **bearer(token)).json()["inferenceProviderMapping"]
    assert mine["together"]["status"] == "staging"

    live = api_client.put(
        f"/api/partners/together/models/{mapping_id}/status",
        {"status": "live"},
        format="json",
        **bearer(token),
    )
    assert live.status_code == 200
    anon = api_client.get(url + "&expand[]=inference").json()
    assert anon["inference"] == "warm"
    assert anon["inferenceProviderMapping"]["together"]["providerId"].endswith("Turbo")

    gone = api_client.delete(f"/api/partners/together/models/{mapping_id}", **bearer(token))
    assert gone.status_code == 204
    assert api_client.get("/api/partners/together/models").json() == {}


def test_models_list_filters_by_provider(api_client):
    MappingFactory(
        provider=ProviderFactory(slug="groq"), hub_model=HubModelFactory(model_id="a/one")
    )
    HubModelFactory(model_id="a/two")
    body = api_client.get("/api/models?inference_provider=groq&expand=inferenceProviderMapping")
    assert [m["id"] for m in body.json()] == ["a/one"]
    assert body.json()[0]["inferenceProviderMapping"][0]["provider"] == "groq"
