"""Accounts HTTP API: whoami, the caller's access tokens and inference-provider settings,
organizations with their members and inference-provider settings."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import AccessToken, Role, SettingsSource, TokenRole, User
from accounts.permissions import (
    FINE_GRAINED_PERMISSIONS,
    request_token,
    token_permission,
)
from core.errors import DomainError, Kind
from core.money import NANOUSD_PER_USD, usd_text, usd_to_nanousd
from core.pagination import decode_cursor, next_link, parse_limit
from core.serializers import StrictCharField, StrictDecimalField, StrictSerializer


# --- whoami -------------------------------------------------------------------------------
class WhoAmIOrgSerializer(serializers.Serializer):
    type = serializers.CharField()
    id = serializers.CharField()
    name = serializers.CharField()
    fullname = serializers.CharField()
    roleInOrg = serializers.CharField()
    plan = serializers.CharField()
    isEnterprise = serializers.BooleanField()


class WhoAmIAccessTokenSerializer(serializers.Serializer):
    displayName = serializers.CharField()
    role = serializers.CharField()
    createdAt = serializers.DateTimeField()
    fineGrained = serializers.DictField(required=False)


class WhoAmIAuthSerializer(serializers.Serializer):
    type = serializers.CharField()
    accessToken = WhoAmIAccessTokenSerializer(required=False)


class WhoAmISerializer(serializers.Serializer):
    type = serializers.CharField()
    id = serializers.CharField()
    name = serializers.CharField()
    fullname = serializers.CharField()
    email = serializers.CharField(allow_null=True)
    isPro = serializers.BooleanField()
    plan = serializers.CharField()
    orgs = WhoAmIOrgSerializer(many=True)
    auth = WhoAmIAuthSerializer()


def whoami_payload(*, user: User, token: AccessToken | None) -> dict:
    """The Hub's `/api/whoami-v2` shape, as `huggingface_hub.HfApi.whoami()` parses it."""
    orgs = [
        {
            "type": "org",
            "id": m.organization.hub_id,
            "name": m.organization.name,
            "fullname": m.organization.fullname or m.organization.name,
            "roleInOrg": m.role,
            "plan": m.organization.plan,
            "isEnterprise": m.organization.is_enterprise,
        }
        for m in selectors.membership_list_for_user(user=user)
    ]
    if token is not None:
        access_token = {
            "displayName": token.name,
            "role": token.role,
            "createdAt": token.created_at,
        }
        if token.role == TokenRole.FINE_GRAINED:
            access_token["fineGrained"] = {"global": list(token.permissions), "scoped": []}
        auth = {"type": "access_token", "accessToken": access_token}
    else:
        auth = {"type": "session"}
    return {
        "type": "user",
        "id": user.hub_id,
        "name": user.username,
        "fullname": user.fullname or user.username,
        "email": user.email or None,
        "isPro": user.is_pro,
        "plan": user.plan,
        "orgs": orgs,
        "auth": auth,
    }


class WhoAmIView(APIView):
    """Who the token belongs to, its organizations with roles, and the token's role."""

    @extend_schema(responses=WhoAmISerializer, operation_id="whoami_v2")
    def get(self, request):
        return Response(whoami_payload(user=request.user, token=request_token(request)))


# --- access tokens ------------------------------------------------------------------------
class AccessTokenSerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="token_prefix")
    createdAt = serializers.DateTimeField(source="created_at")
    lastUsedAt = serializers.DateTimeField(source="last_used_at")
    revokedAt = serializers.DateTimeField(source="revoked_at")

    class Meta:
        model = AccessToken
        fields = [
            "id",
            "name",
            "role",
            "permissions",
            "prefix",
            "createdAt",
            "lastUsedAt",
            "revokedAt",
        ]
        read_only_fields = fields


class AccessTokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=TokenRole.values, default=TokenRole.READ)
    permissions = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(FINE_GRAINED_PERMISSIONS)),
        required=False,
        default=list,
        max_length=len(FINE_GRAINED_PERMISSIONS),
    )


