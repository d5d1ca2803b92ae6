"""Spending limits hold (issue 11), through the real router and simulator over HTTP: every
bounded payer reserves the request's upper bound (docs/billing.md "Spending limits: the bound"),
unknown prices are never 0, fail-over re-estimates, the reservation lives as long as the request,
providers that could never bill are not routed to. Plus the router with its production cache
TTL: records are attributed to the right caller and a revoked token is refused once the TTL has
passed."""

import json
import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import AccessToken
from accounts.services import access_token_revoke
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory, token_for
from billing import services as billing_services
from billing.models import InFlight, UsageRecord
from billing.tests.factories import pending_usage
from registry.models import Mapping, Provider
from registry.tests.factories import HubModelFactory, MappingFactory
from testsupport.processes import WebServer, run_threads

from .conftest import LLAMA, MESSAGES, chat, make_provider
from .test_rules import calls, drain_included_credits, error_code, set_faults

pytestmark = pytest.mark.e2e

USD = 1_000_000_000
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
PRODUCTION_CACHE_TTL_S = 5  # ROUTER_CACHE_TTL_S's default (config/settings.py)


def body_bytes(model: str, **fields) -> bytes:
    return json.dumps({"model": model, "messages": MESSAGES, **fields}).encode()


def send(server: str, token: str, body: bytes, *, bill_to: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if bill_to:
        headers["X-HF-Bill-To"] = bill_to
    return httpx.post(f"{server}/v1/chat/completions", content=body, headers=headers, timeout=30)


def bound(body: bytes, *, input_price: int, output_price: int, completion_tokens: int) -> int:
    """The documented upper bound: body bytes as prompt tokens, rounded up."""
    return -(-(len(body) * input_price + completion_tokens * output_price) // 1_000_000)


def limited_org(member, *, limit: int, name: str = "bounded"):
    """A team organization with a spending limit and no credit left."""
    org = OrganizationFactory(name=name, plan="team", seats=1, spending_limit_nanousd=limit)
    MembershipFactory(user=member, organization=org)
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_organization(organization=org),
        2 * USD,
    )
    return org


def concurrently(count: int, request) -> list[int]:
    statuses: list[int] = []
    assert run_threads(count, lambda _: statuses.append(request().status_code)) == []
    return sorted(statuses)


@pytest.fixture
def unpriced(sim):
    """MISTRAL served only by groq, without prices or a context length."""
    groq = make_provider(sim, "groq", chat_route="/openai/v1/chat/completions")
    MappingFactory(provider=groq, hub_model=HubModelFactory(model_id=MISTRAL),
                   provider_model="mistral-7b", status="live")  # fmt: skip
    return groq


# --- defect 1: the bound ----------------------------------------------------------------------
def test_defect_1_an_unpriced_mapping_without_max_tokens_reserves_the_default_bound(
    server, sim, unpriced, pro_user, pro_token
):
    org = limited_org(pro_user, limit=USD)
    body = body_bytes(MISTRAL)
    expected = bound(
        body,
        input_price=settings.BILLING_DEFAULT_INPUT_PRICE_NANOUSD_PER_MTOK,
        output_price=settings.BILLING_DEFAULT_OUTPUT_PRICE_NANOUSD_PER_MTOK,
        completion_tokens=settings.ROUTER_RESERVE_MAX_TOKENS,
    )
    assert 2 * expected <= USD < 3 * expected  # about $0.49 each: two fit under $1.00
    set_faults(sim, "groq", latency_ms=1500)  # all are in flight together

    statuses = concurrently(5, lambda: send(server, pro_token, body, bill_to=org.name))

    assert statuses == [200, 200, 402, 402, 402]
    assert calls(sim, "groq") == {"groq": 2}
    estimates = UsageRecord.objects.values_list("estimated_cost_nanousd", flat=True)
    assert list(estimates) == [expected, expected]  # pending at the bound until charged
    assert not InFlight.objects.exists()


def test_defect_1_a_priced_request_without_max_tokens_reserves_the_context_length(
    server, sim, catalog, pro_user, pro_token
):
    Mapping.objects.filter(provider=catalog["groq"]).update(
        input_price_nanousd_per_mtok=1_000_000_000,
        output_price_nanousd_per_mtok=6_000_000_000,
        context_length=8192,
    )
    org = limited_org(pro_user, limit=100_000_000)  # $0.10
    body = body_bytes(LLAMA + ":groq")
    expected = bound(body, input_price=10**9, output_price=6 * 10**9, completion_tokens=8192)
    assert 2 * expected <= 100_000_000 < 3 * expected  # about $0.049 each
    set_faults(sim, "groq", latency_ms=1500)

    statuses = concurrently(5, lambda: send(server, pro_token, body, bill_to=org.name))

    assert statuses == [200, 200, 402, 402, 402]
    assert list(UsageRecord.objects.values_list("estimated_cost_nanousd", flat=True)) == [
        expected,
        expected,
    ]


def test_defect_1_a_mapping_without_a_price_uses_the_highest_price_of_the_model(
    server, sim, catalog, pro_token
):
    Mapping.objects.filter(provider=catalog["groq"]).update(
        input_price_nanousd_per_mtok=None, output_price_nanousd_per_mtok=None
    )
    body = body_bytes(LLAMA + ":groq", max_tokens=1000)

    response = send(server, pro_token, body)

    assert response.status_code == 200, response.text
    record = UsageRecord.objects.get()
    # together's prices ($0.18 / $0.18 per million tokens) are the highest known for LLAMA.
    assert record.estimated_cost_nanousd == bound(
        body, input_price=180_000_000, output_price=180_000_000, completion_tokens=1000
    )


def test_fail_over_re_estimates_for_the_provider_that_serves(
    server, sim, catalog, pro_user, pro_token
):
    # groq (the fastest) fits the limit; together costs up to $2 for 1,000 tokens: it does not.
    Mapping.objects.filter(provider=catalog["together"]).update(
        output_price_nanousd_per_mtok=2_000 * USD
    )
    org = limited_org(pro_user, limit=USD)
    set_faults(sim, "groq", error_status=500, error_on="chat")

    refused = chat(server, pro_token, max_tokens=1000, headers={"X-HF-Bill-To": org.name})

    assert error_code(refused, 402) == "spending_limit_reached"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert not InFlight.objects.exists()

    org.spending_limit_nanousd = 3 * USD
    org.save()
    body = body_bytes(LLAMA, max_tokens=1000)
    served = send(server, pro_token, body, bill_to=org.name)

    assert served.headers["x-inference-provider"] == "together", served.text
    record = UsageRecord.objects.get(request_id=served.headers["inference-id"])
    assert record.estimated_cost_nanousd == bound(
        body, input_price=180_000_000, output_price=2_000 * USD, completion_tokens=1000
    )
    assert not InFlight.objects.exists()


# --- defect 5: payers without pay-as-you-go ---------------------------------------------------
def test_defect_5_a_free_users_pending_charges_count_against_its_credits(server, sim, catalog):
    user = UserFactory(username="free-pending", plan="free")
    payer = billing_services.billing_account_get_or_create_for_user(user=user)
    earlier = pending_usage(provider=catalog["groq"], payer=payer, request_id="earlier")
    UsageRecord.objects.filter(pk=earlier.pk).update(estimated_cost_nanousd=100_000_000)

    response = chat(server, token_for(user, "write"))

    assert error_code(response, 402) == "no_credits"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_defect_5_a_free_user_runs_no_more_than_its_credits_plus_one_reservation(
    server, sim, catalog
):
    user = UserFactory(username="free-burst", plan="free")  # $0.10 this month
    token = token_for(user, "write")
    set_faults(sim, "groq", latency_ms=1500)
    # 500,000 tokens at groq's $0.08 per million: $0.04 reserved each; 0, 0.04, 0.08 < $0.10.
    statuses = concurrently(5, lambda: chat(server, token, LLAMA + ":groq", max_tokens=500_000))

    assert statuses == [200, 200, 200, 402, 402]
    assert not InFlight.objects.exists()


# --- defect 6: providers that could never bill ------------------------------------------------
def test_defect_6_a_provider_without_a_cost_url_is_not_routed_to(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(cost_url="")

    automatic = chat(server, pro_token)
    pinned = chat(server, pro_token, LLAMA + ":groq")
    named = httpx.post(
        f"{server}/groq/openai/v1/chat/completions",
        json={"model": "llama-3.1-8b-instant", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {pro_token}"},
        timeout=30,
    )

    assert automatic.headers["x-inference-provider"] == "together", automatic.text
    assert error_code(pinned, 404) == "model_not_supported"
    assert error_code(named, 403) == "provider_not_billable"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 1}


# --- reservations -----------------------------------------------------------------------------
def test_an_expired_reservation_no_longer_blocks_a_payer(server, sim, catalog, pro_user, pro_token):
    org = limited_org(pro_user, limit=USD)
    payer = billing_services.billing_account_get_or_create_for_organization(organization=org)
    now = timezone.now()
    InFlight.objects.create(  # a router that died mid-request
        payer=payer, estimated_cost_nanousd=5 * USD, created_at=now - timedelta(minutes=10),
        expires_at=now - timedelta(seconds=1),
    )  # fmt: skip

    response = chat(server, pro_token, max_tokens=10, headers={"X-HF-Bill-To": org.name})

    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def short_ttl_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """The web server with reservations expiring 1 s after their last refresh (every 0.2 s)."""
    server = WebServer(
        tmp_path_factory.mktemp("web-ttl") / "uvicorn.log",
        ROUTER_RESERVATION_TTL_S="1",
        ROUTER_RESERVATION_REFRESH_S="0.2",
    ).start()
    yield server
    server.stop()


def test_a_stream_keeps_its_reservation_for_as_long_as_it_runs(
    short_ttl_server, transactional_db, sim, catalog, pro_user, pro_token
):
    server = short_ttl_server.url
    org = limited_org(pro_user, limit=100_000)  # one request of 1,000 tokens at groq's price
    set_faults(sim, "groq", chunk_delay_ms=150)  # 30 chunks: about 4.5 s for the whole stream
    words = [{"role": "user", "content": " ".join(["word"] * 30)}]
    streamed: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: streamed.append(
            chat(server, pro_token, LLAMA + ":groq", max_tokens=1000, stream=True,
                 messages=words, headers={"X-HF-Bill-To": org.name})
        )
    )  # fmt: skip
    thread.start()
    time.sleep(2.5)  # well past the reservation's TTL

    second = chat(server, pro_token, LLAMA + ":groq", max_tokens=1000,
                  headers={"X-HF-Bill-To": org.name})  # fmt: skip
    thread.join(timeout=30)

    assert error_code(second, 402) == "spending_limit_reached"
    assert streamed[0].status_code == 200
    assert streamed[0].text.rstrip().endswith("data: [DONE]")
    assert not InFlight.objects.exists()


# --- the production cache TTL -----------------------------------------------------------------
@pytest.fixture
def cached_server(tmp_path, transactional_db):
    """A web server with the production cache TTL (every other router test runs with 0); one
    per test, as the data its caches hold is flushed between tests."""
    server = WebServer(
        tmp_path / "uvicorn.log", ROUTER_CACHE_TTL_S=str(PRODUCTION_CACHE_TTL_S)
    ).start()
    yield server
    server.stop()


def test_with_caches_on_each_callers_records_are_attributed_to_them(cached_server, sim, catalog):
    users = [UserFactory(username=f"cached-{n}", plan="pro") for n in ("a", "b")]
    tokens = [token_for(u, "write") for u in users]
    served: dict[str, int] = {}

    for _ in range(3):  # the second and third rounds are served from the caches
        for user, token in zip(users, tokens, strict=True):
            response = chat(cached_server.url, token)
            assert response.status_code == 200, response.text
            served[response.headers["inference-id"]] = user.pk

    records = UsageRecord.objects.filter(request_id__in=served).select_related("payer")
    assert {r.request_id: r.user_id for r in records} == served
    assert {r.request_id: r.payer.user_id for r in records} == served


def test_with_caches_on_a_revoked_token_is_refused_once_the_ttl_has_passed(
    cached_server, sim, catalog
):
    user = UserFactory(username="cached-revoked", plan="pro")
    token = token_for(user, "write")
    assert chat(cached_server.url, token).status_code == 200  # cached from here on

    access_token_revoke(token=AccessToken.objects.get(user=user))
    time.sleep(PRODUCTION_CACHE_TTL_S + 0.5)

    assert error_code(chat(cached_server.url, token), 401) == "invalid_token"
