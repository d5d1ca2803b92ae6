"""No schema change. Reserved for the poller's part of issue 11, which needed none (its fields,
`first_asked_at` and `recorded_at`, came with 0006); kept so 0009 keeps its parent."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_ledger_guard")]

    operations = []
