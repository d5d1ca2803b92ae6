"""The billing admin: pages render, balances show in USD, and the three money actions post
exactly once through the services."""

import re

import pytest
from django.contrib.admin import helpers
from django.urls import reverse

from accounts import plans
from accounts.tests.factories import OrganizationFactory, UserFactory
from billing import services
from billing.models import AccountKind, LedgerTransaction, ProviderBillingHealth, TransactionKind
from billing.tests.factories import pending_usage
from core.errors import DomainError
from registry.tests.factories import ProviderFactory

USD = 1_000_000_000
CHANGELIST = reverse("admin:billing_billingaccount_changelist")
SUBMISSION_RE = re.compile(r'name="submission" value="([0-9a-f-]{36})"')


@pytest.fixture
def payer(db):
    return services.billing_account_get_or_create_for_user(
        user=UserFactory(username="bob", plan="pro")
    )


def pools(payer) -> dict[str, int]:
    return {k: a.balance_nanousd for k, a in services.pools_get(payer).items()}


def open_form(staff_client, action: str, *accounts) -> tuple[str, str]:
    """Chooses the action on the list; returns the intermediate page and its submission id."""
    response = staff_client.post(
        CHANGELIST,
        {"action": action, helpers.ACTION_CHECKBOX_NAME: [a.pk for a in accounts], "index": 0},
    )
    assert response.status_code == 200, response.content[:500]
    page = response.content.decode()
    return page, SUBMISSION_RE.search(page).group(1)


def submit(staff_client, action: str, submission: str, *accounts, **fields):
    data = {
        "action": action,
        helpers.ACTION_CHECKBOX_NAME: [a.pk for a in accounts],
        "apply": "yes",
        "submission": submission,
        **fields,
    }
    return staff_client.post(CHANGELIST, data, follow=True)


def postings(kind: str) -> int:
    return LedgerTransaction.objects.filter(kind=kind, actor="root").count()


# --- pages --------------------------------------------------------------------------------------
def test_the_payer_list_shows_names_kinds_and_balances_in_usd(staff_client, payer):
    services.credits_top_up(
        billing_account=payer, amount_nanousd=12_500_000_000, actor="t", idempotency_key="t"
    )
    org = services.billing_account_get_or_create_for_organization(
        organization=OrganizationFactory(name="acme")
    )
    services.ledger_adjust(
        billing_account=org,
        pool="payg",
        amount_nanousd=-750_000_000,
        actor="t",
        memo="owed",
        idempotency_key="a",
    )

    response = staff_client.get(CHANGELIST)

    assert response.status_code == 200
    page = response.content.decode()
    assert "bob" in page
    assert "acme" in page
    assert "$12.50" in page
    assert "-$0.75" in page
    assert str(12_500_000_000) not in page


