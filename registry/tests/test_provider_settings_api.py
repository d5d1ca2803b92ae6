"""The inference-provider settings API over HTTP: a user's provider order and custom keys,
an organization's spending limit and disabled providers, an organization's member list, and
the audit trail every change leaves."""

import json
from urllib.parse import parse_qs, urlparse

import pytest
from huggingface_hub import HfApi

from accounts.models import Organization, Role, SettingsChange, User
from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    bearer,
    token_for,
)
from registry.models import ProviderKey
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db

URL = "/api/settings/inference-providers"
ORG = "acme"
ORG_URL = f"/api/organizations/{ORG}/settings/inference-providers"
MEMBERS_URL = f"/api/organizations/{ORG}/members"

KEY = "sk-together-S3cret-0123456789-abcd"
OTHER_KEY = "gsk_groq-Secret-987654321-wxyz"


@pytest.fixture
def providers():
    return {slug: ProviderFactory(slug=slug) for slug in ("together", "groq", "fal-ai")}


@pytest.fixture
def org(user):
    org = OrganizationFactory(name=ORG)
    MembershipFactory(organization=org, user=user, role=Role.ADMIN)
    return org


def put(client, body, token, url=URL):
    return client.put(url, body, format="json", **bearer(token))


def user_state(user: User) -> tuple:
    """Everything a user PUT or DELETE may change, to assert that nothing did."""
    user = User.objects.get(pk=user.pk)
    keys = [
        (k.pk, k.provider.slug, k.key, k.last4, k.created_at, k.updated_at)
        for k in ProviderKey.objects.filter(user=user).select_related("provider").order_by("pk")
    ]
    changes = list(SettingsChange.objects.order_by("pk").values_list("pk", flat=True))
    return list(user.provider_order), keys, changes


def org_state(org: Organization) -> tuple:
    org = Organization.objects.get(pk=org.pk)
    changes = list(SettingsChange.objects.order_by("pk").values_list("pk", flat=True))
    return org.spending_limit_nanousd, list(org.disabled_providers), changes


def audit_values() -> str:
    return json.dumps(
        list(SettingsChange.objects.values_list("old_value", "new_value", "target", "setting"))
    )


# --- a user's settings: reading and writing ------------------------------------------------
def test_a_user_without_settings_reads_an_empty_order_and_no_keys(api_client, user, read_token):
    response = api_client.get(URL, **bearer(read_token))

    assert response.status_code == 200, response.content
    assert response.json() == {"order": [], "keys": {}}


