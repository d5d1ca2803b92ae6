"""Durability and limits under real processes: a router killed right after answering has
recorded the request (charged exactly once by the poller), and an organization's spending
limit holds under 50 concurrent requests."""

import signal
import threading
from collections import Counter

import httpx
import pytest
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts import plans
from accounts.models import AccessToken
from accounts.tests.factories import MembershipFactory, OrganizationFactory
from billing import limits, services
from billing.models import LedgerEntry, LedgerTransaction, UsageRecord
from billing.polling import cost_poll_provider
from registry.models import Mapping
from simulator.costs import cost_nanousd
from testsupport.processes import WebServer, run_threads, wait_for

from .conftest import LLAMA, MESSAGES, chat

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_server(tmp_path, transactional_db):
    """A web server of this test's own (not the session's), so the test may kill it."""
    server = WebServer(tmp_path / "uvicorn.log").start()
    yield server
    server.stop(signal.SIGKILL)


def assert_billed_exactly_once(record: UsageRecord, provider) -> None:
    first = cost_poll_provider(provider=provider)
    assert (first.error, first.billed) == ("", 1)
    record.refresh_from_db()
    assert record.state == "billed"
    assert record.cost_nanousd == cost_nanousd(record.request_id)
    charge = LedgerTransaction.objects.get(kind="charge")
    assert record.charge_id == charge.pk
    assert first.charged_nanousd == record.cost_nanousd
    second = cost_poll_provider(provider=provider)
    assert (second.billed, second.charged_nanousd, second.asked) == (0, 0, 0)
    assert LedgerTransaction.objects.filter(kind="charge").count() == 1
    record.refresh_from_db()
    assert record.charge_id == charge.pk


# --- a router killed right after answering ---------------------------------------------------
def test_record_is_committed_before_the_response_completes(own_server, catalog, pro_token):
    response = chat(own_server.url, pro_token)
    assert response.status_code == 200, response.text
    own_server.stop(signal.SIGKILL)
    assert own_server.proc.returncode == -signal.SIGKILL

    request_id = response.headers["inference-id"]
    record = UsageRecord.objects.select_related("provider").get()
    assert (record.provider.slug, record.request_id, record.state) == (
        "groq",
        request_id,
        "pending",
    )
    assert_billed_exactly_once(record, catalog["groq"])


def test_stream_record_is_committed_before_the_http_response_ends(own_server, catalog, pro_token):
    """A client that reads the HTTP response to its end (the chunked terminator) finds the
    record committed."""
    with httpx.stream(
        "POST",
        f"{own_server.url}/v1/chat/completions",
        json={"model": LLAMA, "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {pro_token}"},
        timeout=30,
    ) as response:
        body = response.read()
    assert response.status_code == 200
    assert b"data: [DONE]" in body
    own_server.stop(signal.SIGKILL)

    record = UsageRecord.objects.get()
    assert record.request_id == response.headers["inference-id"]
    assert record.completion_tokens is not None and record.completion_tokens > 0
    assert_billed_exactly_once(record, catalog["groq"])


def test_a_plain_answer_waits_for_its_record(own_server, catalog, pro_user, pro_token):
    """Control for the test below: while the record's transaction cannot commit (the token
    row it touches is locked by this test), a non-streamed answer is held back."""
    with transaction.atomic():
        list(AccessToken.objects.select_for_update().filter(user=pro_user))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{own_server.url}/v1/chat/completions",
                json={"model": LLAMA, "messages": MESSAGES},
                headers={"Authorization": f"Bearer {pro_token}"},
                timeout=httpx.Timeout(30, read=2),
            )
    # Lock released: the record commits (the client left, the router still records it).
    assert wait_for(lambda: UsageRecord.objects.count() == 1, timeout_s=10)


