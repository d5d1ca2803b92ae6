"""Issue 12, the router against hostile clients and hostile providers, end to end: a real web
server (uvicorn + config.asgi) in front of the real provider simulator. What the simulator
received is read from its hit log (`/_sim/hits`: every request line exactly as sent), so a test
sees whether anything reached the provider's host outside its configured chat route.

- the upstream URL comes only from the provider's configuration: traversal with `..`, `%2F`,
  `%3F`, `%23`, `%2e%2e`, `\\`, NUL... is a 404 and reaches nothing; a model id substituted into
  a route must be a model id;
- redirects are never followed; answers and streams are capped, compressed ones too;
- bad `model` values and bill-to headers are 400s naming them, never 5xx;
- responses say `nosniff` and never relay an active content type; log lines cannot be forged;
- providers on internal addresses are refused when connecting (`UPSTREAM_ALLOWED_NETWORKS`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import uuid
import zlib
from urllib.parse import urlsplit

import httpx
import pytest

from billing.models import UsageRecord
from registry.tests.factories import HubModelFactory, MappingFactory
from router.proxy import Router
from router.upstream import literal_refusal
from testsupport.processes import WebServer, wait_for

from .conftest import MESSAGES, make_provider

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


# --- helpers ----------------------------------------------------------------------------------
def raw_post(server: str, path: str, token: str | None, body=None, headers=None):
    """POSTs with the request line exactly as given (httpx would normalize `..` and escapes).
    Returns (status, lower-cased headers, body bytes)."""
    parts = urlsplit(server)
    if body is None:
        body = {"model": "x", "messages": MESSAGES}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "Content-Type: application/json", f"Content-Length: {len(content)}"]  # fmt: skip
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def openai_error(status: int, headers: dict, data: bytes) -> dict:
    """The `error` object of an OpenAI-shaped error answer."""
    assert headers["content-type"].startswith("application/json"), (status, data)
    error = json.loads(data)["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    return error


def clear_hits(sim: str) -> None:
    assert httpx.delete(f"{sim}/_sim/hits", timeout=10).status_code == 200


def upstream_hits(sim: str) -> dict[str, int]:
    """What the simulator received since `clear_hits`, its own control reads left out."""
    hits = httpx.get(f"{sim}/_sim/hits", timeout=10).json()["hits"]
    return {k: n for k, n in hits.items() if not k.endswith(" /_sim/hits")}


def set_faults(sim: str, slug: str, **faults) -> None:
    response = httpx.put(f"{sim}/{slug}/_sim/faults", json=faults, timeout=10)
    assert response.status_code == 200, response.text


def new_slug(prefix: str = "sec") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def served_model(provider, provider_model: str, model_id: str | None = None):
    hub = HubModelFactory(model_id=model_id or f"sec/{provider.slug}")
    MappingFactory(provider=provider, hub_model=hub, provider_model=provider_model, status="live")
    return hub.model_id


@pytest.fixture
def victim(server, sim, pro_token):
    """A provider on the plain route, with one model, and an empty hit log."""
    provider = make_provider(sim, new_slug())
    served_model(provider, "sec-model")
    clear_hits(sim)
    return provider


# --- 1. traversal: the upstream URL comes from the configuration only ------------------------
TRAVERSALS = [
    "/{s}/_sim/reset%3Fchat/completions",
    "/{s}/_sim/reset%23chat/completions",
    "/{s}/v1/..%2F..%2F_sim%2Freset%3F/chat/completions",
    "/{s}/%2e%2e/%2e%2e/_sim/reset%3F/chat/completions",
    "/{s}/%2E%2E/_sim/reset/chat/completions",
    "/{s}/../../_sim/reset/chat/completions",
    "/{s}/v1/../../_sim/reset?/chat/completions",
    "/{s}/internal/admin%3Fchat/completions",
    "/{s}/v1/fine-tunes%23/chat/completions",
    "/{s}/v1/chat/completion%73",
    "/{s}/v1%00/chat/completions",
    "/{s}/v1/chat/completions%0A",
    "/{s}/v1/chat/completions%00",
    "/{s}/v1\\..\\chat/completions",
    "/{s}/v1/chat/completions/",
    "/{s}//v1/chat/completions",
]


@pytest.mark.parametrize("template", TRAVERSALS)
def test_a_path_outside_the_known_routes_is_a_404_that_reaches_nothing(
    server, sim, victim, pro_token, template
):
    status, headers, data = raw_post(
        server, template.format(s=victim.slug), pro_token, {"model": "sec-model",
                                                            "messages": MESSAGES}
    )  # fmt: skip

    assert status == 404, data
    openai_error(status, headers, data)
    assert upstream_hits(sim) == {}
    assert UsageRecord.objects.count() == 0


def test_a_bad_path_is_a_404_even_without_a_token(server, sim, victim):
    status, headers, data = raw_post(server, f"/{victim.slug}/_sim/reset%3F/chat/completions", None)

    assert status == 404
    openai_error(status, headers, data)
    assert upstream_hits(sim) == {}


def test_every_known_client_route_goes_to_the_configured_route_only(server, sim, pro_token):
    provider = make_provider(sim, new_slug(), chat_route="/openai/v1/chat/completions")
    served_model(provider, "sec-model")
    clear_hits(sim)
    body = {"model": "sec-model", "messages": MESSAGES}
    routes = ["/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions",
              "/inference/v1/chat/completions", "/v1/openai/chat/completions"]  # fmt: skip

    statuses = [raw_post(server, f"/{provider.slug}{r}", pro_token, body)[0] for r in routes]

    assert statuses == [200] * len(routes)
    assert upstream_hits(sim) == {f"POST /{provider.slug}/openai/v1/chat/completions": 5}


def test_an_unknown_route_of_a_known_provider_is_a_404(server, sim, victim, pro_token):
    for route in (
        "/v1/embeddings",
        "/v1/fine-tunes/chat/completions",
        "/internal/chat/completions",
    ):
        status, headers, data = raw_post(
            server, f"/{victim.slug}{route}", pro_token, {"model": "sec-model",
                                                          "messages": MESSAGES}
        )  # fmt: skip
        assert status == 404, (route, data)
        assert openai_error(status, headers, data)["code"] == "route_not_supported"
    assert upstream_hits(sim) == {}


def test_the_hf_inference_route_must_name_the_bodys_model(server, sim, pro_token):
    provider = make_provider(
        sim, new_slug("hfi"), chat_route="/models/{providerModel}/v1/chat/completions"
    )
    model_id = served_model(provider, "acme/chat-1")
    clear_hits(sim)
    body = {"model": "acme/chat-1", "messages": MESSAGES}

    named = raw_post(server, f"/{provider.slug}/models/acme/chat-1/v1/chat/completions",
                     pro_token, body)  # fmt: skip
    other = raw_post(server, f"/{provider.slug}/models/acme/other/v1/chat/completions",
                     pro_token, body)  # fmt: skip
    alias = raw_post(server, f"/{provider.slug}/v1/chat/completions", pro_token, body)
    auto = raw_post(server, "/v1/chat/completions", pro_token,
                    {"model": model_id, "messages": MESSAGES})  # fmt: skip

    assert (named[0], alias[0], auto[0]) == (200, 200, 200), (named, alias, auto)
    assert other[0] == 404
    assert openai_error(*other)["code"] == "route_not_supported"
    assert upstream_hits(sim) == {
        f"POST /{provider.slug}/models/acme/chat-1/v1/chat/completions": 3
    }


# --- 2. a provider model substituted into a route is a model id ------------------------------
@pytest.mark.parametrize(
    "provider_model", ["../../_sim/reset?x=", "a/../../b", "/leading", "a#b", "a%2Fb", "a b"]
)
def test_a_provider_model_that_is_not_a_model_id_is_never_put_in_a_url(
    server, sim, pro_token, provider_model
):
    provider = make_provider(
        sim, new_slug("tpl"), chat_route="/models/{providerModel}/v1/chat/completions"
    )
    model_id = served_model(provider, provider_model)
    clear_hits(sim)

    auto = raw_post(server, "/v1/chat/completions", pro_token,
                    {"model": model_id, "messages": MESSAGES})  # fmt: skip
    named = raw_post(server, f"/{provider.slug}/v1/chat/completions", pro_token,
                     {"model": provider_model, "messages": MESSAGES})  # fmt: skip

    for status, headers, data in (auto, named):
        assert status == 400, data
        error = openai_error(status, headers, data)
        assert (error["code"], error["param"]) == ("invalid_model", "model")
    assert upstream_hits(sim) == {}


# --- 3. redirects ------------------------------------------------------------------------------
def test_a_redirect_is_a_502_and_is_not_followed(server, sim, pro_token):
    provider = make_provider(sim, new_slug("redir"))
    model_id = served_model(provider, "sec-model")
    internal = f"{sim}/{new_slug('internal')}/_sim/stats"
    set_faults(sim, provider.slug, redirect_to=internal)
    clear_hits(sim)

    named = raw_post(server, f"/{provider.slug}/v1/chat/completions", pro_token,
                     {"model": "sec-model", "messages": MESSAGES})  # fmt: skip
    auto = raw_post(server, "/v1/chat/completions", pro_token,
                    {"model": model_id, "messages": MESSAGES, "stream": True})  # fmt: skip

    for status, headers, data in (named, auto):
        assert status == 502, data
        assert openai_error(status, headers, data)["code"] == "upstream_redirect"
    assert upstream_hits(sim) == {f"POST /{provider.slug}/v1/chat/completions": 2}
    records = UsageRecord.objects.filter(provider=provider)
    assert sorted(records.values_list("http_status", "state")) == [(302, "not_billable")] * 2
    assert all(r.request_id.startswith(f"sim-{provider.slug}-") for r in records)


def test_a_redirect_fails_over_to_the_next_provider(server, sim, pro_token):
    hub = HubModelFactory(model_id=f"sec/{new_slug('failover')}")
    bad = make_provider(sim, new_slug("redir"))
    good = make_provider(sim, new_slug("good"))
    MappingFactory(provider=bad, hub_model=hub, provider_model="m", throughput_tps=900.0)
    MappingFactory(provider=good, hub_model=hub, provider_model="m", throughput_tps=10.0)
    set_faults(sim, bad.slug, redirect_to=f"{sim}/_sim/health", redirect_status=301)

    response = httpx.post(f"{server}/v1/chat/completions", json={"model": hub.model_id,
                          "messages": MESSAGES}, headers={"Authorization": f"Bearer {pro_token}"},
                          timeout=30)  # fmt: skip

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == good.slug
    assert UsageRecord.objects.get(provider=bad).state == "not_billable"


# --- 4. response caps and compression ---------------------------------------------------------
@pytest.fixture(scope="session")
def capped_web_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """A web server whose router caps whole answers at 2 MiB and streams at 4 MiB."""
    server = WebServer(
        tmp_path_factory.mktemp("capped") / "uvicorn.log",
        ROUTER_MAX_RESPONSE_BYTES=str(2 * MIB),
        ROUTER_MAX_STREAM_BYTES=str(4 * MIB),
    ).start()
    yield server
    server.stop()


@pytest.fixture
def capped(capped_web_server, transactional_db):
    return capped_web_server.url


@pytest.fixture
def bomber(capped, sim):
    provider = make_provider(sim, new_slug("bomb"))
    served_model(provider, "sec-model")
    return provider


def named_chat(server, provider, token, **body):
    return httpx.post(
        f"{server}/{provider.slug}/v1/chat/completions",
        json={"model": "sec-model", "messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


@pytest.mark.parametrize(("encoding", "size_mb"), [("gzip", 64), ("deflate", 64), ("identity", 3)])
def test_a_whole_answer_above_the_cap_is_a_502_and_not_billable(
    capped, sim, bomber, pro_token, encoding, size_mb
):
    set_faults(sim, bomber.slug, bomb_mb=size_mb, bomb_encoding=encoding)

    response = named_chat(capped, bomber, pro_token)

    assert response.status_code == 502, response.text[:300]
    assert response.json()["error"]["code"] == "upstream_response_too_large"
    record = UsageRecord.objects.get(provider=bomber)
    assert (record.http_status, record.state) == (200, "not_billable")
    assert "too large" in record.cost_error


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_answer_within_the_cap_is_decoded_and_relayed(
    capped, sim, bomber, pro_token, encoding
):
    set_faults(sim, bomber.slug, bomb_mb=1, bomb_encoding=encoding)

    response = named_chat(capped, bomber, pro_token)

    assert response.status_code == 200, response.text[:300]
    assert "content-encoding" not in response.headers
    assert len(response.content) == MIB
    assert response.json()["usage"]["completion_tokens"] == 1
    assert UsageRecord.objects.get(provider=bomber).state == "pending"


def test_an_unsupported_content_encoding_is_a_502(capped, sim, bomber, pro_token):
    set_faults(sim, bomber.slug, bomb_mb=1, bomb_encoding="unsupported")

    response = named_chat(capped, bomber, pro_token)

    assert response.status_code == 502, response.text[:300]
    assert response.json()["error"]["code"] == "upstream_bad_encoding"
    assert UsageRecord.objects.get(provider=bomber).state == "not_billable"


def test_a_stream_above_the_cap_ends_cleanly_with_an_error_event(capped, sim, bomber, pro_token):
    set_faults(sim, bomber.slug, bomb_mb=256)

    response = named_chat(capped, bomber, pro_token, stream=True)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert 3 * MIB < len(response.content) <= 4 * MIB + 4096
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert events[-1].startswith("data: ")
    error = json.loads(events[-1][len("data: ") :])["error"]
    assert error["code"] == "upstream_response_too_large"
    assert all(e.startswith("data: {") for e in events)
    assert "[DONE]" not in response.text
    assert UsageRecord.objects.filter(provider=bomber).count() == 1


def test_a_compressed_stream_within_the_cap_is_decoded(capped, sim, bomber, pro_token):
    set_faults(sim, bomber.slug, bomb_mb=2, bomb_encoding="deflate")

    response = named_chat(capped, bomber, pro_token, stream=True)

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    assert 2 * MIB - 100_000 < len(response.content) <= 2 * MIB


def test_the_decoder_is_bounded_and_refuses_corrupt_or_unknown_encodings():
    from router.upstream import BadEncoding, BodyDecoder, ResponseTooLarge

    bomb = zlib.compress(b"0" * (8 * MIB))
    decoder = BodyDecoder("deflate", cap=MIB)
    pieces = []
    with pytest.raises(ResponseTooLarge):
        for piece in decoder.feed(bomb):
            pieces.append(len(piece))
    assert sum(pieces) <= MIB and max(pieces) <= BodyDecoder.STEP

    exact = BodyDecoder("gzip", cap=MIB)
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    assert b"".join(exact.feed(gz.compress(b"1" * MIB) + gz.flush())) == b"1" * MIB

    with pytest.raises(BadEncoding):
        list(BodyDecoder("gzip", cap=MIB).feed(b"not gzip at all"))
    for unknown in ("br", "zstd", "gzip, gzip", "compress"):
        with pytest.raises(BadEncoding):
            BodyDecoder(unknown, cap=MIB)
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw_deflate = raw.compress(b"abc" * 1000) + raw.flush()
    assert b"".join(BodyDecoder("deflate", cap=MIB).feed(raw_deflate)) == b"abc" * 1000


# --- 5. bad model values and bill-to headers --------------------------------------------------
BAD_MODELS = [
    b'"meta-llama/Llama\\u0000"',
    b'"\\ud800"',
    b'"meta-llama/Llama-3.1-8B-Instruct\\ud800"',
    b'"llama\\n"',
    b'"llama\\u007f"',
    b'"' + b"a" * 600 + b'"',
]


@pytest.mark.parametrize("model", BAD_MODELS)
@pytest.mark.parametrize("named", [False, True])
def test_a_bad_model_value_is_a_400_naming_model(server, sim, victim, pro_token, model, named):
    body = b'{"model": ' + model + b', "messages": [{"role": "user", "content": "hi"}]}'
    path = f"/{victim.slug}/v1/chat/completions" if named else "/v1/chat/completions"

    status, headers, data = raw_post(server, path, pro_token, body)

    assert status == 400, data
    error = openai_error(status, headers, data)
    assert (error["code"], error["param"]) == ("invalid_model", "model")
    assert upstream_hits(sim) == {}


@pytest.mark.parametrize("bill_to", ["team\tname", "caf\xe9", "x" * 300, "a b"])
def test_a_bad_bill_to_header_is_a_400_naming_it(server, sim, victim, pro_token, bill_to):
    status, headers, data = raw_post(
        server, f"/{victim.slug}/v1/chat/completions", pro_token,
        {"model": "sec-model", "messages": MESSAGES}, headers={"X-HF-Bill-To": bill_to},
    )  # fmt: skip

    assert status == 400, data
    error = openai_error(status, headers, data)
    assert (error["code"], error["param"]) == ("invalid_bill_to", "X-HF-Bill-To")
    assert upstream_hits(sim) == {}


# --- 6. response headers and log lines --------------------------------------------------------
def test_every_router_answer_says_nosniff(server, sim, victim, pro_token):
    body = {"model": "sec-model", "messages": MESSAGES}
    answers = [
        raw_post(server, f"/{victim.slug}/v1/chat/completions", pro_token, body),
        raw_post(server, f"/{victim.slug}/v1/chat/completions", pro_token, {**body,
                 "stream": True}),
        raw_post(server, f"/{victim.slug}/v1/chat/completions", None, body),
        raw_post(server, f"/{victim.slug}/v1/chat/completions%3F", pro_token, body),
        raw_post(server, "/v1/chat/completions", pro_token, b"{"),
    ]  # fmt: skip

    assert [a[0] for a in answers] == [200, 200, 401, 404, 400]
    for _status, headers, _data in answers:
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        ("text/html; charset=utf-8", "text/plain; charset=utf-8"),
        ("image/svg+xml", "text/plain; charset=utf-8"),
        ("application/javascript", "text/plain; charset=utf-8"),
        ("application/json; charset=utf-8", "application/json; charset=utf-8"),
        ("application/problem+json", "application/problem+json"),
        ("text/plain", "text/plain"),
    ],
)
def test_only_inert_content_types_are_relayed(server, sim, victim, pro_token, sent, relayed):
    set_faults(sim, victim.slug, chat_content_type=sent)

    status, headers, _data = raw_post(
        server, f"/{victim.slug}/v1/chat/completions", pro_token,
        {"model": "sec-model", "messages": MESSAGES},
    )  # fmt: skip

    assert status == 200
    assert headers["content-type"] == relayed
    assert headers["x-content-type-options"] == "nosniff"


def call_router(scope: dict) -> list[dict]:
    """Calls the router ASGI app in-process; returns what it sent."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(Router()(scope, receive, send))
    return sent


