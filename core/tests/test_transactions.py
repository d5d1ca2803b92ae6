"""The transaction contracts of `core.transactions`."""

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError

from core.transactions import requires_atomic


@requires_atomic
def building_block(value: int) -> int:
    return value * 2


def test_a_building_block_refuses_to_run_outside_a_transaction():
    assert not connection.in_atomic_block
    with pytest.raises(TransactionManagementError, match="building_block must run inside"):
        building_block(1)


@pytest.mark.django_db(transaction=True)
def test_a_building_block_runs_inside_a_transaction():
    with transaction.atomic():
        assert building_block(21) == 42


@pytest.mark.django_db(transaction=True)
def test_an_entry_point_refuses_to_run_inside_another_transaction():
    """`cost_batch_apply` is durable: a return means committed, so it cannot join a caller's
    transaction (which could still roll back)."""
    from billing import services
    from registry.tests.factories import ProviderFactory

    provider = ProviderFactory()
    with (
        pytest.raises(RuntimeError, match="durable"),
        transaction.atomic(),
    ):
        services.cost_batch_apply(provider=provider, costs={"r": 1})
