"""The Django admin for billing: payers and their balances, the ledger, usage, poll health.

Everything here is read-only: money moves only through `billing.services`, which the three
actions on payers call ("Grant credits", "Top up", "Adjust"). Each action shows a form first;
the form carries a random submission id in a hidden field, and the posting's idempotency key
is derived from it, so submitting the same rendered form twice posts once.
"""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import OperationalError, transaction
from django.db.models import Q, Sum
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing import services
from billing.models import (
    PAYER_KINDS,
    PLATFORM_KINDS,
    AccountKind,
    BillingAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    ProviderBillingHealth,
    UsageRecord,
    UsageState,
)
from core.errors import DomainError
from core.money import MoneyError, format_usd, usd_to_nanousd
from core.transactions import RETRY_ATTEMPTS, is_retryable

LATEST_TRANSACTIONS = 50
AMOUNT_MAX_NANOUSD = 1_000_000 * 1_000_000_000  # $1,000,000 per action: a typo guard


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable, never added, changed or deleted here (the ledger is append-only)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- action forms -------------------------------------------------------------------------------
class LedgerActionForm(forms.Form):
    submission = forms.UUIDField(widget=forms.HiddenInput)
    amount = forms.CharField(
        label="Amount (USD)",
        max_length=40,
        help_text='A decimal number of US dollars, e.g. "5" or "2.50" (up to 9 decimals).',
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Recorded on the ledger transaction (required).",
    )
    allow_negative = False

    def clean_amount(self) -> int:
        raw = self.cleaned_data["amount"].strip()
        try:
            amount = usd_to_nanousd(raw.removeprefix("$"))
        except MoneyError as exc:
            raise forms.ValidationError(f'"{raw}" is not an amount of US dollars.') from exc
        if amount == 0 or (amount < 0 and not self.allow_negative):
            raise forms.ValidationError(
                "The amount must not be zero."
                if self.allow_negative
                else "The amount must be positive."
            )
        if abs(amount) > AMOUNT_MAX_NANOUSD:
            raise forms.ValidationError(
                f"At most {format_usd(AMOUNT_MAX_NANOUSD)} per action; split larger amounts."
            )
        return amount

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class AdjustForm(LedgerActionForm):
    pool = forms.ChoiceField(
        choices=[(k, AccountKind(k).label) for k in PAYER_KINDS],
        help_text="The payer's pool the amount goes into (negative: taken out of).",
    )
    allow_negative = True

    field_order = ["pool", "amount", "reason"]


# --- payers -------------------------------------------------------------------------------------
class PayerKindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("user", "user"), ("org", "organization")]

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(user__isnull=False)
        if self.value() == "org":
            return queryset.filter(organization__isnull=False)
        return queryset


class PoolInline(ReadOnlyInline):
    model = LedgerAccount
    fk_name = "billing_account"
    fields = ("kind", "balance")
    readonly_fields = ("kind", "balance")
    verbose_name = "pool"
    verbose_name_plural = "pools (balances)"

    @admin.display(description="balance")
    def balance(self, obj: LedgerAccount) -> str:
        return format_usd(obj.balance_nanousd)


def _entries_html(txn: LedgerTransaction):
    return format_html_join(
        "",
        "{}: {}<br>",
        ((entry.account, format_usd(entry.amount_nanousd)) for entry in txn.entries.all()),
    )


