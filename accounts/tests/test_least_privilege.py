"""A token creates only tokens with no more rights than it has (issue 12, finding 4).

The attack: a fine-grained token holding only `tokens.write` created a full `write` token.
Now a fine-grained token may create only fine-grained tokens whose permissions are a subset of
its own; a `write` token may create anything; an admin browser session is unchanged.
"""

import pytest
from django.test import Client

from accounts.models import AccessToken, TokenRole
from accounts.rules import FINE_GRAINED_PERMISSIONS
from accounts.tests.factories import bearer, token_for
from accounts.tokens import token_hash

pytestmark = pytest.mark.django_db

URL = "/api/settings/tokens"
ESCALATIONS = [
    pytest.param({"role": "write"}, "role", id="write-token"),
    pytest.param({"role": "read"}, "role", id="read-token"),
    pytest.param({}, "role", id="default-read-token"),
    pytest.param(
        {"role": "fine-grained", "permissions": ["tokens.write", "inference.serverless.write"]},
        "permissions",
        id="fine-grained-with-more-permissions",
    ),
    pytest.param(
        {"role": "fine-grained", "permissions": ["org.write"]},
        "permissions",
        id="fine-grained-with-other-permissions",
    ),
]


def create(api_client, secret: str, **body):
    return api_client.post(URL, {"name": "minted", **body}, format="json", **bearer(secret))


@pytest.mark.parametrize(("body", "field"), ESCALATIONS)
def test_a_fine_grained_token_cannot_create_a_token_with_more_rights(api_client, user, body, field):
    secret = token_for(user, "fine-grained", ["tokens.write"])

    response = create(api_client, secret, **body)

    assert response.status_code == 403, response.content
    error = response.json()
    assert error["error_type"] == "permission_denied"
    assert field in error["error"]
    assert "token" not in error
    assert not AccessToken.objects.filter(name="minted").exists()


def test_the_minted_write_token_of_the_attack_does_not_exist(api_client, user):
    """The reproduction: tokens.write only, asks for `write`, then tries to use it."""
    secret = token_for(user, "fine-grained", ["tokens.write"])

    response = create(api_client, secret, role="write")

    assert response.status_code == 403
    assert "token" not in response.json()
    assert set(AccessToken.objects.values_list("role", flat=True)) == {TokenRole.FINE_GRAINED}


@pytest.mark.parametrize(
    "permissions",
    [[], ["tokens.write"], ["org.read"], ["org.read", "tokens.write", "user.billing.read"]],
)
def test_a_fine_grained_token_creates_fine_grained_tokens_with_a_subset_of_its_permissions(
    api_client, user, permissions
):
    secret = token_for(user, "fine-grained", ["tokens.write", "org.read", "user.billing.read"])

    response = create(api_client, secret, role="fine-grained", permissions=permissions)

    assert response.status_code == 201, response.content
    created = AccessToken.objects.get(token_hash=token_hash(response.json()["token"]))
    assert created.role == TokenRole.FINE_GRAINED
    assert sorted(created.permissions) == sorted(permissions)


@pytest.mark.parametrize(
    "body",
    [
        {"role": "write"},
        {"role": "read"},
        {"role": "fine-grained", "permissions": sorted(FINE_GRAINED_PERMISSIONS)},
    ],
)
def test_a_write_token_creates_any_token(api_client, user, write_token, body):
    response = create(api_client, write_token, **body)

    assert response.status_code == 201, response.content
    assert response.json()["role"] == body["role"]


def test_a_browser_session_creates_any_token(user):
    user.set_password("session-password-1")
    user.save()
    client = Client(enforce_csrf_checks=False)
    assert client.login(username=user.username, password="session-password-1")

    response = client.post(
        URL, {"name": "from the browser", "role": "write"}, content_type="application/json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["role"] == "write"
