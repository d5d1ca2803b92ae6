"""What a partner or an admin types that the router later uses (issue 12):

- `providerModel` is a model id (letters, digits and `-_.:/@+`; no `..`, no leading `/`, no
  whitespace or control characters): `../../../admin?x=` is a 400 naming it (Low);
- a provider's `base_url` and `cost_url` must not point to loopback, link-local (cloud
  metadata) or private addresses unless `UPSTREAM_ALLOWED_NETWORKS` allows them
  (`core.netguard.url_refusal`); the admin form and `provider_create` refuse them naming the
  field. (Tests run with loopback allowed for the simulator; these override it to [].)
"""

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import Role
from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    bearer,
    token_for,
)
from registry.models import Mapping, Provider
from registry.tests.factories import HubModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def writer():
    provider = ProviderFactory(slug="together")
    HubModelFactory(model_id=LLAMA)
    user = UserFactory()
    MembershipFactory(user=user, organization=provider.organization, role=Role.WRITE)
    return bearer(token_for(user, "write"))


def create(api_client, headers, provider_model):
    body = {"task": "conversational", "hfModel": LLAMA, "providerModel": provider_model}
    return api_client.post("/api/partners/together/models", body, format="json", **headers)


# --- providerModel ---------------------------------------------------------------------------
BAD_PROVIDER_MODELS = [
    pytest.param("../../../admin?x=", id="traversal-and-query"),
    pytest.param("..", id="dot-dot"),
    pytest.param("models/../admin", id="inner-dot-dot"),
    pytest.param("/v1/admin", id="leading-slash"),
    pytest.param("llama 3", id="space"),
    pytest.param("llama\t3", id="tab"),
    pytest.param("llama\n3", id="newline"),
    pytest.param("llama\x7f", id="delete-char"),
    pytest.param("llama?x=1", id="query"),
    pytest.param("llama#frag", id="fragment"),
    pytest.param("llama%2F..", id="percent"),
    pytest.param("llama\\admin", id="backslash"),
    pytest.param("llamé", id="non-ascii"),
]


@pytest.mark.parametrize("provider_model", BAD_PROVIDER_MODELS)
def test_a_provider_model_outside_the_model_id_charset_is_refused(
    api_client, writer, provider_model
):
    response = create(api_client, writer, provider_model)

    assert response.status_code == 400, response.content
    assert "providerModel" in response.json()["fields"]
    assert "providerModel" in response.json()["error"]
    assert not Mapping.objects.exists()


@pytest.mark.parametrize(
    "provider_model",
    [
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "llama3.1-8b",
        "fal-ai/flux-lora",
        "@cf/meta/llama-3.1-8b-instruct",
        "gpt-oss:120b",
        "model+variant_2",
    ],
)
def test_real_provider_model_ids_are_accepted(api_client, writer, provider_model):
    response = create(api_client, writer, provider_model)

    assert response.status_code == 201, response.content
    assert Mapping.objects.get().provider_model == provider_model


# --- provider URLs ---------------------------------------------------------------------------
INTERNAL_URLS = [
    pytest.param("http://127.0.0.1:8001/sim", id="loopback"),
    pytest.param("http://localhost:8001", id="localhost-name"),
    pytest.param("http://169.254.169.254/latest/meta-data", id="cloud-metadata"),
    pytest.param("http://10.0.0.5", id="private-10"),
    pytest.param("https://192.168.1.20/v1", id="private-192"),
    pytest.param("http://[::1]:8080", id="ipv6-loopback"),
    pytest.param("http://0.0.0.0:80", id="unspecified"),
]


def provider_form(**changes) -> dict:
    org = OrganizationFactory(name="newprov-org")
    data = {
        "slug": "newprov",
        "display_name": "New",
        "organization": org.pk,
        "base_url": "https://8.8.8.8/v1",
        "chat_route": "/v1/chat/completions",
        "cost_url": "https://8.8.8.8/costs",
        "request_id_header": "Inference-Id",
        "first_cost_query_delay_s": 0,
        "state": "active",
        "new_api_key": "sk-new",
        "_save": "Save",
    }
    return {**data, **changes}


@pytest.mark.parametrize("field", ["base_url", "cost_url"])
@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_the_admin_refuses_an_internal_provider_url_naming_the_field(
    staff_client, settings, field, url
):
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    response = staff_client.post(
        reverse("admin:registry_provider_add"), provider_form(**{field: url})
    )

    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field]
    assert "internal address" in str(errors[field])
    assert not Provider.objects.filter(slug="newprov").exists()


@pytest.mark.parametrize("field", ["base_url", "cost_url"])
def test_the_admin_refuses_to_change_a_provider_url_to_an_internal_address(
    staff_client, settings, field
):
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    provider = ProviderFactory(slug="together", base_url="https://8.8.8.8/v1",
                               cost_url="https://8.8.8.8/costs")  # fmt: skip
    form = provider_form(slug="together", organization=provider.organization_id)

    response = staff_client.post(
        reverse("admin:registry_provider_change", args=[provider.pk]),
        {**form, field: "http://169.254.169.254/latest"},
    )

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    assert getattr(Provider.objects.get(pk=provider.pk), field).startswith("https://8.8.8.8")


def test_the_admin_accepts_public_addresses_and_names_resolved_later(staff_client, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    response = staff_client.post(
        reverse("admin:registry_provider_add"),
        provider_form(base_url="https://8.8.8.8/v1", cost_url="https://api.provider.invalid/c"),
    )

    assert response.status_code == 302, response.content.decode()
    assert Provider.objects.get(slug="newprov").cost_url == "https://api.provider.invalid/c"


def test_an_allowed_network_may_be_used(staff_client, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]

    response = staff_client.post(
        reverse("admin:registry_provider_add"),
        provider_form(base_url="http://127.0.0.1:8001/sim", cost_url="http://127.0.0.1:8001/c"),
    )

    assert response.status_code == 302, response.content.decode()


@pytest.mark.parametrize("field", ["base-url", "cost-url"])
def test_provider_create_refuses_an_internal_url_naming_the_field(settings, field):
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    OrganizationFactory(name="acme")
    urls = {"base-url": "https://8.8.8.8/v1", "cost-url": "https://8.8.8.8/costs"}
    urls[field] = "http://169.254.169.254/latest"

    with pytest.raises(CommandError, match=field.replace("-", "_")):
        call_command(
            "provider_create", "acme-ai", "--org", "acme",
            "--base-url", urls["base-url"], "--cost-url", urls["cost-url"], "--api-key", "sk-x",
        )  # fmt: skip

    assert not Provider.objects.filter(slug="acme-ai").exists()
