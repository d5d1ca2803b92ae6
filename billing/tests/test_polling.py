"""Cost polling against the provider simulator over real HTTP: every fault leaves nothing
wrongly charged, and once the provider behaves the records are charged exactly once."""

import uuid
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from billing import polling
from billing.models import LedgerTransaction, ProviderBillingHealth, UsageRecord, UsageState
from billing.selectors import invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory
from simulator.costs import affected, cost_nanousd

pytestmark = pytest.mark.django_db


@pytest.fixture
def sim(simulator_url):
    """A fresh simulated provider (its own slug) registered in the registry."""
    slug = f"sim-{uuid.uuid4().hex[:8]}"
    base = f"{simulator_url}/{slug}"
    provider = ProviderFactory(
        slug=slug, base_url=base, cost_url=f"{base}/costs", api_key=f"sim-{slug}-key"
    )

    def faults(**switches):
        response = httpx.put(f"{base}/_sim/faults", json=switches, timeout=10)
        assert response.status_code == 200, response.text

    provider.faults = faults
    return provider


def make_pending(provider, count: int, *, payer=None, age_s: int = 120) -> list[str]:
    payer = payer or payer_for_new_user(plan="pro")
    created = timezone.now() - timedelta(seconds=age_s)
    ids = [f"sim-{provider.slug}-{uuid.uuid4().hex[:24]}" for _ in range(count)]
    for request_id in ids:
        pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=created)
    return ids


def states(ids) -> dict[str, str]:
    return dict(UsageRecord.objects.filter(request_id__in=ids).values_list("request_id", "state"))


def assert_all_billed_once(ids) -> None:
    records = UsageRecord.objects.filter(request_id__in=ids)
    assert {r.state for r in records} == {UsageState.BILLED}
    assert {r.request_id: r.cost_nanousd for r in records} == {i: cost_nanousd(i) for i in ids}
    assert LedgerTransaction.objects.filter(usage_record__request_id__in=ids).count() == len(ids)
    assert invariant_violations() == []


def test_a_healthy_provider_is_polled_and_every_record_charged_its_cost(sim):
    ids = make_pending(sim, 25)
    result = polling.cost_poll_provider(provider=sim)
    assert (result.asked, result.billed, result.error) == (25, 25, "")
    assert_all_billed_once(ids)
    # A second cycle finds nothing to ask.
    assert polling.cost_poll_provider(provider=sim).asked == 0


def test_batches_hold_at_most_the_batch_size_oldest_first(sim):
    old = make_pending(sim, 5, age_s=600)
    new = make_pending(sim, 5, age_s=120)
    progress = []
    result = polling.cost_poll_provider(
        provider=sim, batch_size=4, progress=lambda n, r: progress.append(r.asked)
    )
    assert result.batches == 3
    assert progress == [4, 8, 10]
    assert_all_billed_once(old + new)


def test_records_younger_than_the_first_query_delay_wait(sim):
    sim.first_cost_query_delay_s = 300
    sim.save()
    young = make_pending(sim, 3, age_s=10)
    assert polling.cost_poll_provider(provider=sim).asked == 0
    assert set(states(young).values()) == {"pending"}


def test_records_without_a_cost_after_the_window_fail_to_bill(sim, settings):
    settings.BILLING_FAILED_AFTER_S = 60
    stale = make_pending(sim, 2, age_s=120)
    sim.faults(withheld=1.0)
    first = polling.cost_poll_provider(provider=sim)
    # Asked first: the window counts from the first ask, not from the request.
    assert (first.asked, first.failed_to_bill) == (2, 0)
    result = polling.cost_poll_provider(provider=sim, now=timezone.now() + timedelta(seconds=61))
    assert result.failed_to_bill == 2
    assert set(states(stale).values()) == {"failed_to_bill"}
    assert LedgerTransaction.objects.filter(kind="charge").count() == 0


@pytest.mark.parametrize(
    "switches",
    [
        {"error_status": 500, "error_on": "costs"},
        {"error_status": 503, "error_on": "costs"},
        {"garbage_body": True},
        {"requests_null": True},
        {"latency_ms": 3000},
    ],
)
def test_a_failing_provider_changes_nothing_and_is_charged_once_it_recovers(
    sim, settings, switches
):
    settings.BILLING_COST_TIMEOUT_S = 1.0
    ids = make_pending(sim, 6)
    sim.faults(**switches)
    result = polling.cost_poll_provider(provider=sim)
    assert result.billed == 0
    assert set(states(ids).values()) == {"pending"}
    if not switches.get("requests_null"):
        health = ProviderBillingHealth.objects.get(provider=sim)
        assert health.consecutive_failures == 1 and health.last_error
    sim.faults()
    assert polling.cost_poll_provider(provider=sim).billed == 6
    assert_all_billed_once(ids)


def test_a_timeout_changes_nothing(sim, settings):
    settings.BILLING_COST_TIMEOUT_S = 0.5
    ids = make_pending(sim, 3)
    sim.faults(timeout=True, error_on="costs")
    result = polling.cost_poll_provider(provider=sim)
    assert "timed out" in result.error
    assert set(states(ids).values()) == {"pending"}
    sim.faults()
    polling.cost_poll_provider(provider=sim)
    assert_all_billed_once(ids)


@pytest.mark.parametrize(
    "switch",
    [
        "negative_costs",
        "float_costs",
        "string_costs",
        "missing_costs",
        "null_costs",
        "duplicate_ids",
        "withheld",
    ],
)
def test_corrupt_costs_are_not_applied_and_are_charged_once_corrected(sim, switch):
    ids = make_pending(sim, 40)
    sim.faults(**{switch: 0.5})
    hit = {i for i in ids if affected(i, 0.5, switch)}
    assert hit and hit != set(ids)

    polling.cost_poll_provider(provider=sim)

    after = states(ids)
    if switch == "float_costs":
        # cost + 0.5 is a valid non-integer: rounded up, i.e. cost + 1.
        charged = dict(
            UsageRecord.objects.filter(request_id__in=hit).values_list("request_id", "cost_nanousd")
        )
        assert charged == {i: cost_nanousd(i) + 1 for i in hit}
        assert invariant_violations() == []
        return
    assert {i for i, s in after.items() if s == "pending"} == hit
    assert {i for i, s in after.items() if s == "billed"} == set(ids) - hit
    sim.faults()
    polling.cost_poll_provider(provider=sim)
    assert_all_billed_once(ids)


def test_unasked_ids_are_ignored(sim):
    ids = make_pending(sim, 4)
    sim.faults(unasked_ids=50)
    result = polling.cost_poll_provider(provider=sim)
    assert (result.billed, result.unknown) == (4, 50)
    assert_all_billed_once(ids)


def test_a_huge_answer_is_refused_without_applying_anything(sim, monkeypatch):
    monkeypatch.setattr(polling, "RESPONSE_BYTES_MAX", 2 * 1024 * 1024)
    ids = make_pending(sim, 3)
    sim.faults(huge_body_mb=5)
    result = polling.cost_poll_provider(provider=sim)
    assert "larger than" in result.error
    assert set(states(ids).values()) == {"pending"}
    sim.faults()
    polling.cost_poll_provider(provider=sim)
    assert_all_billed_once(ids)


def test_a_wrong_api_key_is_a_recorded_failure(sim):
    ids = make_pending(sim, 2)
    sim.faults(api_key="something-else")
    assert "HTTP 401" in polling.cost_poll_provider(provider=sim).error
    assert set(states(ids).values()) == {"pending"}