def _lock_for_action(accounts) -> None:
    """Locks every account a payer action may move (the payers' pools and the platform's
    accounts) at once, in the global order, before the first posting: posting payer by payer
    would hold the platform's accounts while waiting for the next payer's pools."""
    services.pools_ensure(*accounts)
    services.accounts_lock(
        [
            *LedgerAccount.objects.filter(billing_account__in=list(accounts)).values_list(
                "pk", flat=True
            ),
            *(services.platform_account_get_or_create(kind).pk for kind in PLATFORM_KINDS),
        ]
    )


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "included", "prepaid", "payg", "created_at")
    list_filter = (PayerKindFilter,)
    search_fields = ("user__username", "organization__name")
    fields = ("name", "kind", "user", "organization", "created_at", "latest_transactions")
    readonly_fields = fields
    inlines = [PoolInline]
    actions = ["grant_credits", "top_up", "adjust"]

    def get_queryset(self, request):
        def pool(kind):
            return Sum("pools__balance_nanousd", filter=Q(pools__kind=kind), default=0)

        return (
            super()
            .get_queryset(request)
            .select_related("user", "organization")
            .annotate(
                included_nanousd=pool(AccountKind.INCLUDED),
                prepaid_nanousd=pool(AccountKind.PREPAID),
                payg_nanousd=pool(AccountKind.PAYG),
            )
        )

    def has_add_permission(self, request):
        return False  # payers are created by the services, on first use

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # A payer's page is view-only; the list's actions need the change permission.
        return False if obj is not None else super().has_change_permission(request, obj)

    @admin.display(description="name")
    def name(self, obj: BillingAccount) -> str:
        return obj.name

    @admin.display(description="kind")
    def kind(self, obj: BillingAccount) -> str:
        return "org" if obj.organization_id else "user"

    @admin.display(description="included", ordering="included_nanousd")
    def included(self, obj: BillingAccount) -> str:
        return format_usd(obj.included_nanousd)

    @admin.display(description="prepaid", ordering="prepaid_nanousd")
    def prepaid(self, obj: BillingAccount) -> str:
        return format_usd(obj.prepaid_nanousd)

    @admin.display(description="pay-as-you-go", ordering="payg_nanousd")
    def payg(self, obj: BillingAccount) -> str:
        return format_usd(obj.payg_nanousd)

    @admin.display(description=f"latest {LATEST_TRANSACTIONS} ledger transactions")
    def latest_transactions(self, obj: BillingAccount):
        txns = list(
            LedgerTransaction.objects.filter(billing_account=obj)
            .prefetch_related(
                "entries__account__billing_account__user",
                "entries__account__billing_account__organization",
                "entries__account__provider",
            )
            .order_by("-created_at", "-id")[:LATEST_TRANSACTIONS]
        )
        if not txns:
            return "none"
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    reverse("admin:billing_ledgertransaction_change", args=[t.pk]),
                    t.pk,
                    t.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    t.kind,
                    t.actor,
                    t.memo,
                    _entries_html(t),
                )
                for t in txns
            ),
        )
        return format_html(
            "<table><thead><tr><th>id</th><th>created</th><th>kind</th><th>actor</th>"
            "<th>memo</th><th>entries</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    # --- actions: a form first, then one posting per selected payer ---------------------------
    def _ledger_action(self, request, queryset, *, action, title, explanation, form_class, post):
        accounts = list(queryset)
        if "apply" in request.POST:
            form = form_class(request.POST)
            if form.is_valid() and self._post_all(request, form, accounts, post):
                return None  # back to the list, which shows the messages
        else:
            form = form_class(initial={"submission": uuid.uuid4()})
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "explanation": explanation,
            "opts": self.model._meta,
            "form": form,
            "action": action,
            "queryset": accounts,
            "accounts": [
                {
                    "name": a.name,
                    "type": self.kind(a),
                    "included": self.included(a),
                    "prepaid": self.prepaid(a),
                    "payg": self.payg(a),
                }
                for a in accounts
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/billing/billingaccount/ledger_action.html", context)

    def _post_all(self, request, form, accounts, post) -> bool:
        """Posts for every account, all or none; False (with the error on the form) if one
        is refused."""
        data = form.cleaned_data
        try:
            for attempt in range(1, RETRY_ATTEMPTS + 1):
                posted, repeated = [], []
                try:
                    with transaction.atomic():
                        _lock_for_action(accounts)
                        for account in accounts:
                            txn = post(
                                account=account,
                                data=data,
                                actor=request.user.get_username(),
                                key=f"admin:{data['submission']}:{account.pk}",
                            )
                            (posted if txn is not None else repeated).append(account.name)
                    break
                except OperationalError as exc:  # a deadlock: all rolled back, run it again
                    if not is_retryable(exc) or attempt == RETRY_ATTEMPTS:
                        raise
        except DomainError as exc:
            field = {"memo": "reason"}.get(exc.field, exc.field)
            form.add_error(field if field in form.fields else None, exc.message)
            return False
        amount = format_usd(data["amount"])
        if posted:
            self.message_user(request, f"Posted {amount} for {', '.join(posted)}.")
        if repeated:
            self.message_user(
                request,
                f"Already posted by this form, not posted again: {', '.join(repeated)}.",
                messages.WARNING,
            )
        return True

    def _credit_action(self, request, queryset, *, action, title, explanation, service):
        """An action that adds a positive amount through `service` (grant or top-up)."""

        def post(*, account, data, actor, key):
            return service(
                billing_account=account,
                amount_nanousd=data["amount"],
                actor=actor,
                memo=data["reason"],
                idempotency_key=key,
            )

        return self._ledger_action(
            request,
            queryset,
            action=action,
            title=title,
            explanation=explanation,
            form_class=LedgerActionForm,
            post=post,
        )

    @admin.action(description="Grant credits (included, expire at month end)",
                  permissions=["change"])  # fmt: skip
    def grant_credits(self, request, queryset):
        return self._credit_action(
            request,
            queryset,
            action="grant_credits",
            title="Grant credits",
            explanation="Adds included credits to each selected payer. Like the monthly "
            "credits, they are spent first and belong to this month (UTC): what is left expires "
            "once its billing has closed.",
            service=services.credits_grant_extra,
        )

    @admin.action(description="Top up (prepaid credits)", permissions=["change"])
    def top_up(self, request, queryset):
        return self._credit_action(
            request,
            queryset,
            action="top_up",
            title="Top up",
            explanation="Adds prepaid (bought) credits to each selected payer, paid in cash. "
            "They never expire.",
            service=services.credits_top_up,
        )

    @admin.action(description="Adjust a pool (correction)", permissions=["change"])
    def adjust(self, request, queryset):
        def post(*, account, data, actor, key):
            if data["pool"] == AccountKind.INCLUDED:
                # Else this month's grant, if still to come, would expire the adjustment.
                services.credits_grant_month_due(billing_accounts=[account])
            return services.ledger_adjust(
                billing_account=account,
                pool=data["pool"],
                amount_nanousd=data["amount"],
                actor=actor,
                memo=data["reason"],
                idempotency_key=key,
            )

        return self._ledger_action(
            request,
            queryset,
            action="adjust",
            title="Adjust",
            explanation="Moves a signed amount into (or, negative, out of) one pool of each "
            "selected payer, against the platform's adjustments account. Included and prepaid "
            "pools cannot go below zero.",
            form_class=AdjustForm,
            post=post,
        )


# --- ledger -------------------------------------------------------------------------------------
class EntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("account", "amount")
    readonly_fields = fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related(
                "account__billing_account__user",
                "account__billing_account__organization",
                "account__provider",
            )
        )

    @admin.display(description="amount")
    def amount(self, obj: LedgerEntry) -> str:
        return format_usd(obj.amount_nanousd)


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "kind",
        "billing_account",
        "actor",
        "memo",
        "idempotency_key",
        "created_at",
    )
    list_filter = ("kind",)
    search_fields = ("=idempotency_key", "=billing_account__user__username",
                     "=billing_account__organization__name", "=actor")  # fmt: skip
    list_select_related = ("billing_account__user", "billing_account__organization")
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [EntryInline]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "transaction_link", "kind", "account", "amount")
    list_filter = ("account__kind",)
    search_fields = ("=transaction__idempotency_key",)
    list_select_related = (
        "transaction",
        "account__billing_account__user",
        "account__billing_account__organization",
        "account__provider",
    )
    show_full_result_count = False

    @admin.display(description="transaction")
    def transaction_link(self, obj: LedgerEntry):
        url = reverse("admin:billing_ledgertransaction_change", args=[obj.transaction_id])
        return format_html('<a href="{}">{}</a>', url, obj.transaction_id)

    @admin.display(description="kind")
    def kind(self, obj: LedgerEntry) -> str:
        return obj.transaction.kind

    @admin.display(description="amount", ordering="amount_nanousd")
    def amount(self, obj: LedgerEntry) -> str:
        return format_usd(obj.amount_nanousd)


