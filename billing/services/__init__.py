"""Writes for billing, one module per sub-domain:

    accounts     billing accounts (who pays), their pools, platform and provider accounts
    ledger       the posting engine: balanced, idempotent ledger transactions
    credits      the monthly included grant and expiry, top-ups, extra grants
    usage        who pays for a request, recording usage (one record, batch ingestion)
    charging     applying provider-reported costs to pending usage (the cost poller's write)
    corrections  refunds and adjustments by a person
    review       held costs (far above their estimate): approved (charged) or rejected

Transaction contracts (`core.transactions`): entry points called by tasks, commands and views
(`cost_batch_apply`, `charge_refund`, `usage_records_ingest`, `credits_ensure_month_many`) are
`atomic(durable=True)`: a return means committed. `credits_top_up`, `credits_grant_extra` and
`ledger_adjust` are atomic but join a caller's transaction (the admin posts for several payers
all or nothing). Building blocks (`postings_write`, `transaction_post`, `accounts_lock`,
`pools_ensure`, `credits_grant_month_due`) refuse to run outside a transaction.

The public entry points are re-exported here: `from billing import services` then
`services.cost_batch_apply(...)`.
"""

from billing.services.accounts import (
    accounts_lock,
    billing_account_get_or_create_for_organization,
    billing_account_get_or_create_for_user,
    billing_account_id_get_or_create,
    platform_account_get_or_create,
    pools_ensure,
    pools_get,
    provider_payable_get_or_create,
)
from billing.services.charging import BatchResult, cost_batch_apply
from billing.services.corrections import charge_refund, ledger_adjust
from billing.services.credits import (
    credits_ensure_month,
    credits_ensure_month_many,
    credits_grant_extra,
    credits_grant_month_due,
    credits_top_up,
)
from billing.services.ledger import Leg, Posting, postings_write, transaction_post
from billing.services.review import held_costs_approve, held_costs_reject
from billing.services.usage import (
    IngestResult,
    payer_resolve,
    usage_record_create,
    usage_records_ingest,
    usage_state,
)

__all__ = [
    "BatchResult",
    "IngestResult",
    "Leg",
    "Posting",
    "accounts_lock",
    "billing_account_get_or_create_for_organization",
    "billing_account_get_or_create_for_user",
    "billing_account_id_get_or_create",
    "charge_refund",
    "cost_batch_apply",
    "credits_ensure_month",
    "credits_ensure_month_many",
    "credits_grant_extra",
    "credits_grant_month_due",
    "credits_top_up",
    "held_costs_approve",
    "held_costs_reject",
    "ledger_adjust",
    "payer_resolve",
    "platform_account_get_or_create",
    "pools_ensure",
    "pools_get",
    "postings_write",
    "provider_payable_get_or_create",
    "transaction_post",
    "usage_record_create",
    "usage_records_ingest",
    "usage_state",
]
