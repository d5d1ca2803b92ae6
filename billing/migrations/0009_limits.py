"""Placeholder for spending limits and reservations (filled in by the work on issue 11)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("billing", "0008_polling")]

    operations = []