@pytest.mark.parametrize(
    ("path", "raw_path", "logged"),
    [
        ("/p/x\nFORGED 200 OK/chat/completions", b"/p/x%0AFORGED%20200%20OK/chat/completions",
         "/p/x%0AFORGED%20200%20OK/chat/completions"),
        ("/p/x\r\nFORGED\x1b[2J/chat/completions", None,
         "/p/x\\r\\nFORGED\\x1b[2J/chat/completions"),
    ],
)  # fmt: skip
def test_a_path_cannot_forge_log_lines(caplog, path, raw_path, logged):
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"authorization", b"Bearer hf_x")]}  # fmt: skip
    if raw_path is not None:
        scope["raw_path"] = raw_path

    with caplog.at_level(logging.INFO, logger="router"):
        sent = call_router(scope)

    assert sent[0]["status"] == 404
    messages = [r.getMessage() for r in caplog.records if r.name == "router"]
    assert messages, caplog.records
    for message in messages:
        assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert any(logged in m for m in messages), messages


# --- 7. internal addresses are refused when connecting ----------------------------------------
@pytest.fixture(scope="session")
def walled_web_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """A web server that may reach no internal address (a documentation range is allowed, so
    the setting is not empty)."""
    server = WebServer(
        tmp_path_factory.mktemp("walled") / "uvicorn.log", UPSTREAM_ALLOWED_NETWORKS="192.0.2.0/24"
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_a_provider_on_an_internal_address_is_refused_when_connecting(
    walled_web_server, transactional_db, sim, pro_token, host
):
    port = urlsplit(sim).port
    slug = new_slug("inside")
    provider = make_provider(sim, slug)
    provider.base_url = f"http://{host}:{port}/{slug}"
    provider.save()
    model_id = served_model(provider, "sec-model")
    clear_hits(sim)
    start = len(walled_web_server.output())

    named = raw_post(walled_web_server.url, f"/{slug}/v1/chat/completions", pro_token,
                     {"model": "sec-model", "messages": MESSAGES})  # fmt: skip
    auto = raw_post(walled_web_server.url, "/v1/chat/completions", pro_token,
                    {"model": model_id, "messages": MESSAGES})  # fmt: skip

    for status, headers, data in (named, auto):
        assert status == 502, data
        assert openai_error(status, headers, data)["code"] == "upstream_unavailable"
    assert upstream_hits(sim) == {}
    assert wait_for(lambda: "internal address" in walled_web_server.output()[start:], 10)
    records = UsageRecord.objects.filter(provider=provider)
    assert sorted(records.values_list("http_status", "state")) == [(None, "not_billable")] * 2


def test_a_base_url_with_a_non_ascii_host_is_refused_before_connecting():
    """aiohttp maps a non-ASCII host (NFKC, IDNA) and may connect to the IP literal it becomes
    without asking the guarded resolver: 127.0.0.1 written in bold digits is 127.0.0.1 (found
    by review)."""
    assert literal_refusal(
        "http://\U0001d7cf\U0001d7d0\U0001d7d5.\U0001d7ce.\U0001d7ce.\U0001d7cf/"
    )
    assert literal_refusal("http://8.8.8.8/") is None
