"""A token created in the admin shows its secret on the page answering the POST, never in the
messages cookie (issue 12, Low): Django's default message storage keeps messages in a signed
but unencrypted cookie, which proxies, browser storage and logs can read."""

import hashlib
import re

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages.storage.cookie import CookieStorage
from django.test import Client, RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import AccessToken
from accounts.tests.factories import UserFactory, bearer

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(r"hf_[A-Za-z0-9]{34}")
ADD = reverse("admin:accounts_accesstoken_add")


def cookie_messages(response) -> list[str]:
    """The messages Django's CookieStorage set on `response`, decoded (signature checked)."""
    morsel = response.cookies.get(CookieStorage.cookie_name)
    if morsel is None or not morsel.value:
        return []
    request = RequestFactory().get("/")
    request.COOKIES[CookieStorage.cookie_name] = morsel.value
    return [str(m) for m in CookieStorage(request)]


def test_the_secret_is_on_the_page_answering_the_post_and_in_no_cookie(staff_client):
    owner = UserFactory(username="tokenowner")

    response = staff_client.post(ADD, {"user": owner.pk, "name": "from the admin", "role": "write"})

    assert not SECRET_RE.search(" ".join(cookie_messages(response)))  # the messages cookie
    assert response.status_code == 200
    page = response.content.decode()
    found = SECRET_RE.findall(page)
    assert len(set(found)) == 1
    secret = found[0]
    token = AccessToken.objects.get()
    assert hashlib.sha256(secret.encode()).hexdigest() == token.token_hash
    assert "no-store" in response["Cache-Control"]
    for morsel in response.cookies.values():
        assert secret not in morsel.value
        assert secret.removeprefix("hf_") not in morsel.value
    assert not any(secret in m for m in cookie_messages(response))
    assert APIClient().get("/api/whoami-v2", **bearer(secret)).status_code == 200


def test_the_next_page_does_not_show_the_secret_again(staff_client):
    owner = UserFactory(username="tokenowner")
    response = staff_client.post(ADD, {"user": owner.pk, "name": "once", "role": "read"})
    secret = SECRET_RE.search(response.content.decode()).group(0)

    for url in (
        reverse("admin:accounts_accesstoken_changelist"),
        reverse("admin:accounts_accesstoken_change", args=[AccessToken.objects.get().pk]),
    ):
        follow = staff_client.get(url)
        assert follow.status_code == 200
        assert secret not in follow.content.decode()
        assert all(secret not in m.value for m in follow.cookies.values())


def test_the_page_links_to_the_token_and_the_list(staff_client):
    owner = UserFactory(username="tokenowner")

    response = staff_client.post(ADD, {"user": owner.pk, "name": "linked", "role": "read"})

    page = response.content.decode()
    token = AccessToken.objects.get()
    assert reverse("admin:accounts_accesstoken_change", args=[token.pk]) in page
    assert reverse("admin:accounts_accesstoken_changelist") in page


def test_a_view_only_staff_user_cannot_create_tokens():
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.set_password("staff-test-password-1")
    viewer.save()
    viewer.user_permissions.set(Permission.objects.filter(codename="view_accesstoken"))
    client = Client()
    assert client.login(username="viewer", password="staff-test-password-1")

    response = client.post(ADD, {"user": viewer.pk, "name": "nope", "role": "write"})

    assert response.status_code == 403
    assert not AccessToken.objects.exists()
