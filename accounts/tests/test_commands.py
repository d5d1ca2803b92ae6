"""Operator commands: user_create, org_create and token_create."""

import hashlib
import re

import pytest
from django.core.management.base import CommandError
from django.db import connection
from rest_framework.test import APIClient

from accounts import services
from accounts.models import AccessToken, Membership, Organization, User
from core.errors import DomainError
from testsupport.processes import manage_process as manage
from testsupport.processes import run_command as run

from .factories import MembershipFactory, OrganizationFactory, UserFactory, bearer

TOKEN_RE = re.compile(r"^hf_[A-Za-z0-9]{34}$")


def counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "organizations": Organization.objects.count(),
        "memberships": Membership.objects.count(),
        "tokens": AccessToken.objects.count(),
    }


# --- user_create -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_user_create_creates_a_user_and_prints_its_name():
    out, err = run("user_create", "bob", "--plan", "pro", "--email", "bob@example.com")

    user = User.objects.get(username="bob")
    assert user.plan == "pro"
    assert user.email == "bob@example.com"
    assert not user.is_staff
    assert not user.is_superuser
    assert not user.has_usable_password()
    assert out == "bob\n"
    assert "bob" in err


@pytest.mark.django_db
def test_user_create_with_staff_sets_a_working_admin_password():
    run("user_create", "opsadmin", "--staff", "--password", "s3cret-admin-pass")

    user = User.objects.get(username="opsadmin")
    assert user.is_staff
    assert user.is_superuser
    assert user.check_password("s3cret-admin-pass")
    assert not user.check_password("wrong-password")


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), [("bob", "bob"), ("Bob", "bob"), ("bob", "BOB")])
def test_user_create_twice_with_the_same_name_fails_and_keeps_one_user(first, second):
    run("user_create", first)

    with pytest.raises(CommandError, match="already taken"):
        run("user_create", second, "--plan", "pro")

    assert User.objects.filter(username__iexact="bob").count() == 1
    assert User.objects.count() == 1
    assert User.objects.get().username == first
    assert User.objects.get().plan == "free"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    ["café", "-bob", "bob-", ".bob", "bo b", "bob/x", "a" * 97, "é" * 3],
    ids=["non-ascii", "leading-dash", "trailing-dash", "leading-dot", "space", "slash",
         "97-chars", "only-non-ascii"],
)  # fmt: skip
def test_user_create_with_an_invalid_name_fails_and_creates_nothing(name):
    # "--" so that a name starting with "-" reaches the command, not argparse's option parser.
    with pytest.raises(CommandError, match="Invalid name"):
        run("user_create", "--", name)

    assert User.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["bob\n", "bob\r\n", "bob\t", "\nbob"])
def test_user_create_refuses_a_name_with_a_line_break_or_tab(name):
    # A regex `$` also matches before a final "\n": "bob\n" must not pass as a valid name.
    with pytest.raises(CommandError, match="Invalid name"):
        run("user_create", name)

    assert User.objects.count() == 0


@pytest.mark.django_db
def test_org_create_refuses_a_name_with_a_trailing_newline():
    with pytest.raises(CommandError, match="Invalid name"):
        run("org_create", "acme\n")

    assert Organization.objects.count() == 0


@pytest.mark.django_db
def test_user_create_accepts_a_name_of_exactly_96_characters():
    name = "a" * 96
    run("user_create", name)

    assert User.objects.filter(username=name).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["acme", "ACME", "Acme"])
def test_user_create_fails_when_an_organization_has_the_name(name):
    OrganizationFactory(name="acme")

    with pytest.raises(CommandError, match="already taken"):
        run("user_create", name)

    assert User.objects.count() == 0


@pytest.mark.django_db
def test_user_create_with_an_unknown_plan_fails():
    with pytest.raises(CommandError):
        run("user_create", "bob", "--plan", "platinum")

    assert User.objects.count() == 0


# --- org_create ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_org_create_creates_the_organization_with_members_in_their_roles():
    UserFactory(username="alice")
    UserFactory(username="bob")
    UserFactory(username="carol")

    out, _ = run(
        "org_create",
        "acme",
        "--plan",
        "team",
        "--seats",
        "3",
        "--member",
        "alice:admin",
        "--member",
        "Bob:write",  # user names are matched case-insensitively
        "--member",
        "carol:read",
        "--spending-limit-usd",
        "12.50",
    )

    org = Organization.objects.get(name="acme")
    assert org.plan == "team"
    assert org.seats == 3
    assert org.spending_limit_nanousd == 12_500_000_000
    roles = {m.user.username: m.role for m in Membership.objects.filter(organization=org)}
    assert roles == {"alice": "admin", "bob": "write", "carol": "read"}
    assert out == "acme\n"


