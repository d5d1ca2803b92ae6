"""Bearer-token authentication, seen through a protected endpoint (/api/whoami-v2)."""

import pytest
from django.db import connection

from accounts import services
from accounts.models import AccessToken
from accounts.tests.factories import UserFactory, bearer, token_for
from accounts.tokens import token_generate, token_hash

pytestmark = pytest.mark.django_db

URL = "/api/whoami-v2"


def assert_401(response, fragment: str) -> None:
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert fragment in body["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_valid_token_authenticates_its_user(api_client, user, write_token):
    response = api_client.get(URL, **bearer(write_token))
    assert response.status_code == 200
    assert response.json()["name"] == user.username


def test_a_missing_token_gets_401_with_a_json_error(api_client):
    assert_401(api_client.get(URL), "credentials were not provided")


def test_an_unknown_well_formed_token_gets_401(api_client, user, write_token):
    assert_401(api_client.get(URL, **bearer(token_generate())), "Invalid credentials")


def test_a_revoked_token_gets_401_and_its_sibling_still_works(api_client, user):
    revoked, kept = token_for(user), token_for(user)
    token = AccessToken.objects.get(token_hash=token_hash(revoked))
    services.access_token_revoke(token=token)
    assert_401(api_client.get(URL, **bearer(revoked)), "revoked")
    assert api_client.get(URL, **bearer(kept)).status_code == 200


def test_a_disabled_account_cannot_use_its_tokens(api_client, user, write_token):
    user.is_active = False
    user.save()
    assert_401(api_client.get(URL, **bearer(write_token)), "disabled")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("", "Empty Authorization header"),
        ("Bearer", "Malformed Authorization header"),
        ("Bearer a b", "Malformed Authorization header"),
        ("Basic dXNlcjpwYXNz", "Unsupported authorization scheme 'Basic'"),
        ("Token hf_abc", "Unsupported authorization scheme 'Token'"),
        ("Bearer hf_short", "Malformed access token"),
        ("Bearer sk-" + "a" * 34, "Malformed access token"),
        ("Bearer hf_" + "é" * 34, "Malformed access token"),
        ("Bearer hf_" + "a" * 35, "too long"),
        ("Bearer hf_" + "a" * 5000, "Authorization header is too long"),
    ],
)
def test_a_malformed_authorization_header_gets_a_clear_401(api_client, user, header, fragment):
    assert_401(api_client.get(URL, HTTP_AUTHORIZATION=header), fragment)


def test_the_token_is_stored_only_as_a_hash(user):
    _, secret = services.access_token_create(user=user, name="hashed", role="write")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_accesstoken")
        rows = cursor.fetchall()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0])
    assert secret not in stored
    assert secret[3:] not in stored  # not even without its prefix
    assert token_hash(secret) in stored


def test_use_is_recorded_at_most_once_per_resolution(api_client, user, write_token, settings):
    settings.TOKEN_LAST_USED_RESOLUTION_S = 3600
    token = AccessToken.objects.get(token_hash=token_hash(write_token))
    assert token.last_used_at is None
    api_client.get(URL, **bearer(write_token))
    token.refresh_from_db()
    first_use = token.last_used_at
    assert first_use is not None
    api_client.get(URL, **bearer(write_token))
    token.refresh_from_db()
    assert token.last_used_at == first_use


def test_generated_tokens_have_the_hub_shape_and_differ():
    tokens = {token_generate() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("hf_")
        assert len(token) == 37
        assert token[3:].isalnum()
        assert token.isascii()


def test_tokens_of_other_users_do_not_leak(api_client):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    response = api_client.get(URL, **bearer(token_for(bob)))
    assert response.json()["name"] == "bob"
    assert alice.username not in response.content.decode()
