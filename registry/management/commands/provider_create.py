from django.core.management.base import CommandError

from accounts import selectors as accounts_selectors
from core.management.base import ServiceCommand
from registry import services


class Command(ServiceCommand):
    help = "Register an inference provider owned by a Hub organization."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="e.g. together, fal-ai")
        parser.add_argument("--org", required=True, help="the organization that owns it")
        parser.add_argument("--base-url", required=True, help="e.g. https://api.together.xyz")
        parser.add_argument("--cost-url", required=True, help="the provider's cost endpoint")
        parser.add_argument(
            "--api-key", required=True, help="key the router and cost poller use (stored encrypted)"
        )
        parser.add_argument("--chat-route", default="/v1/chat/completions")
        parser.add_argument("--request-id-header", default="Inference-Id")
        parser.add_argument("--first-cost-delay-s", type=int, default=0)
        parser.add_argument("--name", default="", help="display name")

    def handle(self, *args, slug, org, base_url, cost_url, api_key, chat_route,
               request_id_header, first_cost_delay_s, name, **options):  # fmt: skip
        organization = accounts_selectors.organization_get(name=org)
        if organization is None:
            raise CommandError(f"--org: no organization named {org!r}")
        provider = services.provider_create(
            slug=slug,
            organization=organization,
            base_url=base_url,
            cost_url=cost_url,
            api_key=api_key,
            chat_route=chat_route,
            request_id_header=request_id_header,
            first_cost_query_delay_s=first_cost_delay_s,
            display_name=name,
        )
        self.say(f"Created provider {provider.slug} owned by {organization.name}.")
        self.stdout.write(provider.slug)