def test_a_write_token_sets_the_order_and_a_key_which_are_returned_masked(
    api_client, user, write_token, read_token, providers
):
    response = put(
        api_client, {"order": ["groq", "together"], "keys": {"together": KEY}}, write_token
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["order"] == ["groq", "together"]
    assert set(body["keys"]) == {"together"}
    together = body["keys"]["together"]
    assert together["masked"] == "…abcd"
    assert together["last4"] == "abcd"
    assert together["setAt"].endswith("Z")

    user.refresh_from_db()
    assert user.provider_order == ["groq", "together"]
    stored = ProviderKey.objects.get(user=user, provider=providers["together"])
    assert stored.key == KEY
    assert stored.last4 == "abcd"

    # A read token reads back exactly what the PUT answered.
    assert api_client.get(URL, **bearer(read_token)).json() == body


def test_the_order_replaces_the_whole_order_and_an_empty_list_removes_it(
    api_client, user, write_token, providers
):
    assert put(api_client, {"order": ["together", "groq", "fal-ai"]}, write_token).json()[
        "order"
    ] == ["together", "groq", "fal-ai"]

    response = put(api_client, {"order": ["fal-ai"]}, write_token)
    assert response.json()["order"] == ["fal-ai"]
    user.refresh_from_db()
    assert user.provider_order == ["fal-ai"]

    response = put(api_client, {"order": []}, write_token)
    assert response.status_code == 200
    assert response.json()["order"] == []
    user.refresh_from_db()
    assert user.provider_order == []


def test_keys_set_or_replace_the_named_providers_and_keep_the_others(
    api_client, user, write_token, providers
):
    put(api_client, {"keys": {"together": KEY, "groq": OTHER_KEY}}, write_token)
    before = ProviderKey.objects.get(user=user, provider__slug="together")

    response = put(api_client, {"keys": {"together": "sk-replaced-key-9876"}}, write_token)

    assert response.status_code == 200, response.content
    keys = response.json()["keys"]
    assert keys["together"]["last4"] == "9876"
    assert keys["groq"]["last4"] == "wxyz"
    rows = {k.provider.slug: k for k in ProviderKey.objects.filter(user=user)}
    assert set(rows) == {"together", "groq"}
    assert rows["together"].key == "sk-replaced-key-9876"
    assert rows["together"].pk == before.pk
    assert rows["together"].created_at == before.created_at
    assert rows["together"].updated_at > before.updated_at
    assert rows["groq"].key == OTHER_KEY


def test_setting_only_keys_keeps_the_order_and_only_the_order_keeps_the_keys(
    api_client, user, write_token, providers
):
    put(api_client, {"order": ["groq"], "keys": {"together": KEY}}, write_token)

    assert put(api_client, {"keys": {"groq": OTHER_KEY}}, write_token).json()["order"] == ["groq"]
    body = put(api_client, {"order": ["fal-ai"]}, write_token).json()

    assert set(body["keys"]) == {"together", "groq"}
    assert body["order"] == ["fal-ai"]


def test_a_key_of_exactly_1024_printable_characters_is_accepted(
    api_client, user, write_token, providers
):
    key = "!" + "a" * 1018 + "~wxyz"
    assert len(key) == 1024

    response = put(api_client, {"keys": {"together": key}}, write_token)

    assert response.status_code == 200, response.content
    assert ProviderKey.objects.get(user=user).key == key


def test_a_read_token_may_read_but_not_change_settings(api_client, user, read_token, providers):
    user.provider_order = ["groq"]
    user.save()
    before = user_state(user)

    response = put(api_client, {"order": ["together"], "keys": {"together": KEY}}, read_token)

    assert response.status_code == 403
    assert response.json()["error_type"] == "permission_denied"
    assert "user.settings.write" in response.json()["error"]
    assert user_state(user) == before
    assert api_client.get(URL, **bearer(read_token)).json()["order"] == ["groq"]


@pytest.mark.parametrize(
    ("permissions", "status"),
    [
        (["user.settings.write"], 200),
        (["tokens.write", "org.write", "inference.serverless.write"], 403),
        ([], 403),
    ],
)
def test_a_fine_grained_token_needs_user_settings_write_to_change_settings(
    api_client, user, providers, permissions, status
):
    token = token_for(user, "fine-grained", permissions)

    assert api_client.get(URL, **bearer(token)).status_code == 200
    response = put(api_client, {"order": ["groq"]}, token)

    assert response.status_code == status, response.content
    user.refresh_from_db()
    assert user.provider_order == (["groq"] if status == 200 else [])


def test_changing_settings_needs_a_token(api_client, user, write_token, providers):
    put(api_client, {"keys": {"together": KEY}}, write_token)
    before = user_state(user)

    assert api_client.put(URL, {"order": ["groq"]}, format="json").status_code == 401
    assert api_client.delete(f"{URL}/keys/together").status_code == 401
    assert user_state(user) == before


@pytest.mark.parametrize("url", [URL, "/api/settings/tokens"])
def test_reading_settings_without_a_token_is_401(api_client, user, providers, url):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.json()["error_type"] == "not_authenticated"


# --- a user's settings: bad input -----------------------------------------------------------
BAD_USER_BODIES = [
    pytest.param({}, "non_field_errors", id="empty-body"),
    pytest.param([], "non_field_errors", id="list-body"),
    pytest.param("order", "non_field_errors", id="string-body"),
    pytest.param({"order": ["together", "nope"]}, "order", id="unknown-provider-in-order"),
    pytest.param({"order": ["groq", "together", "groq"]}, "order", id="repeated-provider"),
    pytest.param({"order": "groq"}, "order", id="order-not-a-list"),
    pytest.param({"order": {"groq": 1}}, "order", id="order-an-object"),
    pytest.param({"order": None}, "order", id="order-null"),
    pytest.param({"order": ["Groq"]}, "order", id="provider-names-are-case-sensitive"),
    pytest.param({"keys": {"nope": "sk-valid-1234"}}, "keys", id="unknown-provider-in-keys"),
    pytest.param({"keys": ["together"]}, "keys", id="keys-not-an-object"),
    pytest.param({"keys": {"together": ""}}, "keys.together", id="empty-key"),
    pytest.param({"keys": {"together": None}}, "keys.together", id="null-key"),
    pytest.param({"keys": {"together": "k" * 1025}}, "keys.together", id="key-too-long"),
    pytest.param({"keys": {"together": "sk-with space"}}, "keys.together", id="space"),
    pytest.param({"keys": {"together": " sk-leading"}}, "keys.together", id="leading-space"),
    pytest.param({"keys": {"together": "sk-trailing\n"}}, "keys.together", id="newline"),
    pytest.param(
        {"keys": {"together": "sk-1\r\nX-Injected: yes"}}, "keys.together", id="header-injection"
    ),
    pytest.param({"keys": {"together": "sk-\ttab"}}, "keys.together", id="tab"),
    pytest.param({"keys": {"together": "sk-clé-1234"}}, "keys.together", id="non-ascii"),
    pytest.param({"keys": {"together": "sk-\x7f-1234"}}, "keys.together", id="delete-char"),
    pytest.param({"ordr": ["groq"]}, "ordr", id="unknown-field"),
    pytest.param(
        {"order": ["fal-ai"], "keys": {"groq": OTHER_KEY, "together": "bad key"}},
        "keys.together",
        id="valid-order-and-key-with-one-bad-key",
    ),
    pytest.param(
        {"order": ["fal-ai", "fal-ai"], "keys": {"groq": OTHER_KEY}},
        "order",
        id="bad-order-with-valid-key",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_USER_BODIES)
def test_bad_user_settings_get_400_naming_the_field_and_change_nothing(
    api_client, user, write_token, providers, body, field
):
    put(api_client, {"order": ["groq"], "keys": {"together": KEY}}, write_token)
    before = user_state(user)

    response = put(api_client, body, write_token)

    assert response.status_code == 400, response.content
    error = response.json()
    assert set(error["fields"]) == {field}, error
    assert error["error_type"] == ("unknown_field" if field == "ordr" else "validation_error")
    assert isinstance(error["error"], str) and error["error"]
    assert user_state(user) == before


def test_a_rejected_key_is_not_echoed_in_the_error(api_client, user, write_token, providers):
    secret = "sk-REJECTED-secret value-1234"

    response = put(api_client, {"keys": {"together": secret}}, write_token)

    assert response.status_code == 400
    assert secret not in response.content.decode()
    assert "REJECTED" not in response.content.decode()


# --- a user's settings: deleting a key ------------------------------------------------------
def test_deleting_a_key_answers_204_then_404(api_client, user, write_token, providers):
    put(api_client, {"keys": {"together": KEY, "groq": OTHER_KEY}}, write_token)

    first = api_client.delete(f"{URL}/keys/together", **bearer(write_token))
    second = api_client.delete(f"{URL}/keys/together", **bearer(write_token))

    assert first.status_code == 204, first.content
    assert second.status_code == 404
    assert second.json()["error_type"] == "not_found"
    assert [k.provider.slug for k in ProviderKey.objects.filter(user=user)] == ["groq"]
    assert set(api_client.get(URL, **bearer(write_token)).json()["keys"]) == {"groq"}


@pytest.mark.parametrize("provider", ["fal-ai", "nope", "Together"])
def test_deleting_a_key_that_is_not_set_is_404_and_changes_nothing(
    api_client, user, write_token, providers, provider
):
    put(api_client, {"keys": {"together": KEY}}, write_token)
    before = user_state(user)

    response = api_client.delete(f"{URL}/keys/{provider}", **bearer(write_token))

    assert response.status_code == 404
    assert user_state(user) == before


def test_a_read_token_cannot_delete_a_key(api_client, user, write_token, read_token, providers):
    put(api_client, {"keys": {"together": KEY}}, write_token)
    before = user_state(user)

    response = api_client.delete(f"{URL}/keys/together", **bearer(read_token))

    assert response.status_code == 403
    assert "user.settings.write" in response.json()["error"]
    assert user_state(user) == before


def test_a_fine_grained_token_with_user_settings_write_deletes_a_key(
    api_client, user, write_token, providers
):
    put(api_client, {"keys": {"together": KEY}}, write_token)
    without = token_for(user, "fine-grained", ["org.write"])
    with_perm = token_for(user, "fine-grained", ["user.settings.write"])

    assert api_client.delete(f"{URL}/keys/together", **bearer(without)).status_code == 403
    assert ProviderKey.objects.filter(user=user).exists()
    assert api_client.delete(f"{URL}/keys/together", **bearer(with_perm)).status_code == 204
    assert not ProviderKey.objects.filter(user=user).exists()


# --- a user's settings: audit trail ---------------------------------------------------------
def test_each_change_appends_an_audit_row_naming_the_actor(
    api_client, user, write_token, providers
):
    put(api_client, {"order": ["groq", "together"]}, write_token)
    put(api_client, {"keys": {"together": KEY}}, write_token)
    put(api_client, {"keys": {"together": "sk-new-key-0000-wxyz"}}, write_token)
    api_client.delete(f"{URL}/keys/together", **bearer(write_token))

    rows = list(
        SettingsChange.objects.order_by("pk").values(
            "setting", "target", "old_value", "new_value", "actor_name", "actor", "source",
            "user", "organization",
        )
    )  # fmt: skip

    common = {
        "actor_name": "julien", "actor": user.pk, "source": "api", "user": user.pk,
        "organization": None,
    }  # fmt: skip
    assert rows == [
        {**common, "setting": "provider_order", "target": "",
         "old_value": [], "new_value": ["groq", "together"]},
        {**common, "setting": "provider_key", "target": "together",
         "old_value": None, "new_value": "…abcd"},
        {**common, "setting": "provider_key", "target": "together",
         "old_value": "…abcd", "new_value": "…wxyz"},
        {**common, "setting": "provider_key", "target": "together",
         "old_value": "…wxyz", "new_value": None},
    ]  # fmt: skip


def test_the_audit_trail_never_holds_a_clear_key(api_client, user, write_token, providers):
    put(api_client, {"order": ["together"], "keys": {"together": KEY}}, write_token)
    put(api_client, {"keys": {"together": OTHER_KEY, "groq": KEY}}, write_token)
    api_client.delete(f"{URL}/keys/groq", **bearer(write_token))

    assert SettingsChange.objects.filter(setting="provider_key").count() == 4
    values = audit_values()
    assert KEY not in values
    assert OTHER_KEY not in values
    assert "S3cret" not in values and "Secret" not in values


def test_a_put_that_changes_nothing_records_nothing(api_client, user, write_token, providers):
    body = {"order": ["groq", "together"], "keys": {"together": KEY, "groq": OTHER_KEY}}
    put(api_client, body, write_token)
    before = user_state(user)

    response = put(api_client, body, write_token)

    assert response.status_code == 200
    assert user_state(user) == before
    assert SettingsChange.objects.count() == 3


def test_a_put_records_only_what_changed(api_client, user, write_token, providers):
    put(api_client, {"order": ["groq"], "keys": {"together": KEY}}, write_token)
    count = SettingsChange.objects.count()

    put(api_client, {"order": ["groq"], "keys": {"together": KEY, "groq": OTHER_KEY}}, write_token)

    new = SettingsChange.objects.order_by("pk")[count:]
    assert [(c.setting, c.target) for c in new] == [("provider_key", "groq")]


def test_a_rejected_put_records_nothing(api_client, user, write_token, providers):
    put(api_client, {"order": ["groq"], "keys": {"together": "bad key"}}, write_token)
    put(api_client, {"order": ["nope"], "keys": {"together": KEY}}, write_token)

    assert not SettingsChange.objects.exists()


# --- a user's settings: privacy -------------------------------------------------------------
def test_a_user_never_sees_another_users_settings(api_client, user, write_token, providers):
    put(api_client, {"order": ["groq", "together"], "keys": {"together": KEY}}, write_token)
    other = UserFactory(username="mallory")
    other_token = token_for(other, "write")

    response = api_client.get(URL, **bearer(other_token))

    assert response.json() == {"order": [], "keys": {}}
    # Their own change does not touch the first user's settings either.
    put(api_client, {"order": ["fal-ai"], "keys": {"together": OTHER_KEY}}, other_token)
    mine = api_client.get(URL, **bearer(write_token)).json()
    assert mine["order"] == ["groq", "together"]
    assert mine["keys"]["together"]["last4"] == "abcd"
    assert ProviderKey.objects.get(user=user).key == KEY


def test_a_user_cannot_delete_another_users_key(api_client, user, write_token, providers):
    put(api_client, {"keys": {"together": KEY}}, write_token)
    other_token = token_for(UserFactory(username="mallory"), "write")
    before = user_state(user)

    response = api_client.delete(f"{URL}/keys/together", **bearer(other_token))

    assert response.status_code == 404
    assert user_state(user) == before
    assert api_client.get(URL, **bearer(write_token)).json()["keys"]["together"]["last4"] == "abcd"


def test_the_clear_key_never_appears_in_a_response(
    api_client, user, write_token, read_token, providers
):
    responses = [
        put(api_client, {"keys": {"together": KEY}}, write_token),
        put(api_client, {"keys": {"groq": OTHER_KEY}, "order": ["groq"]}, write_token),
        api_client.get(URL, **bearer(write_token)),
        api_client.get(URL, **bearer(read_token)),
    ]

    for response in responses:
        assert response.status_code == 200
        text = response.content.decode()
        assert KEY not in text
        assert OTHER_KEY not in text
        assert "S3cret" not in text and "Secret" not in text


@pytest.mark.parametrize("key", ["k", "abcd", "1234567"])
def test_a_key_under_8_characters_is_refused(api_client, user, write_token, providers, key):
    response = put(api_client, {"keys": {"together": key}}, write_token)

    assert response.status_code == 400, response.content
    assert set(response.json()["fields"]) == {"keys.together"}
    assert not ProviderKey.objects.exists()


@pytest.mark.parametrize("key", ["12345678", "short-key-15chr"])
def test_a_key_under_16_characters_shows_none_of_its_characters(
    api_client, user, write_token, providers, key
):
    response = put(api_client, {"keys": {"together": key}}, write_token)

    assert response.status_code == 200, response.content
    assert response.json()["keys"]["together"]["last4"] == ""
    assert response.json()["keys"]["together"]["masked"] == "…"
    assert SettingsChange.objects.get().new_value == "…"


@pytest.mark.parametrize("value", [12345678901234567, True, None, ["sk-in-a-list-0001"]])
def test_a_key_that_is_not_a_string_is_refused(api_client, user, write_token, providers, value):
    response = put(api_client, {"keys": {"together": value}}, write_token)

    assert response.status_code == 400, response.content
    assert set(response.json()["fields"]) == {"keys.together"}
    assert not ProviderKey.objects.exists()


# --- an organization's settings -------------------------------------------------------------
def test_an_admin_reads_the_default_organization_settings(api_client, user, read_token, org):
    response = api_client.get(ORG_URL, **bearer(read_token))

    assert response.status_code == 200, response.content
    assert response.json() == {
        "spendingLimit": None,
        "spendingLimitNanoUsd": None,
        "disabledProviders": [],
    }


@pytest.mark.parametrize(
    ("given", "nanousd", "text"),
    [
        (25.5, 25_500_000_000, "25.50"),
        ("25.50", 25_500_000_000, "25.50"),
        ("0.000000001", 1, "0.000000001"),
        (0.1, 100_000_000, "0.10"),
        (0, 0, "0.00"),
        (7, 7_000_000_000, "7.00"),
        ("1000000000", 10**18, "1000000000.00"),
        ("12.345678912", 12_345_678_912, "12.345678912"),
    ],
)
def test_the_spending_limit_is_stored_as_exact_nano_usd(
    api_client, user, write_token, org, given, nanousd, text
):
    response = put(api_client, {"spendingLimit": given}, write_token, ORG_URL)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "spendingLimit": text,
        "spendingLimitNanoUsd": nanousd,
        "disabledProviders": [],
    }
    org.refresh_from_db()
    assert org.spending_limit_nanousd == nanousd
    assert api_client.get(ORG_URL, **bearer(write_token)).json()["spendingLimitNanoUsd"] == nanousd


def test_a_null_spending_limit_removes_the_limit(api_client, user, write_token, org, providers):
    put(api_client, {"spendingLimit": "25.50", "disabledProviders": ["groq"]}, write_token, ORG_URL)

    response = put(api_client, {"spendingLimit": None}, write_token, ORG_URL)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "spendingLimit": None,
        "spendingLimitNanoUsd": None,
        "disabledProviders": ["groq"],
    }
    org.refresh_from_db()
    assert org.spending_limit_nanousd is None
    assert org.disabled_providers == ["groq"]


