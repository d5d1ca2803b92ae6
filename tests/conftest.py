"""Fixtures of the end-to-end tests."""

import uuid

import pytest

from registry.tests.factories import ProviderFactory


@pytest.fixture
def provider(simulator_url):
    """A fresh provider of the shared simulator process (its own slug, so its own state)."""
    slug = f"sim-{uuid.uuid4().hex[:8]}"
    base = f"{simulator_url}/{slug}"
    return ProviderFactory(
        slug=slug, base_url=base, cost_url=f"{base}/costs", api_key=f"sim-{slug}-key"
    )
