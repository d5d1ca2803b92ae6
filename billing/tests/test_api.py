"""The billing read API over HTTP: balances, ledger, usage; who may read what; filters, pages."""

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import plans
from accounts.models import Role
from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    bearer,
    token_for,
)
from billing import services
from billing.models import BillingAccount, UsageRecord, UsageState
from registry.tests.factories import HubModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db

USD = 1_000_000_000
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


class World:
    """alice (PRO) administers acme (team, 2 seats, $50 limit); bob is a write member of
    acme; carol belongs to nothing. Each makes requests; alice and bob also bill acme."""

    def __init__(self):
        self.together = ProviderFactory(slug="together")
        self.fal = ProviderFactory(slug="fal-ai")
        HubModelFactory(model_id=LLAMA)
        HubModelFactory(model_id=QWEN)
        self.alice = UserFactory(username="alice", plan="pro")
        self.bob = UserFactory(username="bob")
        self.carol = UserFactory(username="carol")
        self.acme = OrganizationFactory(
            name="acme", plan="team", seats=2, spending_limit_nanousd=50 * USD
        )
        MembershipFactory(user=self.alice, organization=self.acme, role=Role.ADMIN)
        MembershipFactory(user=self.bob, organization=self.acme, role=Role.WRITE)
        self.payer = {
            "alice": services.billing_account_get_or_create_for_user(user=self.alice),
            "bob": services.billing_account_get_or_create_for_user(user=self.bob),
            "carol": services.billing_account_get_or_create_for_user(user=self.carol),
            "acme": services.billing_account_get_or_create_for_organization(organization=self.acme),
        }
        self.tokens = {u.username: token_for(u, "read") for u in (self.alice, self.bob, self.carol)}
        self.t0 = timezone.now() - timedelta(hours=1)
        self.n = 0

    def usage(self, user, payer: str, *, provider=None, model=LLAMA, minutes=0, **fields):
        self.n += 1
        record = services.usage_record_create(
            provider=provider or self.together,
            request_id=f"req-{self.n}",
            user=user,
            payer=self.payer[payer],
            http_status=fields.pop("http_status", 200),
            hub_model_id=model,
            provider_model=f"{model}-turbo",
            task="conversational",
            # No estimate by default: costs far above an estimate would be held for review.
            estimated_cost_nanousd=fields.pop("estimate", 0),
            created_at=fields.pop("created_at", self.t0 + timedelta(minutes=minutes)),
        )
        return record

    def get(self, client, who: str, url: str, **params):
        return client.get(url, params, **bearer(self.tokens[who]))


@pytest.fixture
def world() -> World:
    return World()


def request_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["requestId"] for row in response.json()["results"]]


# --- account ------------------------------------------------------------------------------------
def test_a_user_reads_their_own_balances(api_client, world):
    payer = world.payer["alice"]
    services.credits_top_up(
        billing_account=payer, amount_nanousd=5 * USD, actor="t", idempotency_key="t1"
    )
    world.usage(world.alice, "alice")
    services.cost_batch_apply(provider=world.together, costs={"req-1": 3 * USD})

    response = world.get(api_client, "alice", "/api/billing/accounts/alice")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "name": "alice",
        "type": "user",
        "included_credits_nanousd": 0,
        "prepaid_nanousd": 4 * USD,
        "payg_due_nanousd": 0,
        "month_to_date_spend_nanousd": 3 * USD,
        "spending_limit_nanousd": None,
        "monthly_included_nanousd": plans.PRO_USER_MONTHLY_NANOUSD,
    }


def test_pay_as_you_go_due_is_what_is_owed_as_a_positive_number(api_client, world):
    world.usage(world.alice, "alice")
    services.cost_batch_apply(provider=world.together, costs={"req-1": 2 * USD + 700_000_000})

    body = world.get(api_client, "alice", "/api/billing/accounts/alice").json()

    assert body["payg_due_nanousd"] == 700_000_000
    assert body["month_to_date_spend_nanousd"] == 2 * USD + 700_000_000


def test_month_to_date_spend_leaves_out_earlier_months(api_client, world):
    """By the request's month: last month's request charged today is last month's spend."""
    last_month = timezone.now().replace(day=1) - timedelta(days=3)
    world.usage(world.alice, "alice", created_at=last_month)
    world.usage(world.alice, "alice")
    services.cost_batch_apply(provider=world.together, costs={"req-1": USD})
    services.cost_batch_apply(provider=world.together, costs={"req-2": 300_000_000})

    body = world.get(api_client, "alice", "/api/billing/accounts/alice").json()

    assert body["month_to_date_spend_nanousd"] == 300_000_000


