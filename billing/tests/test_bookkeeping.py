"""Robust bookkeeping (issue 11, defects 11, 12 and 13 and the test gaps): accounts that lost
their pools, one global lock order, per-charge legs in pool order, the idempotency key, held
costs and their review, refunds marked, and caps on amounts and seats."""

import re
from datetime import UTC, datetime

import pytest
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

from accounts import plans
from accounts import services as accounts_services
from accounts.tests.factories import UserFactory
from billing import services, tasks
from billing.models import (
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    ProviderBillingHealth,
    UsageRecord,
    UsageState,
)
from billing.selectors import invariant_violations
from billing.services.ledger import Leg, Posting, postings_write
from billing.tests.factories import payer_for_new_user, pending_usage
from core import transactions
from core.errors import DomainError
from registry.tests.factories import ProviderFactory

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
DOLLAR = 1_000_000_000


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def legs_of(request_id: str) -> dict[str, int]:
    record = UsageRecord.objects.get(request_id=request_id)
    return {
        e.account.kind: e.amount_nanousd
        for e in LedgerEntry.objects.filter(transaction_id=record.charge_id).select_related(
            "account"
        )
    }


@pytest.fixture
def provider(db):
    return ProviderFactory(slug="together")


# --- defect 11: an account without its pools ------------------------------------------------
@pytest.mark.django_db
def test_defect_11_an_account_created_without_its_pools_is_charged_not_stuck(provider):
    """A crash between creating an account and its pools used to fail every batch it was in
    (and every other payer's charges in those batches)."""
    bare = BillingAccount.objects.create(user=UserFactory(plan="pro"))
    healthy = payer_for_new_user(plan="pro")
    pending_usage(provider=provider, payer=bare, request_id="bare", created_at=NOW)
    pending_usage(provider=provider, payer=healthy, request_id="ok", created_at=NOW)

    result = services.cost_batch_apply(
        provider=provider, costs={"bare": 5_000, "ok": 7_000}, now=NOW
    )

    assert result.billed == 2
    assert pools(bare)["included"] == plans.PRO_USER_MONTHLY_NANOUSD - 5_000
    assert invariant_violations() == []


@pytest.mark.django_db(transaction=True)
def test_defect_11_one_failing_account_never_aborts_the_credits_job_for_the_others(monkeypatch):
    payers = [payer_for_new_user(plan="pro") for _ in range(3)]
    real = services.credits_ensure_month

    def flaky(*, billing_account, **kwargs):
        if billing_account.pk == payers[0].pk:
            raise RuntimeError("this account is broken")
        return real(billing_account=billing_account, **kwargs)

    monkeypatch.setattr(services, "credits_ensure_month", flaky)
    assert tasks.credits_ensure_month_all() == 2
    assert pools(payers[1])["included"] == pools(payers[2])["included"] > 0


# --- defect 12: one global lock order -------------------------------------------------------
def _locked_before_first_entry(queries) -> set[int]:
    locked = set()
    for query in queries:
        sql = query["sql"]
        if sql.startswith("INSERT INTO billing_ledgerentry"):
            return locked
        if "FROM billing_ledgeraccount WHERE id = ANY" in sql and "FOR UPDATE" in sql:
            ids = sql.split("ANY(", 1)[1].split(")", 1)[0]
            locked |= {int(i) for i in re.findall(r"\d+", ids.split("::")[0])}
    return locked


def _accounts_moved(since_txn: int) -> set[int]:
    return set(
        LedgerEntry.objects.filter(transaction_id__gt=since_txn).values_list(
            "account_id", flat=True
        )
    )


def _last_txn() -> int:
    return LedgerTransaction.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["lazy_grant_batch", "extra_grant", "top_up", "adjust", "refund"])
