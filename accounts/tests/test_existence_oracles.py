"""Organization endpoints answer an outsider the same for an existing organization and an
unknown one (issue 12, Low: "403 for an existing organization, 404 for an unknown one" told
anyone which names exist). A member who lacks the role still gets a 403 naming it: a member
knows the organization exists.

Per endpoint:
- `GET /api/organizations/<name>`: 404 for non-members (members only);
- `GET /api/organizations/<name>/members`: 404 for non-members, 403 for members not admin;
- `GET`/`PUT /api/organizations/<name>/settings/inference-providers`: the same;
- `GET /api/billing/accounts/<name>` and `…/ledger`: 404 for anyone who may not read it.
"""

import pytest

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, OrganizationFactory, bearer

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    pytest.param("get", "/api/organizations/{name}", id="organization"),
    pytest.param("get", "/api/organizations/{name}/members", id="members"),
    pytest.param("get", "/api/organizations/{name}/settings/inference-providers", id="settings"),
    pytest.param(
        "put", "/api/organizations/{name}/settings/inference-providers", id="settings-put"
    ),
    pytest.param("get", "/api/billing/accounts/{name}", id="billing-account"),
    pytest.param("get", "/api/billing/accounts/{name}/ledger", id="billing-ledger"),
]


def call(api_client, method: str, url: str, token: str):
    if method == "put":
        return api_client.put(url, {"spendingLimit": 1}, format="json", **bearer(token))
    return api_client.get(url, **bearer(token))


def normalized(response, name: str) -> tuple:
    """Status, error type and message with the asked name blanked out."""
    body = response.json()
    return (
        response.status_code,
        body.get("error_type"),
        body.get("error", "").replace(repr(name), "<name>").replace(name, "<name>"),
    )


@pytest.fixture
def secret_org():
    org = OrganizationFactory(name="secret-org", plan="enterprise")
    MembershipFactory(organization=org, role=Role.ADMIN)
    return org


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_an_outsider_cannot_tell_an_existing_organization_from_an_unknown_one(
    api_client, user, write_token, secret_org, method, url
):
    existing = call(api_client, method, url.format(name="secret-org"), write_token)
    unknown = call(api_client, method, url.format(name="nosuch-org"), write_token)

    assert existing.status_code == 404, existing.content
    assert normalized(existing, "secret-org") == normalized(unknown, "nosuch-org")
    assert "spendingLimit" not in existing.content.decode()


@pytest.mark.parametrize(("method", "url"), ENDPOINTS[1:4])
@pytest.mark.parametrize("role", [Role.READ, Role.WRITE])
def test_a_member_without_the_admin_role_is_told_so(
    api_client, user, write_token, secret_org, method, url, role
):
    MembershipFactory(organization=secret_org, user=user, role=role)

    response = call(api_client, method, url.format(name="secret-org"), write_token)

    assert response.status_code == 403, response.content
    assert "admin" in response.json()["error"]
