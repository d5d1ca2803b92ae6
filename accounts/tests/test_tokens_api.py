import pytest

from accounts.models import AccessToken
from accounts.tests.factories import UserFactory, bearer, token_for
from accounts.tokens import token_hash, token_is_well_formed

pytestmark = pytest.mark.django_db

URL = "/api/settings/tokens"


def test_a_write_token_creates_a_token_whose_secret_is_shown_once(api_client, user, write_token):
    response = api_client.post(
        URL, {"name": "ci", "role": "read"}, format="json", **bearer(write_token)
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert token_is_well_formed(created["token"])
    assert AccessToken.objects.get(pk=created["id"]).token_hash == token_hash(created["token"])

    listed = api_client.get(URL, **bearer(write_token)).json()
    assert {t["name"] for t in listed} == {"write test token", "ci"}
    assert created["token"] not in str(listed)
    assert all("token" not in t for t in listed)

    # The new token works, with its own role.
    whoami = api_client.get("/api/whoami-v2", **bearer(created["token"])).json()
    assert whoami["auth"]["accessToken"]["role"] == "read"


def test_a_read_only_token_may_list_but_not_create_or_revoke(api_client, user, read_token):
    assert api_client.get(URL, **bearer(read_token)).status_code == 200

    response = api_client.post(URL, {"name": "x"}, format="json", **bearer(read_token))
    assert response.status_code == 403
    assert "tokens.write" in response.json()["error"]
    assert response.json()["error_type"] == "permission_denied"
    assert AccessToken.objects.filter(name="x").count() == 0

    own = AccessToken.objects.get(token_hash=token_hash(read_token))
    assert api_client.delete(f"{URL}/{own.pk}", **bearer(read_token)).status_code == 403
    own.refresh_from_db()
    assert own.revoked_at is None


def test_a_fine_grained_token_needs_the_named_permission(api_client, user):
    without = token_for(user, "fine-grained", ["inference.serverless.write"])
    with_perm = token_for(user, "fine-grained", ["tokens.write"])
    # A fine-grained token creates fine-grained tokens only (test_least_privilege.py).
    body = {"name": "y", "role": "fine-grained"}
    assert api_client.post(URL, body, format="json", **bearer(without)).status_code == 403
    assert api_client.post(URL, body, format="json", **bearer(with_perm)).status_code == 201


def test_revoking_a_token_makes_it_unusable(api_client, user, write_token):
    victim = token_for(user, "read")
    pk = AccessToken.objects.get(token_hash=token_hash(victim)).pk
    assert api_client.delete(f"{URL}/{pk}", **bearer(write_token)).status_code == 204
    assert api_client.get("/api/whoami-v2", **bearer(victim)).status_code == 401
    # Revoking again is harmless.
    assert api_client.delete(f"{URL}/{pk}", **bearer(write_token)).status_code == 204


def test_another_users_token_is_not_found(api_client, user, write_token):
    other = token_for(UserFactory(username="mallory"))
    pk = AccessToken.objects.get(token_hash=token_hash(other)).pk
    response = api_client.delete(f"{URL}/{pk}", **bearer(write_token))
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"
    assert AccessToken.objects.get(pk=pk).revoked_at is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "colour": "blue"}, "colour"),
        ({"name": "x", "role": "owner"}, "role"),
        ({"role": "write"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "x", "role": "write", "permissions": ["tokens.write"]}, "permissions"),
        ({"name": "x", "role": "fine-grained", "permissions": ["root"]}, "permissions.0"),
        ({"name": "x", "permissions": "tokens.write"}, "permissions"),
    ],
)
def test_bad_token_requests_get_400_naming_the_field(api_client, user, write_token, body, field):
    before = AccessToken.objects.count()
    response = api_client.post(URL, body, format="json", **bearer(write_token))
    assert response.status_code == 400, response.content
    error = response.json()
    assert field in error["fields"]
    assert field.split(".")[0] in error["error"]
    assert AccessToken.objects.count() == before


def test_unknown_fields_are_reported_as_such(api_client, user, write_token):
    response = api_client.post(
        URL, {"name": "x", "scope": "all"}, format="json", **bearer(write_token)
    )
    assert response.status_code == 400
    assert response.json()["error_type"] == "unknown_field"
    assert response.json()["fields"] == {"scope": ["Unknown field."]}