def test_defect_12_every_posting_path_locks_every_account_it_moves_before_posting(provider, path):
    """A lazy grant inside a cost batch and an admin's extra grant locked the platform's rows
    in different orders (`deadlock detected`). Now every path locks all the accounts it will
    move (platform and provider accounts included) in primary-key order before the first
    entry is written, so no two paths can wait on each other in a cycle."""
    payer = payer_for_new_user(plan="pro")
    for kind in AccountKind.values:  # platform accounts exist (with ids) before the test
        if kind in ("credits_granted", "credits_expired", "cash", "adjustments"):
            services.platform_account_get_or_create(kind)
    record = pending_usage(provider=provider, payer=payer, request_id="r", created_at=NOW)
    if path == "refund":
        services.cost_batch_apply(provider=provider, costs={"r": 3 * DOLLAR}, now=NOW)
        record.refresh_from_db()
    before = _last_txn()
    with CaptureQueriesContext(connection) as captured:
        if path == "lazy_grant_batch":
            services.cost_batch_apply(provider=provider, costs={"r": DOLLAR}, now=NOW)
        elif path == "extra_grant":
            services.credits_grant_extra(
                billing_account=payer, amount_nanousd=DOLLAR, actor="a", memo="m",
                idempotency_key="x", now=NOW,
            )  # fmt: skip
        elif path == "top_up":
            services.credits_top_up(
                billing_account=payer, amount_nanousd=DOLLAR, actor="a", idempotency_key="t"
            )
        elif path == "adjust":
            services.ledger_adjust(
                billing_account=payer, pool="payg", amount_nanousd=DOLLAR, actor="a", memo="m",
                idempotency_key="a",
            )  # fmt: skip
        else:
            services.charge_refund(usage_record=record, actor="a", memo="m")
    moved = _accounts_moved(before)
    assert moved
    assert moved <= _locked_before_first_entry(captured.captured_queries)


def test_defect_12_a_deadlock_or_serialization_failure_reruns_the_transaction(monkeypatch):
    class Cause(Exception):
        sqlstate = "40P01"

    calls = []

    @transactions.retry_on_conflict
    def entry_point():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("deadlock detected") from Cause()
        return "done"

    monkeypatch.setattr(transactions.time, "sleep", lambda s: None)
    assert entry_point() == "done" and len(calls) == 3

    @transactions.retry_on_conflict
    def other_error():
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError, match="refused"):
        other_error()


# --- pool order, per charge -----------------------------------------------------------------
@pytest.mark.django_db
def test_each_charge_takes_included_then_prepaid_then_payg_leaving_the_rest(provider):
    payer = payer_for_new_user(plan="pro")  # $2.00 included
    services.credits_top_up(
        billing_account=payer, amount_nanousd=DOLLAR, actor="t", idempotency_key="t1"
    )
    costs = {"a": 500_000_000, "b": 1_200_000_000, "c": 800_000_000}
    for request_id in costs:
        pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=NOW)
    services.cost_batch_apply(provider=provider, costs=costs, now=NOW)

    assert legs_of("a") == {"included": -500_000_000, "provider_payable": 500_000_000}
    assert legs_of("b") == {"included": -1_200_000_000, "provider_payable": 1_200_000_000}
    assert legs_of("c") == {
        "included": -300_000_000,
        "prepaid": -500_000_000,
        "provider_payable": 800_000_000,
    }
    assert pools(payer) == {"included": 0, "prepaid": 500_000_000, "payg": 0}

    pending_usage(provider=provider, payer=payer, request_id="d", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"d": 700_000_000}, now=NOW)
    assert legs_of("d") == {
        "prepaid": -500_000_000,
        "payg": -200_000_000,
        "provider_payable": 700_000_000,
    }


# --- the charge idempotency key ------------------------------------------------------------
@pytest.mark.django_db
def test_the_charge_idempotency_key_applied_twice_moves_money_once(provider):
    payer = payer_for_new_user(plan="pro")
    pending_usage(provider=provider, payer=payer, request_id="r", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"r": DOLLAR}, now=NOW)
    included = services.pools_get(payer)["included"]
    payable = services.provider_payable_get_or_create(provider=provider)
    key = f"charge:{provider.pk}:r"
    posting = Posting("charge", key, [Leg(payable.pk, DOLLAR), Leg(included.pk, -DOLLAR)], payer.pk)
    with transaction.atomic():
        assert postings_write([posting], actor="again") == {}
        assert postings_write([posting, posting], actor="again") == {}
    assert pools(payer)["included"] == plans.PRO_USER_MONTHLY_NANOUSD - DOLLAR
    assert LedgerTransaction.objects.filter(idempotency_key=key).count() == 1
    assert invariant_violations() == []


# --- held for review -------------------------------------------------------------------------
def _estimated(provider, payer, request_id, estimate):
    record = pending_usage(provider=provider, payer=payer, request_id=request_id, created_at=NOW)
    UsageRecord.objects.filter(pk=record.pk).update(estimated_cost_nanousd=estimate)
    return record


