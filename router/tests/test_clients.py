"""End to end with the real client libraries (openai, huggingface_hub) against the real web
server (uvicorn + config.asgi), the provider simulator and the cost poller."""

import pytest
from huggingface_hub import InferenceClient, constants
from huggingface_hub.inference._providers import _common as hf_providers_common
from openai import OpenAI

from billing.models import BillingAccount, LedgerTransaction, UsageRecord
from billing.polling import cost_poll_provider
from simulator.costs import cost_nanousd

from .conftest import LLAMA, MESSAGES

pytestmark = pytest.mark.e2e


def openai_client(server: str, token: str, **kwargs) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key=token, max_retries=0, timeout=30, **kwargs)


def org_payer(org) -> BillingAccount:
    return BillingAccount.objects.get(organization=org)


def records_when(count: int) -> list[UsageRecord]:
    """The usage records, which must already be there when the client returns (the router
    commits a stream's record before it forwards `data: [DONE]`)."""
    assert UsageRecord.objects.count() == count
    return list(UsageRecord.objects.select_related("provider", "payer").order_by("id"))


def only_record() -> UsageRecord:
    records = records_when(1)
    assert len(records) == 1, records
    return records[0]


def assert_charged_once(record: UsageRecord, provider) -> None:
    """Polls the provider's costs (real HTTP to the simulator) and checks the record is billed
    with the simulator's cost by exactly one charge; a second poll charges nothing more."""
    first = cost_poll_provider(provider=provider)
    assert first.error == ""
    assert first.billed == 1
    record.refresh_from_db()
    expected = cost_nanousd(record.request_id)
    assert record.state == "billed"
    assert record.cost_nanousd == expected
    charges = LedgerTransaction.objects.filter(kind="charge")
    assert charges.count() == 1
    charge = charges.get()
    assert record.charge_id == charge.pk
    assert charge.billing_account_id == record.payer_id
    assert first.charged_nanousd == expected
    again = cost_poll_provider(provider=provider)
    assert (again.billed, again.charged_nanousd) == (0, 0)
    assert LedgerTransaction.objects.filter(kind="charge").count() == 1


