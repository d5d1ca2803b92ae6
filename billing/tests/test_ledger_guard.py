"""Defect 8 of issue 11, "a ledger no one can bend": connected with the application's database
credentials (the role the web, router, worker and beat use), every way around the posting
path is refused by PostgreSQL; the triggers behind it bind the tables' owner too."""

from datetime import UTC, datetime
from types import SimpleNamespace

import psycopg
import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from accounts import plans
from accounts.tests.factories import UserFactory
from billing import services
from billing.models import AccountKind, BillingAccount, LedgerAccount, LedgerTransaction
from billing.selectors import invariant_violations
from billing.tests.factories import payer_for_new_user, pending_usage
from registry.tests.factories import ProviderFactory
from testsupport.db import owner_connect

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
USD = 1_000_000_000
COST = USD // 20  # $0.05: below the review threshold, charged at once
LEDGER_TABLES = ["billing_ledgeraccount", "billing_ledgertransaction", "billing_ledgerentry"]
PERMISSION_DENIED = "permission denied for table"


def make_ledger() -> SimpleNamespace:
    """A victim with $100 prepaid and one $0.05 charge, and a thief with empty pools."""
    provider = ProviderFactory(slug="together")
    victim, thief = payer_for_new_user(plan="free"), payer_for_new_user(plan="free")
    services.credits_top_up(
        billing_account=victim, amount_nanousd=100 * USD, actor="t", idempotency_key="top-up"
    )
    record = pending_usage(provider=provider, payer=victim, request_id="r1", created_at=NOW)
    services.cost_batch_apply(provider=provider, costs={"r1": COST}, now=NOW)
    record.refresh_from_db()
    return SimpleNamespace(
        victim=services.pools_get(victim),
        thief=services.pools_get(thief),
        thief_payer=thief,
        charge=LedgerTransaction.objects.get(pk=record.charge_id),
    )


@pytest.fixture
def ledger(db) -> SimpleNamespace:
    return make_ledger()


def refused(sql: str, params=None) -> str:
    """Runs `sql` as the application (in a savepoint); returns PostgreSQL's refusal."""
    with pytest.raises(DatabaseError) as refusal, transaction.atomic(), connection.cursor() as c:
        c.execute(sql, params)
    return str(refusal.value)


def balance(account: LedgerAccount) -> int:
    account.refresh_from_db()
    return account.balance_nanousd


@pytest.mark.django_db
def test_the_tests_connect_with_the_applications_credentials_which_own_nothing():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, r.rolsuper, r.rolcreatedb, r.rolcreaterole, "
            "pg_get_userbyid(c.relowner) FROM pg_roles r, pg_class c "
            "WHERE r.rolname = current_user AND c.relname = 'billing_ledgerentry'"
        )
        user, superuser, createdb, createrole, table_owner = cursor.fetchone()
    assert user == settings.DATABASE_APP_ROLE
    assert (superuser, createdb, createrole) == (False, False, False)
    assert table_owner != user


def test_defect_8_setting_the_old_posting_flag_does_not_unlock_a_balance(ledger):
    prepaid = ledger.thief[AccountKind.PREPAID]
    with pytest.raises(DatabaseError) as refusal, transaction.atomic(), connection.cursor() as c:
        c.execute("SELECT set_config('billing.posting', 'on', true)")
        c.execute(
            "UPDATE billing_ledgeraccount SET balance_nanousd = %s WHERE id = %s",
            [100 * USD, prepaid.pk],
        )
    assert PERMISSION_DENIED in str(refusal.value)
    assert balance(prepaid) == 0


def test_defect_8_a_balance_cannot_be_updated_directly(ledger):
    payg = ledger.victim[AccountKind.PAYG]
    assert PERMISSION_DENIED in refused(
        "UPDATE billing_ledgeraccount SET balance_nanousd = 0 WHERE id = %s", [payg.pk]
    )
    assert PERMISSION_DENIED in refused(
        "UPDATE billing_ledgeraccount SET balance_nanousd = balance_nanousd + 1"
    )


def test_a_ledger_account_cannot_start_with_a_balance(ledger):
    assert "starts at zero" in refused(
        "INSERT INTO billing_ledgeraccount (kind, balance_nanousd) VALUES ('adjustments', 5)"
    )


@pytest.mark.parametrize("table", LEDGER_TABLES)
def test_defect_8_a_ledger_table_cannot_be_truncated(ledger, table):
    assert PERMISSION_DENIED in refused(f"TRUNCATE {table} CASCADE")
    assert invariant_violations() == []


