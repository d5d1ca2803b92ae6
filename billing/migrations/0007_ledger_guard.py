"""Placeholder for the ledger guard (database roles, SECURITY DEFINER posting, refusals) (filled in by the work on issue 11)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_trust_fields")]

    operations = []
