"""The ASGI entry point: the router's routes go to the plain-ASGI router (its hot path skips
Django's request stack), everything else to Django; the edge (core/edge.py) in front of both
bounds request bodies (docs/operations.md "Limits"). config/serve.py serves it."""

import json
import os
from functools import cache

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.urls import reverse  # noqa: E402

from core.edge import Edge  # noqa: E402
from core.errors import BAD_HOST_MESSAGE, asgi_host_allowed, error_body  # noqa: E402
from router.errors import RouterError  # noqa: E402
from router.proxy import Router, is_router_path, send_bytes  # noqa: E402 (needs Django set up)

router = Router()
BAD_HOST = RouterError(400, BAD_HOST_MESSAGE, "bad_host").body()


async def dispatch(scope, receive, send):
    if scope["type"] == "http" and is_router_path(scope["path"]):
        if not asgi_host_allowed(scope):  # Django's ALLOWED_HOSTS check, which these skip
            return await send_bytes(send, 400, BAD_HOST, [(b"content-type", b"application/json")])
        return await router(scope, receive, send)
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    return await django_application(scope, receive, send)


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await router.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- the edge's policy: each path's body limit and error format ----------------------------
@cache
def usage_ingest_path() -> str:
    return reverse("billing-usage")  # batches of up to 10,000 usage records


def body_limit_bytes(path: str) -> int:
    if is_router_path(path):
        return settings.ROUTER_MAX_BODY_BYTES
    # Never above DATA_UPLOAD_MAX_MEMORY_SIZE: beyond it Django refuses the body itself.
    if path == usage_ingest_path():
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return min(settings.HTTP_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def body_deadline_s() -> float:
    return settings.HTTP_BODY_DEADLINE_S


def body_timeout_s() -> float:
    return settings.HTTP_BODY_TIMEOUT_S


def render_error(path: str, status: int, code: str, message: str) -> tuple[bytes, bytes]:
    """OpenAI's format on the router's paths and under /v1/ (router.errors), the Hub's under
    /api/ (core.errors), a plain line elsewhere (the admin)."""
    if is_router_path(path) or path.startswith("/v1/"):
        body = RouterError(status, message, code, "invalid_request_error").body()
        return b"application/json", body
    if path.startswith("/api/"):
        return b"application/json", json.dumps(error_body(message, code)).encode()
    return b"text/plain; charset=utf-8", f"{message}\n".encode()


application = Edge(
    dispatch,
    body_limit_bytes=body_limit_bytes,
    body_timeout_s=body_timeout_s,
    body_deadline_s=body_deadline_s,
    render_error=render_error,
)
