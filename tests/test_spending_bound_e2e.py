"""Issue 11's acceptance for spending limits, end to end: the real router (uvicorn + config.asgi,
production cache TTL), a real Celery worker and beat polling the provider simulator over HTTP,
PostgreSQL. 50 concurrent requests, each costing $0.05 (the simulator's `fixed_cost_nanousd`,
no more than the reservation), then every served request is polled and charged: the money
spent stays within the stated bound (docs/billing.md "Spending limits: the bound")."""

import json
import uuid

import httpx
import pytest

from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory, token_for
from billing import services
from billing.models import AccountKind, UsageRecord, UsageState
from billing.selectors import account_summary, invariant_violations
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory
from testsupport.processes import WebServer, celery_processes, run_threads, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

USD = 1_000_000_000
COST = 50_000_000  # $0.05, what the simulator charges for each request
REQUESTS = 50
MESSAGES = [{"role": "user", "content": "Tell me about spending limits."}]


@pytest.fixture
def router(tmp_path, transactional_db):
    """The web server with the production cache TTL, on the test database."""
    server = WebServer(tmp_path / "uvicorn.log", ROUTER_CACHE_TTL_S="5").start()
    yield server.url
    server.stop()


@pytest.fixture
def provider(simulator_url):
    """A fresh simulator provider that charges $0.05 per request and answers after 2 s (so the
    50 requests are in flight together)."""
    slug = f"bound-{uuid.uuid4().hex[:8]}"
    base = f"{simulator_url}/{slug}"
    response = httpx.put(
        f"{base}/_sim/faults", json={"fixed_cost_nanousd": COST, "latency_ms": 2000}, timeout=10
    )
    assert response.status_code == 200, response.text
    yield ProviderFactory(
        slug=slug, base_url=base, cost_url=f"{base}/costs", api_key=f"sim-{slug}-key"
    )
    httpx.post(f"{base}/_sim/reset", timeout=10)


def model_served_by(provider, **prices) -> str:
    model_id = f"bound/{provider.slug}"
    MappingFactory(provider=provider, hub_model=HubModelFactory(model_id=model_id),
                   provider_model="bound-model", status="live", **prices)  # fmt: skip
    return model_id


def burst(router: str, token: str, model: str, *, bill_to: str | None = None) -> list[int]:
    """REQUESTS concurrent chat completions without max_tokens; their statuses, sorted."""
    body = json.dumps({"model": model, "messages": MESSAGES}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if bill_to:
        headers["X-HF-Bill-To"] = bill_to
    statuses: list[int] = []

    def one(_):
        url = f"{router}/v1/chat/completions"
        statuses.append(httpx.post(url, content=body, headers=headers, timeout=60).status_code)

    assert run_threads(REQUESTS, one) == []
    return sorted(statuses)


def charge_everything(tmp_path, payer) -> None:
    """Runs a worker and beat until no record of `payer` waits for its cost."""
    records = UsageRecord.objects.filter(payer=payer)
    with celery_processes(tmp_path, "worker", "beat", BILLING_POLL_INTERVAL_S="1") as procs:
        done = wait_for(
            lambda: records.exists() and not records.filter(state=UsageState.PENDING).exists(),
            timeout_s=120,
        )
        assert done, "\n".join(p.output() for p in procs)
    assert set(records.values_list("state", flat=True)) == {UsageState.BILLED}
    assert set(records.values_list("cost_nanousd", flat=True)) == {COST}


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def limited_org_without_credit(member):
    org = OrganizationFactory(name="bounded", plan="team", seats=1, spending_limit_nanousd=USD)
    MembershipFactory(user=member, organization=org)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    services.credits_ensure_month(billing_account=payer)
    services.ledger_adjust(
        billing_account=payer, pool=AccountKind.INCLUDED,
        amount_nanousd=-pools(payer)[AccountKind.INCLUDED], actor="test",
        memo="no credit left", idempotency_key=f"drain:{payer.pk}",
    )  # fmt: skip
    return org, payer


@pytest.mark.parametrize(
    "prices",
    [
        pytest.param({}, id="unpriced"),
        # $12 per million tokens and 4,096 tokens of context: about $0.0506 reserved each.
        pytest.param(
            {
                "input_price_nanousd_per_mtok": 12 * USD,
                "output_price_nanousd_per_mtok": 12 * USD,
                "context_length": 4096,
            },
            id="priced",
        ),
    ],
)
def test_an_organization_with_a_1_usd_limit_spends_at_most_1_usd(
    router, provider, tmp_path, prices
):
    member = UserFactory(username="bound-member", plan="pro")
    org, payer = limited_org_without_credit(member)
    model = model_served_by(provider, **prices)

    statuses = burst(router, token_for(member, "write"), model, bill_to=org.name)
    charge_everything(tmp_path, payer)

    served = statuses.count(200)
    assert served >= 1 and statuses.count(402) == REQUESTS - served, statuses
    spend = account_summary(billing_account=payer)["month_to_date_spend_nanousd"]
    assert spend == -pools(payer)[AccountKind.PAYG] == served * COST
    print(f"\n[bound] {'priced' if prices else 'unpriced'}: {served} of {REQUESTS} served, "
          f"pay-as-you-go spend {spend} nano-USD (limit {USD})")  # fmt: skip
    assert spend <= USD
    assert invariant_violations() == []


def test_a_free_user_with_10_cents_runs_at_most_10_cents_plus_one_reservation(
    router, provider, tmp_path
):
    user = UserFactory(username="bound-free", plan="free")  # $0.10 this month
    payer = services.billing_account_get_or_create_for_user(user=user)
    # $12 per million tokens and 4,096 tokens of context: about $0.0506 reserved each, no less
    # than the $0.05 each costs.
    model = model_served_by(
        provider,
        input_price_nanousd_per_mtok=12 * USD,
        output_price_nanousd_per_mtok=12 * USD,
        context_length=4096,
    )
    body_bytes = len(json.dumps({"model": model, "messages": MESSAGES}))
    reservation = -(-(4096 + body_bytes) * 12 * USD // 1_000_000)
    assert reservation >= COST

    statuses = burst(router, token_for(user, "write"), model)
    charge_everything(tmp_path, payer)

    served = statuses.count(200)
    assert served >= 1 and statuses.count(402) == REQUESTS - served, statuses
    charged = served * COST
    print(f"\n[bound] free user: {served} of {REQUESTS} served, {charged} nano-USD charged "
          f"(credit 100000000, one reservation {reservation})")  # fmt: skip
    assert charged <= 100_000_000 + reservation
    balances = pools(payer)
    assert balances["included"] + balances["payg"] == 100_000_000 - charged
    assert invariant_violations() == []