def test_the_payer_page_shows_pools_and_latest_transactions_with_entries(staff_client, payer):
    services.credits_top_up(
        billing_account=payer, amount_nanousd=3 * USD, actor="finance", idempotency_key="inv-7"
    )

    response = staff_client.get(reverse("admin:billing_billingaccount_change", args=[payer.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert "$3.00" in page  # the prepaid pool, and the top-up's entry
    assert "-$3.00" in page  # the platform cash leg
    assert "finance" in page
    assert "prepaid top-up" in page
    assert 'name="_save"' not in page  # view-only


@pytest.mark.parametrize(
    ("url_name", "shown"),
    [
        ("admin:billing_ledgertransaction_changelist", "charge:"),
        ("admin:billing_ledgerentry_changelist", "$1.234"),
        ("admin:billing_usagerecord_changelist", "req-abc"),
        ("admin:billing_providerbillinghealth_changelist", "timeout"),
    ],
)
def test_the_ledger_usage_and_health_lists_render(staff_client, payer, url_name, shown):
    provider = ProviderFactory(slug="together")
    pending_usage(provider=provider, payer=payer, request_id="req-abc")
    services.cost_batch_apply(provider=provider, costs={"req-abc": 1_234_000_000})
    ProviderBillingHealth.objects.create(provider=provider, last_error="timeout")

    response = staff_client.get(reverse(url_name))

    assert response.status_code == 200
    assert shown in response.content.decode()


def test_usage_records_are_found_by_request_id_and_show_their_payer(staff_client, payer):
    provider = ProviderFactory(slug="together")
    pending_usage(provider=provider, payer=payer, request_id="req-wanted")
    pending_usage(provider=provider, payer=payer, request_id="req-other")
    url = reverse("admin:billing_usagerecord_changelist")

    response = staff_client.get(url, {"q": "req-wanted"})
    filtered = staff_client.get(
        url, {"state__exact": "pending", "provider__id__exact": provider.pk}
    )

    page = response.content.decode()
    assert "req-wanted" in page
    assert "req-other" not in page
    assert "bob" in page
    assert filtered.status_code == 200
    assert "req-other" in filtered.content.decode()


def test_the_ledger_and_usage_pages_of_one_object_render_read_only(staff_client, payer):
    provider = ProviderFactory(slug="together")
    record = pending_usage(provider=provider, payer=payer, request_id="r1")
    services.cost_batch_apply(provider=provider, costs={"r1": USD})
    txn = LedgerTransaction.objects.get(kind=TransactionKind.CHARGE)
    entry = txn.entries.first()

    for name, pk in [
        ("ledgertransaction", txn.pk),
        ("ledgerentry", entry.pk),
        ("usagerecord", record.pk),
    ]:
        response = staff_client.get(reverse(f"admin:billing_{name}_change", args=[pk]))
        assert response.status_code == 200, name
        assert 'name="_save"' not in response.content.decode(), name


@pytest.mark.parametrize(
    "name", ["ledgertransaction", "ledgerentry", "usagerecord", "providerbillinghealth"]
)
def test_nothing_of_the_ledger_can_be_added_in_the_admin(staff_client, name):
    assert staff_client.get(reverse(f"admin:billing_{name}_add")).status_code == 403


def test_a_ledger_transaction_cannot_be_deleted_in_the_admin(staff_client, payer):
    services.credits_top_up(billing_account=payer, amount_nanousd=1, actor="t", idempotency_key="k")
    txn = LedgerTransaction.objects.get()

    response = staff_client.post(
        reverse("admin:billing_ledgertransaction_delete", args=[txn.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert LedgerTransaction.objects.filter(pk=txn.pk).exists()


# --- actions ------------------------------------------------------------------------------------
def test_granting_credits_posts_included_credits_once_even_if_the_form_is_sent_twice(
    staff_client, payer
):
    page, submission = open_form(staff_client, "grant_credits", payer)
    assert "Grant credits" in page
    assert "$0.00" in page  # current balances, in USD

    first = submit(staff_client, "grant_credits", submission, payer, amount="5.25", reason="promo")
    second = submit(staff_client, "grant_credits", submission, payer, amount="5.25", reason="promo")

    assert first.status_code == 200
    assert "Posted $5.25 for bob" in first.content.decode()
    assert "not posted again" in second.content.decode()
    txn = LedgerTransaction.objects.get(kind=TransactionKind.GRANT, actor="root")
    assert txn.memo == "promo"
    assert txn.billing_account == payer
    assert pools(payer)[AccountKind.INCLUDED] == plans.PRO_USER_MONTHLY_NANOUSD + 5_250_000_000
    granted = services.platform_account_get_or_create(AccountKind.CREDITS_GRANTED)
    assert granted.balance_nanousd == -(plans.PRO_USER_MONTHLY_NANOUSD + 5_250_000_000)


def test_granted_credits_are_not_expired_by_the_months_own_grant(staff_client, payer):
    _, submission = open_form(staff_client, "grant_credits", payer)
    submit(staff_client, "grant_credits", submission, payer, amount="1", reason="sorry")

    services.credits_ensure_month(billing_account=payer)  # the hourly job, afterwards

    assert pools(payer)[AccountKind.INCLUDED] == plans.PRO_USER_MONTHLY_NANOUSD + USD


def test_topping_up_posts_prepaid_credits_once(staff_client, payer):
    _, submission = open_form(staff_client, "top_up", payer)

    for _ in range(2):
        submit(staff_client, "top_up", submission, payer, amount="$20", reason="invoice 42")

    assert postings(TransactionKind.TOP_UP) == 1
    assert pools(payer)[AccountKind.PREPAID] == 20 * USD
    cash = services.platform_account_get_or_create(AccountKind.CASH)
    assert cash.balance_nanousd == -20 * USD


def test_each_rendered_form_is_its_own_posting(staff_client, payer):
    for _ in range(2):
        _, submission = open_form(staff_client, "top_up", payer)
        submit(staff_client, "top_up", submission, payer, amount="1", reason="twice on purpose")

    assert postings(TransactionKind.TOP_UP) == 2
    assert pools(payer)[AccountKind.PREPAID] == 2 * USD


def test_adjusting_moves_a_signed_amount_into_the_chosen_pool_once(staff_client, payer):
    _, submission = open_form(staff_client, "adjust", payer)

    for _ in range(2):
        response = submit(
            staff_client,
            "adjust",
            submission,
            payer,
            pool="payg",
            amount="-1.000000001",
            reason="manual correction",
        )

    assert response.status_code == 200
    assert postings(TransactionKind.ADJUSTMENT) == 1
    assert pools(payer)[AccountKind.PAYG] == -1_000_000_001
    assert (
        services.platform_account_get_or_create(AccountKind.ADJUSTMENTS).balance_nanousd
        == 1_000_000_001
    )


def test_an_action_posts_for_every_selected_payer(staff_client, payer):
    other = services.billing_account_get_or_create_for_user(user=UserFactory(username="eve"))
    _, submission = open_form(staff_client, "top_up", payer, other)

    submit(staff_client, "top_up", submission, payer, other, amount="2", reason="both")

    assert pools(payer)[AccountKind.PREPAID] == 2 * USD
    assert pools(other)[AccountKind.PREPAID] == 2 * USD


@pytest.mark.parametrize("action", ["grant_credits", "top_up", "adjust"])
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"amount": "5", "reason": ""}, "This field is required."),
        ({"amount": "5", "reason": "   "}, "This field is required."),
        ({"amount": "1.5.2", "reason": "r"}, "is not an amount of US dollars"),
        ({"amount": "abc", "reason": "r"}, "is not an amount of US dollars"),
        ({"amount": "-", "reason": "r"}, "is not an amount of US dollars"),
        ({"amount": "NaN", "reason": "r"}, "is not an amount of US dollars"),
        ({"amount": "0.0000000001", "reason": "r"}, "is not an amount of US dollars"),
        ({"amount": "0", "reason": "r"}, "must"),
        ({"amount": "", "reason": "r"}, "This field is required."),
        ({"amount": "99999999999", "reason": "r"}, "At most $1000000.00 per action"),
    ],
)
def test_an_action_refuses_a_missing_reason_or_a_malformed_amount(
    staff_client, payer, action, fields, error
):
    _, submission = open_form(staff_client, action, payer)

    response = submit(staff_client, action, submission, payer, pool="prepaid", **fields)

    assert response.status_code == 200
    page = response.content.decode()
    assert error in page
    assert SUBMISSION_RE.search(page).group(1) == submission  # the same form, to correct
    assert not LedgerTransaction.objects.filter(actor="root").exists()


@pytest.mark.parametrize("action", ["grant_credits", "top_up"])
def test_granting_or_topping_up_refuses_a_negative_amount(staff_client, payer, action):
    _, submission = open_form(staff_client, action, payer)

    response = submit(staff_client, action, submission, payer, amount="-5", reason="r")

    assert "The amount must be positive." in response.content.decode()
    assert not LedgerTransaction.objects.filter(actor="root").exists()


def test_an_adjustment_that_would_make_a_pool_negative_is_refused_for_every_payer(
    staff_client, payer
):
    rich = services.billing_account_get_or_create_for_user(user=UserFactory(username="rich"))
    services.credits_top_up(
        billing_account=rich, amount_nanousd=10 * USD, actor="t", idempotency_key="r"
    )
    _, submission = open_form(staff_client, "adjust", rich, payer)

    response = submit(
        staff_client, "adjust", submission, rich, payer, pool="prepaid", amount="-5", reason="x"
    )

    assert "below zero" in response.content.decode()
    assert pools(rich)[AccountKind.PREPAID] == 10 * USD  # all or nothing
    assert not LedgerTransaction.objects.filter(actor="root").exists()


def test_a_form_without_its_submission_id_posts_nothing(staff_client, payer):
    response = submit(staff_client, "top_up", "", payer, amount="1", reason="r")

    assert response.status_code == 200
    assert not LedgerTransaction.objects.filter(actor="root").exists()


# --- the service behind "Grant credits" ---------------------------------------------------------
def test_granting_extra_credits_needs_a_reason_and_a_positive_amount(payer):
    for amount, memo, field in [(USD, " ", "memo"), (0, "r", "amount"), (-USD, "r", "amount")]:
        with pytest.raises(DomainError) as refused:
            services.credits_grant_extra(
                billing_account=payer,
                amount_nanousd=amount,
                actor="root",
                memo=memo,
                idempotency_key="k",
            )
        assert refused.value.field == field
    assert not LedgerTransaction.objects.filter(actor="root").exists()


def test_granting_extra_credits_twice_with_one_key_posts_once(payer):
    results = [
        services.credits_grant_extra(
            billing_account=payer, amount_nanousd=USD, actor="root", memo="r", idempotency_key="k"
        )
        for _ in range(2)
    ]

    assert results[0] is not None
    assert results[1] is None
    assert pools(payer)[AccountKind.INCLUDED] == plans.PRO_USER_MONTHLY_NANOUSD + USD


def test_usage_records_can_be_found_by_payer_name(staff_client):
    provider = ProviderFactory(slug="finder")
    alice = services.billing_account_get_or_create_for_user(
        user=UserFactory(username="alice-payer")
    )
    bob = services.billing_account_get_or_create_for_user(user=UserFactory(username="bob-payer"))
    pending_usage(provider=provider, payer=alice, request_id="req-alice")
    pending_usage(provider=provider, payer=bob, request_id="req-bob")
    page = staff_client.get(
        reverse("admin:billing_usagerecord_changelist"), {"q": "alice-payer"}
    ).content.decode()
    assert "req-alice" in page
    assert "req-bob" not in page
