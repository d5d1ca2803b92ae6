"""Billing HTTP API: a payer's balances, its ledger, usage records (reads), and the batch
ingestion of usage records for routers that run outside this process (staff only).

Who reads what: a user reads their own account; members of an organization read the
organization's; anyone else gets the same 404 as for a name that does not exist. Usage
records: a user's own requests, plus, for organization admins, every request billed to the
organization. Tokens need `user.billing.read` (read and write tokens carry it).
Money is integer nano-USD.
"""

from __future__ import annotations

from datetime import UTC, timedelta

import django_filters
from django import forms
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as accounts_selectors
from accounts.models import TokenRole
from accounts.permissions import request_token, token_permission
from billing import selectors
from billing.models import BillingAccount, LedgerTransaction, UsageRecord, UsageState
from billing.pagination import NewestFirstPagination
from billing.services import usage
from core.errors import DomainError, Kind
from core.serializers import StrictSerializer
from registry import selectors as registry_selectors

BillingRead = token_permission("user.billing.read")


PAGINATION_PARAMS = frozenset({"cursor", "limit"})


def _refuse_unknown_params(request, known: frozenset[str]) -> None:
    """A misspelt filter must not be silently ignored (the page would look filtered)."""
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise DomainError(
            "validation_error",
            f"{unknown[0]}: unknown query parameter; use {', '.join(sorted(known))}.",
            field=unknown[0],
        )


def _account_or_404(request, name: str) -> BillingAccount:
    account = selectors.billing_account_visible(viewer=request.user, name=name)
    if account is None:
        # Same answer for "no such payer" and "not yours to read": names stay private.
        raise DomainError("not_found", f"Billing account {name!r} not found.", kind=Kind.NOT_FOUND)
    return account


# --- account ------------------------------------------------------------------------------------
class BillingAccountSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["user", "org"])
    included_credits_nanousd = serializers.IntegerField(
        help_text="Included (monthly) credits left; they expire at month end."
    )
    prepaid_nanousd = serializers.IntegerField(help_text="Bought credits left; they never expire.")
    payg_due_nanousd = serializers.IntegerField(
        help_text="Pay-as-you-go owed (0 or more): usage beyond the credits."
    )
    month_to_date_spend_nanousd = serializers.IntegerField(
        help_text="Sum of the charges this calendar month (UTC), whichever pool paid."
    )
    spending_limit_nanousd = serializers.IntegerField(
        allow_null=True, help_text="The organization's monthly pay-as-you-go limit, or null."
    )
    monthly_included_nanousd = serializers.IntegerField(
        help_text="Included credits granted each month under the current plan."
    )


class BillingAccountView(APIView):
    permission_classes = [BillingRead]

    @extend_schema(
        operation_id="billing_account_get",
        responses=BillingAccountSerializer,
        description="A payer's balances: your own (your user name) or an organization's you "
        "are a member of. 404 for anything else.",
    )
    def get(self, request, name: str):
        account = _account_or_404(request, name)
        return Response(
            BillingAccountSerializer(selectors.account_summary(billing_account=account)).data
        )


# --- ledger -------------------------------------------------------------------------------------
class LedgerEntrySerializer(serializers.Serializer):
    pool = serializers.CharField(source="account.kind")
    amount_nanousd = serializers.IntegerField()


@extend_schema_field({"type": "string", "pattern": r"^\d{4}-\d{2}$", "nullable": True})
class MonthField(serializers.DateField):
    """A month as `YYYY-MM` (a date field with that format: the schema says so, not `date`)."""


class LedgerTransactionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")
    month = MonthField(
        source="period",
        format="%Y-%m",
        allow_null=True,
        help_text="The month (UTC, YYYY-MM) the money belongs to: a charge's or refund's is its "
        "request's month, even when it was posted in the next one. Null for top-ups.",
    )
    actor = serializers.CharField()
    memo = serializers.CharField()
    entries = LedgerEntrySerializer(source="payer_entries", many=True)


class LedgerView(generics.ListAPIView):
    """The payer's ledger transactions, newest first, with their legs on its pools
    (`included`, `prepaid`, `payg`; a negative amount leaves the pool)."""

    permission_classes = [BillingRead]
    serializer_class = LedgerTransactionSerializer
    pagination_class = NewestFirstPagination
    filter_backends = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular building the schema
            return LedgerTransaction.objects.none()
        _refuse_unknown_params(self.request, PAGINATION_PARAMS)
        account = _account_or_404(self.request, self.kwargs["name"])
        return selectors.ledger_transaction_list(billing_account=account)

    @extend_schema(operation_id="billing_ledger_list")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


