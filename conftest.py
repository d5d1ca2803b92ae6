"""Shared pytest fixtures. Tests run against the real PostgreSQL and Redis that
`make test` starts (DATABASE_URL / REDIS_URL)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.tests.factories import UserFactory, token_for
from testsupport import db as test_db
from testsupport.simulator import running_simulator

ADMIN_PASSWORD = "admin-test-password-1"


# --- the database: created and migrated as the owner, every test as the application -----------
@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """pytest-django creates and migrates the test database as the tables' owner."""
    test_db.default_as_owner()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """Then every test connects as the application role (production privileges), and the
    flush between transactional tests runs as the owner (testsupport/db.py)."""
    test_db.default_as_application()
    with test_db.flush_as_owner():
        yield
    test_db.default_as_owner()  # pytest-django drops the test database as its owner


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