def test_defect_8_a_pool_cannot_be_moved_to_another_payer(ledger):
    prepaid = ledger.victim[AccountKind.PREPAID]  # $100
    assert PERMISSION_DENIED in refused(
        "UPDATE billing_ledgeraccount SET billing_account_id = %s WHERE id = %s",
        [ledger.thief_payer.pk, prepaid.pk],
    )
    prepaid.refresh_from_db()
    assert prepaid.billing_account_id != ledger.thief_payer.pk


def test_defect_8_a_payer_cannot_be_handed_to_another_owner(ledger):
    """Found by review: moving the victim's billing account to the thief's user moved its
    whole ledger ($100 prepaid) with it, and billing_check saw nothing wrong."""
    victim_payer = ledger.victim[AccountKind.PREPAID].billing_account
    thief_user = ledger.thief_payer.user_id
    assert "its owner never changes" in refused(
        "UPDATE billing_billingaccount SET user_id = %s WHERE id = %s",
        [thief_user, victim_payer.pk],
    )
    # Swapping two payers' owners (through a third value) is refused at the first step too.
    assert "its owner never changes" in refused(
        "UPDATE billing_billingaccount SET user_id = NULL, organization_id = NULL WHERE id = %s",
        [victim_payer.pk],
    )
    victim_payer.refresh_from_db()
    assert victim_payer.user_id != thief_user


def test_defect_8_a_pools_kind_cannot_be_changed(ledger):
    payg = ledger.victim[AccountKind.PAYG]
    assert PERMISSION_DENIED in refused(
        "UPDATE billing_ledgeraccount SET kind = 'prepaid', billing_account_id = NULL "
        "WHERE id = %s",
        [payg.pk],
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created_at", "2020-01-01T00:00:00Z"),  # re-dated
        ("idempotency_key", "charge:together:someone-else"),  # re-keyed
        ("period", "2020-01-01"),
        ("kind", "refund"),
        ("billing_account_id", None),
    ],
)
def test_defect_8_a_ledger_transaction_cannot_be_changed(ledger, column, value):
    assert PERMISSION_DENIED in refused(
        f"UPDATE billing_ledgertransaction SET {column} = %s WHERE id = %s",  # noqa: S608
        [value, ledger.charge.pk],
    )


def test_defect_8_a_ledger_transaction_cannot_be_deleted(ledger):
    assert PERMISSION_DENIED in refused(
        "DELETE FROM billing_ledgertransaction WHERE id = %s", [ledger.charge.pk]
    )


APPEND_LEGS = (
    "INSERT INTO billing_ledgerentry (transaction_id, account_id, amount_nanousd) "
    "VALUES (%(t)s, %(victim)s, %(minus)s), (%(t)s, %(thief)s, %(plus)s)"
)


def append_params(ledger) -> dict:
    return {
        "t": ledger.charge.pk,
        "victim": ledger.victim[AccountKind.PREPAID].pk,
        "thief": ledger.thief[AccountKind.PREPAID].pk,
        "minus": -50 * USD,
        "plus": 50 * USD,
    }


@pytest.mark.django_db(transaction=True)
def test_defect_8_balanced_legs_cannot_be_appended_to_an_old_charge():
    ledger = make_ledger()  # committed: the charge was posted by an earlier transaction
    before = balance(ledger.victim[AccountKind.PREPAID])
    message = refused(APPEND_LEGS, append_params(ledger))
    assert f"ledger transaction {ledger.charge.pk} is already posted" in message
    assert balance(ledger.thief[AccountKind.PREPAID]) == 0
    assert balance(ledger.victim[AccountKind.PREPAID]) == before


def test_defect_8_a_second_statement_cannot_add_legs_to_a_transaction_in_the_same_transaction(
    ledger,
):
    # The fixture's postings ran in this test's database transaction: only "one statement
    # writes all the legs" stands between them and appended legs.
    message = refused(APPEND_LEGS, append_params(ledger))
    assert f"ledger transaction {ledger.charge.pk} is already posted" in message
    assert balance(ledger.thief[AccountKind.PREPAID]) == 0


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE billing_ledgeraccount DISABLE TRIGGER USER",
        "ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_entry_post",
        "DROP TRIGGER billing_balance_guard ON billing_ledgeraccount",
        "ALTER TABLE billing_ledgeraccount DROP CONSTRAINT billing_ledgeraccount_pool_non_negative",
        "CREATE OR REPLACE FUNCTION billing_balance_guard() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NEW; END $$",
    ],
)
def test_defect_8_the_application_cannot_disable_or_replace_the_guards(ledger, sql):
    message = refused(sql)
    assert "must be owner" in message or "permission denied for schema" in message


