"""Provider settings in the Django admin: changes go through the services (validated, audited
with the admin's name), custom keys are write-only and shown masked."""

import pytest
from django.urls import reverse

from accounts.models import Organization, SettingsChange, User
from accounts.services import Actor
from accounts.tests.factories import OrganizationFactory, UserFactory
from registry.models import ProviderKey
from registry.services import user_provider_settings_update
from registry.tests.factories import ProviderFactory
from testsupport.admin_forms import admin_form_data

pytestmark = pytest.mark.django_db

CLEAR_KEY = "sk-admin-visible-never-9f3e"


@pytest.fixture
def providers():
    return {slug: ProviderFactory(slug=slug) for slug in ("together", "groq", "fal-ai")}


def errors(response) -> str:
    """The form errors of an admin page that did not save, for assertion messages."""
    context = response.context or {}
    found = [str(context.get("errors", ""))]
    for inline in context.get("inline_admin_formsets", []):
        found.append(str(inline.formset.errors))
    return " ".join(found)


def change_page(client, obj):
    url = reverse(f"admin:accounts_{obj._meta.model_name}_change", args=[obj.pk])
    response = client.get(url)
    assert response.status_code == 200
    return url, response.content.decode()


def test_user_page_shows_keys_masked_and_never_in_clear(staff_client, providers):
    user = UserFactory(username="byok-user")
    user_provider_settings_update(
        user=user, actor=Actor(user=user), order=["groq"], keys={"together": CLEAR_KEY}
    )

    _, page = change_page(staff_client, user)

    assert CLEAR_KEY not in page
    assert "…9f3e" in page
    assert "groq" in page


def test_changing_a_users_order_in_the_admin_is_validated_and_audited(staff_client, providers):
    user = UserFactory(username="ordered")
    url, page = change_page(staff_client, user)

    bad = staff_client.post(url, admin_form_data(page, provider_order="groq,nobody"))
    good = staff_client.post(url, admin_form_data(page, provider_order="fal-ai,groq"))

    assert bad.status_code == 200  # the form again, with the error
    assert "nobody" in bad.content.decode()
    assert good.status_code == 302, errors(good)
    assert User.objects.get(pk=user.pk).provider_order == ["fal-ai", "groq"]
    (change,) = SettingsChange.objects.filter(user=user)
    assert (change.setting, change.old_value, change.new_value) == (
        "provider_order", [], ["fal-ai", "groq"],
    )  # fmt: skip
    assert (change.actor_name, change.source) == ("root", "admin")


def test_an_admin_sets_replaces_and_deletes_a_users_key(staff_client, providers):
    user = UserFactory(username="keyed")
    url, page = change_page(staff_client, user)

    added = staff_client.post(
        url,
        admin_form_data(
            page,
            **{
                "provider_keys-TOTAL_FORMS": "1",
                "provider_keys-0-provider": str(providers["groq"].pk),
                "provider_keys-0-new_key": "gsk-first-key-1111",
            },
        ),
    )
    assert added.status_code == 302, added.content.decode()[:3000]
    key = ProviderKey.objects.get(user=user)
    assert (key.provider.slug, key.key, key.last4) == ("groq", "gsk-first-key-1111", "1111")

    url, page = change_page(staff_client, user)
    replaced = staff_client.post(
        url, admin_form_data(page, **{"provider_keys-0-new_key": "gsk-second-key-2222"})
    )
    assert replaced.status_code == 302
    assert ProviderKey.objects.get(user=user).key == "gsk-second-key-2222"

    url, page = change_page(staff_client, user)
    kept = staff_client.post(url, admin_form_data(page))  # empty key field: keep the key
    assert kept.status_code == 302
    assert ProviderKey.objects.get(user=user).key == "gsk-second-key-2222"

    url, page = change_page(staff_client, user)
    deleted = staff_client.post(url, admin_form_data(page, **{"provider_keys-0-DELETE": "on"}))
    assert deleted.status_code == 302
    assert not ProviderKey.objects.filter(user=user).exists()

    history = list(
        SettingsChange.objects.filter(user=user)
        .order_by("id")
        .values_list("setting", "target", "old_value", "new_value", "source")
    )
    assert history == [
        ("provider_key", "groq", None, "…1111", "admin"),
        ("provider_key", "groq", "…1111", "…2222", "admin"),
        ("provider_key", "groq", "…2222", None, "admin"),
    ]


def test_a_key_with_a_newline_is_refused_in_the_admin(staff_client, providers):
    user = UserFactory(username="bad-key")
    url, page = change_page(staff_client, user)

    response = staff_client.post(
        url,
        admin_form_data(
            page,
            **{
                "provider_keys-TOTAL_FORMS": "1",
                "provider_keys-0-provider": str(providers["groq"].pk),
                "provider_keys-0-new_key": "gsk-x\r\nX-Evil: 1",
            },
        ),
    )

    assert response.status_code == 200
    assert "printable ASCII" in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_an_admin_sets_an_organizations_limit_in_usd_and_its_disabled_providers(
    staff_client, providers
):
    org = OrganizationFactory(name="limited-org")
    url, page = change_page(staff_client, org)

    response = staff_client.post(
        url,
        admin_form_data(
            page, spending_limit_usd="12.345", disabled_provider_slugs=["groq", "fal-ai"]
        ),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    org.refresh_from_db()
    assert org.spending_limit_nanousd == 12_345_000_000
    assert org.disabled_providers == ["fal-ai", "groq"]
    changes = {
        c.setting: (c.old_value, c.new_value, c.actor_name)
        for c in SettingsChange.objects.filter(organization=org)
    }
    assert changes == {
        "spending_limit": (None, 12_345_000_000, "root"),
        "disabled_providers": ([], ["fal-ai", "groq"], "root"),
    }

    url, page = change_page(staff_client, org)
    assert 'value="12.345"' in page
    cleared = staff_client.post(
        url, admin_form_data(page, spending_limit_usd="", disabled_provider_slugs=None)
    )
    assert cleared.status_code == 302
    org.refresh_from_db()
    assert (org.spending_limit_nanousd, org.disabled_providers) == (None, [])


def test_a_negative_limit_is_refused_in_the_admin(staff_client, providers):
    org = OrganizationFactory(name="negative-org", spending_limit_nanousd=5)
    url, page = change_page(staff_client, org)

    response = staff_client.post(url, admin_form_data(page, spending_limit_usd="-1"))

    assert response.status_code == 200
    assert Organization.objects.get(pk=org.pk).spending_limit_nanousd == 5
    assert not SettingsChange.objects.exists()


def test_the_settings_history_is_listed_and_read_only(staff_client, providers):
    user = UserFactory(username="audited")
    user_provider_settings_update(user=user, actor=Actor(user=user), keys={"groq": CLEAR_KEY})
    change = SettingsChange.objects.get()

    listing = staff_client.get(reverse("admin:accounts_settingschange_changelist"))
    add = staff_client.get(reverse("admin:accounts_settingschange_add"))
    delete = staff_client.post(
        reverse("admin:accounts_settingschange_delete", args=[change.pk]), {"post": "yes"}
    )

    assert listing.status_code == 200
    assert "audited" in listing.content.decode()
    assert CLEAR_KEY not in listing.content.decode()
    assert add.status_code == 403
    assert delete.status_code == 403
    assert SettingsChange.objects.filter(pk=change.pk).exists()
