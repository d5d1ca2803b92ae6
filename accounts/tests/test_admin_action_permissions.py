"""The admin's "Revoke selected tokens" checks the change permission (issue 12, finding 11): a
staff user with only the view permission neither sees it nor can POST it."""

import pytest
from django.contrib.admin import helpers
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import AccessToken
from accounts.tests.factories import UserFactory, bearer
from accounts.tests.factories import staff_client as staff

pytestmark = pytest.mark.django_db

TOKENS = reverse("admin:accounts_accesstoken_changelist")


def post_revoke(client: Client, tokens):
    return client.post(
        TOKENS,
        {"action": "revoke", helpers.ACTION_CHECKBOX_NAME: [t.pk for t in tokens], "index": 0},
    )


def test_a_view_only_staff_user_cannot_revoke_tokens():
    token, secret = services.access_token_create(user=UserFactory(), name="victim", role="write")
    client = staff("viewer", "view_accesstoken")

    page = client.get(TOKENS)
    response = post_revoke(client, [token])

    assert response.status_code in (200, 302, 403)
    assert AccessToken.objects.get(pk=token.pk).revoked_at is None
    assert APIClient().get("/api/whoami-v2", **bearer(secret)).status_code == 200
    assert page.status_code == 200 and "victim" in page.content.decode()
    assert 'value="revoke"' not in page.content.decode()


def test_a_staff_user_with_the_change_permission_revokes_tokens():
    token, _ = services.access_token_create(user=UserFactory(), name="victim", role="write")
    client = staff("security", "view_accesstoken", "change_accesstoken")

    assert 'value="revoke"' in client.get(TOKENS).content.decode()
    post_revoke(client, [token])

    assert AccessToken.objects.get(pk=token.pk).revoked_at is not None