def test_a_user_never_charged_reads_zero_balances_and_nothing_is_written(api_client, db):
    dave = UserFactory(username="dave")

    response = api_client.get("/api/billing/accounts/DAVE", **bearer(token_for(dave, "read")))

    assert response.status_code == 200, response.content
    assert response.json()["name"] == "dave"
    assert response.json()["prepaid_nanousd"] == 0
    assert response.json()["monthly_included_nanousd"] == plans.FREE_USER_MONTHLY_NANOUSD
    assert not BillingAccount.objects.filter(user=dave).exists()


@pytest.mark.parametrize("member", ["alice", "bob"])
def test_members_of_an_organization_read_its_account(api_client, world, member):
    response = world.get(api_client, member, "/api/billing/accounts/acme")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "acme"
    assert body["type"] == "org"
    assert body["spending_limit_nanousd"] == 50 * USD
    assert body["monthly_included_nanousd"] == 2 * plans.ORG_SEAT_MONTHLY_NANOUSD


@pytest.mark.parametrize(
    ("who", "name"),
    [("carol", "acme"), ("carol", "alice"), ("bob", "alice"), ("carol", "nobody-at-all")],
)
def test_anyone_else_gets_404_whether_or_not_the_account_exists(api_client, world, who, name):
    for url in (f"/api/billing/accounts/{name}", f"/api/billing/accounts/{name}/ledger"):
        response = world.get(api_client, who, url)

        assert response.status_code == 404, url
        assert response.json() == {
            "error": f"Billing account {name!r} not found.",
            "error_type": "not_found",
        }


@pytest.mark.parametrize(
    "url",
    ["/api/billing/accounts/alice", "/api/billing/accounts/alice/ledger", "/api/billing/usage"],
)
def test_every_endpoint_needs_a_token(api_client, world, url):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.json()["error_type"] == "not_authenticated"


@pytest.mark.parametrize(
    "url",
    ["/api/billing/accounts/alice", "/api/billing/accounts/alice/ledger", "/api/billing/usage"],
)
def test_a_fine_grained_token_needs_the_billing_read_permission(api_client, world, url):
    without = token_for(world.alice, "fine-grained", ["inference.serverless.write"])
    with_it = token_for(world.alice, "fine-grained", ["user.billing.read"])

    refused = api_client.get(url, **bearer(without))
    allowed = api_client.get(url, **bearer(with_it))

    assert refused.status_code == 403
    assert "user.billing.read" in refused.json()["error"]
    assert allowed.status_code == 200


# --- ledger -------------------------------------------------------------------------------------
def test_the_ledger_lists_the_payers_transactions_newest_first_with_its_own_legs(api_client, world):
    payer = world.payer["alice"]
    services.credits_top_up(
        billing_account=payer, amount_nanousd=USD, actor="finance", idempotency_key="t1"
    )
    world.usage(world.alice, "alice")
    services.cost_batch_apply(provider=world.together, costs={"req-1": 2_500_000_000})

    response = world.get(api_client, "alice", "/api/billing/accounts/alice/ledger")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next"] is None
    rows = body["results"]
    times = [r["createdAt"] for r in rows]
    assert times == sorted(times, reverse=True)
    assert rows[-1]["kind"] == "top_up"  # the first posting is the last row
    by_kind = {r["kind"]: r for r in rows}
    assert sorted(by_kind) == ["charge", "grant", "top_up"]
    charge, grant, top_up = by_kind["charge"], by_kind["grant"], by_kind["top_up"]
    assert sorted(charge["entries"], key=lambda e: e["pool"]) == [
        {"pool": "included", "amount_nanousd": -2 * USD},
        {"pool": "prepaid", "amount_nanousd": -500_000_000},
    ]  # the provider's leg is not the payer's
    assert grant["entries"] == [{"pool": "included", "amount_nanousd": 2 * USD}]
    assert top_up["entries"] == [{"pool": "prepaid", "amount_nanousd": USD}]
    assert top_up["actor"] == "finance"
    assert top_up["memo"] == "prepaid top-up"
    assert top_up["createdAt"].endswith("Z")
    assert set(top_up) == {"id", "kind", "createdAt", "month", "actor", "memo", "entries"}
    assert top_up["month"] is None  # prepaid credits belong to no month
    assert charge["month"] == world.t0.strftime("%Y-%m")  # its request's month


def test_the_ledger_leaves_out_transactions_that_moved_none_of_the_payers_money(api_client, world):
    free_org = OrganizationFactory(name="freeorg", plan="free")
    MembershipFactory(user=world.carol, organization=free_org)
    services.credits_ensure_month(
        billing_account=services.billing_account_get_or_create_for_organization(
            organization=free_org
        )
    )  # nothing to grant: recorded as an empty grant

    response = world.get(api_client, "carol", "/api/billing/accounts/freeorg/ledger")

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_organization_members_read_its_ledger(api_client, world):
    world.usage(world.bob, "acme")
    services.cost_batch_apply(provider=world.together, costs={"req-1": USD})

    response = world.get(api_client, "bob", "/api/billing/accounts/acme/ledger")

    assert sorted(r["kind"] for r in response.json()["results"]) == ["charge", "grant"]


