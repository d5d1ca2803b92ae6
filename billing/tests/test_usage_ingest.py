"""Usage records: who pays (bill-to rules) and batch ingestion over HTTP."""

import pytest

from accounts.models import Role
from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    bearer,
    token_for,
)
from billing.models import UsageRecord
from billing.services import payer_resolve
from billing.tests.factories import usage_ingester
from core.errors import DomainError
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db

URL = "/api/billing/usage"


@pytest.fixture
def world():
    ProviderFactory(slug="together")
    dev = UserFactory(username="dev")
    acme = OrganizationFactory(name="acme", plan="team")
    MembershipFactory(user=dev, organization=acme, role=Role.READ)
    free_org = OrganizationFactory(name="hobby", plan="free")
    MembershipFactory(user=dev, organization=free_org, role=Role.ADMIN)
    OrganizationFactory(name="other", plan="enterprise")
    staff = usage_ingester(username="router-service")
    return {"dev": dev, "acme": acme, "staff_token": token_for(staff, "write")}


def record(**fields) -> dict:
    return {
        "provider": "together",
        "requestId": "r-1",
        "user": "dev",
        "httpStatus": 200,
        "hubModel": "meta-llama/Llama-3.1-8B-Instruct",
        **fields,
    }


def test_the_payer_is_the_user_or_a_team_organization_they_belong_to(world):
    assert payer_resolve(user=world["dev"], bill_to=None).user == world["dev"]
    assert payer_resolve(user=world["dev"], bill_to="acme").organization == world["acme"]
    for org, fragment in (
        ("other", "not a member"),
        ("nope", "not a member"),
        ("hobby", "team or enterprise"),
    ):
        with pytest.raises(DomainError, match=fragment) as excinfo:
            payer_resolve(user=world["dev"], bill_to=org)
        assert excinfo.value.http_status == 403


def test_a_staff_service_ingests_records_idempotently(api_client, world):
    body = {
        "records": [
            record(requestId="a"),
            record(requestId="b", billTo="acme", estimatedCostNanoUsd=1234),
            record(requestId="c", httpStatus=503),
            record(requestId=None),
            record(requestId="d", byok=True),
        ]
    }
    first = api_client.post(URL, body, format="json", **bearer(world["staff_token"]))
    assert first.status_code == 200, first.content
    assert first.json() == {"created": 5, "duplicates": 0}
    states = dict(UsageRecord.objects.values_list("request_id", "state"))
    assert states["a"] == "pending" and states["b"] == "pending"
    assert states["c"] == "not_billable" and states["d"] == "byok"
    assert sum(1 for s in states.values() if s == "not_billable") == 2
    b = UsageRecord.objects.get(request_id="b")
    assert b.payer.organization == world["acme"] and b.estimated_cost_nanousd == 1234
    assert UsageRecord.objects.get(request_id="a").payer.user == world["dev"]

    again = api_client.post(
        URL, {"records": body["records"][:3]}, format="json", **bearer(world["staff_token"])
    )
    assert again.json() == {"created": 0, "duplicates": 3}
    assert UsageRecord.objects.count() == 5


@pytest.mark.parametrize(
    ("bad", "field", "status"),
    [
        (record(provider="nobody"), "records[1].provider", 400),
        (record(user="ghost"), "records[1].user", 400),
        (record(billTo="other"), "records[1].billTo", 403),
        (record(billTo="hobby"), "records[1].billTo", 403),
        (record(colour="blue"), "records.1.colour", 400),
        (record(httpStatus=42), "records.1.httpStatus", 400),
        (record(estimatedCostNanoUsd=-1), "records.1.estimatedCostNanoUsd", 400),
    ],
)
def test_one_bad_record_stores_nothing_and_names_its_field(api_client, world, bad, field, status):
    body = {"records": [record(requestId="ok"), {**bad, "requestId": "bad"}]}
    response = api_client.post(URL, body, format="json", **bearer(world["staff_token"]))
    assert response.status_code == status, response.content
    assert field in response.json()["fields"]
    assert UsageRecord.objects.count() == 0


def test_more_than_10000_records_are_refused(api_client, world):
    body = {"records": [record(requestId=str(i)) for i in range(10_001)]}
    response = api_client.post(URL, body, format="json", **bearer(world["staff_token"]))
    assert response.status_code == 400
    assert "records" in response.json()["fields"]
    assert UsageRecord.objects.count() == 0


def test_only_staff_with_a_write_token_may_ingest(api_client, world):
    body = {"records": [record()]}
    assert api_client.post(URL, body, format="json").status_code == 401
    user_token = token_for(world["dev"], "write")
    assert api_client.post(URL, body, format="json", **bearer(user_token)).status_code == 403
    staff_read = token_for(UserFactory(username="ops", is_staff=True), "read")
    assert api_client.post(URL, body, format="json", **bearer(staff_read)).status_code == 403
    assert UsageRecord.objects.count() == 0


def test_staff_without_the_add_permission_or_with_a_fine_grained_token_may_not_ingest(
    api_client, world
):
    """Least privilege (issue 12): being staff is not enough; ingesting creates billable
    usage, so it needs `billing.add_usagerecord` and a full write token."""
    body = {"records": [record()]}
    view_only = token_for(UserFactory(username="viewer", is_staff=True), "write")
    response = api_client.post(URL, body, format="json", **bearer(view_only))
    assert response.status_code == 403
    assert "add usage record" in response.json()["error"]
    fine = token_for(usage_ingester(username="svc"), "fine-grained", ["inference.serverless.write"])
    assert api_client.post(URL, body, format="json", **bearer(fine)).status_code == 403
    assert UsageRecord.objects.count() == 0
