import json
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from accounts import selectors, services
from accounts.models import OrgPlan, SettingsSource
from billing import services as billing_services
from billing.models import BillingAccount, UsageRecord
from core.errors import DomainError, Kind
from core.management.base import ServiceCommand
from core.money import usd_to_nanousd
from registry import selectors as registry_selectors
from registry import services as registry_services

DEFAULT_FILE = Path(settings.BASE_DIR) / "fixtures" / "demo.json"


class Command(ServiceCommand):
    help = (
        "Load the demo data (users, organizations, a token, the hub model catalog, providers "
        "and their mappings) idempotently: what exists is left "
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
        if "catalog" in data:
            created += self.load_catalog(file.parent, data["catalog"])
        if "settings" in data:
            self.load_settings(data["settings"])
        if "usage" in data:
            created += self.load_usage(data["usage"])
        self.say(f"Demo data: {created} object(s) created, the rest already present.")
        token = data["tokens"][0]
        self.stdout.write(
            f"  Admin login  {admin['name']} / {admin['password']}\n"
            f"  Demo token   {token['token']}  ({token['role']}, user {token['user']})\n"
        )

    def load_settings(self, spec: dict) -> None:
        """Provider order and disabled providers, only where still unset."""
        actor = services.Actor(user=None, source=SettingsSource.COMMAND)
        for name, settings_spec in spec.get("users", {}).items():
            user = selectors.user_get(name=name)
            if user is not None and not user.provider_order:
                registry_services.user_provider_settings_update(
                    user=user, actor=actor, order=settings_spec["order"]
                )
        for name, settings_spec in spec.get("organizations", {}).items():
            org = selectors.organization_get(name=name)
            if org is not None and not org.disabled_providers:
                registry_services.organization_provider_settings_update(
                    organization=org,
                    actor=actor,
                    disabled_providers=settings_spec["disabledProviders"],
                )

    def load_catalog(self, folder: Path, catalog: dict) -> int:
        """Hub models, providers (with their organizations) and their mappings."""
        models = json.loads((folder / catalog["hub_models"]).read_text())
        result = registry_services.hub_models_import(records=models)
        created = result.created
        for spec in json.loads((folder / catalog["providers"]).read_text()):
            created += self.load_provider(spec, catalog["provider_base_url"])
        return created

    def load_provider(self, spec: dict, base_url_template: str) -> int:
        created = 0
        org = selectors.organization_get(name=spec["org"])
        if org is None:
            org = services.organization_create(
                name=spec["org"], fullname=spec["name"], plan=OrgPlan.ENTERPRISE, seats=5
            )
            created += 1
        provider = registry_selectors.provider_get(slug=spec["slug"])
        if provider is None:
            simulator = os.environ.get("SIMULATOR_URL", "http://127.0.0.1:8001").rstrip("/")
            base_url = base_url_template.format(simulator=simulator, slug=spec["slug"])
            provider = registry_services.provider_create(
                slug=spec["slug"],
                display_name=spec["name"],
                organization=org,
                base_url=base_url,
                cost_url=f"{base_url}/costs",
                api_key=f"sim-{spec['slug']}-key",  # what the provider simulator expects
                chat_route=spec.get("chat_route") or "/v1/chat/completions",
            )
            created += 1
        for mapping in spec["mappings"]:
            try:
                registry_services.mapping_create(
                    provider=provider,
                    created_by=None,
                    type=mapping.get("type", "single-model"),
                    task=mapping["task"],
                    hf_model=mapping.get("hfModel"),
                    tags=mapping.get("tags"),
                    adapter_type=mapping.get("adapterType"),
                    provider_model=mapping["providerModel"],
                    status=mapping.get("status", "live"),
                )
                created += 1
            except DomainError as exc:
                if exc.kind != Kind.CONFLICT:
                    raise
                # already loaded
        return created

    def load_usage(self, spec: dict) -> int:
        """Billing accounts with this month's credits for the demo users and organizations,
        and a few pending usage records that the running worker then polls from the
        simulator and charges (so the admin and the billing API show a working ledger)."""
        users = [selectors.user_get(name=name) for name in spec["payers"]]
        accounts = [billing_services.billing_account_get_or_create_for_user(user=u) for u in users]
        for name in spec["organizations"]:
            org = selectors.organization_get(name=name)
            accounts.append(
                billing_services.billing_account_get_or_create_for_organization(organization=org)
            )
        billing_services.credits_grant_month_due(  # inside handle()'s transaction
            billing_accounts=[
                BillingAccount.objects.select_related("user", "organization").get(pk=a.pk)
                for a in accounts
            ]
        )
        provider = registry_selectors.provider_get(slug=spec["provider"])
        created = 0
        for i, record in enumerate(spec["records"]):
            user = selectors.user_get(name=record["user"])
            payer = billing_services.payer_resolve(user=user, bill_to=record.get("billTo"))
            request_id = f"sim-{provider.slug}-demo{i:020d}"
            before = UsageRecord.objects.filter(provider=provider, request_id=request_id)
            if before.exists():
                continue
            billing_services.usage_record_create(
                provider=provider,
                request_id=request_id,
                user=user,
                payer=payer,
                http_status=200,
                hub_model_id=record["model"],
                task="conversational",
                created_at=timezone.now() - timedelta(minutes=2),
            )
            created += 1
        return created