@pytest.mark.django_db
def test_org_create_without_options_makes_a_free_one_seat_org_without_limit_or_members():
    run("org_create", "solo")

    org = Organization.objects.get(name="solo")
    assert org.plan == "free"
    assert org.seats == 1
    assert org.spending_limit_nanousd is None
    assert org.memberships.count() == 0


@pytest.fixture
def existing(db):
    """Two users and an organization with a member, so 'nothing changed' is measurable."""
    alice = UserFactory(username="alice")
    UserFactory(username="bob")
    MembershipFactory(user=alice, organization=OrganizationFactory(name="taken"), role="admin")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        pytest.param(["taken", "--member", "bob:read"], "already taken", id="duplicate-name"),
        pytest.param(["TAKEN"], "already taken", id="duplicate-name-other-case"),
        pytest.param(["alice", "--member", "bob:read"], "already taken", id="name-of-a-user"),
        pytest.param(["ørg", "--member", "bob:read"], "Invalid name", id="non-ascii-name"),
        pytest.param(["--member", "bob:read", "--", "-org"], "Invalid name", id="leading-dash"),
        pytest.param(["x" * 97], "Invalid name", id="name-too-long"),
        pytest.param(["new-org", "--member", "ghost:read"], "no user named 'ghost'", id="unknown"),
        pytest.param(["new-org", "--member", "bob"], "USER:ROLE", id="member-without-role"),
        pytest.param(["new-org", "--member", "bob:owner"], "USER:ROLE", id="member-bad-role"),
        pytest.param(["new-org", "--member", ":read"], "no user named ''", id="member-no-user"),
        pytest.param(["new-org", "--seats", "0", "--member", "bob:read"], "seats", id="0-seats"),
        pytest.param(["new-org", "--seats", "-2"], "seats", id="negative-seats"),
        pytest.param(["new-org", "--seats", "two"], "seats", id="seats-not-a-number"),
        pytest.param(["new-org", "--spending-limit-usd", "abc"], "not a decimal", id="limit-abc"),
        pytest.param(["new-org", "--spending-limit-usd=-1"], "negative", id="negative-limit"),
        pytest.param(
            ["new-org", "--spending-limit-usd", "0.0000000001"], "nano-USD", id="sub-nano-limit"
        ),
        pytest.param(["new-org", "--spending-limit-usd", "NaN"], "not a finite", id="nan-limit"),
        pytest.param(["new-org", "--plan", "gold"], "plan", id="unknown-plan"),
        pytest.param(
            [
                "new-org",
                "--member",
                "alice:admin",
                "--member",
                "ghost:write",
                "--member",
                "bob:read",
            ],
            "ghost",
            id="unknown-member-in-the-middle",
        ),
        pytest.param(
            ["new-org", "--member", "alice:admin", "--member", "bob:boss", "--member", "bob:read"],
            "bob:boss",
            id="bad-role-in-the-middle",
        ),
    ],
)
def test_org_create_failure_raises_command_error_and_changes_nothing(existing, args, reason):
    before = counts()
    taken_before = list(
        Membership.objects.filter(organization__name="taken").values_list("user__username", "role")
    )

    with pytest.raises(CommandError, match=re.escape(reason)):
        run("org_create", *args)

    assert counts() == before
    assert not Organization.objects.exclude(name="taken").exists()
    assert (
        list(
            Membership.objects.filter(organization__name="taken").values_list(
                "user__username", "role"
            )
        )
        == taken_before
    )


@pytest.mark.django_db
def test_organization_create_service_rejects_a_negative_spending_limit():
    with pytest.raises(DomainError, match="must not be negative"):
        services.organization_create(name="neg", spending_limit_nanousd=-1)

    assert not Organization.objects.filter(name="neg").exists()


@pytest.mark.django_db
def test_organization_create_service_accepts_a_zero_spending_limit():
    org = services.organization_create(name="zero", spending_limit_nanousd=0)

    assert Organization.objects.get(pk=org.pk).spending_limit_nanousd == 0