# --- usage --------------------------------------------------------------------------------------
class UtcDateTimeField(django_filters.fields.IsoDateTimeField):
    """An ISO datetime, handed to the database in UTC: PostgreSQL refuses offsets beyond
    ±15:59 (`+20:00` was a 500), and one that moves the time out of years 1 to 9999 is a 400."""

    def clean(self, value):
        value = super().clean(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Out of range once converted to UTC.") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class UsageFilter(django_filters.FilterSet):
    """Unknown values (a payer you cannot see, a provider or model that does not exist, a
    state that is not one) are a 400 naming the filter, not an empty page."""

    payer = django_filters.CharFilter(method="filter_payer", help_text="Payer account name.")
    member = django_filters.CharFilter(method="filter_member", help_text="User name.")
    provider = django_filters.CharFilter(method="filter_provider", help_text="Provider slug.")
    model = django_filters.CharFilter(method="filter_model", help_text="Hub model id.")
    state = django_filters.ChoiceFilter(choices=UsageState.choices)
    created_after = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="ISO datetime, inclusive."
    )
    created_before = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="ISO datetime, exclusive."
    )

    def filter_payer(self, queryset, name, value):
        account = selectors.billing_account_visible(viewer=self.request.user, name=value)
        if account is None:
            raise DomainError(
                "validation_error",
                f"payer: no billing account {value!r} that you can read.",
                field=name,
            )
        if account.pk is None:
            return queryset.none()
        return queryset.filter(payer=account)

    def filter_member(self, queryset, name, value):
        user = accounts_selectors.user_get(name=value)
        if user is None:
            raise DomainError("validation_error", f"member: no user {value!r}.", field=name)
        return queryset.filter(user=user)

    def filter_provider(self, queryset, name, value):
        provider = registry_selectors.provider_get(slug=value)
        if provider is None:
            raise DomainError("validation_error", f"provider: no provider {value!r}.", field=name)
        return queryset.filter(provider=provider)

    def filter_model(self, queryset, name, value):
        if registry_selectors.hub_model_get(model_id=value) is None:
            raise DomainError("validation_error", f"model: no hub model {value!r}.", field=name)
        return queryset.filter(hub_model_id=value)


class UsageRecordSerializer(serializers.Serializer):
    requestId = serializers.CharField(source="request_id")
    provider = serializers.CharField(source="provider.slug")
    payer = serializers.CharField(source="payer.name")
    member = serializers.CharField(source="user.username")
    model = serializers.CharField(source="hub_model_id")
    providerModel = serializers.CharField(source="provider_model")
    task = serializers.CharField()
    httpStatus = serializers.IntegerField(source="http_status", allow_null=True)
    state = serializers.ChoiceField(choices=UsageState.values)
    costNanoUsd = serializers.IntegerField(source="cost_nanousd", allow_null=True)
    estimatedCostNanoUsd = serializers.IntegerField(source="estimated_cost_nanousd")
    createdAt = serializers.DateTimeField(source="created_at")
    billedAt = serializers.DateTimeField(source="billed_at", allow_null=True)
    refundedAt = serializers.DateTimeField(source="refunded_at", allow_null=True)


class StaffWriter(BasePermission):
    """Staff users allowed to add usage records (`billing.add_usagerecord`; a view-only staff
    user is refused), with a `write` token or an admin session (a fine-grained token names no
    permission for this)."""

    message = (
        "Ingesting usage records needs a staff account with the 'add usage record' permission "
        "and a write token."
    )

    def has_permission(self, request, view) -> bool:
        token = request_token(request)
        return bool(
            request.user.is_authenticated
            and request.user.is_staff
            and request.user.has_perm("billing.add_usagerecord")
            and (token is None or token.role == TokenRole.WRITE)
        )


TOKENS_MAX = 2**31 - 1  # the token columns' range; no request comes near it
CREATED_AT_SKEW = timedelta(minutes=5)  # clocks disagree a little; a record from tomorrow is wrong


class UsageRecordInSerializer(StrictSerializer):
    provider = serializers.CharField(max_length=64)
    requestId = serializers.CharField(max_length=255, required=False, allow_null=True)
    user = serializers.CharField(max_length=96)
    billTo = serializers.CharField(max_length=96, required=False, allow_null=True)
    hubModel = serializers.CharField(max_length=200, required=False, default="")
    providerModel = serializers.CharField(max_length=255, required=False, default="")
    task = serializers.CharField(max_length=64, required=False, default="")
    httpStatus = serializers.IntegerField(min_value=100, max_value=599, allow_null=True)
    promptTokens = serializers.IntegerField(
        min_value=0, max_value=TOKENS_MAX, required=False, allow_null=True
    )
    completionTokens = serializers.IntegerField(
        min_value=0, max_value=TOKENS_MAX, required=False, allow_null=True
    )
    estimatedCostNanoUsd = serializers.IntegerField(
        min_value=0, max_value=10**15, required=False, default=0
    )
    byok = serializers.BooleanField(required=False, default=False)
    createdAt = serializers.DateTimeField(required=False)

    def validate_createdAt(self, value):
        if value > timezone.now() + CREATED_AT_SKEW:
            raise serializers.ValidationError(
                f"must not be in the future (more than {CREATED_AT_SKEW} ahead of the "
                "server's clock)."
            )
        return value


class UsageIngestSerializer(StrictSerializer):
    records = serializers.ListField(
        child=UsageRecordInSerializer(), allow_empty=False, max_length=usage.INGEST_MAX
    )


class UsageIngestResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()


class UsageListView(generics.ListAPIView):
    """Usage records visible to you, newest first: your own requests (whoever paid), plus
    every request billed to an organization you administer."""

    permission_classes = [BillingRead]
    serializer_class = UsageRecordSerializer
    pagination_class = NewestFirstPagination
    filterset_class = UsageFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return UsageRecord.objects.none()
        _refuse_unknown_params(self.request, PAGINATION_PARAMS | set(UsageFilter.base_filters))
        return selectors.usage_record_list_visible(viewer=self.request.user)

    def get_permissions(self):
        if self.request.method == "POST":
            return [StaffWriter()]
        return super().get_permissions()

    @extend_schema(operation_id="billing_usage_list")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="billing_usage_ingest",
        request=UsageIngestSerializer,
        responses={200: UsageIngestResultSerializer},
        description="Staff (or a service account's write token) only. Up to 10,000 usage "
        "records; all or nothing; idempotent on (provider, requestId): a record already "
        "stored counts as a duplicate and is left as it is.",
    )
    def post(self, request, *args, **kwargs):
        body = UsageIngestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = usage.usage_records_ingest(records=body.validated_data["records"])
        return Response({"created": result.created, "duplicates": result.duplicates})