def test_disabled_providers_replace_the_set_and_come_back_sorted(
    api_client, user, write_token, org, providers
):
    put(api_client, {"spendingLimit": 10}, write_token, ORG_URL)

    response = put(
        api_client, {"disabledProviders": ["together", "fal-ai", "groq"]}, write_token, ORG_URL
    )
    assert response.status_code == 200, response.content
    assert response.json()["disabledProviders"] == ["fal-ai", "groq", "together"]
    assert response.json()["spendingLimitNanoUsd"] == 10_000_000_000

    response = put(api_client, {"disabledProviders": ["together"]}, write_token, ORG_URL)
    assert response.json()["disabledProviders"] == ["together"]
    org.refresh_from_db()
    assert org.disabled_providers == ["together"]
    assert org.spending_limit_nanousd == 10_000_000_000

    response = put(api_client, {"disabledProviders": []}, write_token, ORG_URL)
    assert response.json()["disabledProviders"] == []
    org.refresh_from_db()
    assert org.disabled_providers == []


BAD_ORG_BODIES = [
    pytest.param({}, "non_field_errors", id="empty-body"),
    pytest.param([], "non_field_errors", id="list-body"),
    pytest.param({"spendingLimit": -1}, "spendingLimit", id="negative"),
    pytest.param({"spendingLimit": "-0.000000001"}, "spendingLimit", id="negative-nano"),
    pytest.param({"spendingLimit": "abc"}, "spendingLimit", id="not-a-number"),
    pytest.param({"spendingLimit": True}, "spendingLimit", id="boolean"),
    pytest.param({"spendingLimit": {}}, "spendingLimit", id="object"),
    pytest.param({"spendingLimit": [5]}, "spendingLimit", id="list"),
    pytest.param({"spendingLimit": "NaN"}, "spendingLimit", id="nan"),
    pytest.param({"spendingLimit": "Infinity"}, "spendingLimit", id="infinity"),
    pytest.param({"spendingLimit": "0.0000000001"}, "spendingLimit", id="finer-than-nano"),
    pytest.param({"spendingLimit": 1e-10}, "spendingLimit", id="finer-than-nano-number"),
    pytest.param({"spendingLimit": "1000000000.000000001"}, "spendingLimit", id="just-too-big"),
    pytest.param({"spendingLimit": 1e10}, "spendingLimit", id="too-big"),
    pytest.param({"spendingLimit": "1e30"}, "spendingLimit", id="far-too-big"),
    pytest.param({"disabledProviders": ["groq", "nope"]}, "disabledProviders", id="unknown"),
    pytest.param({"disabledProviders": ["groq", "groq"]}, "disabledProviders", id="repeated"),
    pytest.param({"disabledProviders": "groq"}, "disabledProviders", id="not-a-list"),
    pytest.param({"disabledProviders": None}, "disabledProviders", id="null-list"),
    pytest.param({"spendingLimt": 5}, "spendingLimt", id="unknown-field"),
    pytest.param(
        {"spendingLimit": 5, "disabledProviders": ["nope"]},
        "disabledProviders",
        id="valid-limit-with-bad-providers",
    ),
    pytest.param(
        {"spendingLimit": -5, "disabledProviders": ["fal-ai"]},
        "spendingLimit",
        id="bad-limit-with-valid-providers",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_ORG_BODIES)
def test_bad_organization_settings_get_400_naming_the_field_and_change_nothing(
    api_client, user, write_token, org, providers, body, field
):
    put(api_client, {"spendingLimit": "25.50", "disabledProviders": ["groq"]}, write_token, ORG_URL)
    before = org_state(org)

    response = put(api_client, body, write_token, ORG_URL)

    assert response.status_code == 400, response.content
    error = response.json()
    assert set(error["fields"]) == {field}, error
    assert error["error_type"] == (
        "unknown_field" if field == "spendingLimt" else "validation_error"
    )
    assert org_state(org) == before


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_spending_limit_is_400_and_keeps_the_limit(
    api_client, user, write_token, org, blank
):
    put(api_client, {"spendingLimit": "25.50"}, write_token, ORG_URL)
    before = org_state(org)

    response = put(api_client, {"spendingLimit": blank}, write_token, ORG_URL)

    assert org_state(org) == before
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"spendingLimit"}


