"""Recording usage: who pays for a routed request, and batch ingestion for routers that run
outside this process (`POST /api/billing/usage`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from accounts import selectors as accounts_selectors
from accounts.models import Membership, Organization, OrgPlan, User
from billing import services
from billing.models import BillingAccount
from core.errors import DomainError, Kind
from core.ids import object_id
from registry.models import Provider

BILL_TO_PLANS = frozenset({OrgPlan.TEAM, OrgPlan.ENTERPRISE})
INGEST_MAX = 10_000


def payer_resolve(*, user: User, bill_to: str | None, field: str = "billTo") -> BillingAccount:
    """The account a request is billed to: the user, or the organization named in
    `X-HF-Bill-To`, which the user must belong to and which must be on a team or enterprise
    plan. Refusals are 403 with the rule that failed (an unknown organization reads as "not
    a member", so names stay private)."""
    if not bill_to:
        return services.billing_account_for_user(user=user)
    org = accounts_selectors.organization_get(name=bill_to)
    member = org and accounts_selectors.membership_get(user=user, organization=org)
    if not member:
        raise DomainError(
            "bill_to_not_member",
            f"You are not a member of the organization {bill_to!r}; you cannot bill "
            "requests to it.",
            field=field,
            kind=Kind.FORBIDDEN,
        )
    if org.plan not in BILL_TO_PLANS:
        raise DomainError(
            "bill_to_plan",
            f"The organization {org.name!r} is on the {org.plan!r} plan; billing "
            "requests to an organization needs a team or enterprise plan.",
            field=field,
            kind=Kind.FORBIDDEN,
        )
    return services.billing_account_for_organization(organization=org)


@dataclass(frozen=True)
class IngestResult:
    created: int
    duplicates: int


def _state(record: dict) -> str:
    return services.usage_state(
        byok=bool(record.get("byok")),
        request_id=record.get("requestId"),
        http_status=record.get("httpStatus"),
    )


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
            if org is None or (user.pk, org.pk) not in memberships:
                raise DomainError(
                    "bill_to_not_member",
                    f"records[{i}].billTo: {record['user']!r} is not a member of "
                    f"{record['billTo']!r}.",
                    field=f"records[{i}].billTo",
                    kind=Kind.FORBIDDEN,
                )
            if org.plan not in BILL_TO_PLANS:
                raise DomainError(
                    "bill_to_plan",
                    f"records[{i}].billTo: {org.name!r} is on the {org.plan!r} "
                    "plan; billing to an organization needs team or enterprise.",
                    field=f"records[{i}].billTo",
                    kind=Kind.FORBIDDEN,
                )

    with transaction.atomic():
        payers = _payers(users.values(), orgs.values())
        rows = []
        for record in records:
            user = users[record["user"]]
            bill_to = record.get("billTo")
            payer = payers[("org", orgs[bill_to].pk)] if bill_to else payers[("user", user.pk)]
            rows.append(
                (
                    providers[record["provider"]].pk,
                    (record.get("requestId") or f"no-request-id:{object_id()}")[:255],
                    user.pk,
                    payer,
                    record.get("hubModel", "")[:200],
                    record.get("providerModel", "")[:255],
                    record.get("task", "")[:64],
                    record.get("httpStatus"),
                    record.get("promptTokens"),
                    record.get("completionTokens"),
                    record.get("estimatedCostNanoUsd", 0),
                    _state(record),
                    record.get("createdAt") or now,
                )
            )
        columns = list(zip(*rows, strict=True))
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO billing_usagerecord (provider_id, request_id, user_id, payer_id, "
                "hub_model_id, provider_model, task, http_status, prompt_tokens, "
                "completion_tokens, estimated_cost_nanousd, state, created_at, cost_attempts, "
                "cost_error) "
                "SELECT *, 0, '' FROM unnest(%s::bigint[], %s::text[], %s::bigint[], "
                "%s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[], "
                "%s::int[], %s::bigint[], %s::text[], %s::timestamptz[]) "
                "ON CONFLICT (provider_id, request_id) DO NOTHING",
                [list(c) for c in columns],
            )
            created = cursor.rowcount
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
    services.ensure_pools(*accounts)
    return {
        ("user", a.user_id) if a.user_id else ("org", a.organization_id): a.pk for a in accounts
    }
