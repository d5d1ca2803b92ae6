"""Accounts HTTP API: whoami, the caller's access tokens, organizations with their members.

The inference-provider settings of users and organizations (they name providers) are served by
`registry.settings_api`."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import AccessToken, Role, TokenRole, User
from accounts.permissions import (
    FINE_GRAINED_PERMISSIONS,
    request_token,
    token_permission,
)
from core.errors import DomainError, Kind
from core.openapi import LINK_HEADER, error_response, id_parameter, limit_parameter
from core.pagination import decode_cursor, next_link, parse_limit
from core.serializers import StrictSerializer


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
    lastUsedAt = serializers.DateTimeField(source="last_used_at", allow_null=True)
    revokedAt = serializers.DateTimeField(source="revoked_at", allow_null=True)

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
        token, secret = services.access_token_create(
            user=request.user, created_with=request_token(request), **body.validated_data
        )
        token.token = secret
        return Response(AccessTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class AccessTokenDetailView(APIView):
    permission_classes = [token_permission("tokens.write", only_unsafe=True)]

    @extend_schema(
        responses={204: OpenApiResponse(description="Revoked")},
        operation_id="tokens_revoke",
        parameters=[id_parameter("token_id")],
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
        responses={201: OrganizationSerializer, 409: error_response(409, "The name is taken.")},
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


def _organization_for_admin(request, name: str):
    return selectors.organization_get_for_admin(user=request.user, name=name)


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
            limit_parameter(default=MEMBERS_LIMIT_DEFAULT, maximum=MEMBERS_LIMIT_MAX),
            OpenApiParameter("cursor", str, required=False, description="From the `Link` header."),
            LINK_HEADER,
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
