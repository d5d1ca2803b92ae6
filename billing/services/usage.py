"""Recording usage: who pays for a routed request, one record (`usage_record_create`) and batch
ingestion for routers that run outside this process (`POST /api/billing/usage`).

Every writer builds its rows with `billing.usage_row.UsageRow.build` and writes them with the
one statement there; the async router does the same through `billing.aio`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts import rules
from accounts import selectors as accounts_selectors
from accounts.models import Membership, Organization, User
from billing.models import BillingAccount, UsageRecord
from billing.services.accounts import (
    billing_account_get_or_create_for_organization,
    billing_account_get_or_create_for_user,
    pools_ensure,
)
from billing.usage_row import UsageRow, usage_rows_insert, usage_state
from core.errors import DomainError
from registry.models import Provider

__all__ = [
    "INGEST_MAX",
    "IngestResult",
    "payer_resolve",
    "usage_record_create",
    "usage_records_ingest",
    "usage_state",
]

INGEST_MAX = 10_000


def usage_record_create(
    *,
    provider: Provider,
    request_id: str | None,
    user: User,
    payer: BillingAccount,
    http_status: int | None,
    hub_model_id: str = "",
    provider_model: str = "",
    task: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    estimated_cost_nanousd: int = 0,
    byok: bool = False,
    created_at: datetime | None = None,
) -> UsageRecord:
    """Records one routed request; idempotent on (provider, request ID): a second call
    returns the record the first one stored.

    A request without a request ID, or answered with an error status, is kept for provider
    health as `not_billable`; one made with the user's own provider key is `byok`.
    """
    row = UsageRow.build(
        provider_id=provider.pk,
        request_id=request_id,
        user_id=user.pk,
        payer_id=payer.pk,
        hub_model_id=hub_model_id,
        provider_model=provider_model,
        task=task,
        http_status=http_status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        estimated_cost_nanousd=estimated_cost_nanousd,
        byok=byok,
        created_at=created_at or timezone.now(),
    )
    usage_rows_insert([row])
    return UsageRecord.objects.get(provider=provider, request_id=row.request_id)


def payer_resolve(*, user: User, bill_to: str | None, field: str = "billTo") -> BillingAccount:
    """The account a request is billed to: the user, or the organization named in
    `X-HF-Bill-To`, which the user must belong to and which must be on a team or enterprise
    plan. Refusals are 403 with the rule that failed (an unknown organization reads as "not
    a member", so names stay private)."""
    if not bill_to:
        return billing_account_get_or_create_for_user(user=user)
    org = accounts_selectors.organization_get(name=bill_to)
    member = org and accounts_selectors.membership_get(user=user, organization=org)
    rules.bill_to_check(requested=bill_to, org=org if member else None, field=field)
    return billing_account_get_or_create_for_organization(organization=org)


@dataclass(frozen=True)
class IngestResult:
    created: int
    duplicates: int


@transaction.atomic(durable=True)
def usage_records_ingest(*, records: Sequence[dict], now: datetime | None = None) -> IngestResult:
    """Stores validated usage records (the API's field names), all or nothing, idempotently on
    (provider, request ID). References are resolved with a fixed number of queries; an unknown
    provider or user, or a bill-to the user may not use, is a 4xx naming `records[i].field`
    and nothing is stored."""
    if len(records) > INGEST_MAX:
        raise DomainError(
            "validation_error", f"At most {INGEST_MAX} records per request.", field="records"
        )
    now = now or timezone.now()
    providers = {
        p.slug: p for p in Provider.objects.filter(slug__in={r["provider"] for r in records})
    }
    users = {u.username: u for u in User.objects.filter(username__in={r["user"] for r in records})}
    org_names = {r["billTo"] for r in records if r.get("billTo")}
    orgs = {o.name: o for o in Organization.objects.filter(name__in=org_names)}
    memberships = set(
        Membership.objects.filter(
            organization__in=orgs.values(), user__in=users.values()
        ).values_list("user_id", "organization_id")
    )
    for i, record in enumerate(records):
        if record["provider"] not in providers:
            raise DomainError(
                "validation_error",
                f"records[{i}].provider: unknown provider {record['provider']!r}.",
                field=f"records[{i}].provider",
            )
        user = users.get(record["user"])
        if user is None:
            raise DomainError(
                "validation_error",
                f"records[{i}].user: unknown user {record['user']!r}.",
                field=f"records[{i}].user",
            )
        if record.get("billTo"):
            org = orgs.get(record["billTo"])
            member = org is not None and (user.pk, org.pk) in memberships
            try:
                rules.bill_to_check(
                    requested=record["billTo"],
                    org=org if member else None,
                    user_name=record["user"],
                )
            except DomainError as exc:
                raise DomainError(
                    exc.code,
                    f"records[{i}].billTo: {exc.message}",
                    field=f"records[{i}].billTo",
                    kind=exc.kind,
                ) from None

    payers = _payers(users.values(), orgs.values())
    rows, loose = [], set()
    for record in records:
        user = users[record["user"]]
        bill_to = record.get("billTo")
        payer = payers[("org", orgs[bill_to].pk)] if bill_to else payers[("user", user.pk)]
        rows.append(
            UsageRow.build(
                provider_id=providers[record["provider"]].pk,
                request_id=record.get("requestId"),
                user_id=user.pk,
                payer_id=payer,
                hub_model_id=record.get("hubModel", ""),
                provider_model=record.get("providerModel", ""),
                task=record.get("task", ""),
                http_status=record.get("httpStatus"),
                prompt_tokens=record.get("promptTokens"),
                completion_tokens=record.get("completionTokens"),
                estimated_cost_nanousd=record.get("estimatedCostNanoUsd", 0),
                byok=bool(record.get("byok")),
                created_at=record.get("createdAt") or now,
            )
        )
        if not record.get("createdAt"):
            loose.add(id(rows[-1]))  # a retry of it has another time: compare without it
    created = usage_rows_insert(rows, loose=loose)
    return IngestResult(created=created, duplicates=len(records) - created)


def _payers(users, orgs) -> dict[tuple[str, int], int]:
    """Billing account ids of these users and organizations, created (with pools) if new."""
    BillingAccount.objects.bulk_create(
        [BillingAccount(user=u) for u in users] + [BillingAccount(organization=o) for o in orgs],
        ignore_conflicts=True,
    )
    accounts = BillingAccount.objects.filter(user__in=list(users)) | BillingAccount.objects.filter(
        organization__in=list(orgs)
    )
    accounts = list(accounts)
    pools_ensure(*accounts)
    return {
        ("user", a.user_id) if a.user_id else ("org", a.organization_id): a.pk for a in accounts
    }
