"""The edge: an ASGI middleware every HTTP request meets before the application (config/asgi.py
puts it in front of Django and the router). It bounds what a client can make the server read:

- **Body size.** A body above its path's limit is a 413 before a byte beyond the limit is read:
  a declared `Content-Length` above it is refused before the application runs (nothing of the
  body is read), a chunked body is counted as the application reads it and refused as soon as
  it passes the limit (the application sees a disconnect; Django never spools the rest to disk).
- **Body time.** A client that sends nothing of its body for `body_timeout_s`, or has not sent
  all of it `body_deadline_s` after the application first asked for it, gets a 408 (the second:
  a byte just before each timeout would otherwise hold the connection for as long as it likes).
- **Unread bodies.** An answer given before the body was read whole (a 401 before reading, a
  refusal above) closes the connection, so the rest is never read and discarded.

Refusals carry `Connection: close` and are rendered by the caller's `render_error` in the
format of the path's API. A 429 from the application gets the `Retry-After` its rate limiter
recorded in the scope (`core.ratelimit`). The header deadline, header size and connection limit
are the server's (config/serve.py); docs/operations.md "Limits" lists them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
# (path, status, error code, message) -> (content type, body)
RenderError = Callable[[str, int, str, str], tuple[bytes, bytes]]

# Where a rate limiter leaves the seconds a refused client should wait (`core.ratelimit`).
RETRY_AFTER_SCOPE_KEY = "hfbill.retry_after_s"
DISCONNECT: Message = {"type": "http.disconnect"}
CLOSE = (b"connection", b"close")


class Refusal:
    __slots__ = ("code", "message", "status")

    def __init__(self, status: int, code: str, message: str):
        self.status = status
        self.code = code
        self.message = message


def too_large(limit_bytes: int) -> Refusal:
    return Refusal(413, "body_too_large", f"The request body is larger than {limit_bytes} bytes.")


def body_deadline(deadline_s: float) -> Refusal:
    return Refusal(
        408, "body_timeout", f"The request body did not arrive whole within {deadline_s:g} s."
    )


def body_timeout(timeout_s: float) -> Refusal:
    return Refusal(
        408, "body_timeout", f"The request body did not arrive: nothing for {timeout_s:g} s."
    )


def declared_length(headers) -> tuple[int | None, bool]:
    """(Content-Length or None, whether the request has a body at all)."""
    length, chunked = None, False
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:  # the server parsed it already; never our concern
                length = None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked or bool(length)


class Edge:
    def __init__(
        self,
        app: App,
        *,
        body_limit_bytes: Callable[[str], int],
        body_timeout_s: Callable[[], float],
        render_error: RenderError,
        body_deadline_s: Callable[[], float] | None = None,
    ):
        self.app = app
        self.body_limit_bytes = body_limit_bytes
        self.body_timeout_s = body_timeout_s
        self.body_deadline_s = body_deadline_s
        self.render_error = render_error

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.body_limit_bytes(scope["path"])
        length, has_body = declared_length(scope["headers"])
        if length is not None and length > limit:
            return await self.refuse(scope, send, too_large(limit))
        body = _Body(limit, self.body_timeout_s(), has_body=has_body)
        deadline_s = self.body_deadline_s() if self.body_deadline_s is not None else None

        async def guarded_receive() -> Message:
            if body.refusal is not None:
                return DISCONNECT
            if body.complete:
                return await receive()
            loop = asyncio.get_running_loop()
            if body.deadline is None and deadline_s is not None:
                body.deadline = loop.time() + deadline_s
            wait_s, refusal = body.timeout_s, body_timeout(body.timeout_s)
            if body.deadline is not None and body.deadline - loop.time() < wait_s:
                wait_s, refusal = max(body.deadline - loop.time(), 0), body_deadline(deadline_s)
            try:
                async with asyncio.timeout(wait_s):
                    message = await receive()
            except TimeoutError:
                body.refusal = refusal
                return DISCONNECT
            if message["type"] == "http.request":
                body.size += len(message.get("body", b""))
                if body.size > body.limit:
                    body.refusal = too_large(body.limit)
                    return DISCONNECT
                body.complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if body.refusal is not None:
                    body.swallow = True  # the application answered a disconnect: we answer
                    return
                body.started = True
                extra = []
                if body.has_body and not body.complete:
                    extra.append(CLOSE)  # answered before the body was read: never read it
                if message["status"] == 429 and RETRY_AFTER_SCOPE_KEY in scope:
                    extra.append((b"retry-after", str(scope[RETRY_AFTER_SCOPE_KEY]).encode()))
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            elif body.swallow:
                return
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if body.refusal is None or body.started:
                raise
            logger.debug("edge: the application failed after a refusal", exc_info=True)
        if body.refusal is not None and not body.started:
            await self.refuse(scope, send, body.refusal)

    async def refuse(self, scope: Message, send: Send, refusal: Refusal) -> None:
        content_type, payload = self.render_error(
            scope["path"], refusal.status, refusal.code, refusal.message
        )
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(payload)).encode()),
            CLOSE,
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class _Body:
    """What the edge knows of one request's body."""

    __slots__ = (
        "complete",
        "deadline",
        "has_body",
        "limit",
        "refusal",
        "size",
        "started",
        "swallow",
        "timeout_s",
    )

    def __init__(self, limit: int, timeout_s: float, *, has_body: bool):
        self.limit = limit
        self.timeout_s = timeout_s
        self.has_body = has_body  # declared by Content-Length or Transfer-Encoding
        self.complete = False  # the application has received the whole body
        self.deadline: float | None = None  # loop time by which the whole body must be in
        self.size = 0
        self.refusal: Refusal | None = None
        self.started = False  # the application's response has started
        self.swallow = False  # the application's response is dropped (a refusal replaces it)
