"""Usage records, the double-entry ledger and its accounts.

Money is an integer number of nano-USD (`*_nanousd`). The ledger is double-entry: a
`LedgerTransaction` has legs (`LedgerEntry`) that sum to zero, over `LedgerAccount`s:

    payer pools   included (monthly credits)  prepaid (bought credits)  payg (pay-as-you-go;
                  negative = due)                                         one set per payer
    provider      payable (what we owe the provider)                      one per provider
    platform      credits_granted, credits_expired, cash, adjustments    one each

Sign convention: a pool's balance is what the payer can spend (included, prepaid) or, for
payg, minus what it owes. The database itself (migration 0002) enforces:
- entries are append-only (UPDATE and DELETE are refused);
- every transaction's entries sum to zero (checked per INSERT statement, so all legs of a
  transaction are written by one statement);
- `LedgerAccount.balance_nanousd` is maintained by the database from the entries, in the same
  transaction, so the cached balance always equals the sum of the entries;
- included and prepaid pools never go negative;
- a usage record is unique per (provider, request ID) and is charged by at most one
  transaction.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class BillingAccount(models.Model):
    """Who pays: a user, or an organization (requests billed to it with X-HF-Bill-To)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="billing_account",
    )
    organization = models.OneToOneField(
        "accounts.Organization",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="billing_account",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, organization__isnull=True)
                | Q(user__isnull=True, organization__isnull=False),
                name="billing_billingaccount_one_owner",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return self.user.username if self.user_id else self.organization.name


class AccountKind(models.TextChoices):
    INCLUDED = "included", "included credits"
    PREPAID = "prepaid", "prepaid credits"
    PAYG = "payg", "pay-as-you-go"
    PROVIDER_PAYABLE = "provider_payable", "provider payable"
    CREDITS_GRANTED = "credits_granted", "platform: credits granted"
    CREDITS_EXPIRED = "credits_expired", "platform: credits expired"
    CASH = "cash", "platform: cash"
    ADJUSTMENTS = "adjustments", "platform: adjustments"


PAYER_KINDS = (AccountKind.INCLUDED, AccountKind.PREPAID, AccountKind.PAYG)
PLATFORM_KINDS = (
    AccountKind.CREDITS_GRANTED,
    AccountKind.CREDITS_EXPIRED,
    AccountKind.CASH,
    AccountKind.ADJUSTMENTS,
)
NON_NEGATIVE_KINDS = (AccountKind.INCLUDED, AccountKind.PREPAID)


class LedgerAccount(models.Model):
    kind = models.CharField(max_length=32, choices=AccountKind.choices)
    billing_account = models.ForeignKey(
        BillingAccount, on_delete=models.PROTECT, null=True, blank=True, related_name="pools"
    )
    provider = models.ForeignKey(
        "registry.Provider",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="ledger_accounts",
    )
    # Maintained by the database from the entries (see the module docstring); never written
    # by application code.
    balance_nanousd = models.BigIntegerField(default=0, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["billing_account", "kind"],
                condition=Q(billing_account__isnull=False),
                name="billing_ledgeraccount_payer_kind_unique",
            ),
            models.UniqueConstraint(
                fields=["provider", "kind"],
                condition=Q(provider__isnull=False),
                name="billing_ledgeraccount_provider_kind_unique",
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=Q(billing_account__isnull=True, provider__isnull=True),
                name="billing_ledgeraccount_platform_kind_unique",
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind__in=PAYER_KINDS, billing_account__isnull=False, provider__isnull=True)
                    | Q(
                        kind=AccountKind.PROVIDER_PAYABLE,
                        billing_account__isnull=True,
                        provider__isnull=False,
                    )
                    | Q(
                        kind__in=PLATFORM_KINDS, billing_account__isnull=True, provider__isnull=True
                    )
                ),
                name="billing_ledgeraccount_owner_matches_kind",
            ),
            models.CheckConstraint(
                condition=Q(balance_nanousd__gte=0) | ~Q(kind__in=NON_NEGATIVE_KINDS),
                name="billing_ledgeraccount_pool_non_negative",
            ),
        ]

    def __str__(self) -> str:
        owner = self.billing_account or self.provider or "platform"
        return f"{owner} {self.kind}"


class TransactionKind(models.TextChoices):
    GRANT = "grant", "grant"
    EXPIRY = "expiry", "expiry"
    TOP_UP = "top_up", "top-up"
    CHARGE = "charge", "charge"
    ADJUSTMENT = "adjustment", "adjustment"
    REFUND = "refund", "refund"


class LedgerTransaction(models.Model):
    kind = models.CharField(max_length=16, choices=TransactionKind.choices)
    # Makes every money movement idempotent: `charge:<provider>:<request id>`,
    # `grant:<billing account>:<YYYY-MM>`, ... A retry finds the key taken and does nothing.
    idempotency_key = models.CharField(max_length=300, unique=True)
    billing_account = models.ForeignKey(
        BillingAccount,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="transactions",
    )
    actor = models.CharField(max_length=200, help_text="user name, or job name")
    memo = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The calendar month (its first day, UTC) the money belongs to: a charge's or refund's is
    # its request's month (not the month it was posted in), a grant's or expiry's the month
    # it grants or expires for. Null for top-ups and adjustments.
    period = models.DateField(null=True, blank=True)

    class Meta:
        indexes = [
            # A payer's charges and refunds of a month (spend, limits, statements), its grants
            # and expiries by month (open months).
            models.Index(
                fields=["billing_account", "kind", "period"], name="billing_txn_payer_period"
            ),
            # A payer's ledger newest first, and its charges of a month (limits, statements).
            models.Index(
                fields=["billing_account", "created_at", "id"], name="billing_txn_payer_created"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=TransactionKind.values), name="billing_transaction_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.idempotency_key}"


class LedgerEntry(models.Model):
    transaction = models.ForeignKey(
        LedgerTransaction, on_delete=models.PROTECT, related_name="entries"
    )
    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="entries")
    amount_nanousd = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["account", "transaction"], name="billing_entry_account")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(amount_nanousd=0), name="billing_ledgerentry_amount_non_zero"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount_nanousd:+} nano-USD on account {self.account_id}"


