"""`manage.py billing_poll --once`: the operator's cycle polls what the beat task polls (every
provider with pending records, whatever its state), over real HTTP to the simulator."""

import io
import uuid

import pytest
from django.core.management import call_command

from billing.models import UsageRecord
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.models import ProviderState
from registry.tests.factories import ProviderFactory
from simulator.costs import cost_nanousd


@pytest.mark.django_db(transaction=True)
def test_the_poll_command_polls_a_suspended_provider_until_its_records_resolve(simulator_url):
    slug = f"sim-{uuid.uuid4().hex[:8]}"
    base = f"{simulator_url}/{slug}"
    provider = ProviderFactory(
        slug=slug, base_url=base, cost_url=f"{base}/costs", api_key=f"sim-{slug}-key",
        state=ProviderState.SUSPENDED, first_cost_query_delay_s=0,
    )  # fmt: skip
    idle = ProviderFactory(slug=f"idle-{uuid.uuid4().hex[:6]}")  # nothing pending: not polled
    payer = payer_for_new_user(plan="pro")
    request_id = f"sim-{slug}-{uuid.uuid4().hex[:24]}"
    pending_usage(provider=provider, payer=payer, request_id=request_id)

    out = io.StringIO()
    call_command("billing_poll", "--once", stdout=out, stderr=io.StringIO())

    assert f"{slug}: 1 batch(es), asked 1, billed 1" in out.getvalue()
    assert idle.slug not in out.getvalue()
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.state, record.cost_nanousd) == ("billed", cost_nanousd(request_id))
