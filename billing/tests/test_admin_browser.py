"""The billing admin's money actions in a real browser (headless Chromium, driven by Playwright,
against a live server), as staff users who are not superusers: finance reviews a held cost
from the list's state filter to the action's form, a reason is required, a view-only user is
not offered the action, and credits are granted to a payer."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from playwright.sync_api import Page, expect

from accounts.tests.factories import UserFactory
from billing import selectors, services
from billing.models import (
    AccountKind,
    LedgerAccount,
    LedgerTransaction,
    TransactionKind,
    UsageRecord,
    UsageState,
)
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory

USD = 1_000_000_000
PASSWORD = "staff-browser-password-1"


def staff(name: str, *codenames: str) -> None:
    user = UserFactory(username=name, is_staff=True, is_superuser=False)
    user.set_password(PASSWORD)
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))


def log_in(page: Page, live_server, name: str) -> None:
    """Through the admin's login page, as a person would."""
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.locator("#id_username").fill(name)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def choose_action(page: Page, object_pk: int, action: str) -> None:
    """Ticks one row of the change list, picks the action and presses Go."""
    page.locator(f"input.action-select[value='{object_pk}']").check()
    page.locator("select[name='action']").select_option(action)
    page.get_by_role("button", name="Go").click()


@pytest.fixture
def held(settings):
    """A record whose reported cost ($5) is far above its estimate ($0.000001): held."""
    settings.BILLING_REVIEW_MIN_NANOUSD = USD // 10
    provider = ProviderFactory()
    record = pending_usage(provider=provider, payer=payer_for_new_user(plan="pro"), request_id="h")
    UsageRecord.objects.filter(pk=record.pk).update(estimated_cost_nanousd=1_000)
    services.cost_batch_apply(provider=provider, costs={"h": 5 * USD})
    record.refresh_from_db()
    assert record.state == UsageState.HELD
    return record


def open_held_queue(page: Page) -> None:
    """From the admin's index to the usage records held for review."""
    page.get_by_role("link", name="Usage records").first.click()
    page.locator("#changelist-filter").get_by_role("link", name="held for review").click()
    expect(page).to_have_url(re.compile(r"[?&]state__exact=held\b"))


def test_finance_approves_a_held_cost_in_the_browser(browser_page: Page, live_server, held):
    page = browser_page
    staff("finance", "view_usagerecord", "change_usagerecord")

    log_in(page, live_server, "finance")
    open_held_queue(page)
    row = page.locator("#result_list tbody tr", has_text="held for review")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("$5.00")
    choose_action(page, held.pk, "approve_held")

    expect(page.locator("h1")).to_have_text("Approve held cost")
    page.get_by_label("Reason").fill("confirmed with the provider")
    page.get_by_role("button", name="Approve held cost").click()

    expect(page.locator("ul.messagelist li")).to_have_text("Approve held cost: 1 of 1 record(s).")
    held.refresh_from_db()
    assert (held.state, held.cost_nanousd) == (UsageState.BILLED, 5 * USD)
    assert "confirmed with the provider" in held.cost_error
    assert LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE, actor="finance").exists()
    assert selectors.invariant_violations() == []


def test_a_review_without_a_reason_shows_the_error_and_posts_nothing(
    browser_page: Page, live_server, held
):
    page = browser_page
    staff("finance", "view_usagerecord", "change_usagerecord")
    log_in(page, live_server, "finance")
    open_held_queue(page)
    choose_action(page, held.pk, "approve_held")
    reason = page.get_by_label("Reason")
    submit = page.get_by_role("button", name="Approve held cost")

    # Empty: the browser itself refuses to submit (the field is required).
    submit.click()
    assert reason.evaluate("input => input.validity.valueMissing") is True
    # Blank: the browser submits, the server refuses with the form's error.
    reason.fill("   ")
    submit.click()

    expect(page.locator(".errorlist")).to_contain_text("required")
    expect(page.locator("ul.messagelist")).to_have_count(0)
    held.refresh_from_db()
    assert held.state == UsageState.HELD
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.CHARGE).exists()


def test_a_view_only_staff_user_is_not_offered_the_review_actions(
    browser_page: Page, live_server, held
):
    page = browser_page
    staff("viewer", "view_usagerecord")

    log_in(page, live_server, "viewer")
    open_held_queue(page)

    expect(page.locator("#result_list")).to_contain_text("held for review")
    # Django hides the actions bar when no action is allowed; either way neither review is.
    actions = page.locator("select[name='action'] option")
    offered = actions.evaluate_all("options => options.map(o => o.value)")
    assert "approve_held" not in offered and "reject_held" not in offered


def test_finance_grants_credits_to_a_payer_in_the_browser(browser_page: Page, live_server):
    page = browser_page
    payer = payer_for_new_user(plan="pro")
    with transaction.atomic():  # this month's credits first: the grant's own effect is measured
        services.pools_ensure(payer)
        services.credits_grant_month_due(billing_accounts=[payer])
    included = LedgerAccount.objects.get(billing_account=payer, kind=AccountKind.INCLUDED)
    before = included.balance_nanousd
    staff("cashier", "view_billingaccount", "change_billingaccount")

    log_in(page, live_server, "cashier")
    page.get_by_role("link", name="Billing accounts").first.click()
    choose_action(page, payer.pk, "grant_credits")
    expect(page.locator("h1")).to_have_text("Grant credits")
    page.get_by_label("Amount (USD)").fill("2.50")
    page.get_by_label("Reason").fill("goodwill after an outage")
    page.get_by_role("button", name="Grant credits").click()

    expect(page.locator("ul.messagelist li")).to_have_text(f"Posted $2.50 for {payer.name}.")
    included.refresh_from_db()
    assert included.balance_nanousd - before == 2_500_000_000
    grant = LedgerTransaction.objects.get(kind=TransactionKind.GRANT, actor="cashier")
    assert grant.memo == "goodwill after an outage"
    assert selectors.invariant_violations() == []
