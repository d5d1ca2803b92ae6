"""A ledger no one can bend (issue 11): the application connects as a role that does not own
the tables, and PostgreSQL refuses every way around the posting path, whoever asks.

Privileges (the application role `settings.DATABASE_APP_ROLE`; migrations run as the owner):
- every table and sequence: SELECT, INSERT, UPDATE, DELETE / USAGE, SELECT, now and for tables
  the owner creates later (`ALTER DEFAULT PRIVILEGES`); never TRUNCATE, never TRIGGER;
- billing_ledgertransaction, billing_ledgerentry: SELECT and INSERT only;
- billing_ledgeraccount: SELECT, INSERT, and UPDATE of `id` alone (row locks, `FOR UPDATE`,
  need UPDATE on some column; the identity guard below refuses changing it): never its
  balance, kind or owner.
Not the owner, the application role cannot ALTER TABLE, DISABLE TRIGGER or replace a function.

Triggers (they also bind the owner, who would have to drop them first):
1. `billing_entry_post` (the posting trigger of 0002) is SECURITY DEFINER: it runs as the
   owner, with a fixed search_path, and is the only path that changes a balance.
   It also refuses entries for a ledger transaction written by an earlier database
   transaction (`posted_xid`, stamped on INSERT from `pg_current_xact_id()`, never from input;
   the top-level id, so Django's savepoints do not matter), and a second INSERT statement of
   entries for a transaction that already has some (each statement's legs sum to zero).
2. `billing_balance_guard` refuses a balance change made outside a trigger
   (`pg_trigger_depth()`, not a settable flag; the application role cannot create triggers on
   these tables, nor a SECURITY DEFINER function, and has no UPDATE on the column anyway).
   The WHEN clause keeps the posting trigger's own updates free of the PL/pgSQL call.
   `billing_account_starts_at_zero`: a new account's balance is zero, whoever inserts it,
   at any trigger depth.
3. `billing_account_identity_guard`: a ledger account's id, kind and owner never change.
4. `billing_transaction_no_update_delete`: ledger transactions are append-only.
5. BEFORE TRUNCATE on the three ledger tables: refused, except for the owner with
   `billing.allow_ledger_truncate` set to `on` in its session (the test suite's flush between
   transactional tests, `testsupport/db.py`; nothing else sets it).
"""

from django.conf import settings
from django.db import migrations

LEDGER_TABLES = ("billing_ledgeraccount", "billing_ledgertransaction", "billing_ledgerentry")

