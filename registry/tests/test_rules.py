"""The registry rules (`registry.rules`) that the Hub API and the router share."""

import pytest

from core.errors import DomainError, Kind
from registry import rules, selectors
from registry.models import Mapping, MappingHealth, MappingStatus, MappingType
from registry.tests.factories import MappingFactory, ProviderFactory


def test_live_mappings_are_visible_to_everyone_staging_only_to_the_providers_members():
    live = {"status": MappingStatus.LIVE, "provider_organization_id": 7}
    staging = {"status": MappingStatus.STAGING, "provider_organization_id": 7}
    assert rules.mapping_visible(**live, member_of=frozenset())
    assert not rules.mapping_visible(**staging, member_of=frozenset({8}))
    assert rules.mapping_visible(**staging, member_of=frozenset({7, 8}))


@pytest.mark.django_db
def test_the_sql_form_of_visibility_agrees_with_the_rule():
    """`selectors._visible` filters the model list in SQL; it must select exactly the mappings
    `rules.mapping_visible` accepts, for anonymous callers, members and non-members."""
    providers = [ProviderFactory(), ProviderFactory()]
    for provider in providers:
        for status in MappingStatus.values:
            MappingFactory(provider=provider, status=status)
    org_ids = [p.organization_id for p in providers]
    for member_of in (frozenset(), frozenset(org_ids[:1]), frozenset(org_ids)):
        viewer = selectors.Viewer(organization_ids=member_of)
        in_sql = set(
            Mapping.objects.filter(selectors._visible(viewer)).values_list("pk", flat=True)
        )
        by_rule = {
            m.pk
            for m in Mapping.objects.select_related("provider")
            if rules.mapping_visible(
                status=m.status,
                provider_organization_id=m.provider.organization_id,
                member_of=member_of,
            )
        }
        assert in_sql == by_rule
        assert len(by_rule) == 2 + len(member_of)  # two live, plus the staging ones of members


def test_one_mapping_per_provider_single_model_then_live_then_healthy_then_oldest():
    key = rules.mapping_preference
    assert key(MappingType.SINGLE_MODEL, MappingStatus.STAGING, MappingHealth.ERROR, 2) < key(
        MappingType.TAG_FILTER, MappingStatus.LIVE, MappingHealth.OK, 1
    )
    assert key(MappingType.SINGLE_MODEL, MappingStatus.LIVE, MappingHealth.ERROR, 2) < key(
        MappingType.SINGLE_MODEL, MappingStatus.STAGING, MappingHealth.OK, 1
    )
    assert key(MappingType.SINGLE_MODEL, MappingStatus.LIVE, MappingHealth.OK, 2) < key(
        MappingType.SINGLE_MODEL, MappingStatus.LIVE, MappingHealth.ERROR, 1
    )


def test_preferred_providers_come_first_in_their_order_then_alphabetical():
    rank = rules.provider_rank(["together", "groq"])
    assert sorted(["cerebras", "groq", "together", "nebius"], key=rank) == [
        "together", "groq", "cerebras", "nebius",
    ]  # fmt: skip


def test_a_disabled_provider_and_a_suspended_one_are_forbidden():
    rules.provider_enabled_check(slug="groq", disabled=frozenset({"together"}))
    with pytest.raises(DomainError) as disabled:
        rules.provider_enabled_check(slug="together", disabled=frozenset({"together"}))
    assert (disabled.value.code, disabled.value.kind) == ("provider_disabled", Kind.FORBIDDEN)
    with pytest.raises(DomainError) as suspended:
        rules.provider_active_check(slug="together", active=False)
    assert suspended.value.code == "provider_suspended"
