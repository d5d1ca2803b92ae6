"""HTTP for the registry: the partner Model Mapping API and the Hub API.

Wire formats follow the partner docs ("Model Mapping API") and what huggingface_hub,
@huggingface/inference and real partner scripts send and parse.
"""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import request_token
from core.errors import DomainError, Kind
from core.ids import is_object_id
from core.openapi import LINK_HEADER, error_response, limit_parameter
from core.pagination import decode_cursor, next_link, parse_limit
from core.serializers import StrictSerializer
from core.throttling import PartnerWriteRateThrottle
from registry import selectors, services
from registry.models import MODEL_ID_MAX_LENGTH, MappingStatus, MappingType, Provider
from registry.openapi import (
    PARTNER_MAPPING_LIST_SCHEMA,
    HubModelDetailSerializer,
    HubModelListItemSerializer,
    MappingItemSerializer,
)

# --- partner API ------------------------------------------------------------------------------


def _provider_or_404(slug: str) -> Provider:
    provider = selectors.provider_get(slug=slug)
    if provider is None:
        raise DomainError("not_found", f"Unknown provider {slug!r}.", kind=Kind.NOT_FOUND)
    return provider


def _mapping_or_404(provider: Provider, mapping_id: str):
    mapping = is_object_id(mapping_id) and selectors.mapping_get(
        provider=provider, public_id=mapping_id
    )
    if not mapping:
        raise DomainError(
            "not_found",
            f"No mapping {mapping_id!r} for provider {provider.slug!r}.",
            kind=Kind.NOT_FOUND,
        )
    return mapping


class MappingCreateSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=MappingType.values, default=MappingType.SINGLE_MODEL)
    task = serializers.CharField(max_length=64)
    hfModel = serializers.CharField(max_length=MODEL_ID_MAX_LENGTH, required=False)
    providerModel = serializers.CharField(max_length=255)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=200, trim_whitespace=False),
        required=False,
        allow_empty=True,
        max_length=services.TAGS_MAX,
    )
    adapterType = serializers.CharField(max_length=16, required=False)
    status = serializers.ChoiceField(choices=MappingStatus.values, default=MappingStatus.STAGING)


class MappingStatusSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=MappingStatus.values)


class LegacyMappingStatusSerializer(MappingStatusSerializer):
    hfModel = serializers.CharField(max_length=MODEL_ID_MAX_LENGTH)


class PartnerView(APIView):
    """Reads are public; writes need a member allowed by `partner_access_check`, and are
    limited per token (PARTNER_WRITE_RATE_LIMIT: a 429 with Retry-After beyond it)."""

    throttle_classes = [PartnerWriteRateThrottle]

    def get_permissions(self):
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return [AllowAny()]
        return [IsAuthenticated()]

    def provider_for_write(self, request, slug: str) -> Provider:
        provider = _provider_or_404(slug)
        services.partner_access_check(
            provider=provider, user=request.user, token=request_token(request)
        )
        return provider


