from accounts import services
from accounts.models import UserPlan
from core.management.base import ServiceCommand


class Command(ServiceCommand):
    help = "Create a user. Fails, changing nothing, if the name is taken."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--plan", choices=UserPlan.values, default=UserPlan.FREE)
        parser.add_argument("--email", default="")
        parser.add_argument("--fullname", default="")
        parser.add_argument(
            "--staff", action="store_true", help="staff and superuser: may log into the admin"
        )
        parser.add_argument("--password", help="admin login password (with --staff)")

    def handle(self, *args, name, plan, email, fullname, staff, password, **options):
        if staff and not password:
            self.stderr.write("--staff needs --password (the admin login)")
            raise SystemExit(2)
        user = services.user_create(
            name=name, plan=plan, email=email, fullname=fullname, is_staff=staff, password=password
        )
        self.say(f"Created user {user.username} (plan {user.plan}{', staff' if staff else ''}).")
        self.stdout.write(user.username)