def test_defect_8_the_application_cannot_create_its_own_trigger_on_a_ledger_table(ledger):
    assert PERMISSION_DENIED in refused(
        "CREATE TRIGGER sneaky BEFORE UPDATE ON billing_ledgeraccount "
        "FOR EACH ROW EXECUTE FUNCTION billing_balance_guard()"
    )


def test_defect_8_a_trigger_of_the_applications_own_cannot_mint_a_balance(ledger):
    """Inside a trigger (depth 1, where the posting trigger's updates skip the guard), a
    function of the application's own (on a temporary table) still cannot set a balance."""
    bare = BillingAccount.objects.create(user=UserFactory()).pk  # a payer with no pools yet
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE sneaky (statement text, arg bigint)")
        cursor.execute(
            "CREATE FUNCTION pg_temp.sneaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "EXECUTE NEW.statement USING NEW.arg; RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER sneaky AFTER INSERT ON sneaky FOR EACH ROW "
            "EXECUTE FUNCTION pg_temp.sneaky()"
        )
    mint = (
        "INSERT INTO billing_ledgeraccount (kind, billing_account_id, balance_nanousd) "
        "VALUES ('prepaid', $1, 100000000000)"
    )
    assert "starts at zero" in refused("INSERT INTO sneaky VALUES (%s, %s)", [mint, bare])
    set_balance = "UPDATE billing_ledgeraccount SET balance_nanousd = 10 ^ 11 WHERE id = $1"
    prepaid = ledger.thief[AccountKind.PREPAID]
    assert PERMISSION_DENIED in refused(
        "INSERT INTO sneaky VALUES (%s, %s)", [set_balance, prepaid.pk]
    )
    assert balance(prepaid) == 0
    assert not LedgerAccount.objects.filter(billing_account_id=bare).exists()


def test_the_posting_path_still_moves_balances_for_the_application(ledger):
    paid = 100 * USD + plans.FREE_USER_MONTHLY_NANOUSD - COST  # the charge was posted
    assert sum(balance(pool) for pool in ledger.victim.values()) == paid
    services.ledger_adjust(
        billing_account=ledger.thief_payer,
        pool=AccountKind.PREPAID,
        amount_nanousd=3 * USD,
        actor="finance",
        memo="goodwill",
        idempotency_key="adj-1",
    )
    assert balance(ledger.thief[AccountKind.PREPAID]) == 3 * USD
    assert invariant_violations() == []


# --- the triggers bind the owner too (it could drop them, but nothing happens by accident) ---
OWNER_REFUSED = [
    "UPDATE billing_ledgeraccount SET balance_nanousd = balance_nanousd + 1",
    "SELECT set_config('billing.posting', 'on', true); "
    "UPDATE billing_ledgeraccount SET balance_nanousd = balance_nanousd + 1",
    "UPDATE billing_ledgeraccount SET billing_account_id = %(thief_payer)s WHERE id = %(victim)s",
    "UPDATE billing_ledgeraccount SET kind = 'payg' WHERE id = %(victim)s",
    "UPDATE billing_ledgertransaction SET created_at = '2020-01-01' WHERE id = %(t)s",
    "UPDATE billing_ledgertransaction SET idempotency_key = 'x' WHERE id = %(t)s",
    "DELETE FROM billing_ledgertransaction WHERE id = %(t)s",
    "UPDATE billing_ledgerentry SET amount_nanousd = -amount_nanousd",
    "DELETE FROM billing_ledgerentry",
    "TRUNCATE billing_ledgerentry CASCADE",
    "TRUNCATE billing_ledgertransaction CASCADE",
    "TRUNCATE billing_ledgeraccount CASCADE",
    APPEND_LEGS,
]


@pytest.mark.django_db(transaction=True)
def test_the_guards_refuse_the_tables_owner_too():
    ledger = make_ledger()
    params = {**append_params(ledger), "thief_payer": ledger.thief_payer.pk}
    with owner_connect() as owner:
        for sql in OWNER_REFUSED:
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation), owner.transaction():
                owner.execute(sql, params if "%(" in sql else None)
        assert (
            owner.execute(
                "SELECT current_user <> %s AND pg_has_role(current_user, c.relowner, 'MEMBER') "
                "FROM pg_class c WHERE relname = 'billing_ledgerentry'",
                [settings.DATABASE_APP_ROLE],
            ).fetchone()[0]
            is True
        )
    assert balance(ledger.thief[AccountKind.PREPAID]) == 0
    assert invariant_violations() == []
