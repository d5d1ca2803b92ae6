from django.core.management.base import CommandError

from accounts import selectors, services
from accounts.models import OrgPlan, Role
from core.management.base import ServiceCommand
from core.money import MoneyError, usd_to_nanousd


class Command(ServiceCommand):
    help = "Create an organization with its members. Fails, changing nothing, on any error."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--plan", choices=OrgPlan.values, default=OrgPlan.FREE)
        parser.add_argument("--seats", type=int, default=1)
        parser.add_argument("--fullname", default="")
        parser.add_argument(
            "--spending-limit-usd",
            metavar="USD",
            help="monthly pay-as-you-go limit in USD, e.g. 250.00",
        )
        parser.add_argument(
            "--member",
            action="append",
            default=[],
            metavar="USER:ROLE",
            help=f"repeatable; ROLE is one of {', '.join(Role.values)}",
        )

    def handle(self, *args, name, plan, seats, fullname, spending_limit_usd, member, **options):
        members = []
        for spec in member:
            username, sep, role = spec.partition(":")
            if not sep or role not in Role.values:
                raise CommandError(
                    f"--member {spec!r}: expected USER:ROLE with ROLE one of "
                    f"{', '.join(Role.values)}"
                )
            user = selectors.user_get(name=username)
            if user is None:
                raise CommandError(f"--member {spec!r}: no user named {username!r}")
            members.append((user, role))
        limit = None
        if spending_limit_usd is not None:
            try:
                limit = usd_to_nanousd(spending_limit_usd)
            except MoneyError as exc:
                raise CommandError(f"--spending-limit-usd: {exc}") from exc
        org = services.organization_create(  # one transaction, members included
            name=name,
            fullname=fullname,
            plan=plan,
            seats=seats,
            spending_limit_nanousd=limit,
            members=members,
        )
        self.say(
            f"Created organization {org.name} (plan {org.plan}, {org.seats} seat(s), "
            f"{len(members)} member(s))."
        )
        self.stdout.write(org.name)