def test_the_ledger_pages_through_every_transaction_once(api_client, world):
    payer = world.payer["alice"]
    for i in range(7):
        services.credits_top_up(
            billing_account=payer, amount_nanousd=USD + i, actor="t", idempotency_key=f"k{i}"
        )

    seen, url, pages = [], "/api/billing/accounts/alice/ledger?limit=3", 0
    while url:
        body = api_client.get(url, **bearer(world.tokens["alice"])).json()
        seen += [row["entries"][0]["amount_nanousd"] for row in body["results"]]
        url, pages = body["next"], pages + 1
        assert pages < 10, "pagination does not end"

    assert pages == 3
    assert seen == [USD + i for i in reversed(range(7))]


# --- usage: visibility --------------------------------------------------------------------------
@pytest.fixture
def usage(world):
    """req-1 alice/alice, req-2 alice/acme, req-3 bob/acme, req-4 bob/bob, req-5 carol/carol."""
    world.usage(world.alice, "alice", minutes=1)
    world.usage(world.alice, "acme", minutes=2)
    world.usage(world.bob, "acme", minutes=3)
    world.usage(world.bob, "bob", minutes=4)
    world.usage(world.carol, "carol", minutes=5)
    return world


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        ("alice", ["req-3", "req-2", "req-1"]),  # an admin sees every request billed to acme
        ("bob", ["req-4", "req-3"]),  # a member sees only their own, wherever billed
        ("carol", ["req-5"]),
    ],
)
def test_usage_shows_your_own_requests_and_for_admins_their_organizations(
    api_client, usage, who, visible
):
    assert request_ids(usage.get(api_client, who, "/api/billing/usage")) == visible


def test_a_member_made_admin_sees_the_organizations_usage(api_client, usage):
    usage.acme.memberships.filter(user=usage.bob).update(role=Role.ADMIN)

    ids = request_ids(usage.get(api_client, "bob", "/api/billing/usage"))

    assert ids == ["req-4", "req-3", "req-2"]


def test_a_usage_record_has_every_field(api_client, world):
    record = world.usage(world.bob, "acme", estimate=4_200)
    services.cost_batch_apply(provider=world.together, costs={record.request_id: 5_000})
    record.refresh_from_db()

    row = world.get(api_client, "bob", "/api/billing/usage").json()["results"][0]

    assert row == {
        "requestId": "req-1",
        "provider": "together",
        "payer": "acme",
        "member": "bob",
        "model": LLAMA,
        "providerModel": f"{LLAMA}-turbo",
        "task": "conversational",
        "httpStatus": 200,
        "state": "billed",
        "costNanoUsd": 5_000,
        "estimatedCostNanoUsd": 4_200,
        "createdAt": record.created_at.isoformat().replace("+00:00", "Z"),
        "billedAt": record.billed_at.isoformat().replace("+00:00", "Z"),
        "refundedAt": None,
    }


# --- usage: filters -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"payer": "acme"}, ["req-3", "req-2"]),
        ({"payer": "ALICE"}, ["req-1"]),
        ({"member": "bob"}, ["req-3"]),
        ({"member": "bob", "payer": "alice"}, []),
        ({"provider": "fal-ai"}, ["req-2"]),
        ({"model": QWEN}, ["req-3"]),
        ({"state": "not_billable"}, ["req-1"]),
        ({"state": "pending"}, ["req-3", "req-2"]),
        ({"created_after": "T+2"}, ["req-3", "req-2"]),
        ({"created_before": "T+2"}, ["req-1"]),
        ({"created_after": "T+1", "created_before": "T+3"}, ["req-2", "req-1"]),
    ],
)
def test_usage_filters(api_client, world, params, expected):
    world.usage(world.alice, "alice", minutes=1, http_status=500)
    world.usage(world.alice, "acme", minutes=2, provider=world.fal)
    world.usage(world.bob, "acme", minutes=3, model=QWEN)
    params = dict(params)
    for name, value in params.items():
        if value.startswith("T+"):
            moment = world.t0 + timedelta(minutes=int(value[2:]))
            params[name] = moment.isoformat().replace("+00:00", "Z")

    assert request_ids(world.get(api_client, "alice", "/api/billing/usage", **params)) == expected