class UsageState(models.TextChoices):
    PENDING = "pending", "pending"
    BILLED = "billed", "billed"
    ZERO_COST = "zero_cost", "zero cost"
    FAILED_TO_BILL = "failed_to_bill", "failed to bill"
    NOT_BILLABLE = "not_billable", "not billable"
    BYOK = "byok", "custom key (BYOK)"
    # The provider reported a cost far above the request's upper-bound estimate: not charged
    # unless a person approves it in review (then `billed`), or `rejected`.
    HELD = "held", "held for review"
    REJECTED = "rejected", "rejected in review"


class UsageRecord(models.Model):
    """One routed request. Charged at most once, when its provider reports its cost."""

    provider = models.ForeignKey(
        "registry.Provider", on_delete=models.PROTECT, related_name="usage_records"
    )
    request_id = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records"
    )
    payer = models.ForeignKey(
        BillingAccount, on_delete=models.PROTECT, related_name="usage_records"
    )
    hub_model_id = models.CharField(max_length=200, blank=True)
    provider_model = models.CharField(max_length=255, blank=True)
    task = models.CharField(max_length=64, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    estimated_cost_nanousd = models.BigIntegerField(default=0)
    cost_nanousd = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=UsageState.choices, default=UsageState.PENDING)
    charge = models.OneToOneField(
        LedgerTransaction,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="usage_record",
    )
    created_at = models.DateTimeField(db_index=True)
    # When the row was written, by the database's clock (the billing window of a record never
    # asked about counts from here, not from a router's clock).
    recorded_at = models.DateTimeField(db_default=Now())
    # When its provider was first asked about its cost (the billing window counts from here).
    first_asked_at = models.DateTimeField(null=True, blank=True)
    billed_at = models.DateTimeField(null=True, blank=True)
    # Set when its charge was refunded (the charge stays; the refund negates it).
    refunded_at = models.DateTimeField(null=True, blank=True)
    # Cost polling: attempts and the last problem with this record's cost, if any.
    cost_attempts = models.PositiveIntegerField(default=0)
    cost_error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [
            # The poller's queue: pending records of a provider, oldest first.
            models.Index(
                fields=["provider", "created_at", "id"],
                condition=Q(state=UsageState.PENDING),
                name="billing_usage_pending",
            ),
            models.Index(fields=["payer", "created_at"], name="billing_usage_payer"),
            # The pending estimates of a payer, read by the limits check before every request.
            models.Index(
                fields=["payer"],
                condition=Q(state=UsageState.PENDING),
                name="billing_usage_payer_pending",
            ),
            # Costs held for review count against limits until reviewed.
            models.Index(
                fields=["payer"],
                condition=Q(state=UsageState.HELD),
                name="billing_usage_payer_held",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "request_id"], name="billing_usagerecord_request_unique"
            ),
            models.CheckConstraint(
                condition=Q(state__in=UsageState.values), name="billing_usagerecord_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(cost_nanousd__isnull=True) | Q(cost_nanousd__gte=0),
                name="billing_usagerecord_cost_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(estimated_cost_nanousd__gte=0),
                name="billing_usagerecord_estimate_non_negative",
            ),
            models.CheckConstraint(
                # billed <=> charged with a known positive cost
                condition=(
                    Q(state="billed", charge__isnull=False, cost_nanousd__gt=0)
                    | (~Q(state="billed") & Q(charge__isnull=True))
                ),
                name="billing_usagerecord_billed_has_charge",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider_id}:{self.request_id} ({self.state})"


class ProviderBillingHealth(models.Model):
    """The last cost polls of a provider: what went wrong, if anything (for ops and admin)."""

    provider = models.OneToOneField(
        "registry.Provider", on_delete=models.CASCADE, related_name="billing_health"
    )
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    invalid_costs_total = models.PositiveBigIntegerField(default=0)
    unknown_ids_total = models.PositiveBigIntegerField(default=0)
    # Successful answers the router got without the provider's request-ID header: served,
    # but impossible to bill (recorded `not_billable`).
    missing_request_ids_total = models.PositiveBigIntegerField(default=0)
    # A request ID the provider had already used for another request: kept under a key of
    # our own (`not_billable`), never charged to the first request's payer.
    reused_request_ids_total = models.PositiveBigIntegerField(default=0)
    # Request IDs longer than the column: kept as `not_billable`, never truncated.
    long_request_ids_total = models.PositiveBigIntegerField(default=0)
    # Costs held for review (far above the request's upper-bound estimate).
    held_costs_total = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"billing health of provider {self.provider_id}"


class InFlight(models.Model):
    """An estimate held against an organization's spending limit while its request is being
    served (the router reserves it before forwarding and removes it in the transaction that
    writes the usage record). Expired reservations (a router that died mid-request) stop
    counting at `expires_at` and are deleted by a periodic task."""

    payer = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="in_flight")
    estimated_cost_nanousd = models.BigIntegerField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["payer", "expires_at"], name="billing_inflight_payer")]
        constraints = [
            models.CheckConstraint(
                condition=Q(estimated_cost_nanousd__gte=0),
                name="billing_inflight_estimate_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.estimated_cost_nanousd} nano-USD in flight for payer {self.payer_id}"
