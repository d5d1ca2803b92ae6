"""Admin actions on mappings check the change permission (issue 12, finding 11): a staff user
with only the view permission neither sees "Set selected mappings live / to staging" nor can
POST them; one with the change permission can."""

import pytest
from django.contrib.admin import helpers
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import staff_client as staff
from registry.models import Mapping, MappingStatus
from registry.tests.factories import MappingFactory

pytestmark = pytest.mark.django_db

MAPPINGS = reverse("admin:registry_mapping_changelist")
ACTIONS = {"set_live": MappingStatus.STAGING, "set_staging": MappingStatus.LIVE}


def post_action(client: Client, action: str, objects):
    return client.post(
        MAPPINGS,
        {"action": action, helpers.ACTION_CHECKBOX_NAME: [o.pk for o in objects], "index": 0},
    )


@pytest.mark.parametrize("action", ACTIONS)
def test_a_view_only_staff_user_cannot_change_a_mappings_status(action):
    mapping = MappingFactory(status=ACTIONS[action])
    client = staff("viewer", "view_mapping")

    page = client.get(MAPPINGS)
    response = post_action(client, action, [mapping])

    assert response.status_code in (200, 302, 403)
    assert Mapping.objects.get(pk=mapping.pk).status == ACTIONS[action]
    assert page.status_code == 200 and mapping.public_id in page.content.decode()
    assert f'value="{action}"' not in page.content.decode()


@pytest.mark.parametrize("action", ACTIONS)
def test_a_staff_user_with_the_change_permission_changes_a_mappings_status(action):
    mapping = MappingFactory(status=ACTIONS[action])
    client = staff("editor", "view_mapping", "change_mapping")

    assert f'value="{action}"' in client.get(MAPPINGS).content.decode()
    post_action(client, action, [mapping])

    assert Mapping.objects.get(pk=mapping.pk).status != ACTIONS[action]