def test_a_stream_ends_only_after_its_record_is_committed(
    own_server, sim, catalog, pro_user, pro_token
):
    """Clients (openai, huggingface_hub) stop reading at `data: [DONE]`, so the router holds
    the chunk that completes it until the usage record is committed. The commit is held up by
    a row lock this test takes (the token's `last_used_at` update shares its transaction): the
    content streams, [DONE] does not come; once the lock goes, [DONE] comes and the record is
    already there."""
    lines: list[str] = []
    finished = threading.Event()
    # Chunks 100 ms apart, so the content arrives before the final chunk and [DONE].
    assert httpx.put(f"{sim}/groq/_sim/faults", json={"chunk_delay_ms": 100}).status_code == 200

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{own_server.url}/v1/chat/completions",
            json={"model": LLAMA, "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {pro_token}"},
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                lines.append(line)
                if line == "data: [DONE]":
                    lines.append(f"records={UsageRecord.objects.count()}")
        finished.set()

    with transaction.atomic():
        list(AccessToken.objects.select_for_update().filter(user=pro_user))
        reader = threading.Thread(target=stream)
        reader.start()
        assert wait_for(lambda: any('"content"' in line for line in lines), timeout_s=10)
        assert not finished.wait(1.5)  # held: the record cannot commit yet
        assert "data: [DONE]" not in lines
    reader.join(timeout=30)

    assert finished.is_set()
    done_at = lines.index("data: [DONE]")
    assert lines[done_at + 1] == "records=1"  # committed before the client could see [DONE]
    own_server.stop(signal.SIGKILL)
    assert UsageRecord.objects.filter(provider=catalog["groq"]).count() == 1


# --- spending limit under concurrency ---------------------------------------------------------
LIMIT = 1_000_000_000  # $1.00
PER_REQUEST = 50_000_000  # $0.05: both the router's estimate and the simulator's cost


def payg_charged(payer) -> int:
    total = LedgerEntry.objects.filter(
        transaction__kind="charge", account__billing_account=payer, account__kind="payg"
    ).aggregate(total=Sum("amount_nanousd"))["total"]
    return -(total or 0)


@pytest.mark.parametrize("latency_ms", [0, 300], ids=["fast", "overlapping"])
def test_spending_limit_holds_under_50_concurrent_requests(
    server, sim, catalog, pro_user, pro_token, latency_ms
):
    org = OrganizationFactory(
        name="capped-team", plan="team", seats=1, spending_limit_nanousd=LIMIT
    )
    MembershipFactory(user=pro_user, organization=org)
    payer = services.billing_account_get_or_create_for_organization(organization=org)
    services.credits_ensure_month(billing_account=payer)
    services.ledger_adjust(
        billing_account=payer,
        pool="included",
        amount_nanousd=-plans.ORG_SEAT_MONTHLY_NANOUSD,
        actor="test",
        memo="use up the included credits",
        idempotency_key=f"drain-{payer.pk}",
    )
    state = limits.payer_state(billing_account=payer, now=timezone.now(), with_spend=True)
    assert (state.credits_nanousd, state.payg_spend_nanousd, state.pending_nanousd) == (0, 0, 0)
    # groq priced so that a request with max_tokens=5 is estimated at exactly $0.05 before
    # (5 * price / 1M) and after (the simulator answers 5 completion tokens) it is served.
    Mapping.objects.filter(provider=catalog["groq"]).update(
        input_price_nanousd_per_mtok=0, output_price_nanousd_per_mtok=10_000_000_000_000
    )
    faults = {"fixed_cost_nanousd": PER_REQUEST, "latency_ms": latency_ms}
    assert httpx.put(f"{sim}/groq/_sim/faults", json=faults).status_code == 200

    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one(_i):
        response = chat(
            server,
            pro_token,
            f"{LLAMA}:groq",
            headers={"X-HF-Bill-To": org.name},
            max_tokens=5,
        )
        code = response.json()["error"]["code"] if response.status_code != 200 else ""
        with lock:
            results.append((response.status_code, code))

    assert run_threads(50, one) == []
    outcomes = Counter(results)
    served = outcomes[(200, "")]
    refused = outcomes[(402, limits.SPENDING_LIMIT)]
    assert served + refused == 50, outcomes

    records = UsageRecord.objects.filter(payer=payer)
    assert records.count() == served
    assert set(records.values_list("estimated_cost_nanousd", flat=True)) == {PER_REQUEST}
    poll = cost_poll_provider(provider=catalog["groq"])
    assert poll.billed == served
    charged = payg_charged(payer)
    print(  # the numbers, shown with -s
        f"\nspending limit [{latency_ms} ms]: {served} served, {refused} refused (402), "
        f"charged to payg {charged} nano-USD"
    )
    assert charged == served * PER_REQUEST
    assert refused > 0
    assert charged <= LIMIT + PER_REQUEST
    # Once charged, the limit refuses the next request.
    late = chat(server, pro_token, f"{LLAMA}:groq", headers={"X-HF-Bill-To": org.name},
                max_tokens=5)  # fmt: skip
    assert late.status_code == 402
    assert late.json()["error"]["code"] == limits.SPENDING_LIMIT
