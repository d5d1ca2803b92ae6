"""Property-based: random sequences of grants, charges, top-ups, expiries (month rollovers)
and adjustments keep every ledger invariant after every step, and each pool's balance equals
a simple model of it."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import selectors, services
from billing.models import AccountKind
from billing.selectors import invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from core.errors import DomainError
from registry.tests.factories import ProviderFactory

START = datetime(2026, 1, 10, tzinfo=UTC)

amounts = st.integers(min_value=1, max_value=3_000_000_000)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("charge"), amounts),
        st.tuples(st.just("top_up"), amounts),
        st.tuples(st.just("grant_extra"), amounts),
        st.tuples(
            st.just("adjust"),
            st.sampled_from(["included", "prepaid", "payg"]),
            st.integers(min_value=-3_000_000_000, max_value=3_000_000_000),
        ),
        st.tuples(st.just("next_month")),
        st.tuples(st.just("repeat_last_charge")),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=st.sampled_from(["free", "pro"]), script=steps)
def test_random_money_movements_keep_every_invariant(plan, script):
    provider = ProviderFactory(slug=f"p-{uuid.uuid4().hex[:8]}")
    payer = payer_for_new_user(username=f"u-{uuid.uuid4().hex[:8]}", plan=plan)
    monthly = selectors.monthly_credit_nanousd_get(billing_account=payer)
    now = START
    services.credits_ensure_month(billing_account=payer, now=now)
    model = {"included": monthly, "prepaid": 0, "payg": 0}
    last_costs = None

    for step in script:
        kind = step[0]
        if kind == "charge" or (kind == "repeat_last_charge" and last_costs):
            if kind == "charge":
                request_id = uuid.uuid4().hex
                pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=now)
                last_costs = {request_id: step[1]}
            result = services.cost_batch_apply(provider=provider, costs=last_costs, now=now)
            if kind == "charge":
                cost = step[1]
                take = min(cost, model["included"])
                model["included"] -= take
                take_prepaid = min(cost - take, model["prepaid"])
                model["prepaid"] -= take_prepaid
                model["payg"] -= cost - take - take_prepaid
            else:
                assert result.billed == 0  # the same costs again: charged once
        elif kind == "top_up":
            services.credits_top_up(
                billing_account=payer,
                amount_nanousd=step[1],
                actor="p",
                idempotency_key=uuid.uuid4().hex,
            )
            model["prepaid"] += step[1]
        elif kind == "grant_extra":
            services.credits_grant_extra(
                billing_account=payer,
                amount_nanousd=step[1],
                actor="p",
                memo="prize",
                idempotency_key=uuid.uuid4().hex,
                now=now,
            )
            model["included"] += step[1]
        elif kind == "adjust":
            pool, amount = step[1], step[2]
            try:
                services.ledger_adjust(
                    billing_account=payer,
                    pool=pool,
                    amount_nanousd=amount,
                    actor="p",
                    memo="fix",
                    idempotency_key=uuid.uuid4().hex,
                    now=now,
                )
                model[pool] += amount
            except DomainError:
                assert amount == 0 or (pool != "payg" and model[pool] + amount < 0)
        elif kind == "next_month":
            now = (now.replace(day=1) + timedelta(days=32)).replace(day=10)
            services.credits_ensure_month(billing_account=payer, now=now)
            model["included"] = monthly
        balances = {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}
        assert balances == model, step
        assert invariant_violations() == [], step
    assert services.pools_get(payer)[AccountKind.INCLUDED].balance_nanousd >= 0
