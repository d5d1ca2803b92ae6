"""Ledger invariants enforced by PostgreSQL itself, whatever code (or person) writes.

1. Entries are append-only: UPDATE and DELETE raise.
2. Each INSERT statement into entries must leave every transaction it touches summing to
   zero: all legs of a transaction are written by one statement (a statement-level trigger
   with a transition table checks it set-based, once per statement).
3. The same trigger adds each account's net amount to `balance_nanousd`, in the same
   transaction, so the cached balance always equals the sum of its entries; the pools'
   non-negative check constraint fires on that update.
4. Cached balances cannot be changed except by that trigger.
"""

from django.db import migrations

SQL = """
CREATE FUNCTION billing_entry_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only (% refused); correct with a new transaction', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_entry_no_update_delete
    BEFORE UPDATE OR DELETE ON billing_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_entry_immutable();

CREATE FUNCTION billing_entry_post() RETURNS trigger LANGUAGE plpgsql AS $$
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
    FROM (SELECT account_id, sum(amount_nanousd) AS delta FROM new_entries GROUP BY account_id) d
    WHERE a.id = d.account_id;
    PERFORM set_config('billing.posting', 'off', true);
    RETURN NULL;
END $$;

CREATE TRIGGER billing_entry_post
    AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION billing_entry_post();

CREATE FUNCTION billing_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- The WHEN clause skips the PL/pgSQL call for the posting trigger's own updates (thousands per
-- cost batch); every other write still goes through the guard.
CREATE TRIGGER billing_balance_guard
    BEFORE INSERT OR UPDATE ON billing_ledgeraccount
    FOR EACH ROW
    WHEN (coalesce(current_setting('billing.posting', true), 'off') <> 'on')
    EXECUTE FUNCTION billing_balance_guard();
"""

REVERSE_SQL = """
DROP TRIGGER billing_balance_guard ON billing_ledgeraccount;
DROP FUNCTION billing_balance_guard();
DROP TRIGGER billing_entry_post ON billing_ledgerentry;
DROP FUNCTION billing_entry_post();
DROP TRIGGER billing_entry_no_update_delete ON billing_ledgerentry;
DROP FUNCTION billing_entry_immutable();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
