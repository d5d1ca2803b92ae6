from django.core.management.base import CommandError

from accounts import selectors, services
from accounts.models import TokenRole
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from core.management.base import ServiceCommand


class Command(ServiceCommand):
    help = "Create an access token for a user and print only the token on stdout."

    def add_arguments(self, parser):
        parser.add_argument("user")
        parser.add_argument("--role", choices=TokenRole.values, default=TokenRole.READ)
        parser.add_argument("--name", default="cli")
        parser.add_argument(
            "--permission",
            action="append",
            default=[],
            choices=sorted(FINE_GRAINED_PERMISSIONS),
            help="repeatable; with --role fine-grained",
        )

    def handle(self, *args, user, role, name, permission, **options):
        owner = selectors.user_get(name=user)
        if owner is None:
            raise CommandError(f"no user named {user!r}")
        token, secret = services.access_token_create(
            user=owner, name=name, role=role, permissions=permission
        )
        self.say(
            f"Created {token.role} token {token.name!r} for {owner.username}; it is shown only now."
        )
        self.stdout.write(secret)
