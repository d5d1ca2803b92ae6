"""The Django admin for the registry, driven through the test client as a superuser."""

import pytest
from django.db import connection
from django.urls import reverse

from registry.models import HubModel, Mapping, MappingHealth, MappingStatus, Provider
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

API_KEY = "sk-registry-admin-clear-key-42"


def shown(response, values) -> set[str]:
    """Which of `values` the page shows."""
    content = response.content.decode()
    return {v for v in values if v in content}


# --- changelists -----------------------------------------------------------------------------


def test_provider_changelist_shows_the_providers(staff_client):
    ProviderFactory(slug="listed-alpha", display_name="Alpha Inference")
    ProviderFactory(slug="listed-beta")

    response = staff_client.get(reverse("admin:registry_provider_changelist"))

    assert response.status_code == 200
    assert shown(response, ["listed-alpha", "Alpha Inference", "listed-beta"]) == {
        "listed-alpha",
        "Alpha Inference",
        "listed-beta",
    }


def test_hub_model_changelist_shows_the_models(staff_client):
    HubModelFactory(model_id="listed-org/first-model")
    HubModelFactory(model_id="listed-org/second-model")

    response = staff_client.get(reverse("admin:registry_hubmodel_changelist"))

    assert response.status_code == 200
    assert shown(response, ["listed-org/first-model", "listed-org/second-model"]) == {
        "listed-org/first-model",
        "listed-org/second-model",
    }


def test_hub_model_changelist_search_by_id_shows_only_matching_models(staff_client):
    HubModelFactory(model_id="meta-llama/Llama-3.1-8B-Instruct")
    HubModelFactory(model_id="meta-llama/Llama-3.3-70B-Instruct")
    HubModelFactory(model_id="Qwen/Qwen3-32B")

    response = staff_client.get(reverse("admin:registry_hubmodel_changelist"), {"q": "llama-3.1"})

    assert response.status_code == 200
    assert shown(
        response,
        [
            "meta-llama/Llama-3.1-8B-Instruct",
            "meta-llama/Llama-3.3-70B-Instruct",
            "Qwen/Qwen3-32B",
        ],
    ) == {"meta-llama/Llama-3.1-8B-Instruct"}


@pytest.fixture
def mappings(db) -> dict[str, Mapping]:
    """Three mappings that differ in provider, task, status and health; each is recognised on
    the page by its provider model."""
    alpha = ProviderFactory(slug="alpha")
    beta = ProviderFactory(slug="beta")
    llama = HubModelFactory(model_id="meta-llama/Llama-3.1-8B-Instruct")
    flux = HubModelFactory(model_id="black-forest-labs/FLUX.1-dev", pipeline_tag="text-to-image")
    return {
        "alpha-llama-served": MappingFactory(
            provider=alpha,
            hub_model=llama,
            provider_model="alpha-llama-served",
            status=MappingStatus.LIVE,
            health=MappingHealth.OK,
        ),
        "alpha-flux-served": MappingFactory(
            provider=alpha,
            hub_model=flux,
            task="text-to-image",
            provider_model="alpha-flux-served",
            status=MappingStatus.STAGING,
            health=MappingHealth.UNKNOWN,
        ),
        "beta-flux-served": MappingFactory(
            provider=beta,
            hub_model=flux,
            task="text-to-image",
            provider_model="beta-flux-served",
            status=MappingStatus.STAGING,
            health=MappingHealth.ERROR,
        ),
    }


def test_mapping_changelist_shows_every_mapping(staff_client, mappings):
    response = staff_client.get(reverse("admin:registry_mapping_changelist"))

    assert response.status_code == 200
    assert shown(response, mappings) == set(mappings)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"task": "text-to-image"}, {"alpha-flux-served", "beta-flux-served"},
                     id="task"),
        pytest.param({"status__exact": "live"}, {"alpha-llama-served"}, id="status"),
        pytest.param({"health__exact": "error"}, {"beta-flux-served"}, id="health"),
        pytest.param(
            {"status__exact": "staging", "task": "text-to-image"},
            {"alpha-flux-served", "beta-flux-served"},
            id="status-and-task",
        ),
        pytest.param({"q": "black-forest-labs/FLUX.1-dev"},
                     {"alpha-flux-served", "beta-flux-served"}, id="search-hub-model-id"),
        pytest.param({"q": "meta-llama/Llama-3.1-8B"}, {"alpha-llama-served"}, id="search-prefix"),
    ],
)  # fmt: skip
def test_mapping_changelist_filters_show_only_matching_mappings(
    staff_client, mappings, query, expected
):
    response = staff_client.get(reverse("admin:registry_mapping_changelist"), query)

    assert response.status_code == 200  # an unknown filter parameter redirects with ?e=1
    assert shown(response, mappings) == expected
    assert {m.provider_model for m in response.context["cl"].result_list} == expected


@pytest.mark.parametrize(
    ("slug", "expected"),
    [("alpha", {"alpha-llama-served", "alpha-flux-served"}), ("beta", {"beta-flux-served"})],
)
def test_mapping_changelist_filter_by_provider_shows_only_its_mappings(
    staff_client, mappings, slug, expected
):
    provider = Provider.objects.get(slug=slug)

    response = staff_client.get(
        reverse("admin:registry_mapping_changelist"), {"provider__id__exact": provider.pk}
    )

    assert response.status_code == 200
    assert shown(response, mappings) == expected


