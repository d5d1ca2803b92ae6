"""Issue 12 findings 7 and 8 against the served web process, as `make run` starts it
(config/serve.py: uvicorn with its protocol and limits, the edge in front of Django and the
router): oversized bodies are refused with 413 without being read or written to disk, slow or
idle clients are disconnected within the configured timeouts, the connection limit holds, and
the router limits each token's request rate (shared in Redis, failing open without it).

Each server runs with small limits (seconds, not the production defaults) so the tests are quick.
"""

import contextlib
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings

from accounts.tests.factories import MembershipFactory, UserFactory, token_for
from registry.tests.factories import HubModelFactory, MappingFactory
from testsupport.processes import WebServer

pytestmark = pytest.mark.e2e

GIB = 2**30
MIB = 2**20
CHUNK_BYTES = 64 * 1024
TIMEOUT_S = 1.0  # the header, body and keep-alive timeouts of the server under test
SLACK_S = 1.5  # scheduling noise on a shared 2-core machine
# A refused upload stops before the client sent this much (loopback socket buffers hold a few
# MB in flight before the refusal reaches the client).
SENT_MAX_BYTES = 16 * MIB
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def web(tmp_path_factory, django_db_setup, django_db_blocker):
    root = tmp_path_factory.mktemp("limits")
    server_tmp = root / "server-tmp"
    server_tmp.mkdir()
    server = WebServer(
        root / "web.log",
        HTTP_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_BODY_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_KEEPALIVE_TIMEOUT_S=str(TIMEOUT_S),
        ROUTER_RATE_LIMIT="3/min",
        TMPDIR=str(server_tmp),  # where Django would spool a large body
    ).start()
    server.tmp = server_tmp
    yield server
    server.stop()


