"""`ProviderKey` (users' custom provider keys, BYOK), moved here from `accounts`.

State only for the model: `accounts` 0003 renamed its table to `registry_providerkey`, rows
included. Here the database only gets the names that still say `accounts`: the unique
constraint, the id sequence, and the content type (so admin history and permissions follow).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import core.fields

RENAMES = [
    (
        "ALTER TABLE registry_providerkey RENAME CONSTRAINT "
        "accounts_providerkey_user_provider_unique TO registry_providerkey_user_provider_unique",
        "ALTER TABLE registry_providerkey RENAME CONSTRAINT "
        "registry_providerkey_user_provider_unique TO accounts_providerkey_user_provider_unique",
    ),
    (
        "ALTER SEQUENCE IF EXISTS accounts_providerkey_id_seq "
        "RENAME TO registry_providerkey_id_seq",
        "ALTER SEQUENCE IF EXISTS registry_providerkey_id_seq "
        "RENAME TO accounts_providerkey_id_seq",
    ),
]


def _move_content_type(apps, schema_editor, old: str, new: str) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not content_type.objects.using(db).filter(app_label=new, model="providerkey").exists():
        content_type.objects.using(db).filter(app_label=old, model="providerkey").update(
            app_label=new
        )


def content_type_forwards(apps, schema_editor):
    _move_content_type(apps, schema_editor, "accounts", "registry")


def content_type_backwards(apps, schema_editor):
    _move_content_type(apps, schema_editor, "registry", "accounts")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_providerkey_to_registry"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("registry", "0002_router_facts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(forwards, backwards) for forwards, backwards in RENAMES
            ],
            state_operations=[
                migrations.CreateModel(
                    name="ProviderKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("key", core.fields.EncryptedTextField()),
                        ("last4", models.CharField(editable=False, max_length=4)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "provider",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="user_keys",
                                to="registry.provider",
                            ),
                        ),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="provider_keys",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["user__username", "provider__slug"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("user", "provider"),
                                name="registry_providerkey_user_provider_unique",
                            )
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_type_forwards, content_type_backwards),
    ]
