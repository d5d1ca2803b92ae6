"""HTTP for users' and organizations' inference-provider settings (they name providers):

- `/api/settings/inference-providers`: the caller's provider order and custom keys (masked);
- `/api/settings/inference-providers/keys/<provider>`: remove one custom key;
- `/api/organizations/<name>/settings/inference-providers`: an organization's spending limit
  and disabled providers (its admins only).

The values are validated and written by `registry.services`; the columns on users and
organizations and the audit trail are accounts'.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as accounts_selectors
from accounts import services as accounts_services
from accounts.models import SettingsSource, User
from accounts.permissions import token_permission
from accounts.services import Actor
from core.errors import DomainError, Kind
from core.money import NANOUSD_PER_USD, usd_text, usd_to_nanousd
from core.serializers import StrictCharField, StrictDecimalField, StrictSerializer
from registry import selectors, services


class ProviderKeyMaskedSerializer(serializers.Serializer):
    masked = serializers.CharField(
        help_text="`…` and the key's last 4 characters (only `…` for keys under 16 characters)."
    )
    last4 = serializers.CharField(help_text="Empty for keys under 16 characters.")
    setAt = serializers.DateTimeField(source="updated_at")


class UserProviderSettingsSerializer(serializers.Serializer):
    order = serializers.ListField(
        child=serializers.CharField(),
        help_text="Provider names, most preferred first; providers not listed follow in the "
        "default order.",
    )
    keys = serializers.DictField(
        child=ProviderKeyMaskedSerializer(),
        help_text="Custom provider keys by provider, masked. Never returned in full.",
    )


class UserProviderSettingsUpdateSerializer(StrictSerializer):
    order = serializers.ListField(
        child=StrictCharField(max_length=64),
        required=False,
        max_length=services.PROVIDER_LIST_MAX_LENGTH,
        help_text="Replaces the whole order. `[]` removes the preference.",
    )
    keys = serializers.DictField(
        child=StrictCharField(
            min_length=services.PROVIDER_KEY_MIN_LENGTH,
            max_length=services.PROVIDER_KEY_MAX_LENGTH,
            trim_whitespace=False,
        ),
        required=False,
        help_text="Sets or replaces the key of each provider named; other keys are kept. "
        "Remove one with DELETE .../keys/<provider>.",
    )

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(
                {"non_field_errors": ["Give `order`, `keys` or both."]}
            )
        return attrs


def user_provider_settings_payload(user: User) -> dict:
    keys = selectors.user_provider_key_list(user=user)
    return {
        "order": list(user.provider_order),
        "keys": {k.provider.slug: ProviderKeyMaskedSerializer(k).data for k in keys},
    }


def _actor(request) -> Actor:
    return Actor(user=request.user, source=SettingsSource.API)


class UserProviderSettingsView(APIView):
    """The caller's provider order and custom provider keys (masked)."""

    permission_classes = [token_permission("user.settings.write", only_unsafe=True)]

    @extend_schema(
        responses=UserProviderSettingsSerializer, operation_id="inference_provider_settings_get"
    )
    def get(self, request):
        return Response(user_provider_settings_payload(request.user))

    @extend_schema(
        request=UserProviderSettingsUpdateSerializer,
        responses=UserProviderSettingsSerializer,
        operation_id="inference_provider_settings_update",
    )
    def put(self, request):
        body = UserProviderSettingsUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.user_provider_settings_update(
            user=request.user, actor=_actor(request), **body.validated_data
        )
        return Response(user_provider_settings_payload(request.user))


class UserProviderKeyView(APIView):
    permission_classes = [token_permission("user.settings.write")]

    @extend_schema(
        responses={204: OpenApiResponse(description="Removed")},
        operation_id="inference_provider_key_delete",
    )
    def delete(self, request, provider: str):
        removed = services.user_provider_key_delete(
            user=request.user, provider_slug=provider, actor=_actor(request)
        )
        if not removed:
            raise DomainError(
                "not_found", f"No custom key is set for provider {provider!r}.", kind=Kind.NOT_FOUND
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrganizationProviderSettingsSerializer(serializers.Serializer):
    spendingLimit = serializers.CharField(
        allow_null=True,
        help_text="Monthly pay-as-you-go limit in USD, as an exact decimal string; null: none.",
    )
    spendingLimitNanoUsd = serializers.IntegerField(allow_null=True)
    disabledProviders = serializers.ListField(child=serializers.CharField())


class OrganizationProviderSettingsUpdateSerializer(StrictSerializer):
    spendingLimit = StrictDecimalField(
        max_digits=19,
        decimal_places=9,
        min_value=0,
        max_value=accounts_services.SPENDING_LIMIT_MAX_NANOUSD // NANOUSD_PER_USD,
        allow_null=True,
        required=False,
        help_text='Monthly limit in USD (a number or a decimal string such as "25.50"); '
        "null removes the limit.",
    )
    disabledProviders = serializers.ListField(
        child=StrictCharField(max_length=64),
        required=False,
        max_length=services.PROVIDER_LIST_MAX_LENGTH,
        help_text="Replaces the whole set. `[]` enables every provider.",
    )

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(
                {"non_field_errors": ["Give `spendingLimit`, `disabledProviders` or both."]}
            )
        return attrs


def organization_provider_settings_payload(org) -> dict:
    limit = org.spending_limit_nanousd
    return {
        "spendingLimit": None if limit is None else usd_text(limit),
        "spendingLimitNanoUsd": limit,
        "disabledProviders": sorted(org.disabled_providers),
    }


class OrganizationProviderSettingsView(APIView):
    """An organization's spending limit and disabled providers. Organization admins only."""

    permission_classes = [token_permission("org.write", read="org.read")]

    @extend_schema(
        responses=OrganizationProviderSettingsSerializer,
        operation_id="organization_inference_provider_settings_get",
    )
    def get(self, request, name: str):
        org = accounts_selectors.organization_get_for_admin(user=request.user, name=name)
        return Response(organization_provider_settings_payload(org))

    @extend_schema(
        request=OrganizationProviderSettingsUpdateSerializer,
        responses=OrganizationProviderSettingsSerializer,
        operation_id="organization_inference_provider_settings_update",
    )
    def put(self, request, name: str):
        org = accounts_selectors.organization_get_for_admin(user=request.user, name=name)
        body = OrganizationProviderSettingsUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        changes = {}
        if "spendingLimit" in body.validated_data:
            usd = body.validated_data["spendingLimit"]
            changes["spending_limit_nanousd"] = None if usd is None else usd_to_nanousd(usd)
        if "disabledProviders" in body.validated_data:
            changes["disabled_providers"] = body.validated_data["disabledProviders"]
        org = services.organization_provider_settings_update(
            organization=org, actor=_actor(request), **changes
        )
        return Response(organization_provider_settings_payload(org))
