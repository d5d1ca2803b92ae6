"""Price history rows are never changed (PostgreSQL refuses UPDATE); they go only with their
mapping (DELETE, the cascade)."""

from django.db import migrations

SQL = """
CREATE FUNCTION registry_price_history_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'price history is append-only (UPDATE refused); a change is a new row'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER registry_price_history_no_update
    BEFORE UPDATE ON registry_mappingpricehistory
    FOR EACH ROW EXECUTE FUNCTION registry_price_history_immutable();
"""

REVERSE = """
DROP TRIGGER registry_price_history_no_update ON registry_mappingpricehistory;
DROP FUNCTION registry_price_history_immutable();
"""


class Migration(migrations.Migration):
    dependencies = [("registry", "0004_price_sync")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
