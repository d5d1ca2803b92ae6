"""Shared pytest fixtures. Tests run against the real PostgreSQL and Redis that
`make test` starts (DATABASE_URL / REDIS_URL)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.tests.factories import UserFactory, token_for
from testsupport.simulator import running_simulator

ADMIN_PASSWORD = "admin-test-password-1"


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory(username="julien", plan="pro", fullname="Julien")


@pytest.fixture
def write_token(user) -> str:
    return token_for(user, "write")


@pytest.fixture
def read_token(user) -> str:
    return token_for(user, "read")


@pytest.fixture
def staff_client(db) -> Client:
    """A browser session logged into the Django admin as a superuser."""
    services.user_create(name="root", is_staff=True, password=ADMIN_PASSWORD)
    client = Client()
    assert client.login(username="root", password=ADMIN_PASSWORD)
    return client


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory):
    """Base URL of a real provider simulator process, shared by the whole session."""
    with running_simulator(tmp_path_factory.mktemp("simulator") / "uvicorn.log") as url:
        yield url
