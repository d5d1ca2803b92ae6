"""Spending limits with a stated bound (issue 11): costs held for review count against a payer's
limit, so the limits check reads them by payer (a partial index, like the pending one)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0008_polling")]

    operations = [
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(("state", "held")),
                fields=["payer"],
                name="billing_usage_payer_held",
            ),
        ),
    ]