@pytest.mark.parametrize("role", [Role.READ, Role.WRITE])
def test_read_and_write_members_can_neither_read_nor_change_the_settings(
    api_client, org, providers, role
):
    org.spending_limit_nanousd = 5
    org.save()
    member = MembershipFactory(organization=org, role=role).user
    token = token_for(member, "write")
    before = org_state(org)

    got = api_client.get(ORG_URL, **bearer(token))
    changed = put(
        api_client, {"spendingLimit": None, "disabledProviders": ["groq"]}, token, ORG_URL
    )

    for response in (got, changed):
        assert response.status_code == 403, response.content
        assert response.json()["error_type"] == "permission_denied"
        assert "spendingLimit" not in response.content.decode()
    assert org_state(org) == before


def test_a_non_member_gets_404_as_for_an_unknown_organization(api_client, org, providers):
    token = token_for(UserFactory(username="outsider"), "write")
    before = org_state(org)

    assert api_client.get(ORG_URL, **bearer(token)).status_code == 404
    assert put(api_client, {"spendingLimit": 1}, token, ORG_URL).status_code == 404
    assert org_state(org) == before


def test_an_admin_of_another_organization_gets_404(api_client, org, providers):
    other_admin = UserFactory(username="other-admin")
    MembershipFactory(organization=OrganizationFactory(name="other"), user=other_admin,
                      role=Role.ADMIN)  # fmt: skip
    token = token_for(other_admin, "write")

    assert api_client.get(ORG_URL, **bearer(token)).status_code == 404
    assert put(api_client, {"spendingLimit": 1}, token, ORG_URL).status_code == 404
    org.refresh_from_db()
    assert org.spending_limit_nanousd is None