# --- token_create ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_token_create_prints_only_the_token_and_a_newline_on_stdout():
    owner = UserFactory(username="bob")

    out, err = run("token_create", "bob", "--role", "write", "--name", "laptop")

    assert re.fullmatch(r"hf_[A-Za-z0-9]{34}\n", out)
    secret = out[:-1]
    assert TOKEN_RE.match(secret)
    assert secret not in err
    token = AccessToken.objects.get(user=owner)
    assert token.name == "laptop"
    assert token.role == "write"
    assert token.permissions == []
    assert token.revoked_at is None


@pytest.mark.django_db
def test_token_create_stores_only_the_sha256_of_the_token():
    UserFactory(username="bob")

    out, _ = run("token_create", "bob")
    secret = out.strip()

    token = AccessToken.objects.get()
    assert token.role == "read"
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(token.token_prefix)
    assert len(token.token_prefix) < len(secret)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_accesstoken")
        rows = cursor.fetchall()
    assert len(rows) == 1
    values = [str(value) for value in rows[0]]
    assert token.token_hash in values  # the raw read does see the row's columns
    for value in values:
        assert secret not in value


@pytest.mark.django_db
def test_token_create_makes_a_different_token_each_time():
    UserFactory(username="bob")

    first = run("token_create", "bob")[0]
    second = run("token_create", "bob")[0]

    assert first != second
    assert AccessToken.objects.count() == 2


@pytest.mark.django_db
def test_token_create_printed_token_authenticates_its_user():
    UserFactory(username="bob")
    secret = run("token_create", "bob", "--role", "write")[0].strip()

    response = APIClient().get("/api/whoami-v2", **bearer(secret))

    assert response.status_code == 200
    assert response.json()["name"] == "bob"
    assert response.json()["auth"]["accessToken"]["role"] == "write"


@pytest.mark.django_db
def test_token_create_for_an_unknown_user_fails_and_creates_nothing():
    UserFactory(username="bob")

    with pytest.raises(CommandError, match="ghost"):
        run("token_create", "ghost", "--role", "write")

    assert AccessToken.objects.count() == 0


@pytest.mark.django_db
def test_token_create_fine_grained_with_a_permission():
    owner = UserFactory(username="bob")

    out, _ = run(
        "token_create",
        "bob",
        "--role",
        "fine-grained",
        "--permission",
        "inference.serverless.write",
        "--name",
        "router",
    )

    assert TOKEN_RE.match(out.strip())
    token = AccessToken.objects.get(user=owner)
    assert token.role == "fine-grained"
    assert token.permissions == ["inference.serverless.write"]
    assert token.token_hash == hashlib.sha256(out.strip().encode()).hexdigest()


@pytest.mark.django_db
def test_token_create_with_a_permission_on_a_write_token_fails_and_creates_nothing():
    UserFactory(username="bob")

    with pytest.raises(CommandError, match="fine-grained"):
        run("token_create", "bob", "--role", "write", "--permission", "inference.serverless.write")

    assert AccessToken.objects.count() == 0


@pytest.mark.django_db
def test_token_create_with_an_unknown_permission_fails_and_creates_nothing():
    UserFactory(username="bob")

    with pytest.raises(CommandError):
        run("token_create", "bob", "--role", "fine-grained", "--permission", "everything")

    assert AccessToken.objects.count() == 0


# --- the commands as real processes ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_user_create_process_exits_non_zero_with_the_reason_on_stderr_for_a_taken_name():
    first = manage("user_create", "carol")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "carol\n"

    second = manage("user_create", "Carol")

    assert second.returncode != 0
    assert "already taken" in second.stderr
    assert "Carol" in second.stderr
    assert "Traceback" not in second.stderr
    assert second.stdout == ""
    assert User.objects.filter(username__iexact="carol").count() == 1


@pytest.mark.django_db(transaction=True)
def test_org_create_process_exits_non_zero_with_the_reason_on_stderr_for_an_unknown_member():
    assert manage("user_create", "dave").returncode == 0

    result = manage("org_create", "dave-org", "--member", "dave:admin", "--member", "ghost:read")

    assert result.returncode != 0
    assert "ghost" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert Organization.objects.count() == 0
    assert Membership.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_token_create_process_prints_the_token_and_fails_non_zero_for_an_unknown_user():
    assert manage("user_create", "erin").returncode == 0
    ok = manage("token_create", "erin", "--role", "write")
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(r"hf_[A-Za-z0-9]{34}\n", ok.stdout)

    result = manage("token_create", "ghost")

    assert result.returncode != 0
    assert "ghost" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert AccessToken.objects.count() == 1
