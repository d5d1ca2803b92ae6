"""The edge (core/edge.py) in front of the whole ASGI application (config/asgi.py): a body above
its path's limit is refused with 413 before the application reads beyond the limit, for any
caller; a client that stops sending its body gets a 408; each answer in its path's error format
and closing the connection.

Driven at the ASGI level against `config.asgi.application` (the application uvicorn serves),
with a client that makes its body lazily (1 GB is never held) and counts every byte the server
pulls, so "not read" is exact. tests/test_served_limits_e2e.py does the same over real sockets.
"""

import asyncio
import json

import pytest
from django.test import override_settings

from config.asgi import application

GIB = 2**30
MIB = 2**20
CHUNK_BYTES = 64 * 1024
# What the application may pull before the test gives up on it (the code before the edge read
# whole bodies: the test must fail, not spool a gigabyte).
PULL_MAX_BYTES = 64 * MIB


class AsgiClient:
    """One request at the ASGI level. The body (`size_bytes` of JSON-ish filler) is produced a
    chunk at a time; `pulled_bytes` is what the application asked for."""

    def __init__(self, *, size_bytes: int, stall_after_bytes: int | None = None):
        self.size_bytes = size_bytes
        self.stall_after_bytes = stall_after_bytes
        self.pulled_bytes = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.done = asyncio.Event()

    async def receive(self) -> dict:
        if self.pulled_bytes >= self.size_bytes:
            await self.done.wait()  # the body is complete: the next event is the disconnect
            return {"type": "http.disconnect"}
        if self.stall_after_bytes is not None and self.pulled_bytes >= self.stall_after_bytes:
            await asyncio.Event().wait()  # a client that stops sending
        if self.pulled_bytes >= PULL_MAX_BYTES:
            raise AssertionError(f"the application read beyond {PULL_MAX_BYTES} bytes")
        chunk = b"x" * min(CHUNK_BYTES, self.size_bytes - self.pulled_bytes)
        self.pulled_bytes += len(chunk)
        return {
            "type": "http.request",
            "body": chunk,
            "more_body": self.pulled_bytes < self.size_bytes,
        }

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                self.done.set()


def request(
    path: str,
    *,
    size_bytes: int,
    declare_length: bool = True,
    stall_after_bytes: int | None = None,
    headers: dict | None = None,
    timeout_s: float = 30.0,
) -> AsgiClient:
    client = AsgiClient(size_bytes=size_bytes, stall_after_bytes=stall_after_bytes)
    raw_headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if declare_length:
        raw_headers.append((b"content-length", str(size_bytes).encode()))
    else:
        raw_headers.append((b"transfer-encoding", b"chunked"))
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def run():
        await asyncio.wait_for(application(scope, client.receive, client.send), timeout_s)

    asyncio.run(run())
    return client


def hub_error(client: AsgiClient) -> str:
    assert client.headers["content-type"] == "application/json"
    body = json.loads(client.body)
    assert isinstance(body["error"], str)
    return body["error_type"]


def openai_error(client: AsgiClient) -> dict:
    assert client.headers["content-type"] == "application/json"
    return json.loads(client.body)["error"]


ANONYMOUS = {}
BAD_TOKEN = {"Authorization": "Bearer hf_" + "a" * 34}


@pytest.mark.parametrize("caller", [ANONYMOUS, BAD_TOKEN], ids=["anonymous", "with a token"])
def test_a_declared_1_gb_body_is_refused_with_413_before_a_byte_is_read(caller):
    client = request("/api/partners/together/models", size_bytes=GIB, headers=caller)
    assert client.status == 413
    assert hub_error(client) == "body_too_large"
    assert client.pulled_bytes == 0
    assert client.headers["connection"] == "close"  # the rest is never read


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/together/v1/chat/completions", "/v1/models"]
)
def test_router_paths_refuse_a_1_gb_body_in_openais_format(path):
    client = request(path, size_bytes=GIB)
    assert client.status == 413
    error = openai_error(client)
    assert error["code"] == "body_too_large"
    assert error["type"] == "invalid_request_error"
    assert client.pulled_bytes == 0


def test_the_admin_refuses_a_1_gb_body_with_a_plain_page():
    client = request("/admin/login/", size_bytes=GIB)
    assert client.status == 413
    assert client.headers["content-type"].startswith("text/plain")
    assert client.pulled_bytes == 0


@override_settings(HTTP_MAX_BODY_BYTES=MIB)
def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    client = request("/api/partners/together/models", size_bytes=GIB, declare_length=False)
    assert client.status == 413
    assert hub_error(client) == "body_too_large"
    assert client.pulled_bytes <= MIB + CHUNK_BYTES
    assert client.headers["connection"] == "close"


@override_settings(HTTP_MAX_BODY_BYTES=MIB, DATA_UPLOAD_MAX_MEMORY_SIZE=8 * MIB)
def test_only_the_usage_ingest_endpoint_takes_the_larger_limit():
    ingest = request("/api/billing/usage", size_bytes=4 * MIB, declare_length=False)
    assert ingest.status == 401  # read whole and handed to the API, which wants a token
    assert ingest.pulled_bytes == 4 * MIB
    other = request("/api/organizations", size_bytes=4 * MIB, declare_length=False)
    assert other.status == 413
    too_big = request("/api/billing/usage", size_bytes=9 * MIB)
    assert too_big.status == 413
    assert too_big.pulled_bytes == 0


def test_a_body_under_the_limit_reaches_the_application():
    client = request("/api/partners/together/models", size_bytes=100_000)
    assert client.status == 401  # the API answered: no token
    assert client.pulled_bytes == 100_000


@override_settings(HTTP_BODY_TIMEOUT_S=0.2)
@pytest.mark.parametrize("caller", [ANONYMOUS, BAD_TOKEN], ids=["anonymous", "with a token"])
def test_a_client_that_stops_sending_its_body_gets_a_408(caller):
    client = request(
        "/api/partners/together/models",
        size_bytes=MIB,
        stall_after_bytes=CHUNK_BYTES,
        headers=caller,
        timeout_s=5,
    )
    assert client.status == 408
    assert hub_error(client) == "body_timeout"
    assert client.headers["connection"] == "close"