def test_an_unknown_organization_is_404(api_client, user, write_token, providers):
    url = "/api/organizations/no-such-org/settings/inference-providers"

    assert api_client.get(url, **bearer(write_token)).status_code == 404
    response = put(api_client, {"spendingLimit": 1}, write_token, url)
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_a_read_token_of_an_admin_reads_but_cannot_change(
    api_client, user, read_token, org, providers
):
    before = org_state(org)

    assert api_client.get(ORG_URL, **bearer(read_token)).status_code == 200
    response = put(api_client, {"spendingLimit": 1, "disabledProviders": ["groq"]}, read_token,
                   ORG_URL)  # fmt: skip

    assert response.status_code == 403
    assert "org.write" in response.json()["error"]
    assert org_state(org) == before


@pytest.mark.parametrize(
    ("permissions", "get_status", "put_status"),
    [
        (["org.read"], 200, 403),
        (["org.write"], 403, 200),
        (["org.read", "org.write"], 200, 200),
        (["user.settings.write", "tokens.write"], 403, 403),
    ],
)
def test_fine_grained_tokens_need_org_read_to_read_and_org_write_to_change(
    api_client, user, org, providers, permissions, get_status, put_status
):
    token = token_for(user, "fine-grained", permissions)

    assert api_client.get(ORG_URL, **bearer(token)).status_code == get_status
    response = put(api_client, {"spendingLimit": 3}, token, ORG_URL)

    assert response.status_code == put_status, response.content
    org.refresh_from_db()
    assert org.spending_limit_nanousd == (3_000_000_000 if put_status == 200 else None)


