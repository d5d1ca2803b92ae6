"""The ASGI entry point: the router's routes go to the plain-ASGI router (its hot path skips
Django's request stack), everything else to Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_asgi_application()

from router.proxy import Router, is_router_path  # noqa: E402 (needs Django set up)

router = Router()


async def application(scope, receive, send):
    if scope["type"] == "http" and is_router_path(scope["path"]):
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
