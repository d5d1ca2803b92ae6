"""Shared pytest fixtures. Tests run against the real PostgreSQL and Redis that
`make test` starts (DATABASE_URL / REDIS_URL)."""

import pytest
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory, token_for


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
