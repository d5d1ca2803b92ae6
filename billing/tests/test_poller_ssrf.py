"""Issue 12: the cost poll never sends the provider's key to an internal address. A cost URL
whose host is, or resolves to, loopback, link-local (cloud metadata) or a private range is
refused unless its network is in UPSTREAM_ALLOWED_NETWORKS: a poll failure with the reason
(in the provider's billing health), the records left pending, nothing sent."""

from __future__ import annotations

import httpx
import pytest
from django.test import override_settings

from billing import polling
from billing.models import ProviderBillingHealth, UsageState
from billing.tests.test_poller_attacks import COST, CostEndpoint, answer, pending, states
from registry.tests.factories import ProviderFactory

INTERNAL_COST_URLS = [
    "http://127.0.0.1:8001/p/costs",
    "http://localhost:8001/p/costs",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.7/costs",
    "http://[::1]:8001/costs",
    "http://[::ffff:127.0.0.1]/costs",
]


@pytest.mark.django_db
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
@pytest.mark.parametrize("cost_url", INTERNAL_COST_URLS)
def test_an_internal_cost_url_is_refused_and_nothing_is_sent(cost_url):
    provider = ProviderFactory(cost_url=cost_url, api_key="secret-provider-key")
    ids = pending(provider, 3)
    endpoint = CostEndpoint()

    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert endpoint.asked == []
    assert "internal address" in result.error
    assert result.billed == 0
    assert states(ids) == dict.fromkeys(ids, UsageState.PENDING)
    health = ProviderBillingHealth.objects.get(provider=provider)
    assert health.consecutive_failures == 1
    assert "internal address" in health.last_error


@pytest.mark.django_db
@override_settings(UPSTREAM_ALLOWED_NETWORKS=["127.0.0.0/8"])
def test_an_allowed_network_is_polled():
    provider = ProviderFactory(cost_url="http://127.0.0.1:8001/p/costs", api_key="k")
    pending(provider, 2)
    endpoint = CostEndpoint(lambda asked: answer(dict.fromkeys(asked, COST)))

    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert (result.billed, result.error) == (2, "")
    assert len(endpoint.asked) == 1


@pytest.mark.django_db
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_a_public_host_that_does_not_resolve_is_left_to_fail_on_its_own():
    """Not an internal address: the request is made (and fails, or a test transport answers)."""
    provider = ProviderFactory(cost_url="https://costs.example/v1/costs", api_key="k")
    ids = pending(provider, 1)
    endpoint = CostEndpoint()

    result = polling.cost_poll_provider(provider=provider, client=endpoint.client())

    assert (result.billed, result.error) == (1, "")
    assert states(ids) == dict.fromkeys(ids, UsageState.BILLED)


@pytest.mark.django_db
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_a_refused_cost_url_is_refused_with_a_real_client_too():
    provider = ProviderFactory(cost_url="http://127.0.0.1:9/costs", api_key="k")
    pending(provider, 1)
    with httpx.Client() as client:
        result = polling.cost_poll_provider(provider=provider, client=client)

    assert "internal address" in result.error