SQL = """
ALTER TABLE billing_ledgertransaction ADD COLUMN posted_xid xid8;

CREATE FUNCTION billing_transaction_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.posted_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE TRIGGER billing_transaction_stamp
    BEFORE INSERT ON billing_ledgertransaction
    FOR EACH ROW EXECUTE FUNCTION billing_transaction_stamp();

CREATE FUNCTION billing_transaction_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger transactions are append-only (% refused); correct with a new transaction', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_transaction_no_update_delete
    BEFORE UPDATE OR DELETE ON billing_ledgertransaction
    FOR EACH ROW EXECUTE FUNCTION billing_transaction_immutable();

CREATE OR REPLACE FUNCTION billing_entry_post() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.transaction_id INTO bad
    FROM (SELECT DISTINCT transaction_id FROM new_entries) n
    JOIN billing_ledgertransaction t ON t.id = n.transaction_id
    WHERE t.posted_xid IS DISTINCT FROM pg_current_xact_id()
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is already posted: entries are written with their transaction', bad.transaction_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT e.transaction_id, sum(e.amount_nanousd)::numeric <> 0::numeric AS unbalanced INTO bad
    FROM billing_ledgerentry e
    JOIN (SELECT transaction_id, count(*) AS legs FROM new_entries GROUP BY transaction_id) n
        ON n.transaction_id = e.transaction_id
    GROUP BY e.transaction_id, n.legs
    HAVING sum(e.amount_nanousd)::numeric <> 0::numeric OR count(*) <> n.legs
    LIMIT 1;
    IF FOUND AND bad.unbalanced THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero', bad.transaction_id
            USING ERRCODE = 'integrity_constraint_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is already posted: all its legs are written by one statement', bad.transaction_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    UPDATE billing_ledgeraccount a
    SET balance_nanousd = a.balance_nanousd + d.delta
    FROM (SELECT account_id, sum(amount_nanousd)::bigint AS delta
          FROM new_entries GROUP BY account_id) d
    WHERE a.id = d.account_id;
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION billing_entry_post() FROM PUBLIC;

DROP TRIGGER billing_balance_guard ON billing_ledgeraccount;

CREATE OR REPLACE FUNCTION billing_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.balance_nanousd <> 0 THEN
            RAISE EXCEPTION 'a ledger account starts at zero'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    ELSIF NEW.balance_nanousd IS DISTINCT FROM OLD.balance_nanousd THEN
        RAISE EXCEPTION 'ledger account balances change only by posting entries'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

-- Outside any trigger (depth 0) every update goes through the guard; the posting trigger's own
-- updates (thousands per cost batch, depth 1) skip the PL/pgSQL call. Any other function
-- running in a trigger (one of the application's own, on a temporary table) runs as its
-- caller, and the application has no UPDATE on the balance column.
CREATE TRIGGER billing_balance_guard
    BEFORE UPDATE ON billing_ledgeraccount
    FOR EACH ROW
    WHEN (pg_trigger_depth() < 1)
    EXECUTE FUNCTION billing_balance_guard();

-- Every new account starts at zero, at any depth (the application may insert accounts).
CREATE TRIGGER billing_account_starts_at_zero
    BEFORE INSERT ON billing_ledgeraccount
    FOR EACH ROW
    EXECUTE FUNCTION billing_balance_guard();

CREATE FUNCTION billing_account_identity_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger account %: its kind and owner never change', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_account_identity_guard
    BEFORE UPDATE OF id, kind, billing_account_id, provider_id ON billing_ledgeraccount
    FOR EACH ROW
    WHEN (OLD.id <> NEW.id
          OR OLD.kind IS DISTINCT FROM NEW.kind
          OR OLD.billing_account_id IS DISTINCT FROM NEW.billing_account_id
          OR OLD.provider_id IS DISTINCT FROM NEW.provider_id)
    EXECUTE FUNCTION billing_account_identity_guard();

CREATE FUNCTION billing_ledger_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('billing.allow_ledger_truncate', true), '') = 'on'
       AND pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the ledger is append-only: TRUNCATE % refused', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_ledgeraccount_no_truncate
    BEFORE TRUNCATE ON billing_ledgeraccount
    FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_no_truncate();
CREATE TRIGGER billing_ledgertransaction_no_truncate
    BEFORE TRUNCATE ON billing_ledgertransaction
    FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_no_truncate();
CREATE TRIGGER billing_ledgerentry_no_truncate
    BEFORE TRUNCATE ON billing_ledgerentry
    FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_no_truncate();

-- Who a payer is never changes: its pools (and their money) belong to that owner. Moving a
-- billing account to another user or organization would move its whole ledger with it.
CREATE FUNCTION billing_payer_identity_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing account %: its owner never changes', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_payer_identity_guard
    BEFORE UPDATE OF id, user_id, organization_id ON billing_billingaccount
    FOR EACH ROW
    WHEN (OLD.id <> NEW.id
          OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.organization_id IS DISTINCT FROM NEW.organization_id)
    EXECUTE FUNCTION billing_payer_identity_guard();

-- A SECURITY DEFINER function resolves names in a fixed path: this schema, then pg_temp last,
-- so no session can slip its own billing_ledgeraccount in front.
DO $$ BEGIN
    EXECUTE format(
        'ALTER FUNCTION billing_entry_post() SET search_path = pg_catalog, %I, pg_temp',
        current_schema()
    );
END $$;
"""

