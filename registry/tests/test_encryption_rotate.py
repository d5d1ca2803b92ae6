"""`manage.py encryption_rotate`: re-encrypts every secret at rest under the first key of
FIELD_ENCRYPTION_KEY, so the old key can then be dropped."""

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings

from accounts.services import Actor
from accounts.tests.factories import UserFactory
from registry.models import Provider, ProviderKey
from registry.services import user_provider_settings_update
from registry.tests.factories import ProviderFactory
from testsupport.processes import REPO_ROOT, run_command, subprocess_env

pytestmark = pytest.mark.django_db

USER_KEY = "sk-user-own-key-rotation-7777"
PLATFORM_KEY = "sk-platform-key-rotation-8888"

# With DEBUG off the first key must be strong (32+ characters); older ones may be weak.
NEW_KEY = "new-key-" + "0123456789abcdef" * 2


def stored(table: str, column: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} ORDER BY id")  # noqa: S608
        return [row[0] for row in cursor.fetchall()]


def rotate(*args: str) -> str:
    out, err = run_command("encryption_rotate", *args)
    return out + err


@pytest.fixture
def secrets_under_old_key(settings):
    settings.FIELD_ENCRYPTION_KEY = "old-key"
    provider = ProviderFactory(slug="together", api_key=PLATFORM_KEY)
    user = UserFactory(username="rotating")
    user_provider_settings_update(user=user, actor=Actor(user=user), keys={"together": USER_KEY})
    return provider, user


def test_a_custom_key_is_not_stored_in_clear(secrets_under_old_key):
    (raw,) = stored("registry_providerkey", "key")

    assert raw.startswith("fernet:")
    assert USER_KEY not in raw
    assert USER_KEY[-8:] not in raw


def test_rotation_reencrypts_everything_under_the_new_key(secrets_under_old_key):
    before_user = stored("registry_providerkey", "key")
    before_platform = stored("registry_provider", "api_key")

    with override_settings(FIELD_ENCRYPTION_KEY=f"{NEW_KEY},old-key"):
        check = rotate("--check")
        output = rotate()
        again = rotate()

    assert "2 value(s) to rotate" in check
    assert "registry.ProviderKey.key: 0 under the first key, 1 under an older key" in check
    assert "OK: 2 value(s) re-encrypted" in output
    assert "OK: 0 value(s) re-encrypted" in again
    assert stored("registry_providerkey", "key") != before_user
    assert stored("registry_provider", "api_key") != before_platform
    with override_settings(FIELD_ENCRYPTION_KEY=NEW_KEY):  # the old key dropped
        assert ProviderKey.objects.get().key == USER_KEY
        assert Provider.objects.get().api_key == PLATFORM_KEY


def test_without_rotation_dropping_the_old_key_makes_keys_unreadable(secrets_under_old_key):
    with (
        override_settings(FIELD_ENCRYPTION_KEY=NEW_KEY),
        pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEY"),
    ):
        ProviderKey.objects.get()


def test_rotation_changes_nothing_when_a_value_is_unreadable(secrets_under_old_key):
    before = stored("registry_providerkey", "key") + stored("registry_provider", "api_key")

    with (
        override_settings(FIELD_ENCRYPTION_KEY=f"{NEW_KEY},wrong-old-key"),
        pytest.raises(SystemExit) as exit_info,
    ):
        rotate()

    assert exit_info.value.code == 1
    assert stored("registry_providerkey", "key") + stored("registry_provider", "api_key") == before
    assert ProviderKey.objects.get().key == USER_KEY  # still readable with the real old key


@pytest.mark.django_db(transaction=True)
def test_rotation_runs_as_a_real_manage_py_process(secrets_under_old_key):
    """What docs/operations.md tells an operator to run."""
    done = subprocess.run(
        [sys.executable, "manage.py", "encryption_rotate"],
        cwd=REPO_ROOT,
        env=subprocess_env(FIELD_ENCRYPTION_KEY=f"{NEW_KEY},old-key"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "OK: 2 value(s) re-encrypted" in done.stdout
    with override_settings(FIELD_ENCRYPTION_KEY=NEW_KEY):
        assert ProviderKey.objects.get().key == USER_KEY