# --- provider change page: the API key is write-only -----------------------------------------


@pytest.fixture
def provider(db) -> Provider:
    return ProviderFactory(slug="together", display_name="Together", api_key=API_KEY)


def stored_api_key(provider: Provider) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM registry_provider WHERE id = %s", [provider.pk])
        return cursor.fetchone()[0]


def change_form(provider: Provider, **changes) -> dict:
    data = {
        "slug": provider.slug,
        "display_name": provider.display_name,
        "organization": provider.organization_id,
        "base_url": provider.base_url,
        "chat_route": provider.chat_route,
        "cost_url": provider.cost_url,
        "request_id_header": provider.request_id_header,
        "first_cost_query_delay_s": provider.first_cost_query_delay_s,
        "state": provider.state,
        "new_api_key": "",
        "_save": "Save",
    }
    return {**data, **changes}


def test_provider_change_page_never_shows_the_api_key(staff_client, provider):
    encrypted = stored_api_key(provider)
    assert encrypted.startswith("fernet:")

    response = staff_client.get(reverse("admin:registry_provider_change", args=[provider.pk]))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Together" in content  # the page does show the provider
    assert API_KEY not in content
    assert encrypted not in content
    assert "fernet:" not in content


def test_provider_changelist_never_shows_the_api_key(staff_client, provider):
    response = staff_client.get(reverse("admin:registry_provider_changelist"))

    assert response.status_code == 200
    assert API_KEY not in response.content.decode()
    assert stored_api_key(provider) not in response.content.decode()


def test_saving_the_provider_with_an_empty_api_key_keeps_the_old_key(staff_client, provider):
    response = staff_client.post(
        reverse("admin:registry_provider_change", args=[provider.pk]),
        change_form(provider, display_name="Together AI"),
    )

    assert response.status_code == 302, response.content.decode()
    saved = Provider.objects.get(pk=provider.pk)
    assert saved.display_name == "Together AI"
    assert saved.api_key == API_KEY


def test_saving_the_provider_with_a_new_api_key_replaces_it(staff_client, provider):
    response = staff_client.post(
        reverse("admin:registry_provider_change", args=[provider.pk]),
        change_form(provider, new_api_key="sk-rotated-key"),
    )

    assert response.status_code == 302, response.content.decode()
    assert Provider.objects.get(pk=provider.pk).api_key == "sk-rotated-key"
    assert stored_api_key(provider).startswith("fernet:")
    assert "sk-rotated-key" not in stored_api_key(provider)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"base_url": "ftp://example.com"}, id="ftp-base-url"),
        pytest.param({"base_url": "not a url"}, id="base-url-not-a-url"),
        pytest.param({"cost_url": "ftp://example.com/costs"}, id="ftp-cost-url"),
        pytest.param({"chat_route": "v1/chat/completions"}, id="route-without-slash"),
        pytest.param({"request_id_header": "Inference Id"}, id="header-with-a-space"),
    ],
)
def test_provider_change_form_refuses_what_provider_create_refuses(staff_client, provider, changes):
    response = staff_client.post(
        reverse("admin:registry_provider_change", args=[provider.pk]),
        change_form(provider, new_api_key="sk-never-saved", **changes),
    )

    assert response.status_code == 200  # the form again, with the error
    assert response.context["adminform"].form.errors.keys() == changes.keys()
    saved = Provider.objects.get(pk=provider.pk)
    for field in changes:
        assert getattr(saved, field) == getattr(provider, field)
    assert saved.api_key == API_KEY


# --- mapping admin: no add, status actions ---------------------------------------------------


def test_mapping_admin_cannot_add(staff_client):
    response = staff_client.get(reverse("admin:registry_mapping_add"))

    assert response.status_code == 403


def test_set_live_action_sets_only_the_selected_mappings_live(staff_client, mappings):
    selected = [mappings["alpha-flux-served"], mappings["beta-flux-served"]]
    untouched = ProviderFactory(slug="gamma")
    other = MappingFactory(
        provider=untouched, hub_model=HubModel.objects.get(model_id="black-forest-labs/FLUX.1-dev"),
        task="text-to-image", status=MappingStatus.STAGING,
    )  # fmt: skip

    response = staff_client.post(
        reverse("admin:registry_mapping_changelist"),
        {"action": "set_live", "_selected_action": [m.pk for m in selected]},
    )

    assert response.status_code == 302
    for mapping in selected:
        mapping.refresh_from_db()
        assert mapping.status == MappingStatus.LIVE
    other.refresh_from_db()
    assert other.status == MappingStatus.STAGING


def test_set_staging_action_sets_the_selected_mappings_to_staging(staff_client, mappings):
    live = mappings["alpha-llama-served"]

    response = staff_client.post(
        reverse("admin:registry_mapping_changelist"),
        {"action": "set_staging", "_selected_action": [live.pk]},
    )

    assert response.status_code == 302
    live.refresh_from_db()
    assert live.status == MappingStatus.STAGING