def test_a_member_filtering_on_their_organization_sees_only_their_own_records(api_client, usage):
    ids = request_ids(usage.get(api_client, "bob", "/api/billing/usage", payer="acme"))

    assert ids == ["req-3"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "bogus"),
        ("provider", "no-such-provider"),
        ("payer", "no-such-payer"),
        ("payer", "bob"),  # exists, but not alice's to read
        ("member", "ghost"),
        ("model", "no/such-model"),
        ("created_after", "yesterday"),
        ("created_before", "2026-13-01T00:00:00Z"),
        ("stat", "billed"),  # a typo of a filter's name
        ("limit", "ten"),
        ("limit", "0"),
        ("cursor", "not-a-cursor"),
    ],
)
def test_an_unknown_filter_value_is_a_400_naming_the_field(api_client, usage, field, value):
    response = usage.get(api_client, "alice", "/api/billing/usage", **{field: value})

    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["fields"]
    assert body["error"].startswith(field) or field in body["error"]


def test_an_organization_one_cannot_read_gets_the_same_400_as_one_that_does_not_exist(
    api_client, usage
):
    other = OrganizationFactory(name="secret-org")
    MembershipFactory(user=usage.alice, organization=other)

    hidden = usage.get(api_client, "carol", "/api/billing/usage", payer="secret-org").json()
    missing = usage.get(api_client, "carol", "/api/billing/usage", payer="secret-orgx").json()

    assert hidden["error"].replace("secret-org", "X") == missing["error"].replace(
        "secret-orgx", "X"
    )


# --- usage: pages and cost ----------------------------------------------------------------------
def test_usage_pages_through_every_record_once_even_when_they_share_a_timestamp(api_client, world):
    for _ in range(7):
        world.usage(world.alice, "alice", minutes=0)  # seven records at the same instant
    for minutes in (1, 2):
        world.usage(world.alice, "alice", minutes=minutes)

    seen, url, pages = [], "/api/billing/usage?limit=2", 0
    while url:
        response = api_client.get(url, **bearer(world.tokens["alice"]))
        seen += request_ids(response)
        url, pages = response.json()["next"], pages + 1
        assert pages < 20, "pagination does not end"

    assert pages == 5
    assert seen[:2] == ["req-9", "req-8"]
    assert sorted(seen) == sorted(f"req-{i}" for i in range(1, 10))


def test_a_page_link_keeps_the_filters(api_client, world):
    for _ in range(3):
        world.usage(world.alice, "acme")
    world.usage(world.alice, "alice")

    first = world.get(api_client, "alice", "/api/billing/usage", payer="acme", limit="2").json()
    second = api_client.get(first["next"], **bearer(world.tokens["alice"]))

    assert "payer=acme" in urlsplit(first["next"]).query
    assert request_ids(second) == ["req-1"]
    assert second.json()["next"] is None


def queries_for(api_client, world, url: str) -> int:
    api_client.get(url, **bearer(world.tokens["alice"]))  # warm: token last-use write
    with CaptureQueriesContext(connection) as captured:
        response = api_client.get(url, **bearer(world.tokens["alice"]))
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize(
    "url",
    [
        "/api/billing/usage",
        "/api/billing/usage?payer=acme&member=bob&provider=together&model="
        + LLAMA
        + "&state=pending",
        "/api/billing/accounts/acme/ledger",
        "/api/billing/accounts/acme",
    ],
)
def test_the_number_of_queries_does_not_grow_with_the_number_of_rows(api_client, world, url):
    def add_rows(count: int, start: int) -> None:
        for i in range(count):
            record = world.usage(world.bob, "acme", minutes=start + i)
            services.cost_batch_apply(provider=world.together, costs={record.request_id: USD})
            world.usage(world.bob, "acme", minutes=start + i)  # and one pending

    add_rows(2, 0)
    few = queries_for(api_client, world, url)
    add_rows(20, 10)
    many = queries_for(api_client, world, url)

    assert many == few
    assert few <= 8


def test_datetimes_are_utc_ending_in_z(api_client, world):
    world.usage(world.alice, "alice")

    row = world.get(api_client, "alice", "/api/billing/usage").json()["results"][0]

    assert row["createdAt"].endswith("Z")
    assert datetime.fromisoformat(row["createdAt"]).tzinfo == UTC
    assert UsageRecord.objects.get().state == UsageState.PENDING


def test_the_billing_endpoints_are_in_the_openapi_schema(api_client, db):
    response = api_client.get("/api/schema", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/billing/accounts/{name}" in paths
    assert "/api/billing/accounts/{name}/ledger" in paths
    params = {p["name"] for p in paths["/api/billing/usage"]["get"]["parameters"]}
    assert {"payer", "member", "provider", "model", "state", "created_after", "created_before",
            "cursor", "limit"} <= params  # fmt: skip


def test_the_ledger_refuses_a_query_parameter_it_does_not_know(api_client, world):
    response = world.get(api_client, "alice", "/api/billing/accounts/alice/ledger", kind="grant")

    assert response.status_code == 400
    assert response.json()["fields"] == {
        "kind": ["kind: unknown query parameter; use cursor, limit."]
    }