REVERSE_SQL = """
DROP TRIGGER billing_payer_identity_guard ON billing_billingaccount;
DROP FUNCTION billing_payer_identity_guard();
DROP TRIGGER billing_ledgerentry_no_truncate ON billing_ledgerentry;
DROP TRIGGER billing_ledgertransaction_no_truncate ON billing_ledgertransaction;
DROP TRIGGER billing_ledgeraccount_no_truncate ON billing_ledgeraccount;
DROP FUNCTION billing_ledger_no_truncate();
DROP TRIGGER billing_account_identity_guard ON billing_ledgeraccount;
DROP FUNCTION billing_account_identity_guard();
DROP TRIGGER billing_transaction_no_update_delete ON billing_ledgertransaction;
DROP FUNCTION billing_transaction_immutable();
DROP TRIGGER billing_transaction_stamp ON billing_ledgertransaction;
DROP FUNCTION billing_transaction_stamp();
ALTER TABLE billing_ledgertransaction DROP COLUMN posted_xid;

DROP TRIGGER billing_account_starts_at_zero ON billing_ledgeraccount;
DROP TRIGGER billing_balance_guard ON billing_ledgeraccount;
CREATE OR REPLACE FUNCTION billing_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.balance_nanousd <> 0 THEN
            RAISE EXCEPTION 'a ledger account starts at zero'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.balance_nanousd IS DISTINCT FROM OLD.balance_nanousd
       AND coalesce(current_setting('billing.posting', true), 'off') <> 'on' THEN
        RAISE EXCEPTION 'ledger account balances change only by posting entries'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER billing_balance_guard
    BEFORE INSERT OR UPDATE ON billing_ledgeraccount
    FOR EACH ROW
    WHEN (coalesce(current_setting('billing.posting', true), 'off') <> 'on')
    EXECUTE FUNCTION billing_balance_guard();

ALTER FUNCTION billing_entry_post() RESET search_path;
ALTER FUNCTION billing_entry_post() SECURITY INVOKER;
CREATE OR REPLACE FUNCTION billing_entry_post() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced bigint;
BEGIN
    SELECT e.transaction_id INTO unbalanced
    FROM billing_ledgerentry e
    WHERE e.transaction_id IN (SELECT DISTINCT transaction_id FROM new_entries)
    GROUP BY e.transaction_id
    HAVING sum(e.amount_nanousd) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero', unbalanced
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    PERFORM set_config('billing.posting', 'on', true);
    UPDATE billing_ledgeraccount a
    SET balance_nanousd = a.balance_nanousd + d.delta
    FROM (SELECT account_id, sum(amount_nanousd)::bigint AS delta
          FROM new_entries GROUP BY account_id) d
    WHERE a.id = d.account_id;
    PERFORM set_config('billing.posting', 'off', true);
    RETURN NULL;
END $$;
GRANT EXECUTE ON FUNCTION billing_entry_post() TO PUBLIC;
"""


def _role_exists(cursor, role: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


def grant_application_privileges(apps, schema_editor):
    """The application role's privileges (module docstring). Without that role (a database
    used by one role only, as before), there is nothing to grant: say so and go on."""
    role = settings.DATABASE_APP_ROLE
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if not _role_exists(cursor, role):
            print(f"\n  0007_ledger_guard: no role {role!r}: no privileges granted to it")  # noqa: T201
            return
        cursor.execute("SELECT current_schema()")
        schema = cursor.fetchone()[0]
    q = schema_editor.quote_name
    app, ns, ledger = q(role), q(schema), ", ".join(q(t) for t in LEDGER_TABLES)
    for statement in (
        f"GRANT USAGE ON SCHEMA {ns} TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ns} TO {app}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ns} TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {ns} GRANT USAGE, SELECT ON SEQUENCES TO {app}",
        f"REVOKE ALL ON {ledger} FROM PUBLIC, {app}",
        f"GRANT SELECT, INSERT ON {ledger} TO {app}",
        f"GRANT UPDATE (id) ON billing_ledgeraccount TO {app}",
    ):
        schema_editor.execute(statement)
    # No one but the owner creates objects in the schema (PostgreSQL 14 and older let everyone
    # create in `public`: an operator of the application's own could then be picked inside the
    # SECURITY DEFINER posting function). Refused when the owner does not own the schema: say
    # so, the operator revokes it (docs/operations.md).
    schema_editor.execute(
        "DO $$ BEGIN EXECUTE format('REVOKE CREATE ON SCHEMA %%I FROM PUBLIC', "
        "current_schema()); EXCEPTION WHEN insufficient_privilege THEN RAISE WARNING "
        "'0007_ledger_guard: revoke CREATE on schema %% from PUBLIC as its owner', "
        "current_schema(); END $$"
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_trust_fields")]

    operations = [
        migrations.RunSQL(SQL, REVERSE_SQL),
        # Migrating back keeps the grants: the application keeps working on the tables below.
        migrations.RunPython(grant_application_privileges, migrations.RunPython.noop),
    ]
