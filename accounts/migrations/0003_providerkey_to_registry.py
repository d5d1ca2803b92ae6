"""`ProviderKey` moves to `registry` (it references providers; accounts imports no registry).

Rows stay where they are: this migration only renames the table, `accounts_providerkey` ->
`registry_providerkey`, and drops the model from accounts' state; `registry` 0003 adds it to
its own state over the same table (no data is copied or lost).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_provider_settings"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterModelTable(name="providerkey", table="registry_providerkey"),
            ],
            state_operations=[
                migrations.DeleteModel(name="ProviderKey"),
            ],
        ),
    ]
