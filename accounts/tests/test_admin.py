"""The Django admin for accounts, driven through the test client as a superuser."""

import hashlib
import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import AccessToken

from .factories import MembershipFactory, OrganizationFactory, UserFactory, bearer

SECRET_RE = re.compile(r"hf_[A-Za-z0-9]{34}")


@pytest.mark.parametrize(
    ("url_name", "shown"),
    [
        ("admin:accounts_user_changelist", "listed-user"),
        ("admin:accounts_organization_changelist", "listed-org"),
        ("admin:accounts_membership_changelist", "listed-org"),
        ("admin:accounts_accesstoken_changelist", "listed token"),
    ],
)
def test_changelist_pages_render_with_their_objects(staff_client, url_name, shown):
    member = UserFactory(username="listed-user")
    MembershipFactory(user=member, organization=OrganizationFactory(name="listed-org"))
    services.access_token_create(user=member, name="listed token", role="write")

    response = staff_client.get(reverse(url_name))

    assert response.status_code == 200
    assert shown in response.content.decode()


def test_changelist_pages_need_a_staff_login(db):
    response = Client().get(reverse("admin:accounts_accesstoken_changelist"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_adding_a_token_in_the_admin_creates_one_and_shows_its_secret_once(staff_client):
    owner = UserFactory(username="tokenowner")

    response = staff_client.post(
        reverse("admin:accounts_accesstoken_add"),
        {"user": owner.pk, "name": "from the admin", "role": "write"},
    )

    assert response.status_code == 200
    token = AccessToken.objects.get()
    assert token.user == owner
    assert token.name == "from the admin"
    assert token.role == "write"
    assert token.revoked_at is None
    # Shown on the page answering the POST, not in a message (test_admin_token_secret.py).
    found = SECRET_RE.findall(response.content.decode())
    assert len(found) == 1
    secret = found[0]
    assert hashlib.sha256(secret.encode()).hexdigest() == token.token_hash
    assert APIClient().get("/api/whoami-v2", **bearer(secret)).status_code == 200

    change = staff_client.get(reverse("admin:accounts_accesstoken_change", args=[token.pk]))

    assert change.status_code == 200
    page = change.content.decode()
    assert token.token_hash in page  # it is this token's page
    assert secret not in page
    assert secret.removeprefix("hf_") not in page


def test_adding_a_token_with_permissions_that_are_not_fine_grained_is_refused(staff_client):
    owner = UserFactory(username="tokenowner")

    response = staff_client.post(
        reverse("admin:accounts_accesstoken_add"),
        {
            "user": owner.pk,
            "name": "bad",
            "role": "write",
            "permissions": ["inference.serverless.write"],
        },
    )

    assert response.status_code == 200  # the form again, with its error
    assert AccessToken.objects.count() == 0
    assert not SECRET_RE.search(response.content.decode())


def test_revoke_action_revokes_the_selected_token_which_then_gets_401(staff_client):
    owner = UserFactory(username="tokenowner")
    token, secret = services.access_token_create(user=owner, name="doomed", role="write")
    _, other_secret = services.access_token_create(user=owner, name="kept", role="write")
    api = APIClient()
    assert api.get("/api/whoami-v2", **bearer(secret)).status_code == 200

    response = staff_client.post(
        reverse("admin:accounts_accesstoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )

    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AccessToken.objects.get(name="kept").revoked_at is None
    assert api.get("/api/whoami-v2", **bearer(secret)).status_code == 401
    assert api.get("/api/whoami-v2", **bearer(other_secret)).status_code == 200


def test_revoking_a_revoked_token_again_keeps_its_revocation_time(staff_client):
    owner = UserFactory(username="tokenowner")
    token, _ = services.access_token_create(user=owner, name="doomed", role="write")
    revoked_at = services.access_token_revoke(token=token).revoked_at

    staff_client.post(
        reverse("admin:accounts_accesstoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )

    token.refresh_from_db()
    assert token.revoked_at == revoked_at


def test_organization_changelist_shows_the_spending_limit_in_dollars(staff_client):
    OrganizationFactory(name="limited", spending_limit_nanousd=50_000_000_000)
    OrganizationFactory(name="unlimited", spending_limit_nanousd=None)

    response = staff_client.get(reverse("admin:accounts_organization_changelist"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "$50.00" in page
    assert "50000000000" not in page


def test_organization_change_page_renders(staff_client):
    org = OrganizationFactory(name="limited", spending_limit_nanousd=50_000_000_000)
    MembershipFactory(organization=org, user=UserFactory(username="in-limited"))

    response = staff_client.get(reverse("admin:accounts_organization_change", args=[org.pk]))

    assert response.status_code == 200
    assert "in-limited" in response.content.decode()