@pytest.mark.django_db
def test_a_cost_far_above_its_estimate_is_held_then_charged_only_when_approved(provider):
    payer = payer_for_new_user(plan="pro")
    _estimated(provider, payer, "fair", 20_000_000)
    absurd = _estimated(provider, payer, "absurd", 20_000_000)  # estimate $0.02

    result = services.cost_batch_apply(
        provider=provider, costs={"fair": 30_000_000, "absurd": 5 * DOLLAR}, now=NOW
    )

    assert (result.billed, result.held) == (1, 1)
    absurd.refresh_from_db()
    assert absurd.state == UsageState.HELD and absurd.cost_nanousd == 5 * DOLLAR
    assert absurd.charge_id is None and "held for review" in absurd.cost_error
    assert ProviderBillingHealth.objects.get(provider=provider).held_costs_total == 1
    assert pools(payer)["payg"] == 0

    with pytest.raises(DomainError, match="reason"):
        services.held_costs_approve(usage_records=[absurd], actor="finance", memo=" ")
    assert services.held_costs_approve(usage_records=[absurd], actor="finance", memo="ok") == 1
    assert services.held_costs_approve(usage_records=[absurd], actor="finance", memo="ok") == 0
    absurd.refresh_from_db()
    assert absurd.state == UsageState.BILLED and "approved by finance" in absurd.cost_error
    assert legs_of("absurd")["provider_payable"] == 5 * DOLLAR
    assert invariant_violations() == []


@pytest.mark.django_db
def test_a_rejected_held_cost_is_never_charged(provider):
    payer = payer_for_new_user(plan="pro")
    record = _estimated(provider, payer, "absurd", 1_000)
    services.cost_batch_apply(provider=provider, costs={"absurd": 10**17}, now=NOW)
    assert services.held_costs_reject(usage_records=[record], actor="finance", memo="bogus") == 1
    record.refresh_from_db()
    assert (record.state, record.charge_id, record.estimated_cost_nanousd) == (
        UsageState.REJECTED,
        None,
        0,
    )
    assert services.held_costs_approve(usage_records=[record], actor="f", memo="late") == 0
    assert not LedgerTransaction.objects.filter(kind="charge").exists()


# --- refunds are marked and belong to their charge's month -----------------------------------
@pytest.mark.django_db
def test_a_refund_is_marked_on_its_record_and_belongs_to_the_charges_month(provider):
    payer = payer_for_new_user(plan="pro")
    record = pending_usage(provider=provider, payer=payer, request_id="r", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"r": 3 * DOLLAR}, now=NOW)
    record.refresh_from_db()
    refund = services.charge_refund(usage_record=record, actor="finance", memo="outage")
    record.refresh_from_db()
    assert record.refunded_at is not None
    assert refund.period == record.charge.period == NOW.date().replace(day=1)


# --- caps --------------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("action", ["top_up", "grant_extra", "adjust"])
def test_defect_13_credit_amounts_are_capped_below_any_overflow(action):
    payer = payer_for_new_user()
    call = {
        "top_up": lambda a: services.credits_top_up(
            billing_account=payer, amount_nanousd=a, actor="x", idempotency_key=str(a)
        ),
        "grant_extra": lambda a: services.credits_grant_extra(
            billing_account=payer, amount_nanousd=a, actor="x", memo="m", idempotency_key=str(a)
        ),
        "adjust": lambda a: services.ledger_adjust(
            billing_account=payer, pool="payg", amount_nanousd=a, actor="x", memo="m",
            idempotency_key=str(a),
        ),
    }[action]  # fmt: skip
    with pytest.raises(DomainError, match="at most") as caught:
        call(2**62)
    assert caught.value.field == "amount"
    call(10**15)  # the cap itself is fine


@pytest.mark.django_db
def test_defect_13_seats_are_capped_so_credits_cannot_overflow():
    with pytest.raises(DomainError) as caught:
        accounts_services.organization_create(name="huge", plan="team", seats=2**40)
    assert caught.value.field == "seats"
    org = accounts_services.organization_create(name="big", plan="team", seats=100_000)
    assert org.seats == 100_000


@pytest.mark.django_db
def test_ledger_account_rows_exist_for_every_pool_after_a_charge(provider):
    payer = BillingAccount.objects.create(user=UserFactory(plan="free"))
    pending_usage(provider=provider, payer=payer, request_id="r", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"r": 1}, now=NOW)
    kinds = set(LedgerAccount.objects.filter(billing_account=payer).values_list("kind", flat=True))
    assert kinds == {"included", "prepaid", "payg"}
