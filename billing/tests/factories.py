from datetime import datetime

from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing import services
from billing.models import BillingAccount, UsageRecord
from registry.models import Provider


def usage_ingester(**user_fields):
    """A staff user allowed to ingest usage records (`billing.add_usagerecord`), as the router
    service account is; a staff user without it is refused."""
    from django.contrib.auth.models import Permission

    user = UserFactory(is_staff=True, **user_fields)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="billing", codename="add_usagerecord")
    )
    return user


def payer_for_new_user(**user_fields) -> BillingAccount:
    return services.billing_account_get_or_create_for_user(user=UserFactory(**user_fields))


def pending_usage(
    *,
    provider: Provider,
    payer: BillingAccount,
    request_id: str,
    created_at: datetime | None = None,
) -> UsageRecord:
    user = payer.user if payer.user_id else UserFactory()
    return services.usage_record_create(
        provider=provider,
        request_id=request_id,
        user=user,
        payer=payer,
        http_status=200,
        hub_model_id="meta-llama/Llama-3.1-8B-Instruct",
        created_at=created_at or timezone.now(),
    )
