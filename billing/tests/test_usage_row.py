"""One usage row: the rules `UsageRow.build` applies once, and the one statement that writes
rows for every writer."""

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import models

import billing.models
from billing.models import ProviderBillingHealth, UsageRecord, UsageState
from billing.tests.factories import payer_for_new_user
from billing.usage_row import COLUMNS, UsageRow, usage_rows_insert, usage_state
from registry.tests.factories import ProviderFactory

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def build(**overrides) -> UsageRow:
    fields = {
        "provider_id": 1,
        "request_id": "req-1",
        "user_id": 2,
        "payer_id": 3,
        "hub_model_id": "meta/llama",
        "provider_model": "llama",
        "task": "conversational",
        "http_status": 200,
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "estimated_cost_nanousd": 1_000,
        "byok": False,
        "created_at": NOW,
    }
    return UsageRow.build(**{**fields, **overrides})


def test_the_column_list_is_the_rows_fields_in_order():
    assert tuple(f.name for f in dataclasses.fields(UsageRow)) == COLUMNS


def test_a_served_request_with_an_id_is_pending_and_keeps_its_estimate():
    row = build()
    assert (row.state, row.request_id, row.estimated_cost_nanousd) == (
        UsageState.PENDING,
        "req-1",
        1_000,
    )


@pytest.mark.parametrize(
    ("overrides", "state"),
    [
        ({"byok": True}, UsageState.BYOK),
        ({"http_status": 500}, UsageState.NOT_BILLABLE),
        ({"http_status": None}, UsageState.NOT_BILLABLE),
        ({"request_id": None}, UsageState.NOT_BILLABLE),
    ],
)
def test_a_record_that_will_not_be_charged_carries_no_estimate(overrides, state):
    row = build(**overrides)
    assert (row.state, row.estimated_cost_nanousd) == (state, 0)


def test_a_request_without_an_id_gets_a_key_no_provider_answer_can_match():
    first, second = build(request_id=None), build(request_id="")
    assert re.fullmatch(r"no-request-id:[0-9a-f]{24}", first.request_id)
    assert first.request_id != second.request_id


def test_strings_are_cut_to_their_column_length_and_the_estimate_is_never_negative():
    row = build(
        hub_model_id="h" * 999,
        provider_model="p" * 999,
        task="t" * 999,
        estimated_cost_nanousd=-5,
    )
    field = UsageRecord._meta.get_field
    assert len(row.hub_model_id) == field("hub_model_id").max_length
    assert len(row.provider_model) == field("provider_model").max_length
    assert len(row.task) == field("task").max_length
    assert row.estimated_cost_nanousd == 0


def test_defect_13_a_request_id_too_long_to_store_is_kept_whole_never_truncated():
    """A truncated ID matches no cost answer (never billed) and could match another request's;
    the record is kept as not billable, under a key of our own, saying why."""
    long_id = "r" * 300
    row = build(request_id=long_id)
    assert re.fullmatch(r"long-request-id:[0-9a-f]{24}", row.request_id)
    assert row.state == UsageState.NOT_BILLABLE
    assert "300 characters" in row.cost_error and row.estimated_cost_nanousd == 0
    assert build(request_id="r" * 255).request_id == "r" * 255  # the bound itself is fine


@pytest.mark.django_db
def test_defect_13_long_request_ids_are_stored_and_counted_in_billing_health():
    payer = payer_for_new_user()
    provider = ProviderFactory()
    row = build(
        provider_id=provider.pk, user_id=payer.user_id, payer_id=payer.pk, request_id="x" * 400
    )
    assert usage_rows_insert([row]) == 1
    stored = UsageRecord.objects.get(provider=provider)
    assert stored.state == UsageState.NOT_BILLABLE and "400 characters" in stored.cost_error
    assert ProviderBillingHealth.objects.get(provider=provider).long_request_ids_total == 1


@pytest.mark.django_db
def test_defect_13_a_reused_request_id_is_kept_and_flagged_not_dropped():
    """The provider answers a second request with the ID of a first one: the second is kept
    (never charged to the first's payer), flagged in billing health; the first is untouched."""
    first_payer, second_payer = payer_for_new_user(), payer_for_new_user()
    provider = ProviderFactory()
    first = build(
        provider_id=provider.pk, user_id=first_payer.user_id, payer_id=first_payer.pk,
        request_id="dup",
    )  # fmt: skip
    second = build(
        provider_id=provider.pk, user_id=second_payer.user_id, payer_id=second_payer.pk,
        request_id="dup", created_at=NOW.replace(minute=5),
    )  # fmt: skip
    assert usage_rows_insert([first]) == 1
    assert usage_rows_insert([second]) == 1
    kept = UsageRecord.objects.get(provider=provider, payer=second_payer)
    assert kept.request_id.startswith("reused-request-id:")
    assert kept.state == UsageState.NOT_BILLABLE and "'dup'" in kept.cost_error
    original = UsageRecord.objects.get(provider=provider, request_id="dup")
    assert (original.payer_id, original.state) == (first_payer.pk, UsageState.PENDING)
    assert ProviderBillingHealth.objects.get(provider=provider).reused_request_ids_total == 1
    assert usage_rows_insert([first]) == 0  # a writer's retry of the same row stays a no-op
    assert UsageRecord.objects.filter(provider=provider).count() == 2


@pytest.mark.django_db
def test_rows_are_written_once_per_provider_and_request_id():
    payer = payer_for_new_user()
    provider = ProviderFactory()
    rows = [
        build(provider_id=provider.pk, user_id=payer.user_id, payer_id=payer.pk, request_id=r)
        for r in ("a", "b", None)
    ]
    assert usage_rows_insert(rows) == 3
    assert usage_rows_insert(rows[:2]) == 0
    stored = UsageRecord.objects.get(provider=provider, request_id="a")
    assert (stored.state, stored.estimated_cost_nanousd, stored.cost_attempts) == (
        UsageState.PENDING,
        1_000,
        0,
    )


def test_no_enum_value_is_written_as_a_sql_literal_in_billing():
    """Renaming a choice would pass every type check and silently break such SQL; values are
    bound as parameters instead (migrations are history and exempt)."""
    values = {
        value
        for obj in vars(billing.models).values()
        if isinstance(obj, type) and issubclass(obj, models.TextChoices)
        for value in obj.values
    }
    root = Path(billing.models.__file__).parent
    offenders = [
        f"{path.relative_to(root)}: '{value}'"
        for path in root.rglob("*.py")
        if "migrations" not in path.parts and "tests" not in path.parts
        for value in values
        if f"'{value}'" in path.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize("status", [301, 302, 307, 308, 399])
def test_a_redirect_is_never_billable(status):
    """The router never follows a redirect (issue 12), so nothing was served: an ingested
    record with a 3xx status is not billable either."""
    assert usage_state(byok=False, request_id="r-1", http_status=status) == "not_billable"
    assert usage_state(byok=False, request_id="r-1", http_status=200) == "pending"