def address(server: WebServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def written_bytes(server: WebServer) -> int:
    """Bytes the server process has passed to write(2): files (a spooled body, its log)."""
    io = Path(f"/proc/{server.proc.pid}/io").read_text()
    return int(next(line for line in io.splitlines() if line.startswith("wchar:")).split()[1])


def upload(url: str, *, size_bytes: int = GIB, declare_length: bool = True, headers=None):
    """POSTs a `size_bytes` body made lazily by a generator; returns (response, bytes handed
    to the connection)."""
    sent = 0

    def body():
        nonlocal sent
        chunk = b"x" * CHUNK_BYTES
        while sent < size_bytes:
            sent += len(chunk)
            yield chunk

    request_headers = {"Content-Type": "application/json", **(headers or {})}
    if declare_length:
        request_headers["Content-Length"] = str(size_bytes)
    response = httpx.post(url, content=body(), headers=request_headers, timeout=120)
    return response, sent


def make_router_token(provider, *, username: str) -> tuple[str, str]:
    """A pro user's write token and a live model served by the simulator `provider`."""
    model_id = f"limits/{provider.slug}"
    MappingFactory(provider=provider, hub_model=HubModelFactory(model_id=model_id),
                   provider_model="limits-model", status="live")  # fmt: skip
    user = UserFactory(username=username, plan="pro")
    return token_for(user, "write"), model_id


def chat(server: WebServer, token: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


# --- finding 7: bodies ----------------------------------------------------------------------------
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_a_1_gb_anonymous_upload_is_refused_with_413_and_never_written_to_disk(web, declare_length):
    written_before = written_bytes(web)
    response, sent = upload(
        f"{web.url}/api/partners/together/models", declare_length=declare_length
    )
    assert response.status_code == 413, response.text
    assert response.json()["error_type"] == "body_too_large"
    assert sent < SENT_MAX_BYTES, f"the client sent {sent:,} bytes before the answer"
    assert written_bytes(web) - written_before < MIB  # a log line, not a spooled body
    assert list(web.tmp.iterdir()) == []


@pytest.mark.django_db(transaction=True)
def test_an_authenticated_oversized_body_gets_413_in_the_hub_format_not_500(web):
    # Above DATA_UPLOAD_MAX_MEMORY_SIZE (20 MB) Django raised RequestDataTooBig: a 500.
    token = token_for(UserFactory(username=f"big-{uuid.uuid4().hex[:6]}"), "write")
    for size_bytes in (2 * MIB, 25 * MIB):
        response, _ = upload(
            f"{web.url}/api/settings/tokens",
            size_bytes=size_bytes,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error_type"] == "body_too_large"
        assert "1048576 bytes" in response.json()["error"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_the_router_refuses_a_1_gb_body_of_an_authenticated_caller_in_openais_format(
    web, declare_length
):
    token = token_for(UserFactory(username=f"router-big-{uuid.uuid4().hex[:6]}"), "write")
    response, sent = upload(
        f"{web.url}/v1/chat/completions",
        declare_length=declare_length,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    assert sent < SENT_MAX_BYTES + 16 * MIB  # the router's limit is 16 MB


def test_an_answer_given_before_the_body_was_read_closes_the_connection(web):
    # The router refuses a request without a token before reading its body: the rest of the
    # body must not be read and thrown away (for as long as the client sends); it is closed.
    with socket.create_connection(address(web)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n10000\r\n" + b"x" * 0x10000 + b"\r\n"
        )
        chunk = b"10\r\n" + b"x" * 16 + b"\r\n"  # the body goes on, 16 bytes at a time
        closed_after_s, received = seconds_until_closed(sock, drip=chunk)
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 401 "), received[:200]
    assert b"connection: close" in head
    assert received.count(b"HTTP/1.1 ") == 1
    assert closed_after_s is not None
    assert closed_after_s < SLACK_S


# --- finding 8: timeouts and the connection limit -------------------------------------------------
def seconds_until_closed(sock: socket.socket, *, drip: bytes = b"", limit_s: float = 10.0):
    """Sends `drip` every 0.2 s until the server closes the connection; the time it took (None
    if still open after `limit_s`). Also returns what the server sent."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < limit_s:
        try:
            if drip:
                sock.sendall(drip)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - started, received
        if not data:
            return time.monotonic() - started, received
        received += data
    return None, received


def test_a_slowloris_client_is_disconnected_within_the_header_timeout(web):
    with socket.create_connection(address(web)) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed_after_s, received = seconds_until_closed(sock, drip=b"X-Slow: 1\r\n")
    assert closed_after_s is not None, "the connection was still open after 10 s"
    assert closed_after_s < TIMEOUT_S + SLACK_S
    assert b"200" not in received


def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout(web):
    with socket.create_connection(address(web)) as sock:
        closed_after_s, _ = seconds_until_closed(sock)
    assert closed_after_s is not None, "the connection was still open after 10 s"
    assert closed_after_s < TIMEOUT_S + SLACK_S


def test_oversized_headers_are_refused_with_431(web):
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200))
    with socket.create_connection(address(web)) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        closed_after_s, received = seconds_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert closed_after_s is not None


def test_a_client_that_stops_sending_its_body_gets_408_within_the_body_timeout(web):
    with socket.create_connection(address(web)) as sock:
        sock.sendall(
            b"POST /api/partners/together/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"task": '
        )
        closed_after_s, received = seconds_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b'"error_type":"body_timeout"' in received.replace(b" ", b"")
    assert closed_after_s is not None
    assert closed_after_s < TIMEOUT_S + SLACK_S


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(web):
    with socket.create_connection(address(web)) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        closed_after_s, _ = seconds_until_closed(sock)
    assert closed_after_s is not None
    assert closed_after_s < TIMEOUT_S + SLACK_S


def test_connections_beyond_the_concurrency_limit_get_a_429_never_a_503(tmp_path, django_db_setup):
    """A 429 with Retry-After in the path's format: @huggingface/inference retries a 503 at
    once and for ever, which would turn an overload into a storm."""
    server = WebServer(tmp_path / "web.log", HTTP_LIMIT_CONCURRENCY="4").start()
    try:
        idle = [socket.create_connection(address(server)) for _ in range(4)]
        try:
            busy = httpx.get(f"{server.url}/api/health", timeout=10)
            assert busy.status_code == 429
            assert busy.headers["Retry-After"] == "1"
            assert busy.json()["error_type"] == "server_busy"
            routed = httpx.post(f"{server.url}/v1/chat/completions", json={}, timeout=10)
            assert routed.status_code == 429
            assert routed.json()["error"]["code"] == "server_busy"
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/api/health", timeout=10).status_code == 200
    finally:
        server.stop()


# --- finding 8: the router's rate limit per token -------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_router_limits_each_tokens_rate_with_429_and_retry_after(web, provider):
    token, model = make_router_token(provider, username="limited-a")
    other = token_for(UserFactory(username="limited-b", plan="pro"), "write")
    statuses = [chat(web, token, model).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = chat(web, token, model)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert chat(web, other, model).status_code == 200  # another token has its own budget


class TcpRelay:
    """A TCP relay to `target` on a free port, which the test can cut (a Redis going away)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.is_cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                if self.is_cut:
                    client.close()
                    return
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.is_cut = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.django_db(transaction=True)
def test_when_redis_goes_away_the_router_fails_open_and_says_so(tmp_path, provider):
    redis = urlsplit(settings.REDIS_URL)
    relay = TcpRelay((redis.hostname, redis.port))
    server = WebServer(
        tmp_path / "web.log",
        ROUTER_RATE_LIMIT="2/min",
        REDIS_URL=f"redis://127.0.0.1:{relay.port}{redis.path}",
    ).start()
    try:
        token, model = make_router_token(provider, username="no-redis")
        assert [chat(server, token, model).status_code for _ in range(3)] == [200, 200, 429]
        relay.cut()
        statuses = [chat(server, token, model).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]  # not counted: allowed, with a warning
        assert "rate limit not applied (router): Redis unreachable" in server.output()
    finally:
        server.stop()
        relay.cut()


# --- the partner write API through the served process ---------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_partner_writes_are_limited_per_token_through_the_served_process(tmp_path, provider):
    server = WebServer(tmp_path / "web.log", PARTNER_WRITE_RATE_LIMIT="2/min").start()
    try:
        engineer = UserFactory(username="limits-engineer")
        MembershipFactory(user=engineer, organization=provider.organization, role="write")
        token = token_for(engineer, "write")
        statuses = []
        for n in range(3):
            HubModelFactory(model_id=f"limits/partner-{n}")
            response = httpx.post(
                f"{server.url}/api/partners/{provider.slug}/models",
                json={"task": "conversational", "hfModel": f"limits/partner-{n}",
                      "providerModel": f"model-{n}"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )  # fmt: skip
            statuses.append(response.status_code)
        assert statuses == [201, 201, 429], response.text
        assert response.json()["error_type"] == "throttled"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        listing = httpx.get(f"{server.url}/api/partners/{provider.slug}/models", timeout=30)
        assert listing.status_code == 200  # reads are not limited
        assert json.loads(listing.text)
    finally:
        server.stop()
