"""The router's rules, end to end: a real web server (uvicorn + config.asgi) in front of the real
provider simulator, on the test database. Each test builds its own data, calls the router over
HTTP and checks what the client got, which provider the simulator saw called, and what was
recorded."""

import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from accounts import plans
from accounts.models import Role
from accounts.services import Actor
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory, token_for
from billing import services as billing_services
from billing.models import InFlight, LedgerTransaction, ProviderBillingHealth, UsageRecord
from billing.polling import cost_poll_provider
from billing.tests.factories import pending_usage
from registry.models import HubModel, Mapping, Provider
from registry.services import organization_provider_settings_update, user_provider_settings_update
from registry.tests.factories import HubModelFactory, MappingFactory, TagFilterMappingFactory
from testsupport.processes import WebServer, run_threads, wait_for

from .conftest import LLAMA, MESSAGES, chat, make_provider

pytestmark = pytest.mark.e2e

GROQ_ROUTE = "/groq/openai/v1/chat/completions"


# --- helpers ----------------------------------------------------------------------------------
def set_faults(sim: str, slug: str, **faults) -> None:
    response = httpx.put(f"{sim}/{slug}/_sim/faults", json=faults, timeout=10)
    assert response.status_code == 200, response.text


def stats(sim: str, slug: str) -> dict:
    return httpx.get(f"{sim}/{slug}/_sim/stats", timeout=10).json()


def calls(sim: str, *slugs: str) -> dict[str, int]:
    return {slug: stats(sim, slug)["chat_requests"] for slug in slugs}


