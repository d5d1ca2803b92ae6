import factory
from django.contrib.auth.models import Permission
from django.test import Client

from accounts import services
from accounts.models import Membership, Organization, OrgPlan, Role, TokenRole, User, UserPlan


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    plan = UserPlan.FREE


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"org-{n}")
    plan = OrgPlan.TEAM
    seats = 2


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.WRITE


def token_for(user: User, role: str = TokenRole.WRITE, permissions=()) -> str:
    """A fresh token's secret for `user`."""
    _, secret = services.access_token_create(
        user=user, name=f"{role} test token", role=role, permissions=permissions
    )
    return secret


def bearer(secret: str) -> dict:
    """Request kwargs for DRF's APIClient: `client.get(url, **bearer(secret))`."""
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


STAFF_PASSWORD = "staff-test-password-1"


def staff_client(name: str, *codenames: str) -> Client:
    """A browser logged into the admin as a staff user (not a superuser) holding exactly the
    model permissions `codenames` (e.g. "view_mapping")."""
    user = UserFactory(username=name, is_staff=True, is_superuser=False)
    user.set_password(STAFF_PASSWORD)
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    assert client.login(username=name, password=STAFF_PASSWORD)
    return client
