import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, OrganizationFactory, bearer, token_for

URL = "/api/whoami-v2"


@pytest.mark.django_db
def test_whoami_shows_the_user_its_organizations_and_the_token_role(api_client, user):
    team = OrganizationFactory(name="acme", plan="team")
    enterprise = OrganizationFactory(name="bigcorp", plan="enterprise", fullname="Big Corp")
    MembershipFactory(user=user, organization=team, role=Role.ADMIN)
    MembershipFactory(user=user, organization=enterprise, role=Role.READ)
    OrganizationFactory(name="not-mine")

    body = api_client.get(URL, **bearer(token_for(user, "read"))).json()

    assert body["type"] == "user"
    assert body["name"] == "julien"
    assert body["isPro"] is True
    assert len(body["id"]) == 24
    assert [(o["name"], o["roleInOrg"], o["isEnterprise"]) for o in body["orgs"]] == [
        ("acme", "admin", False),
        ("bigcorp", "read", True),
    ]
    assert body["orgs"][1]["fullname"] == "Big Corp"
    assert body["auth"]["type"] == "access_token"
    assert body["auth"]["accessToken"]["role"] == "read"
    assert body["auth"]["accessToken"]["displayName"] == "read test token"
    assert body["auth"]["accessToken"]["createdAt"].endswith("Z")


@pytest.mark.django_db
def test_whoami_lists_a_fine_grained_tokens_permissions(api_client, user):
    secret = token_for(user, "fine-grained", ["inference.serverless.write"])
    access_token = api_client.get(URL, **bearer(secret)).json()["auth"]["accessToken"]
    assert access_token["role"] == "fine-grained"
    assert access_token["fineGrained"]["global"] == ["inference.serverless.write"]


@pytest.mark.django_db(transaction=True)
def test_the_real_huggingface_hub_client_parses_whoami(live_server, user, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    org = OrganizationFactory(name="acme")
    MembershipFactory(user=user, organization=org, role=Role.WRITE)
    secret = token_for(user, "write")
    api = HfApi(endpoint=live_server.url)

    info = api.whoami(token=secret)

    assert info["name"] == "julien"
    assert [o["name"] for o in info["orgs"]] == ["acme"]
    assert info["auth"]["accessToken"]["role"] == "write"

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.whoami(token="hf_" + "x" * 34)
    assert excinfo.value.response.status_code == 401
    assert "Invalid user token" in str(excinfo.value)