def error_code(response: httpx.Response, status: int) -> str:
    """Asserts `status` and OpenAI's error shape; returns the error's code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["code"], str) and error["code"]
    return error["code"]


def post(server: str, path: str, token: str | None, body=None, *, headers=None, **kwargs):
    request_headers = {"Authorization": f"Bearer {token}"} if token else {}
    request_headers.update(headers or {})
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server}{path}", headers=request_headers, timeout=30, **kwargs)


def sse_data(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


def free_user_with_token(name: str):
    user = UserFactory(username=name, plan="free")
    return user, token_for(user, "write")


def drain_included_credits(account, amount: int) -> None:
    billing_services.credits_ensure_month(billing_account=account)
    billing_services.ledger_adjust(
        billing_account=account,
        pool="included",
        amount_nanousd=-amount,
        actor="test",
        memo="use up the included credits",
        idempotency_key=f"drain:{account.pk}",
    )


# --- 1. suffix policies -----------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", ":fastest"])
def test_default_and_fastest_pick_the_highest_throughput(server, sim, catalog, pro_token, suffix):
    response = chat(server, pro_token, LLAMA + suffix)

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert response.json()["model"] == "llama-3.1-8b-instant"  # groq's own model id was sent


def test_cheapest_picks_the_lowest_output_price(server, sim, catalog, pro_token):
    # together becomes the cheapest (groq stays the fastest).
    Mapping.objects.filter(provider=catalog["together"]).update(
        output_price_nanousd_per_mtok=10_000_000
    )

    fastest = chat(server, pro_token, LLAMA + ":fastest")
    cheapest = chat(server, pro_token, LLAMA + ":cheapest")

    assert fastest.headers["x-inference-provider"] == "groq"
    assert cheapest.status_code == 200, cheapest.text
    assert cheapest.headers["x-inference-provider"] == "together"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 1}


def test_preferred_follows_the_users_provider_order(server, sim, catalog, pro_user, pro_token):
    user_provider_settings_update(
        user=pro_user, actor=Actor(user=pro_user), order=["together", "groq"]
    )

    response = chat(server, pro_token, LLAMA + ":preferred")

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "together"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 1}


def test_preferred_without_an_order_is_alphabetical(server, sim, catalog, pro_token):
    # together is made the fastest, so only the alphabetical rule picks groq.
    Mapping.objects.filter(provider=catalog["together"]).update(throughput_tps=5000.0)

    response = chat(server, pro_token, LLAMA + ":preferred")

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}


def test_a_provider_suffix_pins_that_provider(server, sim, catalog, pro_token):
    response = chat(server, pro_token, LLAMA + ":together")

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "together"
    assert response.json()["model"] == "llama-turbo"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 1}


def test_an_unknown_suffix_is_a_400(server, sim, catalog, pro_token):
    response = chat(server, pro_token, LLAMA + ":unknownthing")

    assert error_code(response, 400) == "invalid_model_suffix"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_a_provider_that_does_not_serve_the_model_is_a_404(server, sim, catalog, pro_token):
    make_provider(sim, "somepro")  # exists, but maps nothing

    response = chat(server, pro_token, LLAMA + ":somepro")

    assert error_code(response, 404) == "model_not_supported"
    assert calls(sim, "groq", "together", "somepro") == {"groq": 0, "together": 0, "somepro": 0}


def test_a_failing_mapping_sorts_after_healthy_ones(server, sim, catalog, pro_token):
    Mapping.objects.filter(provider=catalog["groq"]).update(health="error")

    fastest = chat(server, pro_token)
    cheapest = chat(server, pro_token, LLAMA + ":cheapest")
    pinned = chat(server, pro_token, LLAMA + ":groq")

    assert fastest.headers["x-inference-provider"] == "together"
    assert cheapest.headers["x-inference-provider"] == "together"
    assert pinned.headers["x-inference-provider"] == "groq"  # named: still used


def test_unknown_speed_and_price_sort_after_known_ones(server, sim, catalog, pro_token):
    Mapping.objects.filter(provider=catalog["groq"]).update(
        throughput_tps=None, output_price_nanousd_per_mtok=None
    )

    fastest = chat(server, pro_token)
    cheapest = chat(server, pro_token, LLAMA + ":cheapest")

    assert fastest.headers["x-inference-provider"] == "together"
    assert cheapest.headers["x-inference-provider"] == "together"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 2}


def test_tag_filter_mappings_serve_matching_models_after_single_model_ones(
    server, sim, catalog, pro_token
):
    """A LoRA tag-filter mapping serves the adapters of its base model; a tag-filter row that
    is not LoRA-shaped (a task tag: issue 12, finding 3) serves nothing."""
    lora_tags = sorted(["lora", f"base_model:adapter:{LLAMA}"])
    adapter = "someone/llama-lora-pirate"
    HubModelFactory(model_id=adapter, tags=["conversational", *lora_tags])
    tagpro = make_provider(sim, "tagpro")
    TagFilterMappingFactory(
        provider=tagpro,
        task="conversational",
        tags=lora_tags,
        provider_model="tag-model",
        status="live",
    )
    TagFilterMappingFactory(
        provider=make_provider(sim, "hijacker"),
        task="conversational",
        tags=["conversational"],
        status="live",
    )
    # groq has an older LoRA tag-filter mapping and its own single-model one: that one wins.
    older = TagFilterMappingFactory(
        provider=catalog["groq"],
        task="conversational",
        tags=lora_tags,
        provider_model="groq-tagged",
        status="live",
    )
    Mapping.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=30))
    MappingFactory(provider=catalog["groq"], hub_model=HubModel.objects.get(model_id=adapter),
                   provider_model="groq-pirate", status="live")  # fmt: skip

    tagged = chat(server, pro_token, adapter + ":tagpro")
    base_model = chat(server, pro_token, LLAMA + ":tagpro")
    hijacked = chat(server, pro_token, LLAMA + ":hijacker")
    groq = chat(server, pro_token, adapter + ":groq")

    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["model"] == "tag-model"
    assert error_code(base_model, 404) == "model_not_supported"
    assert error_code(hijacked, 404) == "model_not_supported"
    assert groq.json()["model"] == "groq-pirate"
    assert calls(sim, "hijacker") == {"hijacker": 0}


# --- 2. staging visibility --------------------------------------------------------------------
@pytest.fixture
def staging_only(sim):
    """A model served only by a staging mapping of provider `stagepro`."""
    provider = make_provider(sim, "stagepro")
    model = HubModelFactory(model_id="acme/staging-model")
    MappingFactory(
        provider=provider,
        hub_model=model,
        provider_model="acme-staging",
        status="staging",
        throughput_tps=100.0,
    )
    return provider


def test_a_staging_mapping_is_hidden_from_non_members(server, sim, staging_only, pro_token):
    automatic = chat(server, pro_token, "acme/staging-model")
    pinned = chat(server, pro_token, "acme/staging-model:stagepro")
    named = post(
        server,
        "/stagepro/v1/chat/completions",
        pro_token,
        {"model": "acme-staging", "messages": MESSAGES},
    )

    assert error_code(automatic, 404) == "model_not_supported"
    assert error_code(pinned, 404) == "model_not_supported"
    assert error_code(named, 404) == "model_not_supported"
    assert calls(sim, "stagepro") == {"stagepro": 0}


def test_a_staging_mapping_is_used_for_members_of_the_providers_org(
    server, sim, staging_only, pro_user, pro_token
):
    MembershipFactory(user=pro_user, organization=staging_only.organization, role=Role.READ)

    automatic = chat(server, pro_token, "acme/staging-model")
    named = post(
        server,
        "/stagepro/v1/chat/completions",
        pro_token,
        {"model": "acme-staging", "messages": MESSAGES},
    )

    assert automatic.status_code == 200, automatic.text
    assert automatic.headers["x-inference-provider"] == "stagepro"
    assert named.status_code == 200, named.text
    assert named.headers["x-inference-provider"] == "stagepro"
    assert calls(sim, "stagepro") == {"stagepro": 2}
    assert {r.hub_model_id for r in UsageRecord.objects.all()} == {"acme/staging-model"}


# --- 3. providers disabled by the paying organization -----------------------------------------
@pytest.fixture
def groq_disabled(catalog, team_org, pro_user):
    organization_provider_settings_update(
        organization=team_org, actor=Actor(user=pro_user), disabled_providers=["groq"]
    )
    return team_org


def test_automatic_selection_skips_a_provider_the_org_disabled(
    server, sim, groq_disabled, pro_token
):
    response = chat(server, pro_token, headers={"X-HF-Bill-To": groq_disabled.name})

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "together"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 1}
    record = UsageRecord.objects.get()
    assert record.payer.organization_id == groq_disabled.pk


def test_naming_a_provider_the_org_disabled_is_a_403(server, sim, groq_disabled, pro_token):
    bill_to = {"X-HF-Bill-To": groq_disabled.name}

    pinned = chat(server, pro_token, LLAMA + ":groq", headers=bill_to)
    named = post(
        server,
        GROQ_ROUTE,
        pro_token,
        {"model": "llama-3.1-8b-instant", "messages": MESSAGES},
        headers=bill_to,
    )

    assert error_code(pinned, 403) == "provider_disabled"
    assert error_code(named, 403) == "provider_disabled"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}
    assert not UsageRecord.objects.exists()


def test_the_orgs_disabled_providers_do_not_apply_when_the_user_pays(
    server, sim, groq_disabled, pro_token
):
    automatic = chat(server, pro_token)
    pinned = chat(server, pro_token, LLAMA + ":groq")

    assert automatic.headers["x-inference-provider"] == "groq"
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["x-inference-provider"] == "groq"
    assert calls(sim, "groq", "together") == {"groq": 2, "together": 0}


def test_an_org_that_disabled_every_provider_of_the_model_gets_a_404(
    server, sim, catalog, team_org, pro_user, pro_token
):
    organization_provider_settings_update(
        organization=team_org, actor=Actor(user=pro_user), disabled_providers=["groq", "together"]
    )

    response = chat(server, pro_token, headers={"X-HF-Bill-To": team_org.name})

    assert error_code(response, 404) == "model_not_supported"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


# --- 4. suspended providers -------------------------------------------------------------------
def test_a_suspended_provider_is_never_chosen(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(state="suspended")

    automatic = chat(server, pro_token)
    pinned = chat(server, pro_token, LLAMA + ":groq")

    assert automatic.status_code == 200, automatic.text
    assert automatic.headers["x-inference-provider"] == "together"
    assert error_code(pinned, 404) == "model_not_supported"  # not a candidate at all
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 1}


def test_the_named_route_of_a_suspended_provider_is_a_403(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(state="suspended")

    response = post(
        server, GROQ_ROUTE, pro_token, {"model": "llama-3.1-8b-instant", "messages": MESSAGES}
    )

    assert error_code(response, 403) == "provider_suspended"
    assert calls(sim, "groq") == {"groq": 0}


def test_the_named_route_of_an_active_provider_works(server, sim, catalog, pro_token):
    response = post(
        server, GROQ_ROUTE, pro_token, {"model": "llama-3.1-8b-instant", "messages": MESSAGES}
    )

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert UsageRecord.objects.get().hub_model_id == LLAMA


# --- 5. fail-over before the first byte -------------------------------------------------------
def test_a_5xx_fails_over_to_the_next_provider(server, sim, catalog, pro_token):
    set_faults(sim, "groq", error_status=500, error_on="chat")

    response = chat(server, pro_token)

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "together"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 1}
    records = {r.provider.slug: r for r in UsageRecord.objects.select_related("provider")}
    assert set(records) == {"groq", "together"}
    assert (records["groq"].state, records["groq"].http_status) == ("not_billable", 500)
    assert records["groq"].estimated_cost_nanousd == 0
    assert (records["together"].state, records["together"].http_status) == ("pending", 200)
    assert records["together"].request_id == response.headers["inference-id"]


def test_a_5xx_fails_over_for_a_stream_too(server, sim, catalog, pro_token):
    set_faults(sim, "groq", error_status=503, error_on="chat")

    response = chat(server, pro_token, stream=True)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-inference-provider"] == "together"
    assert sse_data(response.text)[-1] == "[DONE]"
    assert stats(sim, "together")["streams_completed"] == 1
    assert sorted(UsageRecord.objects.values_list("provider__slug", "state")) == [
        ("groq", "not_billable"),
        ("together", "pending"),
    ]


def test_an_unreachable_provider_fails_over(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(base_url="http://127.0.0.1:9/x")

    response = chat(server, pro_token)

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "together"
    groq_record = UsageRecord.objects.get(provider=catalog["groq"])
    assert (groq_record.state, groq_record.http_status) == ("not_billable", None)
    assert UsageRecord.objects.get(provider=catalog["together"]).state == "pending"


def test_a_pinned_provider_does_not_fail_over_on_5xx(server, sim, catalog, pro_token):
    set_faults(sim, "groq", error_status=500, error_on="chat")

    response = chat(server, pro_token, LLAMA + ":groq")

    assert response.status_code in (500, 502), response.text
    assert response.headers.get("x-inference-provider", "groq") == "groq"
    assert "error" in response.json()
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert UsageRecord.objects.get().state == "not_billable"


def test_a_pinned_unreachable_provider_is_a_502(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(base_url="http://127.0.0.1:9/x")

    response = chat(server, pro_token, LLAMA + ":groq")

    assert error_code(response, 502) == "upstream_unavailable"
    assert calls(sim, "together") == {"together": 0}
    assert UsageRecord.objects.get().state == "not_billable"


def test_at_most_three_providers_are_tried(server, sim, pro_token):
    model = HubModelFactory(model_id="acme/four")
    slugs = ["p-one", "p-two", "p-three", "p-four"]
    for rank, slug in enumerate(slugs):
        MappingFactory(
            provider=make_provider(sim, slug),
            hub_model=model,
            status="live",
            throughput_tps=1000.0 - rank,
        )
        set_faults(sim, slug, error_status=500, error_on="chat")

    response = chat(server, pro_token, "acme/four")

    assert response.status_code in (500, 502), response.text
    assert calls(sim, *slugs) == {"p-one": 1, "p-two": 1, "p-three": 1, "p-four": 0}
    assert UsageRecord.objects.count() == 3
    assert set(UsageRecord.objects.values_list("state", flat=True)) == {"not_billable"}


def test_a_providers_4xx_is_passed_through_without_fail_over(server, sim, catalog, pro_token):
    set_faults(sim, "groq", error_status=429, error_on="chat")

    response = chat(server, pro_token)

    assert response.status_code == 429
    assert response.headers["x-inference-provider"] == "groq"
    assert response.json()["error"]["code"] == "simulated_error"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert UsageRecord.objects.get().state == "not_billable"


@pytest.fixture(scope="module")
def impatient_web_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """A second web server whose router gives up on a silent provider after 1 s."""
    server = WebServer(
        tmp_path_factory.mktemp("impatient") / "uvicorn.log", ROUTER_READ_TIMEOUT_S="1"
    ).start()
    yield server
    server.stop()


@pytest.fixture
def impatient(impatient_web_server, transactional_db):
    return impatient_web_server.url


def test_a_timeout_fails_over(impatient, sim, catalog, pro_token):
    set_faults(sim, "groq", timeout=True, error_on="chat")

    started = time.monotonic()
    response = chat(impatient, pro_token)

    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10
    assert response.headers["x-inference-provider"] == "together"
    groq_record = UsageRecord.objects.get(provider=catalog["groq"])
    assert (groq_record.state, groq_record.http_status) == ("not_billable", None)
    assert UsageRecord.objects.get(provider=catalog["together"]).state == "pending"


def test_a_pinned_provider_timing_out_is_a_504(impatient, sim, catalog, pro_token):
    set_faults(sim, "groq", timeout=True, error_on="chat")

    response = chat(impatient, pro_token, LLAMA + ":groq")

    assert error_code(response, 504) == "upstream_timeout"
    assert calls(sim, "together") == {"together": 0}
    assert UsageRecord.objects.get().state == "not_billable"


def test_a_stream_going_silent_midway_ends_without_fail_over(impatient, sim, catalog, pro_token):
    set_faults(sim, "groq", chunk_delay_ms=3000)

    response = chat(impatient, pro_token, stream=True)

    assert response.status_code == 200
    assert response.headers["x-inference-provider"] == "groq"
    data = sse_data(response.text)
    assert data and "[DONE]" not in data
    assert calls(sim, "together") == {"together": 0}
    assert UsageRecord.objects.get().provider == catalog["groq"]


# --- 6. no fail-over once bytes were streamed -------------------------------------------------
def test_a_stream_broken_after_the_first_bytes_is_not_retried(server, sim, catalog, pro_token):
    set_faults(sim, "groq", break_stream_after=1)

    response = chat(server, pro_token, stream=True)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-inference-provider"] == "groq"
    data = sse_data(response.text)
    assert len(data) == 1
    assert "[DONE]" not in data
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}
    assert UsageRecord.objects.get().provider == catalog["groq"]


# --- 7. 402: the payer may not start ----------------------------------------------------------
def test_a_free_user_without_credits_gets_a_402(server, sim, catalog):
    user, token = free_user_with_token("free-broke")
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_user(user=user),
        plans.FREE_USER_MONTHLY_NANOUSD,
    )

    response = chat(server, token)

    assert error_code(response, 402) == "no_credits"
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}
    assert not UsageRecord.objects.exists()


def test_a_free_user_with_an_unpaid_balance_gets_a_402(server, sim, catalog):
    user, token = free_user_with_token("free-debtor")
    billing_services.ledger_adjust(
        billing_account=billing_services.billing_account_get_or_create_for_user(user=user),
        pool="payg",
        amount_nanousd=-5_000_000,
        actor="test",
        memo="an unpaid balance",
        idempotency_key=f"debt:{user.pk}",
    )

    response = chat(server, token)

    assert error_code(response, 402) == "unpaid_balance"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_a_free_user_with_credits_is_served(server, sim, catalog):
    _, token = free_user_with_token("free-rich")

    response = chat(server, token)

    assert response.status_code == 200, response.text
    assert UsageRecord.objects.get().state == "pending"


def test_an_org_with_no_credits_and_a_zero_limit_gets_a_402(
    server, sim, catalog, pro_user, pro_token
):
    org = OrganizationFactory(name="capped-team", plan="team", seats=1, spending_limit_nanousd=0)
    MembershipFactory(user=pro_user, organization=org)
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_organization(organization=org),
        plans.ORG_SEAT_MONTHLY_NANOUSD,
    )

    response = chat(server, pro_token, headers={"X-HF-Bill-To": org.name})

    assert error_code(response, 402) == "spending_limit_reached"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}
    assert not InFlight.objects.exists()
    # The user paying for themselves is not affected.
    assert chat(server, pro_token).status_code == 200


def test_an_org_at_its_spending_limit_gets_a_402_until_the_limit_is_raised(
    server, sim, catalog, pro_user, pro_token
):
    org = OrganizationFactory(
        name="spender", plan="team", seats=1, spending_limit_nanousd=1_000_000_000
    )
    MembershipFactory(user=pro_user, organization=org)
    account = billing_services.billing_account_get_or_create_for_organization(organization=org)
    earlier = pending_usage(provider=catalog["together"], payer=account, request_id="earlier-1")
    # $3 charged: the $2 of included credits, then $1 of pay-as-you-go (the limit).
    result = billing_services.cost_batch_apply(
        provider=catalog["together"], costs={earlier.request_id: 3_000_000_000}
    )
    assert result.billed == 1
    bill_to = {"X-HF-Bill-To": org.name}

    refused = chat(server, pro_token, headers=bill_to)

    assert error_code(refused, 402) == "spending_limit_reached"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}

    organization_provider_settings_update(
        organization=org, actor=Actor(user=pro_user), spending_limit_nanousd=2_000_000_000
    )
    allowed = chat(server, pro_token, headers=bill_to)

    assert allowed.status_code == 200, allowed.text
    assert not InFlight.objects.exists()  # the reservation went with the usage record
    new = UsageRecord.objects.get(request_id=allowed.headers["inference-id"])
    assert (new.payer_id, new.state) == (account.pk, "pending")


def test_pay_as_you_go_payers_without_a_limit_are_served_without_credits(
    server, sim, catalog, pro_user, pro_token, team_org
):
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_user(user=pro_user),
        plans.PRO_USER_MONTHLY_NANOUSD,
    )
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_organization(organization=team_org),
        plans.ORG_SEAT_MONTHLY_NANOUSD * team_org.seats,
    )

    user_pays = chat(server, pro_token)
    org_pays = chat(server, pro_token, headers={"X-HF-Bill-To": team_org.name})

    assert user_pays.status_code == 200, user_pays.text
    assert org_pays.status_code == 200, org_pays.text


def test_concurrent_requests_cannot_overrun_a_spending_limit(
    server, sim, catalog, pro_user, pro_token
):
    # Each request's upper bound is about 85,000 nano-USD (1,000 output tokens at groq's price
    # and the body's ~100 bytes as prompt tokens): a limit of 200,000 lets exactly two start.
    org = OrganizationFactory(name="tight", plan="team", seats=1, spending_limit_nanousd=200_000)
    MembershipFactory(user=pro_user, organization=org)
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_organization(organization=org),
        plans.ORG_SEAT_MONTHLY_NANOUSD,
    )
    set_faults(sim, "groq", latency_ms=1500)  # all are in flight together
    statuses: list[int] = []

    def one(_):
        response = chat(
            server, pro_token, LLAMA + ":groq", max_tokens=1000, headers={"X-HF-Bill-To": org.name}
        )
        statuses.append(response.status_code)

    assert run_threads(5, one) == []

    assert sorted(statuses) == [200, 200, 402, 402, 402]
    assert calls(sim, "groq") == {"groq": 2}
    assert not InFlight.objects.exists()


# --- 8. X-HF-Bill-To --------------------------------------------------------------------------
def test_billing_an_org_the_user_is_not_a_member_of_is_a_403(server, sim, catalog, pro_token):
    OrganizationFactory(name="strangers", plan="team")

    response = chat(server, pro_token, headers={"X-HF-Bill-To": "strangers"})
    unknown = chat(server, pro_token, headers={"X-HF-Bill-To": "no-such-org"})

    assert error_code(response, 403) == "bill_to_not_member"
    assert error_code(unknown, 403) == "bill_to_not_member"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_billing_a_free_plan_org_is_a_403(server, sim, catalog, pro_user, pro_token):
    org = OrganizationFactory(name="free-club", plan="free")
    MembershipFactory(user=pro_user, organization=org, role=Role.ADMIN)

    response = chat(server, pro_token, headers={"X-HF-Bill-To": org.name})

    assert error_code(response, 403) == "bill_to_plan"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_billing_a_team_org_records_the_org_as_payer(server, sim, catalog, team_org, pro_token):
    response = chat(server, pro_token, headers={"X-HF-Bill-To": "ROUTER-TEAM"})

    assert response.status_code == 200, response.text
    record = UsageRecord.objects.get()
    assert record.payer.organization_id == team_org.pk
    assert record.user.username == "router-pro"


# --- 9. BYOK ----------------------------------------------------------------------------------
USER_KEY = "gsk_users-own-key-0123456789"


def test_byok_sends_the_users_key_and_charges_nothing(server, sim, catalog, pro_user, pro_token):
    user_provider_settings_update(
        user=pro_user, actor=Actor(user=pro_user), keys={"groq": USER_KEY}
    )
    set_faults(sim, "groq", api_key=USER_KEY)  # the platform's key is refused from now on

    response = chat(server, pro_token)
    other = UserFactory(username="no-byok", plan="pro")
    refused = chat(server, token_for(other), LLAMA + ":groq")

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    # Proof that the sim now only takes the user's key: the platform's is refused.
    assert error_code(refused, 502) == "upstream_auth_failed"
    record = UsageRecord.objects.get(user=pro_user)
    assert record.state == "byok"
    assert record.estimated_cost_nanousd == 0
    # Even a provider that would charge every request it served charges nothing.
    set_faults(sim, "groq", fixed_cost_nanousd=1_000_000)
    cost_poll_provider(provider=catalog["groq"])
    assert not LedgerTransaction.objects.filter(kind="charge").exists()
    record.refresh_from_db()
    assert record.state == "byok"


def test_byok_is_served_even_without_credits(server, sim, catalog):
    user, token = free_user_with_token("free-byok")
    drain_included_credits(
        billing_services.billing_account_get_or_create_for_user(user=user),
        plans.FREE_USER_MONTHLY_NANOUSD,
    )
    user_provider_settings_update(user=user, actor=Actor(user=user), keys={"groq": USER_KEY})
    set_faults(sim, "groq", api_key=USER_KEY)

    byok = chat(server, token, LLAMA + ":groq")
    platform = chat(server, token, LLAMA + ":together")

    assert byok.status_code == 200, byok.text
    assert error_code(platform, 402) == "no_credits"
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}


def test_a_refused_users_key_is_passed_through_but_a_refused_platform_key_fails_over(
    server, sim, catalog, pro_user, pro_token
):
    user_provider_settings_update(
        user=pro_user, actor=Actor(user=pro_user), keys={"together": "tgr_wrong-user-key-42"}
    )
    set_faults(sim, "groq", api_key="only-some-other-key")
    set_faults(sim, "together", api_key="only-some-other-key")

    automatic = chat(server, pro_token)  # groq refuses the platform key: on to together
    pinned_byok = chat(server, pro_token, LLAMA + ":together")

    assert automatic.status_code == 401, automatic.text  # together refused the user's key
    assert automatic.headers["x-inference-provider"] == "together"
    assert pinned_byok.status_code == 401
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 2}
    states = sorted(UsageRecord.objects.values_list("provider__slug", "state"))
    assert states == [("groq", "not_billable"), ("together", "byok"), ("together", "byok")]


# --- 10. no request ID ------------------------------------------------------------------------
def test_an_answer_without_a_request_id_is_served_but_not_billable(server, sim, catalog, pro_token):
    set_faults(sim, "groq", omit_request_id_header=True)

    response = chat(server, pro_token)

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    assert "inference-id" not in response.headers
    record = UsageRecord.objects.get()
    assert record.state == "not_billable"
    assert record.http_status == 200
    assert record.estimated_cost_nanousd == 0
    # Counted against the provider; a second one adds to the count.
    assert chat(server, pro_token).status_code == 200
    health = ProviderBillingHealth.objects.get(provider=catalog["groq"])
    assert health.missing_request_ids_total == 2
    assert not ProviderBillingHealth.objects.filter(provider=catalog["together"]).exists()


# --- 11. client disconnect mid-stream ---------------------------------------------------------
def test_a_client_leaving_mid_stream_stops_the_providers_stream(server, sim, catalog, pro_token):
    set_faults(sim, "groq", chunk_delay_ms=300)
    words = " ".join(f"word{i}" for i in range(24))
    body = {"model": LLAMA, "messages": [{"role": "user", "content": words}], "stream": True}

    headers = {"Authorization": f"Bearer {pro_token}"}
    url = f"{server}/v1/chat/completions"
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-inference-provider"] == "groq"
        first = next(response.iter_raw())
        assert first.startswith(b"data:")
    # leaving the block closed the connection mid-stream

    assert wait_for(lambda: stats(sim, "groq")["streams_abandoned"] == 1, timeout_s=10)
    groq = stats(sim, "groq")
    assert groq["streams_completed"] == 0
    assert wait_for(
        lambda: UsageRecord.objects.filter(provider=catalog["groq"]).exists(), timeout_s=10
    )
    assert calls(sim, "together") == {"together": 0}


def test_a_complete_stream_is_recorded_with_its_usage(server, sim, catalog, pro_token):
    response = chat(server, pro_token, stream=True)

    assert response.status_code == 200
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    record = UsageRecord.objects.get()
    assert record.request_id == response.headers["inference-id"]
    assert record.prompt_tokens is not None and record.completion_tokens is not None


# --- 12. bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"this is not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"", "invalid_json"),
        (b'[{"model": "meta-llama/Llama-3.1-8B-Instruct"}]', "invalid_body"),
        (b'"a string"', "invalid_body"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "invalid_model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "invalid_model"),
        (b'{"model": "meta-llama/Llama-3.1-8B-Instruct"}', "invalid_messages"),
        (b'{"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": []}', "invalid_messages"),
        (b'{"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": "hi"}', "invalid_messages"),
        (
            b'{"model": "meta-llama/Llama-3.1-8B-Instruct", "stream": "yes",'
            b' "messages": [{"role": "user", "content": "hi"}]}',
            "invalid_stream",
        ),
    ],
)
def test_a_bad_body_is_a_400(server, sim, catalog, pro_token, content, code):
    response = post(
        server,
        "/v1/chat/completions",
        pro_token,
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert error_code(response, 400) == code
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_a_deeply_nested_body_is_a_400(server, sim, catalog, pro_token):
    content = b"[" * 100_000 + b"]" * 100_000

    response = post(server, "/v1/chat/completions", pro_token, content=content)

    assert error_code(response, 400) == "invalid_json"


def test_an_absurd_max_tokens_billed_to_a_limited_org_is_a_client_error(
    server, sim, catalog, pro_user, pro_token
):
    org = OrganizationFactory(
        name="limited", plan="team", seats=1, spending_limit_nanousd=100_000_000_000
    )
    MembershipFactory(user=pro_user, organization=org)

    response = chat(server, pro_token, max_tokens=10**18, headers={"X-HF-Bill-To": org.name})

    assert error_code(response, 400) == "invalid_max_tokens"
    assert not InFlight.objects.exists()


def test_a_stream_without_usage_and_an_absurd_estimate_is_still_recorded(
    server, sim, catalog, pro_token
):
    set_faults(sim, "groq", break_stream_after=1)  # ends before the final chunk with `usage`
    # 10M tokens at 10^18 nano-USD per 1M: an estimate far beyond a bigint, which is capped.
    Mapping.objects.filter(provider=catalog["groq"]).update(output_price_nanousd_per_mtok=10**18)

    response = chat(server, pro_token, max_tokens=10_000_000, stream=True)

    assert response.status_code == 200
    assert len(sse_data(response.text)) == 1
    record = UsageRecord.objects.get()
    assert record.request_id == response.headers["inference-id"]


def test_authentication_errors(server, sim, catalog, pro_user):
    body = {"model": LLAMA, "messages": MESSAGES}
    fine_no = token_for(pro_user, "fine-grained", ["org.read"])
    fine_yes = token_for(pro_user, "fine-grained", ["inference.serverless.write"])

    missing = post(server, "/v1/chat/completions", None, body)
    not_bearer = post(
        server, "/v1/chat/completions", None, body, headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    unknown = post(server, "/v1/chat/completions", "hf_" + "x" * 34, body)
    not_hf = post(server, "/v1/chat/completions", "sk-something", body)
    read = post(server, "/v1/chat/completions", token_for(pro_user, "read"), body)
    fine_without = post(server, "/v1/chat/completions", fine_no, body)
    fine_with = post(server, "/v1/chat/completions", fine_yes, body)

    assert error_code(missing, 401) == "missing_token"
    assert error_code(not_bearer, 401) == "missing_token"
    assert error_code(unknown, 401) == "invalid_token"
    assert error_code(not_hf, 401) == "invalid_token"
    assert error_code(read, 403) == "insufficient_permissions"
    assert error_code(fine_without, 403) == "insufficient_permissions"
    assert fine_with.status_code == 200, fine_with.text
    assert calls(sim, "groq", "together") == {"groq": 1, "together": 0}


def test_a_revoked_token_and_an_inactive_user_are_401(server, sim, catalog, pro_user):
    from accounts.models import AccessToken
    from accounts.services import access_token_revoke

    revoked = token_for(pro_user)
    access_token_revoke(token=AccessToken.objects.get(user=pro_user))
    inactive_user = UserFactory(username="gone-user", plan="pro", is_active=False)

    assert error_code(chat(server, revoked), 401) == "invalid_token"
    assert error_code(chat(server, token_for(inactive_user)), 401) == "invalid_token"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_other_methods_are_405(server, sim, catalog, pro_token):
    headers = {"Authorization": f"Bearer {pro_token}"}

    get = httpx.get(f"{server}/v1/chat/completions", headers=headers, timeout=10)
    put = httpx.put(
        f"{server}/v1/chat/completions",
        headers=headers,
        timeout=10,
        json={"model": LLAMA, "messages": MESSAGES},
    )

    assert error_code(get, 405) == "method_not_allowed"
    assert error_code(put, 405) == "method_not_allowed"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


def test_unknown_models_and_providers_are_404(server, sim, catalog, pro_token):
    HubModelFactory(model_id="acme/unserved")

    unknown = chat(server, pro_token, "nobody/no-such-model")
    unserved = chat(server, pro_token, "acme/unserved")
    unknown_provider = post(
        server,
        "/nosuchprovider/v1/chat/completions",
        pro_token,
        {"model": "x", "messages": MESSAGES},
    )
    unmapped = post(server, GROQ_ROUTE, pro_token, {"model": "not-groqs", "messages": MESSAGES})
    embeddings = post(
        server,
        "/groq/openai/v1/embeddings",
        pro_token,
        {"model": "llama-3.1-8b-instant", "messages": MESSAGES},
    )

    assert error_code(unknown, 404) == "model_not_found"
    assert error_code(unserved, 404) == "model_not_supported"
    assert error_code(unknown_provider, 404) == "provider_not_found"
    assert error_code(unmapped, 404) == "model_not_supported"
    assert error_code(embeddings, 404) == "route_not_supported"
    assert calls(sim, "groq", "together") == {"groq": 0, "together": 0}


# --- 13. response headers ---------------------------------------------------------------------
def test_the_providers_request_id_and_name_are_returned(server, sim, catalog, pro_token):
    response = chat(server, pro_token)

    assert response.status_code == 200
    assert response.headers["x-inference-provider"] == "groq"
    request_id = response.headers["inference-id"]
    assert request_id.startswith("sim-groq-")
    assert UsageRecord.objects.get().request_id == request_id


def test_a_providers_own_request_id_header_is_used(server, sim, catalog, pro_token):
    Provider.objects.filter(pk=catalog["groq"].pk).update(request_id_header="X-Groq-Request-Id")
    set_faults(sim, "groq", request_id_header="X-Groq-Request-Id")

    response = chat(server, pro_token)

    assert response.status_code == 200
    request_id = response.headers["x-groq-request-id"]
    record = UsageRecord.objects.get()
    assert (record.request_id, record.state) == (request_id, "pending")


# --- 14. privacy ------------------------------------------------------------------------------
def test_tokens_keys_and_bodies_are_never_logged(
    server, web_server, sim, catalog, pro_user, pro_token
):
    secret_words = "zebra-quartz-7731 plutonium-marmalade"
    user_provider_settings_update(
        user=pro_user, actor=Actor(user=pro_user), keys={"groq": USER_KEY}
    )
    set_faults(sim, "groq", api_key=USER_KEY)
    start = len(web_server.output())
    messages = [{"role": "user", "content": secret_words}]

    plain = chat(server, pro_token, messages=messages)
    streamed = chat(server, pro_token, messages=messages, stream=True)
    failing = chat(server, pro_token, LLAMA + ":together", messages=messages, max_tokens="x")
    bad = post(server, "/v1/chat/completions", pro_token, content=b"{" + secret_words.encode())

    assert plain.status_code == 200, plain.text
    assert secret_words in plain.text  # the provider saw it (the simulator echoes it)
    assert streamed.status_code == 200
    assert failing.status_code == 400
    assert bad.status_code == 400
    assert wait_for(lambda: web_server.output()[start:].count(" -> ") >= 4, timeout_s=10)
    time.sleep(0.2)
    log = web_server.output()
    for secret in (pro_token, USER_KEY, "zebra-quartz-7731", "plutonium-marmalade"):
        assert secret not in log
