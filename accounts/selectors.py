from django.db.models import QuerySet

from accounts.models import AccessToken, Membership, Organization, User
from accounts.tokens import token_hash


def access_token_get_by_secret(*, secret: str) -> AccessToken | None:
    return AccessToken.objects.select_related("user").filter(token_hash=token_hash(secret)).first()


def access_token_list(*, user: User) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(user=user).order_by("-created_at")


def user_get(*, name: str) -> User | None:
    return User.objects.filter(username__iexact=name).first()


def organization_get(*, name: str) -> Organization | None:
    return Organization.objects.filter(name__iexact=name).first()


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name")
    )


def membership_get(*, user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def membership_list_for_organization(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("user__username")
    )


def name_taken(*, name: str) -> bool:
    """Users and organizations share one namespace (model ids are `namespace/name`)."""
    return (
        User.objects.filter(username__iexact=name).exists()
        or Organization.objects.filter(name__iexact=name).exists()
    )