class PartnerModelsView(PartnerView):
    @extend_schema(
        operation_id="partner_models_list",
        parameters=[OpenApiParameter("status", enum=MappingStatus.values, required=False)],
        responses={200: PARTNER_MAPPING_LIST_SCHEMA},
        description="Public. The provider's mappings grouped by task, then keyed by hub model "
        "id or `tag-filter=<sorted tags>`.",
    )
    def get(self, request, provider: str):
        provider_obj = _provider_or_404(provider)
        status_filter = request.query_params.get("status")
        if status_filter is not None and status_filter not in MappingStatus.values:
            raise DomainError(
                "validation_error",
                f"status: {status_filter!r} is not one of staging, live.",
                field="status",
            )
        return Response(selectors.partner_mapping_list(provider=provider_obj, status=status_filter))

    @extend_schema(
        operation_id="partner_models_create",
        request=MappingCreateSerializer,
        responses={
            201: MappingItemSerializer,
            409: error_response(409, "The provider already maps this model or tag set."),
        },
        description="Single-model `{task, hfModel, providerModel, status?}` or tag-filter "
        '`{type: "tag-filter", task, tags, providerModel, adapterType: "lora", status?}`, '
        "whose tags are `lora` and one `base_model:adapter:<hub model id>` of an existing "
        "model supporting the task (LoRA adapters). `providerModel` is a model id (letters, "
        "digits, `-_.:/@+`, no leading `/`, no `..`). 409 when the provider already maps the "
        "same model (or tag set) for the task. Needs a `write` token or a fine-grained token "
        "with `org.write`, of a `write`/`admin` member of the provider's organization.",
    )
    def post(self, request, provider: str):
        provider_obj = self.provider_for_write(request, provider)
        body = MappingCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        mapping = services.mapping_create(
            provider=provider_obj,
            created_by=request.user,
            type=data["type"],
            task=data["task"],
            hf_model=data.get("hfModel"),
            tags=data.get("tags"),
            adapter_type=data.get("adapterType"),
            provider_model=data["providerModel"],
            status=data["status"],
        )
        return Response(selectors.mapping_item(mapping), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="partner_models_delete_legacy",
        deprecated=True,
        parameters=[OpenApiParameter("hfModel", str, required=True)],
        responses={204: OpenApiResponse(description="Deleted")},
        description="Deprecated: use DELETE /models/{mapping_id}. Deletes the provider's "
        "single-model mappings of `hfModel` (all tasks).",
    )
    def delete(self, request, provider: str):
        provider_obj = self.provider_for_write(request, provider)
        hf_model = request.query_params.get("hfModel")
        if not hf_model:
            raise DomainError(
                "validation_error", "hfModel query parameter is required.", field="hfModel"
            )
        mappings = selectors.mapping_list_for_hf_model(provider=provider_obj, hf_model=hf_model)
        if not mappings.exists():
            raise DomainError(
                "not_found",
                f"Provider {provider_obj.slug!r} has no mapping for {hf_model!r}.",
                kind=Kind.NOT_FOUND,
            )
        for mapping in mappings:
            services.mapping_delete(mapping=mapping)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PartnerModelDetailView(PartnerView):
    @extend_schema(
        operation_id="partner_models_delete",
        responses={204: OpenApiResponse(description="Deleted")},
    )
    def delete(self, request, provider: str, mapping_id: str):
        provider_obj = self.provider_for_write(request, provider)
        services.mapping_delete(mapping=_mapping_or_404(provider_obj, mapping_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class PartnerModelStatusView(PartnerView):
    @extend_schema(
        operation_id="partner_models_set_status",
        request=MappingStatusSerializer,
        responses={200: MappingItemSerializer},
    )
    def put(self, request, provider: str, mapping_id: str):
        provider_obj = self.provider_for_write(request, provider)
        mapping = _mapping_or_404(provider_obj, mapping_id)
        body = MappingStatusSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        mapping = services.mapping_set_status(mapping=mapping, status=body.validated_data["status"])
        return Response(selectors.mapping_item(mapping))


class LegacyPartnerModelStatusView(PartnerView):
    @extend_schema(
        operation_id="partner_models_set_status_legacy",
        deprecated=True,
        request=LegacyMappingStatusSerializer,
        responses={200: MappingItemSerializer(many=True)},
        description="Deprecated: use PUT /models/{mapping_id}/status. Sets the status of the "
        "provider's single-model mappings of `hfModel` (all tasks).",
    )
    def put(self, request, provider: str):
        provider_obj = self.provider_for_write(request, provider)
        body = LegacyMappingStatusSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        hf_model = body.validated_data["hfModel"]
        mappings = list(
            selectors.mapping_list_for_hf_model(provider=provider_obj, hf_model=hf_model)
        )
        if not mappings:
            raise DomainError(
                "not_found",
                f"Provider {provider_obj.slug!r} has no mapping for {hf_model!r}.",
                field="hfModel",
                kind=Kind.NOT_FOUND,
            )
        items = [
            selectors.mapping_item(
                services.mapping_set_status(mapping=m, status=body.validated_data["status"])
            )
            for m in mappings
        ]
        return Response(items)


# --- Hub API ----------------------------------------------------------------------------------

INFERENCE = "inference"
PROVIDER_MAPPING = "inferenceProviderMapping"
# expand values we answer; the Hub has more (downloads, likes, ...) which we accept and omit,
# because clients such as @huggingface/hub always ask for some of them.
EXPANDABLE = {
    INFERENCE, PROVIDER_MAPPING, "author", "pipeline_tag", "tags", "createdAt", "lastModified",
    "private", "gated", "disabled", "downloads", "downloadsAllTime", "likes", "library_name",
    "sha", "trendingScore", "cardData", "siblings", "safetensors", "config", "spaces",
    "widgetData", "transformersInfo", "baseModels", "childrenModelCount", "resourceGroup",
    "mask_token", "gguf", "model-index", "usedStorage", "securityRepoStatus", "evalResults",
}  # fmt: skip
LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 1000


def _expand(request) -> set[str] | None:
    values = request.query_params.getlist("expand") + request.query_params.getlist("expand[]")
    names = {v.strip() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(names - EXPANDABLE)
    if unknown:
        raise DomainError(
            "validation_error",
            f"expand: unknown value {unknown[0]!r}; use e.g. inference or "
            "inferenceProviderMapping.",
            field="expand",
        )
    return names or None


def _model_fields(model) -> dict:
    fields = {
        "author": model.author,
        "tags": list(model.tags),
        "createdAt": model.created_at,
        "lastModified": model.modified_at,
        "private": False,
        "gated": False,
        "disabled": False,
    }
    if model.pipeline_tag:
        fields["pipeline_tag"] = model.pipeline_tag
    return fields


def model_payload(model, *, expand: set[str] | None, mapping, mapping_as_list: bool) -> dict:
    body = {"_id": model.hub_id, "id": model.model_id}
    fields = _model_fields(model)
    if expand is None:
        body["modelId"] = model.model_id
        body.update(fields)
        return body
    body.update({k: v for k, v in fields.items() if k in expand})
    if INFERENCE in expand and mapping.warm:
        body[INFERENCE] = "warm"
    if PROVIDER_MAPPING in expand:
        body[PROVIDER_MAPPING] = (
            mapping.as_list(model.model_id) if mapping_as_list else mapping.as_dict()
        )
    return body


def repo_not_found() -> Response:
    return Response(
        {"error": "Repository not found"},
        status=status.HTTP_404_NOT_FOUND,
        headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
    )


EXPAND_PARAMS = [
    OpenApiParameter("expand", str, many=True, required=False,
                     description="inference, inferenceProviderMapping, ... (repeatable)"),
    OpenApiParameter("expand[]", str, many=True, required=False,
                     description="Same as expand (the JS clients' spelling)."),
]  # fmt: skip


class HubModelDetailView(APIView):
    """A hub model; `expand=inferenceProviderMapping` lists who serves it, in selection order."""

    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="hub_model_get",
        parameters=[
            *EXPAND_PARAMS,
            OpenApiParameter(
                "X-Error-Code",
                str,
                OpenApiParameter.HEADER,
                response=[404],
                description="`RepoNotFound` for an unknown model (as the Hub).",
            ),
        ],
        responses={
            200: HubModelDetailSerializer,
            404: error_response(
                404, "Unknown model: `X-Error-Code: RepoNotFound`, the Hub's body (no error_type)."
            ),
        },
    )
    def get(self, request, namespace: str, name: str):
        expand = _expand(request)
        model_id = f"{namespace}/{name}"
        mapping = None
        if expand and expand & {INFERENCE, PROVIDER_MAPPING}:
            model, mapping = selectors.hub_model_lookup(
                model_id=model_id, viewer=selectors.viewer_for(request.user)
            )
        else:
            model = selectors.hub_model_get(model_id=model_id)
        if model is None:
            return repo_not_found()
        return Response(model_payload(model, expand=expand, mapping=mapping, mapping_as_list=False))


class HubModelListView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="hub_models_list",
        parameters=[
            OpenApiParameter("inference_provider", str, many=True, required=False,
                             description="Provider slugs (comma list or repeated), or `all`."),
            OpenApiParameter("inference", str, enum=["warm"], required=False),
            OpenApiParameter("pipeline_tag", str, required=False),
            OpenApiParameter("author", str, required=False),
            OpenApiParameter("search", str, required=False),
            limit_parameter(default=LIST_LIMIT_DEFAULT, maximum=LIST_LIMIT_MAX),
            OpenApiParameter("cursor", str, required=False,
                             description="From the `Link: <...>; rel=\"next\"` header."),
            *EXPAND_PARAMS,
            LINK_HEADER,
        ],
        responses={200: HubModelListItemSerializer(many=True)},
        description="A JSON array of hub models ordered by id; the next page's URL is in the "
        '`Link: <...>; rel="next"` header.',
    )  # fmt: skip
    def get(self, request):
        params = request.query_params
        providers = sorted(
            {p.strip() for raw in params.getlist("inference_provider") for p in raw.split(",")}
            - {""}
        )
        any_provider = "all" in providers
        inference = params.get("inference")
        if inference not in (None, "warm"):  # an empty value is a mistake, not "any"
            raise DomainError(
                "validation_error", "inference: the only filter is 'warm'.", field="inference"
            )
        limit = parse_limit(params.get("limit"), default=LIST_LIMIT_DEFAULT, maximum=LIST_LIMIT_MAX)
        cursor = params.get("cursor")
        expand = _expand(request)
        viewer = selectors.viewer_for(request.user)
        models = selectors.hub_model_list(
            viewer=viewer,
            providers=providers,
            any_provider=any_provider,
            warm=inference == "warm",
            pipeline_tag=params.get("pipeline_tag") or None,
            author=params.get("author") or None,
            search=(params.get("search") or "")[:200] or None,
            after=decode_cursor(cursor, source="Link header") if cursor else None,
            limit=limit + 1,
        )
        has_next = len(models) > limit
        models = models[:limit]
        mappings = {}
        if expand and expand & {INFERENCE, PROVIDER_MAPPING}:
            mappings = selectors.provider_mapping_for_models(models=models, viewer=viewer)
        body = [
            model_payload(m, expand=expand, mapping=mappings.get(m.pk), mapping_as_list=True)
            for m in models
        ]
        headers = {}
        if has_next:
            headers["Link"] = next_link(request, models[-1].model_id)
        return Response(body, headers=headers)
