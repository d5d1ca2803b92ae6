import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction

from accounts import selectors, services
from core.management.base import ServiceCommand
from core.money import usd_to_nanousd

DEFAULT_FILE = Path(settings.BASE_DIR) / "fixtures" / "demo.json"


class Command(ServiceCommand):
    help = (
        "Load the demo data (users, organizations, a token) idempotently: what exists is left "
        "as it is. Prints the demo credentials on stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument("--file", type=Path, default=DEFAULT_FILE)

    @transaction.atomic
    def handle(self, *args, file: Path, **options):
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read demo data from {file}: {exc}") from exc
        created = 0
        admin = data["admin"]
        if selectors.user_get(name=admin["name"]) is None:
            services.user_create(
                name=admin["name"], email=admin["email"], is_staff=True, password=admin["password"]
            )
            created += 1
        for spec in data["users"]:
            if selectors.user_get(name=spec["name"]) is None:
                services.user_create(**spec)
                created += 1
        for spec in data["organizations"]:
            if selectors.organization_get(name=spec["name"]) is None:
                limit = spec.get("spending_limit_usd")
                services.organization_create(
                    name=spec["name"],
                    fullname=spec.get("fullname", ""),
                    plan=spec["plan"],
                    seats=spec["seats"],
                    spending_limit_nanousd=usd_to_nanousd(limit) if limit else None,
                    members=[
                        (selectors.user_get(name=user), role)
                        for user, role in spec["members"].items()
                    ],
                )
                created += 1
        for spec in data["tokens"]:
            if selectors.access_token_get_by_secret(secret=spec["token"]) is None:
                services.access_token_create(
                    user=selectors.user_get(name=spec["user"]),
                    name=spec["name"],
                    role=spec["role"],
                    secret=spec["token"],
                )
                created += 1
        self.say(f"Demo data: {created} object(s) created, the rest already present.")
        token = data["tokens"][0]
        self.stdout.write(
            f"  Admin login  {admin['name']} / {admin['password']}\n"
            f"  Demo token   {token['token']}  ({token['role']}, user {token['user']})\n"
        )
