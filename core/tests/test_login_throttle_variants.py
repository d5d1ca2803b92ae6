"""Admin login throttling counts every spelling of one account together (found by review,
issue 12): Django's login form strips whitespace and NFKC-normalizes the username before
authenticating, so " root", "root " and fullwidth "root" log into the same account; keyed on
the raw POSTed value, each had its own counter and the per-username lock never engaged."""

import uuid

import pytest
from django.test import Client, override_settings

from accounts import services as accounts_services

PASSWORD = "a-long-admin-password-1"


def login(client: Client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


@pytest.fixture
def staff(db) -> str:
    name = f"staff{uuid.uuid4().hex[:8]}"
    accounts_services.user_create(name=name, is_staff=True, password=PASSWORD)
    return name


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@override_settings(ADMIN_LOGIN_FAILURES_PER_USERNAME=3, ADMIN_LOGIN_FAILURES_PER_ADDRESS=1000)
def test_username_variants_that_log_into_the_same_account_share_one_counter(staff):
    # Each variant authenticates as `staff` (the form strips and NFKC-normalizes it).
    variants = [f" {staff}", f"{staff} ", fullwidth(staff)]
    # Same account: the right password under a variant logs in.
    assert login(Client(REMOTE_ADDR="10.9.100.1"), variants[2], PASSWORD).status_code == 302
    for n, variant in enumerate(variants):
        assert login(Client(REMOTE_ADDR=f"10.9.{n}.1"), variant, "wrong").status_code == 200
    # Three failed guesses on this account: it is locked, whatever the spelling.
    locked = login(Client(REMOTE_ADDR="10.9.200.1"), staff, PASSWORD)
    assert locked.status_code == 429, locked.status_code