def test_organization_changes_are_audited_and_a_no_op_records_nothing(
    api_client, user, write_token, org, providers
):
    put(api_client, {"spendingLimit": 25.5, "disabledProviders": ["together", "groq"]},
        write_token, ORG_URL)  # fmt: skip
    # The same values again, the providers in another order: nothing changes.
    put(api_client, {"spendingLimit": "25.500", "disabledProviders": ["groq", "together"]},
        write_token, ORG_URL)  # fmt: skip
    put(api_client, {"spendingLimit": None}, write_token, ORG_URL)
    put(api_client, {"spendingLimit": None}, write_token, ORG_URL)

    rows = list(
        SettingsChange.objects.order_by("pk").values(
            "setting", "target", "old_value", "new_value", "actor_name", "actor", "source",
            "user", "organization",
        )
    )  # fmt: skip

    common = {
        "actor_name": "julien", "actor": user.pk, "source": "api", "user": None,
        "organization": org.pk, "target": "",
    }  # fmt: skip
    assert rows == [
        {**common, "setting": "spending_limit", "old_value": None, "new_value": 25_500_000_000},
        {**common, "setting": "disabled_providers", "old_value": [],
         "new_value": ["groq", "together"]},
        {**common, "setting": "spending_limit", "old_value": 25_500_000_000, "new_value": None},
    ]  # fmt: skip


