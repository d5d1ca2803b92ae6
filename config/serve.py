"""The web process: uvicorn serving `config.asgi:application` with the limits of
docs/operations.md "Limits". The one way the project serves HTTP:

    python -m config.serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--log-level info]

`make run` (scripts/devctl.py), the test suites' web server (testsupport.processes.WebServer)
and the router benchmark all start this module, so they run what production runs. Every limit
is a setting (config/settings.py):

- HTTP_HEADER_TIMEOUT_S: a request's headers must be complete this long after the connection
  opened (or after the request's first byte on a kept-alive connection), else the connection
  is closed. uvicorn has no such deadline: a client sending a header line every few seconds
  held a connection for as long as it liked (slowloris).
- HTTP_MAX_HEADER_BYTES: larger headers get a 431 and the connection is closed (httptools,
  uvicorn's parser, has no limit: 20 MB of headers were accepted).
- HTTP_KEEPALIVE_TIMEOUT_S: an idle kept-alive connection is closed after this long.
- HTTP_LIMIT_CONCURRENCY: connections plus running requests per process; beyond it a 429 with
  `Retry-After: 1` in the path's error format (`overloaded`), not uvicorn's 503:
  @huggingface/inference retries a 503 at once and for ever
  (../shared/reference/client-wire-formats.md), which would turn an overload into a storm.
The body limits and the body timeout are the edge's (core/edge.py), in front of the app.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

APP = "config.asgi:application"
PROTOCOL = "config.serve:LimitedHttpToolsProtocol"


OVERLOADED_RETRY_AFTER_S = 1


async def overloaded(scope, receive, send) -> None:
    """What a request beyond HTTP_LIMIT_CONCURRENCY gets instead of uvicorn's 503."""
    from config.asgi import render_error  # loaded by then: uvicorn imported the app first

    content_type, body = render_error(
        scope["path"], 429, "server_busy", "The server is at its connection limit; retry shortly."
    )
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(OVERLOADED_RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# uvicorn's httptools protocol picks this module-level app when over the limit.
httptools_impl.service_unavailable = overloaded


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for a request's headers and a cap on their
    size. Everything else is uvicorn's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from django.conf import settings  # configured: uvicorn loaded the app first

        self.header_timeout_s: float = settings.HTTP_HEADER_TIMEOUT_S
        self.header_max_bytes: int = settings.HTTP_MAX_HEADER_BYTES
        self.header_timer: asyncio.TimerHandle | None = None
        self.header_bytes = 0  # received since the current request's headers began
        self.reading_headers = True

    # --- the deadline --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline_start()  # a connection that sends nothing is closed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_headers = True
        if self.header_timer is None:
            self._header_deadline_start()

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self.header_bytes = 0
        self._header_deadline_cancel()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline_cancel()
        super().connection_lost(exc)

    def _header_deadline_start(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _header_deadline_cancel(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request arriving while the previous one is answered: its turn
            # comes when that response is done.
            self._header_deadline_start()
            return
        if not self.transport.is_closing():
            self.logger.debug(
                "Request headers incomplete after %s s: closing.", self.header_timeout_s
            )
            self.transport.close()

    # --- the size ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if self.reading_headers or idle:
            self.header_bytes += len(data)
        super().data_received(data)
        if (
            self.reading_headers
            and self.header_bytes > self.header_max_bytes
            and not self.transport.is_closing()
        ):
            self._send_431()

    def _send_431(self) -> None:
        message = b"Request headers too large.\n"
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(message)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    message,
                ]
            )
        )
        self.transport.close()


def options() -> dict:
    """uvicorn's options for the served configuration, from the settings."""
    from django.conf import settings

    return {
        "http": PROTOCOL,
        "ws": "none",  # no WebSocket endpoint exists
        "access_log": False,  # the router logs each request itself, without tokens or bodies
        "server_header": False,
        "limit_concurrency": settings.HTTP_LIMIT_CONCURRENCY,
        "timeout_keep_alive": settings.HTTP_KEEPALIVE_TIMEOUT_S,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run(
        APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        **options(),
    )


if __name__ == "__main__":
    main()