# --- usage and polling --------------------------------------------------------------------------
class ReviewForm(forms.Form):
    reason = forms.CharField(
        max_length=300,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Kept on each record (required).",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "provider", "payer", "user", "hub_model_id", "state",
                    "http_status", "cost", "estimate", "created_at", "billed_at",
                    "cost_error")  # fmt: skip
    # `state` lists every state, `held for review` included: finance's queue.
    list_filter = ("provider", "state")
    # Exact matches (indexed): a request ID, or a payer's user or organization name.
    search_fields = ("=request_id", "=payer__user__username", "=payer__organization__name")
    date_hierarchy = "created_at"
    list_select_related = ("provider", "user", "payer__user", "payer__organization")
    show_full_result_count = False  # counting millions of records on every page is waste
    actions = ["approve_held", "reject_held"]

    @admin.display(description="cost", ordering="cost_nanousd")
    def cost(self, obj: UsageRecord) -> str:
        return "" if obj.cost_nanousd is None else format_usd(obj.cost_nanousd)

    @admin.display(description="estimate", ordering="estimated_cost_nanousd")
    def estimate(self, obj: UsageRecord) -> str:
        return format_usd(obj.estimated_cost_nanousd)

    def has_review_permission(self, request) -> bool:
        """Reviewing a held cost moves money: the change permission on usage records (records
        themselves stay read-only here)."""
        return request.user.has_perm("billing.change_usagerecord")

    # --- review of held costs: a reason first, then the service ------------------------------
    def _review(self, request, queryset, *, action: str, title: str, explanation: str, decide):
        records = list(queryset.filter(state=UsageState.HELD))
        if not records:
            self.message_user(request, "None of the selected records is held.", messages.WARNING)
            return None
        if "apply" in request.POST:
            form = ReviewForm(request.POST)
            if form.is_valid():
                try:
                    done = decide(
                        usage_records=records,
                        actor=request.user.get_username(),
                        memo=form.cleaned_data["reason"],
                    )
                except DomainError as exc:
                    form.add_error("reason" if exc.field == "memo" else None, exc.message)
                else:
                    self.message_user(request, f"{title}: {done} of {len(records)} record(s).")
                    return None
        else:
            form = ReviewForm()
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "explanation": explanation,
            "opts": self.model._meta,
            "form": form,
            "action": action,
            "queryset": records,
            "records": [
                {
                    "request_id": r.request_id,
                    "provider": r.provider,
                    "payer": r.payer,
                    "cost": self.cost(r),
                    "estimate": self.estimate(r),
                    "why": r.cost_error,
                }
                for r in records
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/billing/usagerecord/review_action.html", context)

    @admin.action(description="Approve held cost (charge it)", permissions=["review"])
    def approve_held(self, request, queryset):
        return self._review(
            request,
            queryset,
            action="approve_held",
            title="Approve held cost",
            explanation="Charges each selected held cost as reported, in its request's month.",
            decide=services.held_costs_approve,
        )

    @admin.action(description="Reject held cost (never charged)", permissions=["review"])
    def reject_held(self, request, queryset):
        return self._review(
            request,
            queryset,
            action="reject_held",
            title="Reject held cost",
            explanation="Marks each selected held cost rejected: it is never charged.",
            decide=services.held_costs_reject,
        )


@admin.register(ProviderBillingHealth)
class ProviderBillingHealthAdmin(ReadOnlyAdmin):
    list_display = ("provider", "last_poll_at", "last_success_at", "last_error_at",
                    "consecutive_failures", "invalid_costs_total", "unknown_ids_total",
                    "missing_request_ids_total", "reused_request_ids_total",
                    "long_request_ids_total", "held_costs_total", "last_error")  # fmt: skip
    list_select_related = ("provider",)
