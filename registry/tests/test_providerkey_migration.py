"""`ProviderKey` moved from accounts to registry (accounts 0003, registry 0003): the rows of
`accounts_providerkey` survive, readable (and decryptable) as `registry.ProviderKey`, and the
move reverses cleanly."""

import pytest
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor

from core.fields import encrypt

BEFORE = [("accounts", "0002_provider_settings"), ("registry", "0002_router_facts")]
AFTER = [("accounts", "0003_providerkey_to_registry"), ("registry", "0003_providerkey")]


def migrate(targets):
    executor = MigrationExecutor(connections["owner"])  # migrations run as the tables' owner
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def table_names() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def constraint_names(table: str) -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.get_constraints(cursor, table))


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_a_provider_key_written_before_the_move_is_read_after_it_and_back():
    try:
        old_apps = migrate(BEFORE)
        assert "accounts_providerkey" in table_names()
        user = old_apps.get_model("accounts", "User").objects.create(
            username="alice", hub_id="a" * 24
        )
        org = old_apps.get_model("accounts", "Organization").objects.create(
            name="groq-org", hub_id="b" * 24
        )
        provider = old_apps.get_model("registry", "Provider").objects.create(
            slug="groq", organization=org, base_url="https://api.groq.com"
        )
        with connection.cursor() as cursor:  # as the old code wrote it
            cursor.execute(
                "INSERT INTO accounts_providerkey (user_id, provider_id, key, last4, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, now(), now()) RETURNING id",
                [user.pk, provider.pk, encrypt("gsk-alice-key-123456"), "3456"],
            )
            (key_id,) = cursor.fetchone()

        new_apps = migrate(AFTER)

        assert "accounts_providerkey" not in table_names()
        key = new_apps.get_model("registry", "ProviderKey").objects.get()
        assert (key.pk, key.user_id, key.provider_id) == (key_id, user.pk, provider.pk)
        assert (key.key, key.last4) == ("gsk-alice-key-123456", "3456")
        assert "registry_providerkey_user_provider_unique" in constraint_names(
            "registry_providerkey"
        )
        # The id sequence goes on after the existing rows.
        second = new_apps.get_model("registry", "ProviderKey").objects.create(
            user_id=user.pk,
            provider_id=new_apps.get_model("registry", "Provider")
            .objects.create(slug="together", organization_id=org.pk, base_url="https://t.ai")
            .pk,
            key="tgp-alice-key-0001",
            last4="",
        )
        assert second.pk > key_id

        old_apps = migrate(BEFORE)

        assert "registry_providerkey" not in table_names()
        keys = old_apps.get_model("accounts", "ProviderKey").objects.order_by("pk")
        assert [k.key for k in keys] == ["gsk-alice-key-123456", "tgp-alice-key-0001"]
        assert "accounts_providerkey_user_provider_unique" in constraint_names(
            "accounts_providerkey"
        )
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