# --- openai SDK ---------------------------------------------------------------------------------
def test_openai_chat_completion_is_recorded_and_billed(server, catalog, pro_user, pro_token):
    client = openai_client(server, pro_token)

    raw = client.chat.completions.with_raw_response.create(model=LLAMA, messages=MESSAGES)
    completion = raw.parse()

    assert completion.choices[0].message.content
    assert raw.headers["x-inference-provider"] == "groq"
    request_id = raw.headers["inference-id"]
    record = only_record()
    assert (record.provider.slug, record.state, record.request_id) == (
        "groq",
        "pending",
        request_id,
    )
    assert record.hub_model_id == LLAMA
    assert record.provider_model == "llama-3.1-8b-instant"
    assert record.user_id == pro_user.pk
    assert record.payer.user_id == pro_user.pk
    assert record.http_status == 200
    assert (record.prompt_tokens, record.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert_charged_once(record, catalog["groq"])


def test_openai_plain_call_without_raw_response(server, catalog, pro_token):
    completion = openai_client(server, pro_token).chat.completions.create(
        model=LLAMA, messages=MESSAGES
    )

    assert completion.choices[0].message.content.strip()
    record = only_record()
    assert (record.provider.slug, record.state) == ("groq", "pending")


def test_openai_stream_records_usage_of_the_final_chunk(server, catalog, pro_token):
    client = openai_client(server, pro_token)

    raw = client.chat.completions.with_raw_response.create(
        model=LLAMA, messages=MESSAGES, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    request_id = raw.headers["inference-id"]
    chunks = list(raw.parse())

    assert len(chunks) > 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = next(c.usage for c in reversed(chunks) if c.usage is not None)
    assert usage.completion_tokens > 0
    record = only_record()
    assert (record.provider.slug, record.state, record.request_id) == (
        "groq",
        "pending",
        request_id,
    )
    assert record.completion_tokens == usage.completion_tokens
    assert record.prompt_tokens == usage.prompt_tokens
    assert_charged_once(record, catalog["groq"])


def test_openai_bill_to_an_organization(server, catalog, pro_user, pro_token, team_org):
    client = openai_client(server, pro_token)

    completion = client.chat.completions.create(
        model=LLAMA, messages=MESSAGES, extra_headers={"X-HF-Bill-To": team_org.name}
    )

    assert completion.choices[0].message.content
    record = only_record()
    assert record.payer_id == org_payer(team_org).pk
    assert record.user_id == pro_user.pk
    assert_charged_once(record, catalog["groq"])


def test_openai_bill_to_via_default_headers_streaming(server, catalog, pro_token, team_org):
    client = openai_client(server, pro_token, default_headers={"X-HF-Bill-To": team_org.name})

    chunks = list(client.chat.completions.create(model=LLAMA, messages=MESSAGES, stream=True))

    assert chunks
    record = only_record()
    assert record.payer_id == org_payer(team_org).pk
    assert record.completion_tokens is not None and record.completion_tokens > 0


# --- huggingface_hub, base-URL (OpenAI-style) mode ----------------------------------------------
def hf_base_url_client(server: str, token: str, **kwargs) -> InferenceClient:
    return InferenceClient(base_url=f"{server}/v1", api_key=token, timeout=30, **kwargs)


def test_hf_base_url_mode_with_provider_suffix(server, catalog, pro_user, pro_token):
    client = hf_base_url_client(server, pro_token)

    output = client.chat.completions.create(model=f"{LLAMA}:together", messages=MESSAGES)

    assert output.choices[0].message.content
    record = only_record()
    assert (record.provider.slug, record.state) == ("together", "pending")
    assert (record.hub_model_id, record.provider_model) == (LLAMA, "llama-turbo")
    assert record.payer.user_id == pro_user.pk
    assert record.completion_tokens == output.usage.completion_tokens
    assert_charged_once(record, catalog["together"])


def test_hf_base_url_mode_stream(server, catalog, pro_token):
    client = hf_base_url_client(server, pro_token)

    chunks = list(
        client.chat.completions.create(model=f"{LLAMA}:together", messages=MESSAGES, stream=True)
    )

    assert len(chunks) > 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    record = only_record()
    assert (record.provider.slug, record.state) == ("together", "pending")
    assert record.completion_tokens is not None and record.completion_tokens > 0
    assert_charged_once(record, catalog["together"])


def test_hf_base_url_mode_bill_to(server, catalog, pro_token, team_org):
    client = hf_base_url_client(server, pro_token, bill_to=team_org.name)

    output = client.chat.completions.create(model=f"{LLAMA}:together", messages=MESSAGES)
    list(client.chat.completions.create(model=f"{LLAMA}:together", messages=MESSAGES, stream=True))

    assert output.choices[0].message.content
    records = records_when(2)
    assert len(records) == 2
    payer = org_payer(team_org)
    assert all(r.payer_id == payer.pk and r.provider.slug == "together" for r in records)
    result = cost_poll_provider(provider=catalog["together"])
    assert result.billed == 2
    charges = LedgerTransaction.objects.filter(kind="charge")
    assert charges.count() == 2
    assert set(charges.values_list("billing_account_id", flat=True)) == {payer.pk}
    assert result.charged_nanousd == sum(cost_nanousd(r.request_id) for r in records)


# --- huggingface_hub, named-provider mode (the real mapping lookup) ----------------------------
@pytest.fixture
def hf_at_server(server, monkeypatch):
    """Points huggingface_hub's Hub API and router at the test server; clears the client's
    per-process cache of provider mappings before and after."""
    monkeypatch.setattr(constants, "ENDPOINT", server)
    monkeypatch.setattr(constants, "INFERENCE_PROXY_TEMPLATE", f"{server}/{{provider}}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # the Hub API: anonymous
    hf_providers_common._fetch_inference_provider_mapping.cache_clear()
    yield server
    hf_providers_common._fetch_inference_provider_mapping.cache_clear()


def test_hf_named_provider_plain(hf_at_server, web_server, catalog, pro_user, pro_token):
    client = InferenceClient(provider="together", api_key=pro_token, timeout=30)
    log_start = len(web_server.output())

    output = client.chat_completion(messages=MESSAGES, model=LLAMA)

    # The client resolved the mapping on our Hub API and called the provider's native route.
    log = web_server.output()[log_start:]
    assert "POST /together/v1/chat/completions -> 200 via together" in log, log

    assert output.choices[0].message.content
    record = only_record()
    assert (record.provider.slug, record.state) == ("together", "pending")
    assert (record.hub_model_id, record.provider_model) == (LLAMA, "llama-turbo")
    assert record.payer.user_id == pro_user.pk
    assert record.user_id == pro_user.pk
    assert_charged_once(record, catalog["together"])


def test_hf_named_provider_stream(hf_at_server, catalog, pro_token):
    client = InferenceClient(provider="together", api_key=pro_token, timeout=30)

    chunks = list(client.chat_completion(messages=MESSAGES, model=LLAMA, stream=True))

    assert len(chunks) > 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    record = only_record()
    assert (record.provider.slug, record.hub_model_id) == ("together", LLAMA)
    assert record.completion_tokens is not None and record.completion_tokens > 0
    assert_charged_once(record, catalog["together"])


def test_hf_named_provider_bill_to(hf_at_server, catalog, pro_token, team_org):
    client = InferenceClient(
        provider="together", api_key=pro_token, bill_to=team_org.name, timeout=30
    )

    output = client.chat_completion(messages=MESSAGES, model=LLAMA)
    chunks = list(client.chat_completion(messages=MESSAGES, model=LLAMA, stream=True))

    assert output.choices[0].message.content
    assert chunks
    payer = org_payer(team_org)
    records = records_when(2)
    assert [(r.provider.slug, r.hub_model_id, r.payer_id) for r in records] == [
        ("together", LLAMA, payer.pk),
        ("together", LLAMA, payer.pk),
    ]
    result = cost_poll_provider(provider=catalog["together"])
    assert result.billed == 2
    charges = LedgerTransaction.objects.filter(kind="charge")
    assert set(charges.values_list("billing_account_id", flat=True)) == {payer.pk}
    assert charges.count() == 2
    for record in records:
        record.refresh_from_db()
        assert record.state == "billed"
        assert record.cost_nanousd == cost_nanousd(record.request_id)
