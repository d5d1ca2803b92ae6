import pytest

from accounts.models import Membership, Organization, Role
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory, bearer

pytestmark = pytest.mark.django_db


def test_creating_an_organization_makes_the_caller_its_admin(api_client, user, write_token):
    response = api_client.post(
        "/api/organizations",
        {"name": "my-lab", "fullname": "My Lab"},
        format="json",
        **bearer(write_token),
    )
    assert response.status_code == 201, response.content
    assert response.json()["plan"] == "free"
    org = Organization.objects.get(name="my-lab")
    assert Membership.objects.get(organization=org, user=user).role == Role.ADMIN

    detail = api_client.get("/api/organizations/my-lab", **bearer(write_token)).json()
    assert detail["roleInOrg"] == "admin"
    assert detail["members"] == [{"name": "julien", "role": "admin"}]


@pytest.mark.parametrize(
    "name", ["ørg", "日本", "café-lab", "-lead", "trail.", "a b", "x" * 97, ""]
)
def test_an_invalid_organization_name_gets_400_and_creates_nothing(
    api_client, user, write_token, name
):
    response = api_client.post(
        "/api/organizations", {"name": name}, format="json", **bearer(write_token)
    )
    assert response.status_code == 400, response.content
    assert "name" in response.json()["fields"]
    assert Organization.objects.count() == 0


def test_a_taken_name_gets_409_whatever_its_case(api_client, user, write_token):
    OrganizationFactory(name="Acme")
    UserFactory(username="someone")
    for name in ("acme", "ACME", "Someone"):
        response = api_client.post(
            "/api/organizations", {"name": name}, format="json", **bearer(write_token)
        )
        assert response.status_code == 409, name
        assert response.json()["error_type"] == "conflict"
    assert Organization.objects.count() == 1


def test_a_read_token_cannot_create_an_organization(api_client, user, read_token):
    response = api_client.post(
        "/api/organizations", {"name": "nope"}, format="json", **bearer(read_token)
    )
    assert response.status_code == 403
    assert not Organization.objects.filter(name="nope").exists()


def test_an_organization_is_private_to_its_members(api_client, user, write_token):
    MembershipFactory(organization=OrganizationFactory(name="secret"), role=Role.ADMIN)
    for name in ("secret", "does-not-exist", "ørg"):
        response = api_client.get(f"/api/organizations/{name}", **bearer(write_token))
        assert response.status_code == 404
        assert response.json()["error_type"] == "not_found"
