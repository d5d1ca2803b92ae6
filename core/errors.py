"""One JSON error format for the whole `/api/` surface.

    {"error": "<message naming the field>", "error_type": "<machine code>",
     "fields": {"<field>": ["<message>", ...]}}          # "fields" only for bad input

`error` is a plain string because that is what the Hub returns and what `huggingface_hub`
(`hf_raise_for_status`) and `@huggingface/inference` print. `error_type` is stable for
programs. Other transports render the same `DomainError` in their own shape (they own it).

Every error, including 404 for an unknown URL and an unexpected exception, is rendered this
way on JSON paths (`settings.JSON_ERROR_PATH_PREFIXES`, `/api/` by default); the admin keeps
Django's HTML pages.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from django.conf import settings
from django.core.exceptions import DisallowedHost, PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.request import split_domain_port, validate_host
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.text import invalid_characters_message, printable, unstorable_character

logger = logging.getLogger(__name__)

DEFAULT_JSON_ERROR_PATH_PREFIXES = ("/api/",)


class Kind(StrEnum):
    """What went wrong, independent of the transport; each edge maps it to its own status."""

    INVALID = "invalid"
    UNAUTHENTICATED = "unauthenticated"
    PAYMENT_REQUIRED = "payment_required"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"


# The HTTP status of each kind; the API (below) and the router (`router.errors`) both use it.
HTTP_STATUS = {
    Kind.INVALID: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.PAYMENT_REQUIRED: 402,
    Kind.FORBIDDEN: 403,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.TOO_LARGE: 413,
}


class DomainError(Exception):
    """The one error a rule raises: services, selectors and pure rules, on either side.

    `code` is stable for programs (the API's `error_type`, the router's `error.code`),
    `message` is for people and names the field, `field` is the input at fault when there is
    one, and `kind` says what went wrong. Nothing here knows HTTP: DRF renders it in the Hub
    format (`api_exception_handler`), the router in OpenAI's (`router.errors`), management
    commands as one line (`core.management.base`), admin forms as a form error.
    """

    def __init__(
        self, code: str, message: str, *, field: str | None = None, kind: Kind = Kind.INVALID
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.kind = Kind(kind)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.kind]

    def __repr__(self) -> str:
        return f"DomainError({self.code!r}, {self.message!r}, {self.field!r}, {self.kind})"


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """ValidationError detail -> {"dotted.field": [messages]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def error_body(message: str, error_type: str, fields: dict | None = None) -> dict:
    body = {"error": message, "error_type": error_type}
    if fields:
        body["fields"] = fields
    return body


def _validation_body(exc: exceptions.ValidationError) -> dict:
    fields = _flatten(exc.detail)
    parts = []
    for name, messages in fields.items():
        text = " ".join(messages)
        parts.append(text if name == "non_field_errors" else f"{name}: {text}")
    codes = exc.get_codes()
    error_type = "validation_error"
    if (
        isinstance(codes, dict)
        and codes
        and all(c == ["unknown_field"] or c == "unknown_field" for c in codes.values())
    ):
        error_type = "unknown_field"
    return error_body("; ".join(parts) or "Invalid input.", error_type, fields)


def api_exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every API error in the one format."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, DomainError):
        return _domain_response(exc)

    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's handler500 renders it (as JSON on API paths)

    if isinstance(exc, exceptions.ValidationError):
        response.data = _validation_body(exc)
        return response

    message = str(exc.detail)
    codes = exc.get_codes()
    response.data = error_body(message, codes if isinstance(codes, str) else "error")
    if response.status_code == 401:
        # The Hub also puts the reason in a header; clients that read headers see it.
        response["X-Error-Message"] = message
    return response


def _domain_response(exc: DomainError) -> Response:
    fields = {exc.field: [exc.message]} if exc.field else None
    response = Response(error_body(exc.message, exc.code, fields), status=exc.http_status)
    if exc.kind == Kind.UNAUTHENTICATED:
        response["X-Error-Message"] = exc.message
    return response


def is_api_path(request: HttpRequest) -> bool:
    """A path whose errors are JSON: `/api/`, plus what the project adds in its settings."""
    prefixes = getattr(settings, "JSON_ERROR_PATH_PREFIXES", DEFAULT_JSON_ERROR_PATH_PREFIXES)
    return request.path.startswith(tuple(prefixes))


def json_error(status: int, message: str, error_type: str) -> JsonResponse:
    return JsonResponse(error_body(message, error_type), status=status)


# Django-level handlers (wired in config/urls.py) for what never reaches a DRF view.
def handler400(request, exception=None):
    if is_api_path(request):
        return json_error(400, "Bad request.", "bad_request")
    return defaults.bad_request(request, exception)


def handler403(request, exception=None):
    if is_api_path(request):
        return json_error(403, "Permission denied.", "permission_denied")
    return defaults.permission_denied(request, exception)


@csrf_exempt  # an unknown path is a 404 whatever the method, not a CSRF failure
def api_not_found(request, *args, **kwargs):
    return json_error(404, f"No API endpoint at {request.path}.", "not_found")


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a JSON 403 on API paths (Django's page is HTML)."""
    if is_api_path(request):
        return json_error(403, f"CSRF check failed: {reason}", "csrf_failed")
    return csrf.csrf_failure(request, reason)


def handler404(request, exception=None):
    if is_api_path(request):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if is_api_path(request):
        return json_error(500, "Internal server error; it has been logged.", "server_error")
    return defaults.server_error(request)


class JsonErrorMiddleware:
    """An unexpected exception on an API path is a JSON 500, also with DEBUG on.

    It is logged with its traceback; the client gets no internals.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, RequestDataTooBig):  # served, the edge refuses it before
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            message = f"The request body is larger than {limit} bytes."
            if is_api_path(request):
                return json_error(413, message, "body_too_large")
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        if not is_api_path(request):
            return None
        # The decoded path escaped, as Django's request log does: a %0A in it forges no line.
        path = request.path.encode("unicode_escape").decode("ascii")
        logger.exception("Unhandled error on %s %s", request.method, path)
        return handler500(request)


# --- characters no name, id or text column can hold ----------------------------------------------
def invalid_characters_error(field: str, reason: str) -> DomainError:
    """A 400 naming `field`, which holds NUL or a lone surrogate (`core.text`)."""
    message = f"{field}: {invalid_characters_message(reason)}"
    return DomainError("invalid_characters", message, field=field)


def _bad_characters(request: HttpRequest) -> DomainError | None:
    reason = unstorable_character(request.path_info)
    if reason:
        return invalid_characters_error("path", reason)
    for name, values in request.GET.lists():
        for text in (name, *values):
            reason = unstorable_character(text)
            if reason:
                return invalid_characters_error(printable(name), reason)
    for name, value in request.COOKIES.items():
        reason = unstorable_character(name) or unstorable_character(value)
        if reason:
            return invalid_characters_error(f"cookie {printable(name)}", reason)
    return None


class InputCharactersMiddleware:
    """A path, query parameter or cookie holding NUL or a lone surrogate is a 400 before any
    view (or the session lookup) runs: on `/api/` in the API's format naming the parameter
    (`path`, the query parameter, `cookie <name>`), on `/v1/` in OpenAI's, elsewhere Django's
    400 page. JSON bodies get the same check in `core.parsers.JSONParser`."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        error = _bad_characters(request)
        if error is None:
            return self.get_response(request)
        if request.path.startswith(ROUTER_PATH_PREFIX):  # the router's Django views
            body = {"message": error.message, "type": "invalid_request_error", "code": error.code}
            return JsonResponse({"error": body}, status=error.http_status)
        if not is_api_path(request):
            return defaults.bad_request(request, None)
        response = _domain_response(error)
        return JsonResponse(response.data, status=response.status_code)


# --- a Host that is not ours -------------------------------------------------------------------
BAD_HOST_MESSAGE = "The Host header names a host this server does not serve (ALLOWED_HOSTS)."
ROUTER_PATH_PREFIX = "/v1/"  # OpenAI's error shape there (router/errors.py), which clients parse
security_logger = logging.getLogger("django.security.DisallowedHost")


def _bad_host_response(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(ROUTER_PATH_PREFIX):  # core cannot import the router's class
        error = {"message": BAD_HOST_MESSAGE, "type": "invalid_request_error", "code": "bad_host"}
        return JsonResponse({"error": error}, status=400)
    if is_api_path(request):
        return json_error(400, BAD_HOST_MESSAGE, "bad_host")
    return defaults.bad_request(request, None)


class AllowedHostsMiddleware:
    """A request whose Host is not in ALLOWED_HOSTS is a 400 before any other middleware runs:
    in the API's format on `/api/`, in OpenAI's on `/v1/`, elsewhere Django's 400 page. Never
    Django's debug page, which DEBUG shows when a later middleware meets the same Host. Logged
    as Django logs it (`django.security.DisallowedHost`, the host quoted)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost as exc:
            security_logger.error(str(exc), extra={"status_code": 400, "request": request})
            return _bad_host_response(request)
        return self.get_response(request)


def asgi_host_allowed(scope: dict) -> bool:
    """Django's Host check (`HttpRequest.get_host`, ALLOWED_HOSTS) on an ASGI scope, for the
    router's paths, which skip Django's request stack (config/asgi.py)."""
    hosts = [value for name, value in scope.get("headers", ()) if name.lower() == b"host"]
    if len(hosts) > 1:
        return False
    # No Host header (HTTP/1.0): Django falls back on the server's own name, so do we.
    host = hosts[0].decode("latin-1") if hosts else (scope.get("server") or ("",))[0] or ""
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)