def test_organization_names_are_matched_whatever_their_case(
    api_client, user, write_token, org, providers
):
    response = put(
        api_client, {"spendingLimit": 2}, write_token,
        "/api/organizations/ACME/settings/inference-providers",
    )  # fmt: skip

    assert response.status_code == 200, response.content
    org.refresh_from_db()
    assert org.spending_limit_nanousd == 2_000_000_000


# --- an organization's members --------------------------------------------------------------
@pytest.fixture
def members(org):
    for name, role, plan, fullname in [
        ("bob", Role.WRITE, "free", ""),
        ("alice", Role.READ, "pro", "Alice A."),
        ("dave", Role.ADMIN, "free", "Dave D."),
        ("carol", Role.READ, "free", "Carol C."),
    ]:
        member = UserFactory(username=name, plan=plan, fullname=fullname)
        MembershipFactory(organization=org, user=member, role=role)
    # Someone in another organization only.
    MembershipFactory(
        organization=OrganizationFactory(name="elsewhere"),
        user=UserFactory(username="eve"),
        role=Role.ADMIN,
    )
    return ["alice", "bob", "carol", "dave", "julien"]


def test_an_admin_lists_the_members_by_name(api_client, user, read_token, members):
    response = api_client.get(MEMBERS_URL, **bearer(read_token))

    assert response.status_code == 200, response.content
    assert "Link" not in response
    body = response.json()
    assert [m["user"] for m in body] == members
    by_name = {m["user"]: m for m in body}
    alice = by_name["alice"]
    assert {k: v for k, v in alice.items() if k != "joinedAt"} == {
        "user": "alice",
        "fullname": "Alice A.",
        "type": "user",
        "isPro": True,
        "role": "read",
    }
    assert alice["joinedAt"].endswith("Z")
    assert by_name["bob"]["fullname"] == "bob"
    assert by_name["bob"]["isPro"] is False
    assert {name: m["role"] for name, m in by_name.items()} == {
        "alice": "read", "bob": "write", "carol": "read", "dave": "admin", "julien": "admin",
    }  # fmt: skip
    assert by_name["julien"]["isPro"] is True


