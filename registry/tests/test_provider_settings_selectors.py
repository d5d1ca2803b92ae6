"""The reads other apps call: the registry's Hub API (provider order) and the router
(disabled providers, a user's decrypted key)."""

import itertools

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import selectors
from accounts.services import Actor
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from registry.selectors import user_provider_key, user_provider_key_list, viewer_for
from registry.services import organization_provider_settings_update, user_provider_settings_update
from registry.tests.factories import ProviderFactory
from testsupport.processes import run_threads

pytestmark = pytest.mark.django_db


@pytest.fixture
def providers():
    return [ProviderFactory(slug=slug) for slug in ("together", "groq", "fal-ai")]


def test_the_provider_order_is_the_users_and_empty_for_anonymous(providers):
    user = UserFactory()
    user_provider_settings_update(user=user, actor=Actor(user=user), order=["groq", "together"])

    assert selectors.provider_order_for(user=user) == ("groq", "together")
    assert selectors.provider_order_for(user=UserFactory()) == ()
    assert selectors.provider_order_for(user=AnonymousUser()) == ()
    assert selectors.provider_order_for(user=None) == ()


def test_the_registry_viewer_carries_the_order_and_memberships(providers):
    user = UserFactory()
    membership = MembershipFactory(user=user)
    user_provider_settings_update(user=user, actor=Actor(user=user), order=["fal-ai"])

    viewer = viewer_for(user)

    assert viewer.provider_order == ("fal-ai",)
    assert viewer.organization_ids == frozenset({membership.organization_id})


def test_reading_the_order_of_an_authenticated_user_costs_no_query(providers):
    user = UserFactory(provider_order=["groq"])

    with CaptureQueriesContext(connection) as queries:
        order = selectors.provider_order_for(user=user)

    assert order == ("groq",)
    assert len(queries) == 0


def test_a_users_key_is_returned_decrypted_for_that_provider_only(providers):
    alice, bob = UserFactory(), UserFactory()
    user_provider_settings_update(
        user=alice, actor=Actor(user=alice), keys={"together": "tgp-alice-key-0001"}
    )

    assert user_provider_key(user=alice, provider_slug="together") == "tgp-alice-key-0001"
    assert user_provider_key(user=alice, provider_slug="groq") is None
    assert user_provider_key(user=bob, provider_slug="together") is None
    assert user_provider_key(user=alice, provider_slug="no-such-provider") is None


def test_replacing_a_key_keeps_one_row_and_returns_the_new_key(providers):
    user = UserFactory()
    actor = Actor(user=user)
    user_provider_settings_update(user=user, actor=actor, keys={"groq": "gsk-old-key-1111"})
    first = user_provider_key_list(user=user).get()

    user_provider_settings_update(user=user, actor=actor, keys={"groq": "gsk-new-key-2222"})

    (key,) = user_provider_key_list(user=user)
    assert key.pk == first.pk
    assert key.created_at == first.created_at
    assert (key.key, key.last4, key.masked) == ("gsk-new-key-2222", "2222", "…2222")
    assert user_provider_key(user=user, provider_slug="groq") == "gsk-new-key-2222"


def test_an_organizations_disabled_providers(providers):
    org = OrganizationFactory()
    assert selectors.organization_disabled_providers(organization=org) == frozenset()

    organization_provider_settings_update(
        organization=org, actor=Actor(user=None), disabled_providers=["groq", "fal-ai"]
    )

    org.refresh_from_db()
    assert selectors.organization_disabled_providers(organization=org) == {"groq", "fal-ai"}


def test_the_history_lists_a_subjects_changes_newest_first(providers):
    user = UserFactory(username="historian")
    actor = Actor(user=user)
    user_provider_settings_update(user=user, actor=actor, order=["groq"])
    user_provider_settings_update(user=user, actor=actor, order=["together"])
    other = UserFactory()
    user_provider_settings_update(user=other, actor=Actor(user=other), order=["groq"])

    history = [c.new_value for c in selectors.settings_change_list(user=user)]

    assert history == [["together"], ["groq"]]


@pytest.mark.django_db(transaction=True)
def test_concurrent_changes_of_one_key_are_serialized_and_each_is_audited(providers):
    user = UserFactory(username="racing")

    def set_key(i: int) -> None:
        user_provider_settings_update(
            user=user, actor=Actor(user=user), keys={"groq": f"gsk-racing-key-{i:04d}"}
        )

    errors = run_threads(8, set_key)

    assert errors == []
    (key,) = user_provider_key_list(user=user)
    history = list(selectors.settings_change_list(user=user).order_by("id"))
    assert len(history) == 8
    # Each change saw the previous one: the audit trail is one unbroken chain.
    assert history[0].old_value is None
    for before, after in itertools.pairwise(history):
        assert after.old_value == before.new_value
    assert history[-1].new_value == key.masked
