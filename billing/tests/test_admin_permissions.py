"""The billing admin's money actions with staff users who are not superusers: a view-only user
is refused (nothing is posted), one with the change permission can act. Money actions on
payers ("Grant credits", "Top up", "Adjust") and the review of held costs ("Approve held
cost", "Reject held cost")."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin import helpers
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import staff_client as staff
from billing import services
from billing.models import LedgerTransaction, TransactionKind, UsageRecord, UsageState
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory

pytestmark = pytest.mark.django_db

USD = 1_000_000_000
PAYERS = reverse("admin:billing_billingaccount_changelist")
USAGE = reverse("admin:billing_usagerecord_changelist")
SUBMISSION_RE = re.compile(r'name="submission" value="([0-9a-f-]{36})"')


def run_action(client: Client, url: str, action: str, objects, **fields):
    """Chooses the action on the list, then submits its form (as a browser would)."""
    selected = {helpers.ACTION_CHECKBOX_NAME: [o.pk for o in objects], "action": action}
    first = client.post(url, {**selected, "index": 0})
    found = SUBMISSION_RE.search(first.content.decode()) if first.status_code == 200 else None
    if found:
        fields["submission"] = found.group(1)
    second = client.post(url, {**selected, "apply": "yes", **fields}, follow=True)
    return first, second


@pytest.fixture
def payer():
    return payer_for_new_user(plan="pro")


MONEY_ACTIONS = {
    "grant_credits": ({"amount": "2.50", "reason": "goodwill"}, TransactionKind.GRANT),
    "top_up": ({"amount": "2.50", "reason": "invoice 7"}, TransactionKind.TOP_UP),
    "adjust": ({"amount": "2.50", "reason": "fix", "pool": "prepaid"}, TransactionKind.ADJUSTMENT),
}


@pytest.mark.parametrize("action", MONEY_ACTIONS)
def test_a_view_only_staff_user_cannot_post_money_on_payers(payer, action):
    client = staff("viewer", "view_billingaccount")
    fields, kind = MONEY_ACTIONS[action]

    page = client.get(PAYERS)
    assert page.status_code == 200 and payer.name in page.content.decode()
    assert f'value="{action}"' not in page.content.decode()
    first, _ = run_action(client, PAYERS, action, [payer], **fields)

    assert first.status_code in (200, 302, 403)
    assert "submission" not in first.content.decode()
    assert not LedgerTransaction.objects.filter(kind=kind, actor="viewer").exists()


@pytest.mark.parametrize("action", MONEY_ACTIONS)
def test_a_staff_user_with_the_change_permission_posts_money_on_payers(payer, action):
    client = staff("cashier", "view_billingaccount", "change_billingaccount")
    fields, kind = MONEY_ACTIONS[action]

    _, second = run_action(client, PAYERS, action, [payer], **fields)

    assert second.status_code == 200
    posted = LedgerTransaction.objects.get(kind=kind, actor="cashier")
    assert posted.memo == fields["reason"]


# --- review of held costs ---------------------------------------------------------------------
@pytest.fixture
def held(settings):
    """A record whose reported cost ($5) is far above its estimate: held, not charged."""
    settings.BILLING_REVIEW_MIN_NANOUSD = USD // 10
    provider = ProviderFactory()
    record = pending_usage(provider=provider, payer=payer_for_new_user(plan="pro"), request_id="h")
    UsageRecord.objects.filter(pk=record.pk).update(estimated_cost_nanousd=USD // 1000)
    services.cost_batch_apply(provider=provider, costs={"h": 5 * USD})
    record.refresh_from_db()
    assert record.state == UsageState.HELD
    return record


def test_held_records_are_listed_under_a_state_filter(held):
    client = staff("finance", "view_usagerecord")
    page = client.get(USAGE, {"state": UsageState.HELD})
    assert page.status_code == 200
    content = page.content.decode()
    assert "held for review" in content and "$5.00" in content


@pytest.mark.parametrize("action", ["approve_held", "reject_held"])
def test_a_view_only_staff_user_cannot_review_held_costs(held, action):
    client = staff("viewer", "view_usagerecord")

    assert f'value="{action}"' not in client.get(USAGE).content.decode()
    run_action(client, USAGE, action, [held], reason="looks fine")

    held.refresh_from_db()
    assert held.state == UsageState.HELD
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()


def test_a_reviewer_approves_a_held_cost_and_it_is_charged(held):
    client = staff("reviewer", "view_usagerecord", "change_usagerecord")

    first, _ = run_action(client, USAGE, "approve_held", [held], reason="confirmed with provider")

    assert "Approve held cost" in first.content.decode()
    held.refresh_from_db()
    assert (held.state, held.cost_nanousd) == (UsageState.BILLED, 5 * USD)
    assert "confirmed with provider" in held.cost_error
    assert LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE).count() == 1


def test_a_reviewer_rejects_a_held_cost_and_it_is_never_charged(held):
    client = staff("reviewer", "view_usagerecord", "change_usagerecord")

    run_action(client, USAGE, "reject_held", [held], reason="provider bug")

    held.refresh_from_db()
    assert held.state == UsageState.REJECTED
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()


def test_a_review_without_a_reason_changes_nothing(held):
    client = staff("reviewer", "view_usagerecord", "change_usagerecord")

    _, second = run_action(client, USAGE, "approve_held", [held], reason="  ")

    assert "required" in second.content.decode()
    assert UsageRecord.objects.get(pk=held.pk).state == UsageState.HELD
