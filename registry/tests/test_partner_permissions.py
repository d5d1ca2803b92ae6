"""Mapping writes need a permission that says so (issue 12, finding 5).

The attack: any fine-grained token of a provider's writer, even one holding only
`inference.serverless.write` (made to call models), created, published and deleted the
provider's mappings. Now a mapping write needs a `write` token of a member with role `write` or
`admin`, or a fine-grained token holding `org.write` ("manage organizations the user
administers, including their provider mappings") of such a member.
"""

import pytest

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, UserFactory, bearer, token_for
from registry.models import Mapping
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture
def mapping():
    provider = ProviderFactory(slug="together")
    HubModelFactory(model_id=QWEN)
    return MappingFactory(
        provider=provider, hub_model=HubModelFactory(model_id=LLAMA), status="staging"
    )


def headers_for(provider, role: str, permissions=(), member_role=Role.WRITE) -> dict:
    user = UserFactory()
    MembershipFactory(user=user, organization=provider.organization, role=member_role)
    return bearer(token_for(user, role, permissions))


def perform(api_client, operation: str, mapping, headers: dict):
    base = f"/api/partners/{mapping.provider.slug}/models"
    if operation == "create":
        body = {
            "task": "conversational",
            "hfModel": QWEN,
            "providerModel": "qwen",
            "status": "live",
        }
        return api_client.post(base, body, format="json", **headers)
    if operation == "set_status":
        url = f"{base}/{mapping.public_id}/status"
        return api_client.put(url, {"status": "live"}, format="json", **headers)
    if operation == "legacy_set_status":
        body = {"hfModel": LLAMA, "status": "live"}
        return api_client.put(f"{base}/status", body, format="json", **headers)
    if operation == "delete":
        return api_client.delete(f"{base}/{mapping.public_id}", **headers)
    if operation == "legacy_delete":
        return api_client.delete(f"{base}?hfModel={LLAMA}", **headers)
    raise AssertionError(operation)


def state() -> list[tuple]:
    return list(
        Mapping.objects.order_by("pk").values_list("public_id", "hub_model__model_id", "status")
    )


OPERATIONS = ["create", "set_status", "legacy_set_status", "delete", "legacy_delete"]
WITHOUT_ORG_WRITE = [
    pytest.param(["inference.serverless.write"], id="inference-only"),
    pytest.param([], id="no-permissions"),
    pytest.param(["org.read", "tokens.write", "user.settings.write"], id="other-permissions"),
]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("permissions", WITHOUT_ORG_WRITE)
def test_a_fine_grained_token_without_org_write_cannot_change_mappings(
    api_client, mapping, operation, permissions
):
    headers = headers_for(mapping.provider, "fine-grained", permissions, member_role=Role.ADMIN)
    before = state()

    response = perform(api_client, operation, mapping, headers)

    assert response.status_code == 403, response.content
    assert response.json()["error_type"] == "permission_denied"
    assert "org.write" in response.json()["error"]
    assert state() == before


EXPECTED = {
    "create": 201,
    "set_status": 200,
    "legacy_set_status": 200,
    "delete": 204,
    "legacy_delete": 204,
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_fine_grained_token_with_org_write_of_a_writer_changes_mappings(
    api_client, mapping, operation
):
    headers = headers_for(mapping.provider, "fine-grained", ["org.write"])

    response = perform(api_client, operation, mapping, headers)

    assert response.status_code == EXPECTED[operation], response.content


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_write_token_of_a_writer_changes_mappings(api_client, mapping, operation):
    response = perform(api_client, operation, mapping, headers_for(mapping.provider, "write"))

    assert response.status_code == EXPECTED[operation], response.content


@pytest.mark.parametrize("operation", OPERATIONS)
def test_org_write_does_not_replace_the_member_role(api_client, mapping, operation):
    headers = headers_for(mapping.provider, "fine-grained", ["org.write"], member_role=Role.READ)
    before = state()

    response = perform(api_client, operation, mapping, headers)

    assert response.status_code == 403, response.content
    assert state() == before


def test_a_fine_grained_token_without_org_write_still_reads_the_public_list(api_client, mapping):
    headers = headers_for(mapping.provider, "fine-grained", ["inference.serverless.write"])

    response = api_client.get("/api/partners/together/models", **headers)

    assert response.status_code == 200
    assert LLAMA in response.json()["conversational"]
