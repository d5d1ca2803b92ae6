"""The OpenAPI schema's error responses, declared where they can happen (drf-spectacular).

Every operation documents the error statuses it really returns, each with the one error body
(`core.errors`), so that clients generated from `/api/schema` and schemathesis
(`tests/test_schemathesis.py`) see them:

- 400 everywhere: bad input, and NUL or a lone surrogate in any path, query or cookie
  (`core.errors.InputCharactersMiddleware`);
- 401 where the view authenticates (a bad token is refused even where anonymous callers are
  welcome), with `X-Error-Message` and `WWW-Authenticate`;
- 403 where anonymous callers are not allowed (a token without the permission, a role or a
  plan that does not allow it);
- 404 where the path names something;
- 413 and 415 where there is a request body;
- 429 where the view is rate limited (DRF throttles; a write limit does not apply to reads),
  with `Retry-After`.

An operation declares any other error (409 for a duplicate) with `error_response(409, ...)`
in its `extend_schema(responses=...)`; a status it declares itself is left as it is.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import SAFE_METHODS, AllowAny

from core.pagination import ID_MAX
from core.throttling import WriteRateThrottle


class ErrorSerializer(serializers.Serializer):
    """`{"error": "...", "error_type": "...", "fields": {"<field>": ["..."]}}` (docs/api.md)."""

    # `fields` is also the name of a Serializer attribute: the fields are declared here.
    def get_fields(self):
        return {
            "error": serializers.CharField(help_text="A sentence naming the field at fault."),
            "error_type": serializers.CharField(
                required=False,
                help_text="Stable machine code (absent only on the Hub's unknown-model 404).",
            ),
            "fields": serializers.DictField(
                child=serializers.ListField(child=serializers.CharField()),
                required=False,
                help_text="The input at fault, for bad input: field (dotted path) to messages.",
            ),
        }


ERROR_DESCRIPTIONS = {
    400: "Bad input (the body's `fields` name it).",
    401: "No token, or a token that is unknown, revoked or malformed.",
    403: "The token or the caller's role may not do this.",
    404: "Not found, or not visible to the caller.",
    409: "Conflicts with what exists.",
    413: "The request body is too large.",
    415: "The request body is not JSON.",
    429: "Too many requests; retry after `Retry-After` seconds.",
}

_HEADERS = {
    401: {
        "X-Error-Message": {"schema": {"type": "string"}, "description": "The reason."},
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="api"'},
    },
    429: {
        "Retry-After": {
            "schema": {"type": "integer", "minimum": 0},
            "description": "Seconds to wait.",
        }
    },
}


def error_response(status: int, description: str | None = None) -> OpenApiResponse:
    """The error body as the response of `status`, for `extend_schema(responses=...)`."""
    return OpenApiResponse(ErrorSerializer, description=description or ERROR_DESCRIPTIONS[status])


def limit_parameter(*, default: int, maximum: int) -> OpenApiParameter:
    """`?limit=` as `core.pagination.parse_limit` reads it."""
    return OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        description=f"Page size: at least 1, default {default}; more than {maximum} is served "
        f"as {maximum}.",
    )


def id_parameter(name: str, description: str = "") -> OpenApiParameter:
    """A path parameter holding a database id (a positive bigint)."""
    return OpenApiParameter(
        name,
        {"type": "integer", "minimum": 1, "maximum": ID_MAX},
        OpenApiParameter.PATH,
        description=description,
    )


LINK_HEADER = OpenApiParameter(
    "Link",
    str,
    OpenApiParameter.HEADER,
    response=[200],
    description='`<next page URL>; rel="next"` when there is a next page.',
)


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, adding the error responses of the module docstring."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            code = str(status)
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    error_response(status), code, direction=direction
                )
            if status in _HEADERS:
                responses[code].setdefault("headers", {}).update(_HEADERS[status])
        return dict(sorted(responses.items()))

    def _error_statuses(self) -> list[int]:
        statuses = [400]
        if self.view.get_authenticators():
            statuses.append(401)
        if not all(isinstance(p, AllowAny) for p in self.view.get_permissions()):
            statuses.append(403)
        if "{" in self.path:
            statuses.append(404)
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer():
            statuses += [413, 415]
        if any(self._throttled(t) for t in self.view.get_throttles()):
            statuses.append(429)
        return statuses

    def _throttled(self, throttle) -> bool:
        """Whether `throttle` can refuse this operation (write limits never count reads)."""
        return not (isinstance(throttle, WriteRateThrottle) and self.method in SAFE_METHODS)
