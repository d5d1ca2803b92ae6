"""The demo_load command: users, organizations, tokens, idempotence, its process exit code."""

import json
import re

import pytest
from rest_framework.test import APIClient

from accounts.models import AccessToken, Membership, Organization, User
from accounts.tests.factories import UserFactory
from demo.management.commands.demo_load import DEFAULT_FILE
from testsupport.processes import manage_process as manage
from testsupport.processes import run_command as run

TOKEN_RE = re.compile(r"^hf_[A-Za-z0-9]{34}$")


def counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "organizations": Organization.objects.count(),
        "memberships": Membership.objects.count(),
        "tokens": AccessToken.objects.count(),
    }


@pytest.mark.django_db(transaction=True)
def test_demo_load_process_exits_non_zero_for_a_missing_file(tmp_path):
    missing = tmp_path / "no-such-demo.json"

    result = manage("demo_load", "--file", str(missing))

    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert result.stdout == ""
    assert User.objects.count() == 0


# --- demo_load -------------------------------------------------------------------------------


def demo_spec() -> dict:
    return json.loads(DEFAULT_FILE.read_text())


def demo_provider_orgs(spec: dict) -> set[str]:
    """Names (lowercased) of the providers' organizations in the demo catalog, if any."""
    if "catalog" not in spec:
        return set()
    providers = json.loads((DEFAULT_FILE.parent / spec["catalog"]["providers"]).read_text())
    return {provider["org"].lower() for provider in providers}


@pytest.mark.django_db
def test_demo_load_twice_creates_the_demo_objects_once():
    spec = demo_spec()
    # The catalog's provider organizations are created without members unless the demo
    # organizations already include them (togethercomputer does).
    org_names = {org["name"].lower() for org in spec["organizations"]} | demo_provider_orgs(spec)

    run("demo_load")
    after_first = counts()
    run("demo_load")

    assert counts() == after_first
    assert after_first == {
        "users": 1 + len(spec["users"]),
        "organizations": len(org_names),
        "memberships": sum(len(org["members"]) for org in spec["organizations"]),
        "tokens": len(spec["tokens"]),
    }
    assert {name.lower() for name in Organization.objects.values_list("name", flat=True)} == (
        org_names
    )
    for org in spec["organizations"]:
        roles = dict(
            Membership.objects.filter(organization__name=org["name"]).values_list(
                "user__username", "role"
            )
        )
        assert roles == org["members"]


@pytest.mark.django_db
def test_demo_load_leaves_existing_objects_as_they_are():
    UserFactory(username="demo", plan="free", email="mine@example.com")

    run("demo_load")

    demo = User.objects.get(username="demo")
    assert demo.plan == "free"
    assert demo.email == "mine@example.com"


@pytest.mark.django_db
def test_demo_load_prints_a_working_admin_login_and_demo_token():
    out, _ = run("demo_load")
    second_out, _ = run("demo_load")

    login = re.search(r"Admin login\s+(\S+) / (\S+)", out)
    token = re.search(r"Demo token\s+(\S+)", out)
    assert login and token
    admin = User.objects.get(username=login[1])
    assert admin.is_staff
    assert admin.check_password(login[2])
    secret = token[1]
    assert TOKEN_RE.match(secret)
    assert second_out == out

    response = APIClient().get("/api/whoami-v2", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code == 200
    assert response.json()["name"] == "demo"
