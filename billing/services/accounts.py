"""Billing accounts (who pays) and the ledger accounts they own.

A payer has three pools (included, prepaid, payg); a provider has one payable account; the
platform has one account per platform kind. Creation is idempotent (`INSERT ... ON CONFLICT DO
NOTHING`), so concurrent callers never fail on a race.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection, transaction

from accounts.models import Organization, User
from billing.models import PAYER_KINDS, AccountKind, BillingAccount, LedgerAccount
from core.transactions import requires_atomic
from registry.models import Provider


@requires_atomic
def pools_ensure(*billing_accounts: BillingAccount) -> None:
    """Creates the included, prepaid and payg pools of these accounts if missing (1 statement,
    set-based: a cost batch's 10,000 payers cost one INSERT). Inside the caller's transaction,
    so an account never commits without its pools."""
    if not billing_accounts:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_ledgeraccount (kind, billing_account_id, balance_nanousd) "
            "SELECT k, a, 0 FROM unnest(%s::bigint[]) AS a CROSS JOIN unnest(%s::text[]) AS k "
            "ON CONFLICT DO NOTHING",
            [sorted({a.pk for a in billing_accounts}), list(PAYER_KINDS)],
        )


@transaction.atomic
def _billing_account_get_or_create(**owner) -> BillingAccount:
    """The account owned by `owner` (a user or an organization, as an object or an id),
    created with its pools if new; joins the caller's transaction if there is one."""
    account, _ = BillingAccount.objects.get_or_create(**owner)
    pools_ensure(account)
    return account


def billing_account_get_or_create_for_user(*, user: User) -> BillingAccount:
    """The user's billing account, created with its pools if new."""
    return _billing_account_get_or_create(user=user)


def billing_account_get_or_create_for_organization(*, organization: Organization) -> BillingAccount:
    """The organization's billing account, created with its pools if new."""
    return _billing_account_get_or_create(organization=organization)


def billing_account_id_get_or_create(*, user_id: int, organization_id: int | None) -> int:
    """The id of the account paying for a request: the organization's if `organization_id`,
    else the user's; created with its pools if new (the router's first request of a payer)."""
    if organization_id is not None:
        return _billing_account_get_or_create(organization_id=organization_id).pk
    return _billing_account_get_or_create(user_id=user_id).pk


def platform_account_get_or_create(kind: str) -> LedgerAccount:
    """The platform's account of `kind` (credits granted, credits expired, cash, adjustments)."""
    LedgerAccount.objects.bulk_create([LedgerAccount(kind=kind)], ignore_conflicts=True)
    return LedgerAccount.objects.get(kind=kind, billing_account=None, provider=None)


def provider_payable_get_or_create(*, provider: Provider) -> LedgerAccount:
    """What we owe `provider`: its payable account."""
    LedgerAccount.objects.bulk_create(
        [LedgerAccount(kind=AccountKind.PROVIDER_PAYABLE, provider=provider)],
        ignore_conflicts=True,
    )
    return LedgerAccount.objects.get(kind=AccountKind.PROVIDER_PAYABLE, provider=provider)


def pools_get(billing_account: BillingAccount) -> dict[str, LedgerAccount]:
    """The payer's pools by kind."""
    return {a.kind: a for a in LedgerAccount.objects.filter(billing_account=billing_account)}


@requires_atomic
def accounts_lock(account_ids: Iterable[int]) -> dict[int, int]:
    """Locks ledger accounts in primary-key order (no deadlocks); returns {id: balance}.
    The locks last until the caller's transaction ends."""
    ids = sorted(set(account_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, balance_nanousd FROM billing_ledgeraccount WHERE id = ANY(%s) "
            "ORDER BY id FOR UPDATE",
            [ids],
        )
        return dict(cursor.fetchall())
