"""Cost ingestion benchmark: charges per second, end to end, against two baselines measured in
the same run.

    make bench BENCH=bench/cost_ingest.py

Data: 1,000,000 pending usage records of one simulated provider, spread over 10,000 payers.
- end to end: `billing.polling.cost_poll_provider` on 10,000-ID batches: select the batch,
  HTTP request to the provider simulator (a real process), parse and validate the answer,
  apply it (`cost_batch_apply`: ledger transactions, entries, balances, usage states), commit;
- floor: one hand-written set-based SQL statement applying the same kind of 10,000 costs
  (charging pay-as-you-go only: the least work that still writes a balanced ledger);
- naive: a per-request ORM loop (select, transaction, entries, save) on 2,000 records.
Each measurement uses its own pending records. Goal on the 2-core machine: >= 20,000
charges/s end to end, within 2x of the floor.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

import tempfile

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Organization, OrgPlan, User
from billing import polling, services
from billing.models import (
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    UsageRecord,
)
from billing.selectors import invariant_violations
from registry.models import Provider
from simulator.costs import cost_nanousd
from testsupport.simulator import running_simulator

RECORDS = int(os.environ.get("BENCH_RECORDS", "1000000"))
PAYERS = 10_000
BATCH = 10_000
E2E_BATCHES = int(os.environ.get("BENCH_E2E_BATCHES", "10"))
FLOOR_RUNS = 3
NAIVE_RECORDS = 2_000
GOAL_PER_S = 20_000


def seed(provider: Provider) -> None:
    started = time.perf_counter()
    unusable = "!"  # an unusable password hash: these users never log in
    users = User.objects.bulk_create(
        [User(username=f"bench-user-{i}", plan="pro", password=unusable) for i in range(PAYERS)],
        batch_size=5000,
    )
    accounts = BillingAccount.objects.bulk_create(
        [BillingAccount(user=u) for u in users], batch_size=5000
    )
    LedgerAccount.objects.bulk_create(
        [
            LedgerAccount(kind=k, billing_account=a)
            for a in accounts
            for k in (AccountKind.INCLUDED, AccountKind.PREPAID, AccountKind.PAYG)
        ],
        batch_size=5000,
    )
    # Old enough to be polled, young enough not to be failed_to_bill (BILLING_FAILED_AFTER_S).
    created = timezone.now() - timedelta(minutes=5)
    buffer = io.StringIO()
    for i in range(RECORDS):
        account = accounts[i % PAYERS]
        buffer.write(
            f"{provider.pk}\tsim-{provider.slug}-{i:024x}\t{account.user_id}\t{account.pk}\t"
            f"200\t0\tpending\t{created.isoformat()}\t0\t\t\t\t\n"
        )
    buffer.seek(0)
    columns = (
        "provider_id, request_id, user_id, payer_id, http_status, estimated_cost_nanousd, "
        "state, created_at, cost_attempts, cost_error, hub_model_id, provider_model, task"
    )
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy,
    ):
        while chunk := buffer.read(1 << 20):
            copy.write(chunk)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(
        f"seeded {RECORDS:,} pending usage records over {PAYERS:,} payers "
        f"in {time.perf_counter() - started:.1f} s"
    )


def take_pending(provider: Provider, count: int) -> list[tuple[int, str]]:
    """The newest pending records (the end-to-end run takes the oldest)."""
    return list(
        UsageRecord.objects.filter(provider=provider, state="pending")
        .order_by("-created_at", "-id")
        .values_list("id", "request_id")[:count]
    )


FLOOR_SQL = """
WITH c AS (SELECT * FROM unnest(%(ids)s::text[], %(costs)s::bigint[]) AS c(request_id, cost)),
u AS (
    SELECT u.id, u.payer_id, c.cost FROM billing_usagerecord u
    JOIN c ON c.request_id = u.request_id
    WHERE u.provider_id = %(provider)s AND u.state = 'pending'
    FOR UPDATE OF u
),
t AS (
    INSERT INTO billing_ledgertransaction
        (kind, idempotency_key, billing_account_id, actor, memo, created_at)
    SELECT 'charge', 'floor:' || u.id, u.payer_id, 'floor', '', now() FROM u
    RETURNING id, idempotency_key
),
ut AS (SELECT u.*, t.id AS txn_id FROM u JOIN t ON t.idempotency_key = 'floor:' || u.id),
e AS (
    INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd)
    SELECT ut.txn_id, a.id, -ut.cost FROM ut
    JOIN billing_ledgeraccount a ON a.billing_account_id = ut.payer_id AND a.kind = 'payg'
    UNION ALL
    SELECT ut.txn_id, %(payable)s, ut.cost FROM ut
)
UPDATE billing_usagerecord r
SET state = 'billed', cost_nanousd = ut.cost, charge_id = ut.txn_id, billed_at = now()
FROM ut WHERE r.id = ut.id
"""


def floor(provider: Provider, payable: int) -> float:
    rows = take_pending(provider, BATCH)
    ids = [r for _, r in rows]
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            FLOOR_SQL,
            {
                "ids": ids,
                "costs": [cost_nanousd(i) for i in ids],
                "provider": provider.pk,
                "payable": payable,
            },
        )
        assert cursor.rowcount == len(ids), cursor.rowcount
    return len(ids) / (time.perf_counter() - started)


def naive(provider: Provider, payable: int) -> float:
    rows = take_pending(provider, NAIVE_RECORDS)
    started = time.perf_counter()
    for usage_id, request_id in rows:
        with transaction.atomic():
            record = UsageRecord.objects.select_for_update().get(pk=usage_id, state="pending")
            payg = LedgerAccount.objects.get(billing_account_id=record.payer_id, kind="payg")
            cost = cost_nanousd(request_id)
            txn = LedgerTransaction.objects.create(
                kind="charge",
                idempotency_key=f"naive:{usage_id}",
                actor="naive",
                billing_account_id=record.payer_id,
            )
            LedgerEntry.objects.bulk_create(
                [
                    LedgerEntry(transaction=txn, account=payg, amount_nanousd=-cost),
                    LedgerEntry(transaction=txn, account_id=payable, amount_nanousd=cost),
                ]
            )
            record.state, record.cost_nanousd, record.charge = "billed", cost, txn
            record.billed_at = timezone.now()
            record.save(update_fields=["state", "cost_nanousd", "charge", "billed_at"])
    return len(rows) / (time.perf_counter() - started)


def end_to_end(provider: Provider) -> tuple[float, list[float]]:
    batch_times: list[float] = []
    last = [time.perf_counter()]

    def progress(batch, result):
        now = time.perf_counter()
        batch_times.append(now - last[0])
        last[0] = now
        print(f"  end-to-end batch {batch}: {BATCH / batch_times[-1]:,.0f} charges/s")
        if batch >= E2E_BATCHES:
            raise StopIteration

    started = time.perf_counter()
    with contextlib.suppress(StopIteration):  # raised by `progress` after E2E_BATCHES
        polling.cost_poll_provider(provider=provider, progress=progress)
    elapsed = time.perf_counter() - started
    billed = UsageRecord.objects.filter(
        provider=provider, state="billed", charge__actor="cost-poller"
    ).count()
    return billed / elapsed, [BATCH / t for t in batch_times]


def main() -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, running_simulator(Path(tmp) / "sim.log") as url:
        org = Organization.objects.create(name="bench-provider-org", plan=OrgPlan.ENTERPRISE)
        slug = f"bench-{uuid.uuid4().hex[:6]}"
        provider = Provider.objects.create(
            slug=slug,
            organization=org,
            base_url=f"{url}/{slug}",
            cost_url=f"{url}/{slug}/costs",
            api_key=f"sim-{slug}-key",
        )
        seed(provider)
        payable = services.provider_payable_get_or_create(provider=provider).pk
        # Grants are posted lazily on first charge; make them up front so every measurement
        # does the same work.
        services.credits_ensure_month_many(
            billing_accounts=list(BillingAccount.objects.select_related("user"))
        )

        e2e_rate, batch_rates = end_to_end(provider)
        floor_rates = [floor(provider, payable) for _ in range(FLOOR_RUNS)]
        naive_rate = naive(provider, payable)

    best_floor = max(floor_rates)
    batch_rates.sort()
    print(f"\nCost ingestion, {BATCH:,}-ID batches, {RECORDS:,} records in the table")
    print(
        f"  floor: one set-based SQL statement    {best_floor:10,.0f} charges/s "
        f"(best of {FLOOR_RUNS})"
    )
    print(
        f"  end to end (HTTP, parse, apply)       {e2e_rate:10,.0f} charges/s   "
        f"{best_floor / e2e_rate:4.2f}x slower than the floor   "
        f"(per batch: median {batch_rates[len(batch_rates) // 2]:,.0f}/s)"
    )
    print(
        f"  naive per-request ORM loop            {naive_rate:10,.0f} charges/s   "
        f"{e2e_rate / naive_rate:4.1f}x slower than end to end"
    )
    rate_ok = "met" if e2e_rate >= GOAL_PER_S else "NOT met"
    ratio_ok = "met" if best_floor / e2e_rate <= 2 else "NOT met"
    print(
        f"Goals (issue): >= {GOAL_PER_S:,} charges/s end to end [{rate_ok}]; "
        f"within 2x of the floor [{ratio_ok}]"
    )
    violations = invariant_violations()
    print(f"billing invariants after the run: {'OK' if not violations else violations[:3]}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
