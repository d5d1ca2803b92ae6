"""Rate limits kept in Redis (Django's cache): the partner write API per token (a 429 in the Hub
format with Retry-After) and failed logins on the admin per username and per address (a 429
page). Limits are set small per test; each test uses its own tokens, usernames and addresses,
as the counters live in the shared Redis."""

import logging
import uuid

import pytest
from django.core.cache import caches
from django.test import Client, override_settings
from rest_framework.test import APIClient

from accounts import services as accounts_services
from accounts.models import Role
from accounts.tests.factories import MembershipFactory, UserFactory, bearer, token_for
from registry.models import Mapping
from registry.tests.factories import HubModelFactory, ProviderFactory
from testsupport.net import free_port

PASSWORD = "a-long-admin-password-1"


def unique_address() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def test_the_cache_is_redis_shared_by_every_process():
    # Limits must hold across web processes: a per-process cache would multiply them.
    assert caches["default"].__class__.__name__ == "RedisCache"


# --- the partner write API ------------------------------------------------------------------
@pytest.fixture
def partner(db):
    provider = ProviderFactory(slug=f"thr-{uuid.uuid4().hex[:8]}")
    engineer = UserFactory(username=f"engineer-{provider.slug}")
    MembershipFactory(user=engineer, organization=provider.organization, role=Role.WRITE)
    return provider, engineer


def create_mapping(client: APIClient, provider, token: str, n: int):
    model_id = f"throttle/{provider.slug}-{n}"
    HubModelFactory(model_id=model_id)
    return client.post(
        f"/api/partners/{provider.slug}/models",
        {"task": "conversational", "hfModel": model_id, "providerModel": f"model-{n}"},
        format="json",
        **bearer(token),
    )


@override_settings(PARTNER_WRITE_RATE_LIMIT="2/min")
def test_partner_writes_beyond_the_tokens_rate_get_429_with_retry_after(partner, api_client):
    provider, engineer = partner
    token = token_for(engineer, "write")
    statuses = [create_mapping(api_client, provider, token, n).status_code for n in range(2)]
    assert statuses == [201, 201]
    refused = create_mapping(api_client, provider, token, 2)
    assert refused.status_code == 429
    assert refused.json()["error_type"] == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert Mapping.objects.filter(provider=provider).count() == 2  # the refused one did nothing
    # Per token: the same engineer's other token has its own budget; reads are not limited.
    assert create_mapping(api_client, provider, token_for(engineer, "write"), 3).status_code == 201
    for _ in range(3):
        assert api_client.get(f"/api/partners/{provider.slug}/models").status_code == 200


@override_settings(
    PARTNER_WRITE_RATE_LIMIT="1/min",
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    },
)
def test_without_redis_partner_writes_are_not_limited_and_a_warning_is_logged(
    partner, api_client, caplog
):
    provider, engineer = partner
    token = token_for(engineer, "write")
    with caplog.at_level(logging.WARNING):
        statuses = [create_mapping(api_client, provider, token, n).status_code for n in range(2)]
    assert statuses == [201, 201]
    assert "rate limit not applied" in caplog.text


# --- the admin login ------------------------------------------------------------------------
def login(client: Client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


@pytest.fixture
def staff(db) -> str:
    name = f"staff-{uuid.uuid4().hex[:8]}"
    accounts_services.user_create(name=name, is_staff=True, password=PASSWORD)
    return name


@override_settings(ADMIN_LOGIN_FAILURES_PER_USERNAME=3, ADMIN_LOGIN_FAILURES_PER_ADDRESS=100)
def test_failed_admin_logins_lock_the_username_even_with_the_right_password(staff):
    client = Client(REMOTE_ADDR=unique_address())
    for _ in range(3):
        assert login(client, staff, "wrong").status_code == 200  # the form again
    locked = login(client, staff, PASSWORD)
    assert locked.status_code == 429
    assert locked["Content-Type"].startswith("text/plain")
    assert 1 <= int(locked["Retry-After"]) <= 900
    # From another address too: it is the account that is protected.
    assert login(Client(REMOTE_ADDR=unique_address()), staff, PASSWORD).status_code == 429


@override_settings(ADMIN_LOGIN_FAILURES_PER_USERNAME=100, ADMIN_LOGIN_FAILURES_PER_ADDRESS=3)
def test_failed_admin_logins_from_one_address_lock_that_address(staff):
    address = unique_address()
    client = Client(REMOTE_ADDR=address)
    for n in range(3):
        assert login(client, f"guess-{n}-{staff}", "wrong").status_code == 200
    assert login(client, staff, PASSWORD).status_code == 429
    # Another address logs in.
    assert login(Client(REMOTE_ADDR=unique_address()), staff, PASSWORD).status_code == 302


@override_settings(ADMIN_LOGIN_FAILURES_PER_USERNAME=3, ADMIN_LOGIN_FAILURES_PER_ADDRESS=3)
def test_successful_admin_logins_are_not_counted(staff):
    client = Client(REMOTE_ADDR=unique_address())
    for _ in range(5):
        assert login(client, staff, PASSWORD).status_code == 302
        client.logout()


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@override_settings(ADMIN_LOGIN_FAILURES_PER_USERNAME=3, ADMIN_LOGIN_FAILURES_PER_ADDRESS=1000)
def test_username_variants_that_log_into_the_same_account_share_one_counter(staff):
    """Found by review: Django's login form strips and NFKC-normalizes the username before
    authenticating, so " root", "root " and fullwidth "root" log into one account; keyed on
    the raw POSTed value, each had its own counter and the per-username lock never engaged."""
    variants = [f" {staff}", f"{staff} ", fullwidth(staff)]
    # Same account: the right password under a variant logs in.
    assert login(Client(REMOTE_ADDR=unique_address()), variants[2], PASSWORD).status_code == 302
    for variant in variants:
        assert login(Client(REMOTE_ADDR=unique_address()), variant, "wrong").status_code == 200
    # Three failed guesses on this account: it is locked, whatever the spelling.
    locked = login(Client(REMOTE_ADDR=unique_address()), staff, PASSWORD)
    assert locked.status_code == 429, locked.status_code
