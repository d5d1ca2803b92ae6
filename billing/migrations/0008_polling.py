"""Placeholder for cost polling (filled in by the work on issue 11)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_ledger_guard")]

    operations = []