def test_following_the_link_header_yields_every_member_once(api_client, user, read_token, members):
    url = f"{MEMBERS_URL}?limit=2"
    seen, pages = [], 0
    while url:
        response = api_client.get(url, **bearer(read_token))
        assert response.status_code == 200, response.content
        page = response.json()
        assert 1 <= len(page) <= 2
        seen += [m["user"] for m in page]
        pages += 1
        link = response.headers.get("Link")
        if link is None:
            url = None
            continue
        assert link.endswith('; rel="next"')
        url = link[link.index("<") + 1 : link.index(">")]
        query = parse_qs(urlparse(url).query)
        assert query["limit"] == ["2"]
        assert query["cursor"]
    assert seen == members
    assert pages == 3


def test_a_page_exactly_as_long_as_the_limit_has_no_next_link(
    api_client, user, read_token, members
):
    response = api_client.get(f"{MEMBERS_URL}?limit=5", **bearer(read_token))

    assert len(response.json()) == 5
    assert "Link" not in response


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=x", "limit"), ("cursor=!!!!", "cursor")]
)
def test_a_bad_limit_or_cursor_is_400(api_client, user, read_token, members, query, field):
    response = api_client.get(f"{MEMBERS_URL}?{query}", **bearer(read_token))

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {field}


@pytest.mark.parametrize("role", [Role.READ, Role.WRITE, None])
def test_only_admins_list_the_members(api_client, members, role):
    member = UserFactory(username="someone")
    if role is not None:
        MembershipFactory(organization=Organization.objects.get(name=ORG), user=member, role=role)
    token = token_for(member, "write")

    response = api_client.get(MEMBERS_URL, **bearer(token))

    # A non-member gets the 404 of an unknown organization (names stay private).
    assert response.status_code == (404 if role is None else 403)
    assert "alice" not in response.content.decode()


def test_the_members_of_an_unknown_organization_are_404(api_client, user, read_token):
    response = api_client.get("/api/organizations/no-such-org/members", **bearer(read_token))

    assert response.status_code == 404


def test_listing_members_needs_org_read(api_client, user, members):
    without = token_for(user, "fine-grained", ["user.settings.write"])
    with_perm = token_for(user, "fine-grained", ["org.read"])

    assert api_client.get(MEMBERS_URL, **bearer(without)).status_code == 403
    assert api_client.get(MEMBERS_URL, **bearer(with_perm)).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_huggingface_hub_lists_the_members_with_their_roles(live_server, user, members):
    token = token_for(user, "read")
    api = HfApi(endpoint=live_server.url)

    listed = list(api.list_organization_members(ORG, token=token))

    assert [m.username for m in listed] == members
    assert {m.username: m.role for m in listed} == {
        "alice": "read", "bob": "write", "carol": "read", "dave": "admin", "julien": "admin",
    }  # fmt: skip
    assert {m.username: m.fullname for m in listed}["alice"] == "Alice A."
    assert {m.username: m.is_pro for m in listed}["alice"] is True