class AccessTokenCreatedSerializer(AccessTokenSerializer):
    token = serializers.CharField(help_text="The secret. Shown only in this response.")

    class Meta(AccessTokenSerializer.Meta):
        fields = [*AccessTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class AccessTokenListView(APIView):
    """The caller's access tokens (never their secrets); POST creates one."""

    permission_classes = [token_permission("tokens.write", only_unsafe=True)]

    @extend_schema(responses=AccessTokenSerializer(many=True), operation_id="tokens_list")
    def get(self, request):
        tokens = selectors.access_token_list(user=request.user)
        return Response(AccessTokenSerializer(tokens, many=True).data)

    @extend_schema(
        request=AccessTokenCreateSerializer,
        responses={201: AccessTokenCreatedSerializer},
        operation_id="tokens_create",
    )
    def post(self, request):
        body = AccessTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, secret = services.access_token_create(user=request.user, **body.validated_data)
        token.token = secret
        return Response(AccessTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class AccessTokenDetailView(APIView):
    permission_classes = [token_permission("tokens.write", only_unsafe=True)]

    @extend_schema(
        responses={204: OpenApiResponse(description="Revoked")}, operation_id="tokens_revoke"
    )
    def delete(self, request, token_id: int):
        token = get_object_or_404(selectors.access_token_list(user=request.user), pk=token_id)
        services.access_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- organizations ------------------------------------------------------------------------
class OrganizationCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=96)
    fullname = serializers.CharField(max_length=255, required=False, default="")


class OrganizationMemberSerializer(serializers.Serializer):
    name = serializers.CharField(source="user.username")
    role = serializers.CharField()


class OrganizationSerializer(serializers.Serializer):
    id = serializers.CharField(source="hub_id")
    name = serializers.CharField()
    fullname = serializers.CharField()
    plan = serializers.CharField()
    seats = serializers.IntegerField()
    createdAt = serializers.DateTimeField(source="created_at")


class OrganizationDetailSerializer(OrganizationSerializer):
    roleInOrg = serializers.CharField()
    members = OrganizationMemberSerializer(many=True)


class OrganizationListView(APIView):
    permission_classes = [token_permission("org.write", only_unsafe=True)]

    @extend_schema(
        request=OrganizationCreateSerializer,
        responses={201: OrganizationSerializer},
        operation_id="organizations_create",
        description="Creates a free organization; the caller becomes its admin.",
    )
    def post(self, request):
        body = OrganizationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        org = services.organization_create(
            **body.validated_data, members=[(request.user, Role.ADMIN)]
        )
        return Response(OrganizationSerializer(org).data, status=status.HTTP_201_CREATED)


class OrganizationDetailView(APIView):
    permission_classes = [token_permission("org.read")]

    @extend_schema(responses=OrganizationDetailSerializer, operation_id="organizations_get")
    def get(self, request, name: str):
        org = selectors.organization_get(name=name)
        membership = org and selectors.membership_get(user=request.user, organization=org)
        if not membership:
            # Same answer for "no such organization" and "not a member": names stay private.
            raise DomainError("not_found", f"Organization {name!r} not found.", kind=Kind.NOT_FOUND)
        members = selectors.membership_list_for_organization(organization=org)
        data = OrganizationSerializer(org).data
        data["roleInOrg"] = membership.role
        data["members"] = OrganizationMemberSerializer(members, many=True).data
        return Response(data)


# --- inference-provider settings --------------------------------------------------------------
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


def _actor(request) -> services.Actor:
    return services.Actor(user=request.user, source=SettingsSource.API)


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


def _organization_for_admin(request, name: str):
    """The organization, if the caller administers it: 404 if unknown, 403 otherwise."""
    org = selectors.organization_get(name=name)
    if org is None:
        raise DomainError("not_found", f"Organization {name!r} not found.", kind=Kind.NOT_FOUND)
    membership = selectors.membership_get(user=request.user, organization=org)
    if membership is None or membership.role != Role.ADMIN:
        raise DomainError(
            "permission_denied",
            f"Only admins of organization {org.name!r} can do this"
            + (f" (your role is {membership.role!r})." if membership else "."),
            kind=Kind.FORBIDDEN,
        )
    return org


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
        max_value=services.SPENDING_LIMIT_MAX_NANOUSD // NANOUSD_PER_USD,
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
        org = _organization_for_admin(request, name)
        return Response(organization_provider_settings_payload(org))

    @extend_schema(
        request=OrganizationProviderSettingsUpdateSerializer,
        responses=OrganizationProviderSettingsSerializer,
        operation_id="organization_inference_provider_settings_update",
    )
    def put(self, request, name: str):
        org = _organization_for_admin(request, name)
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


class OrganizationMemberListSerializer(serializers.Serializer):
    user = serializers.CharField(source="user.username")
    fullname = serializers.SerializerMethodField()
    type = serializers.CharField(default="user")
    isPro = serializers.BooleanField(source="user.is_pro")
    role = serializers.CharField()
    joinedAt = serializers.DateTimeField(source="created_at")

    def get_fullname(self, membership) -> str:
        return membership.user.fullname or membership.user.username


MEMBERS_LIMIT_DEFAULT = 500
MEMBERS_LIMIT_MAX = 1000


class OrganizationMemberListView(APIView):
    """An organization's members with their roles, by name; `Link` pagination (what
    `huggingface_hub.HfApi.list_organization_members` reads). Organization admins only."""

    permission_classes = [token_permission("org.read")]

    @extend_schema(
        responses=OrganizationMemberListSerializer(many=True),
        operation_id="organization_members_list",
        parameters=[
            OpenApiParameter("limit", int, required=False),
            OpenApiParameter("cursor", str, required=False, description="From the `Link` header."),
        ],
    )
    def get(self, request, name: str):
        org = _organization_for_admin(request, name)
        params = request.query_params
        limit = parse_limit(
            params.get("limit"), default=MEMBERS_LIMIT_DEFAULT, maximum=MEMBERS_LIMIT_MAX
        )
        members = selectors.membership_list_for_organization(organization=org)
        if params.get("cursor"):
            after = decode_cursor(params["cursor"], source="Link header")
            members = members.filter(user__username__gt=after)
        page = list(members[: limit + 1])
        headers = {}
        if len(page) > limit:
            page = page[:limit]
            headers["Link"] = next_link(request, page[-1].user.username)
        return Response(OrganizationMemberListSerializer(page, many=True).data, headers=headers)
