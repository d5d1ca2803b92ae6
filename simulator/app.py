"""Provider simulator: one ASGI application speaking the APIs of any number of providers.

Run it (no Django needed):

    .venv/bin/uvicorn simulator.app:app --host 127.0.0.1 --port 8001
    .venv/bin/python -m simulator --port 8001

The first path segment selects the provider: the base URL of provider `together` is
`http://127.0.0.1:8001/together`. A provider's state (switches, models, counters) is created on
first use and kept in memory until reset. Everything below is relative to `/<slug>`.

Provider API
------------
`POST /v1/chat/completions` (also `/inference/v1/…` Fireworks, `/openai/v1/…` Groq,
`/compatibility/v1/…` Cohere, `/v1/openai/chat/completions` DeepInfra,
`/v3/openai/chat/completions` Novita, `/api/paas/v4/chat/completions` Z.ai,
`/models/<model id>/v1/chat/completions` HF Inference)
    OpenAI-compatible chat completion. `Authorization: Bearer sim-<slug>-key` (or the
    `api_key` switch), else 401. Body: `model` and `messages` required (else 400 naming the
    field), `stream`, `max_tokens`, `tools`, `tool_choice`, `response_format`. The answer is
    deterministic (see `simulator.chat`); `stream: true` sends SSE `chat.completion.chunk`s,
    a final chunk with `finish_reason` and `usage`, then `data: [DONE]`, each as its own body
    message. Every answer (errors too) carries the request-ID header (`Inference-Id` by
    default) with a fresh `sim-<slug>-<24 hex>`.
`GET /v1/models` (also under the route prefixes above; no auth)
    `{"object": "list", "data": [{id, object, created, owned_by, pricing: {input, output}
    (USD per million tokens), context_length}]}`; a default list, or the one set with
    `PUT /_sim/models`.
`POST /costs`
    The cost endpoint. Same bearer key. `{"requestIds": [...]}` (at most 10,000, else 413;
    not a list of strings: 400). Answers `{"requests": [{"requestId", "costNanoUsd"}]}` for
    each distinct asked ID starting with `sim-<slug>-`, with the cost
    `simulator.costs.cost_nanousd(id)`; other IDs are left out.

Control (no auth: a development tool, never expose it)
-------
`GET|PUT /_sim/faults`   read / replace all switches (`{}` resets them; unknown switch: 400)
`GET|PUT /_sim/models`   read / replace the `/v1/models` list (a JSON array of objects with
                         an `id`; `null` restores the default list)
`GET /_sim/stats`        counters: chat_requests, chat_streams, models_requests,
                         cost_requests, ids_asked, ids_answered (entries returned),
                         ids_asked_issued (asked IDs this process issued), ids_issued,
                         ids_remembered, paths ({"METHOD /path?query": count} of the requests
                         under the provider, control requests excepted)
`POST /_sim/reset`       forget this provider (switches, models, counters, issued IDs)
And at the root: `POST /_sim/reset` forgets every provider; `GET /_sim/health` answers 200;
`GET /_sim/hits` is every request received ({"hits": {"METHOD raw-path?query": count}}, the
path exactly as sent, control requests included; not cleared by resets) and
`DELETE /_sim/hits` clears it.

Fault switches (all optional; PUT replaces the whole set)
-------------
latency_ms (int)          sleep this long before answering chat, models and cost requests
chunk_delay_ms (int)      sleep this long between SSE messages of a stream
error_status (int)        answer this status (400-599) with a JSON error, before auth
error_on (str)            where error_status and timeout apply: chat|models|costs|all (default)
timeout (bool)            hang instead of answering (120 s, or until the client disconnects;
                          then 504)
negative_costs, float_costs, string_costs, missing_costs, null_costs, duplicate_ids,
withheld (fraction 0..1)  corrupt that share of the cost entries: -cost; cost + 0.5; the cost
                          as a string; no costNanoUsd; costNanoUsd null; a second entry with
                          twice the cost appended; the ID left out. Victims are chosen by
                          `simulator.costs.affected(id, fraction, switch name)`; an ID hit by
                          several per-entry switches gets the first of withheld, missing, null,
                          string, float, negative
hostile_cost (str)        overflow | huge_exponent | deep | absurd: the hit IDs' costNanoUsd is
                          the raw JSON 2**63, `1e1000000`, a 10**4-deep array, or 10**17
                          (before any other cost switch); the hit IDs are those starting with
hostile_cost_prefix (str) this prefix, and/or chosen by
hostile_cost_fraction     `simulator.costs.affected(id, fraction, "hostile_cost")` (one of the
                          two is required with hostile_cost, and hostile_cost with either)
unasked_ids (int)         append that many entries for IDs nobody asked for
                          (`simulator.costs.unasked_id(slug, n)`)
requests_null (bool)      answer `{"requests": null}`
models_bad (str)          break `/v1/models`: missing_pricing (no `pricing`) | negative |
                          string | absurd (prices of those kinds) | not_json (an HTML body)
garbage_body (bool)       answer 200 with a body that is not JSON (still labelled JSON)
huge_body_mb (int)        pad the cost answer with a `padding` field to this many MiB
fixed_cost_nanousd (int)  the cost endpoint answers this cost for every known ID (no other
                          cost switch applies)
break_stream_after (int)  a stream stops after this many messages without [DONE], and the
                          connection is dropped (a provider crashing mid-answer)
omit_request_id_header    chat answers lack the request-ID header
request_id_header (str)   the request-ID header name (default Inference-Id)
api_key (str)             the expected bearer key (default sim-<slug>-key)
redirect_to (str)         chat answers redirect_status (default 302) with `Location:` this
redirect_status (int)     URL (before auth), as a hostile provider steering its client
bomb_mb (int)             a valid chat request gets a well-formed answer of this many MiB,
bomb_encoding (str)       compressed lazily (`simulator.bombs`): gzip (default) | deflate |
                          identity | unsupported (gzip bytes labelled `br`)
chat_content_type (str)   the Content-Type of whole (not streamed) chat answers
The cost-body switches (corruptions, unasked_ids, requests_null, garbage_body, huge_body_mb)
apply to the cost endpoint only. Unknown paths answer 404 JSON, wrong methods 405 JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from simulator import bombs
from simulator.chat import (
    ChatError,
    complete,
    completion_body,
    parse_chat_request,
    stream_chunks,
)
from simulator.costs import MAX_IDS_PER_REQUEST, cost_entries, entries_json
from simulator.faults import FaultError, Faults, Scope, parse_faults
from simulator.state import MAX_PATHS, HitLog, ProviderState, Registry, count

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHAT_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/inference/v1/chat/completions",
        "/openai/v1/chat/completions",
        "/compatibility/v1/chat/completions",
        "/v1/openai/chat/completions",
        "/v3/openai/chat/completions",
        "/api/paas/v4/chat/completions",
    }
)
MODELS_ROUTES = frozenset(route.replace("/chat/completions", "/models") for route in CHAT_ROUTES)
_HF_INFERENCE_CHAT = re.compile(r"^/models/.+/v1/chat/completions$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

MAX_BODY_BYTES = 8 * 1024 * 1024
HANG_SECONDS = 120.0
_MIB = 1024 * 1024
_PADDING_BLOCK = b"x" * _MIB
GARBAGE_BODY = b"<html><body><h1>Bad Gateway</h1>upstream sent garbage</body></html>\n"
JSON = "application/json"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Response:
    """What a handler answers; `stream` bodies are sent one message per item."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    content_length: int | None = None
    stats: Any = None  # a stream's provider counters (completed / abandoned)


_BAD_PRICING: dict[str, Any] = {
    "negative": {"input": -0.5, "output": -1},
    "string": {"input": "0.18", "output": "cheap"},
    "absurd": {"input": 1_000_000, "output": 1e300},
}


def _bad_models(state: ProviderState) -> list[dict[str, Any]]:
    """The model list, broken as `models_bad` says (every entry: `missing_pricing` drops its
    `pricing`, the others replace it)."""
    models = state.model_list()
    bad = state.faults.models_bad
    if bad == "missing_pricing":
        return [{k: v for k, v in model.items() if k != "pricing"} for model in models]
    if bad in _BAD_PRICING:
        return [{**model, "pricing": _BAD_PRICING[bad]} for model in models]
    return models


def json_response(status: int, value: Any) -> Response:
    return Response(status, dumps(value))


def error_response(
    status: int, message: str, kind: str, code: str, param: str | None = None
) -> Response:
    """The OpenAI-style error body `{"error": {"message", "type", "code", "param"}}`."""
    error = {"message": message, "type": kind, "code": code, "param": param}
    return json_response(status, {"error": error})


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class Request:
    """An HTTP request: method, path, lower-cased headers, the body on demand."""

    def __init__(self, scope: Message, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: str = scope.get("query_string", b"").decode("latin-1")
        self.headers: dict[str, str] = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        self._receive = receive
        self._body: bytes | None = None

    async def body(self) -> bytes:
        if self._body is None:
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise BodyTooLarge
            parts: list[bytes] = []
            size = 0
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                part = message.get("body", b"")
                size += len(part)
                if size > MAX_BODY_BYTES:
                    raise BodyTooLarge
                parts.append(part)
                if not message.get("more_body"):
                    break
            self._body = b"".join(parts)
        return self._body

    async def json(self) -> Any:
        """The decoded JSON body; raises ValueError if it is not JSON."""
        return json.loads(await self.body())

    async def wait_disconnect(self, timeout: float) -> bool:
        """Waits until the client disconnects (True) or `timeout` seconds pass (False)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        return True
        except TimeoutError:
            return False

    def bearer(self) -> str | None:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class SimulatorApp:
    """The ASGI application. `app` below is the instance uvicorn serves."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.hits = HitLog()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        self.hits.add(scope["method"], raw_path, scope.get("query_string", b""))
        request = Request(scope, receive)
        try:
            response = await self.dispatch(request)
        except BodyTooLarge:
            response = error_response(
                413,
                f"the body exceeds {MAX_BODY_BYTES} bytes",
                "invalid_request_error",
                "too_large",
            )
        except ClientGone:
            return
        await send_response(send, response, receive)

    async def dispatch(self, request: Request) -> Response:
        path = request.path
        if path in ("/_sim/reset", "/_sim/health", "/_sim/hits"):
            return self._root_control(request)
        slug, _, rest = path[1:].partition("/")
        rest = "/" + rest.rstrip("/")
        if not _SLUG.match(slug):
            return not_found(request)
        if not rest.startswith("/_sim/"):
            line = f"{request.method} {rest}" + (f"?{request.query}" if request.query else "")
            count(self.registry.get(slug).stats.paths, line, MAX_PATHS)
        if rest in CHAT_ROUTES or _HF_INFERENCE_CHAT.match(rest):
            return self._only(request, "POST") or await self.chat(slug, request)
        if rest in MODELS_ROUTES:
            return self._only(request, "GET") or await self.models(slug, request)
        if rest == "/costs":
            return self._only(request, "POST") or await self.costs(slug, request)
        if rest == "/_sim/faults":
            return self._only(request, "GET", "PUT") or await self.faults(slug, request)
        if rest == "/_sim/models":
            return self._only(request, "GET", "PUT") or await self.set_models(slug, request)
        if rest == "/_sim/stats":
            return self._only(request, "GET") or json_response(
                200, self.registry.get(slug).stats_json()
            )
        if rest == "/_sim/reset":
            if bad := self._only(request, "POST"):
                return bad
            self.registry.reset(slug)
            return json_response(200, {"reset": slug})
        return not_found(request)

    # ----- provider API -------------------------------------------------------------------

    async def chat(self, slug: str, request: Request) -> Response:
        state = self.registry.get(slug)
        state.stats.chat_requests += 1
        faults = state.faults

        def answer(response: Response, request_id: str | None = None) -> Response:
            """Adds the request-ID header (a fresh ID unless given) to a chat answer."""
            request_id = request_id or state.issue_request_id()
            if not faults.omit_request_id_header:
                response.headers.append((faults.request_id_header, request_id))
            return response

        if early := await self._outage(faults, "chat", request):
            return answer(early)
        if faults.redirect_to:
            redirect = error_response(
                faults.redirect_status, "moved", "invalid_request_error", "redirect"
            )
            redirect.headers.append(("Location", faults.redirect_to))
            return answer(redirect)
        if not self._authorized(state, request):
            return answer(unauthorized())
        try:
            chat_request = parse_chat_request(await request.json())
        except ValueError as exc:
            field_name = exc.field if isinstance(exc, ChatError) else "body"
            message = str(exc) if isinstance(exc, ChatError) else "the body is not valid JSON"
            return answer(
                error_response(400, message, "invalid_request_error", "invalid_body", field_name)
            )
        request_id = state.issue_request_id()
        response = answer(Response(200), request_id)
        response_id = "chatcmpl-" + request_id.rsplit("-", 1)[-1]
        completion = complete(slug, chat_request, call_id="call_" + secrets.token_hex(8))
        created, model = int(time.time()), chat_request.model
        if faults.bomb_mb:
            return _bomb(response, faults, stream=chat_request.stream, model=model)
        if not chat_request.stream:
            response.body = dumps(
                completion_body(completion, response_id=response_id, created=created, model=model)
            )
            if faults.chat_content_type:
                response.content_type = faults.chat_content_type
            return response
        state.stats.chat_streams += 1
        chunks = stream_chunks(completion, response_id=response_id, created=created, model=model)
        response.content_type = "text/event-stream"
        response.headers.append(("Cache-Control", "no-cache"))
        response.stream = _sse(chunks, faults.chunk_delay_ms / 1000, faults.break_stream_after)
        response.stats = state.stats
        return response

    async def models(self, slug: str, request: Request) -> Response:
        state = self.registry.get(slug)
        state.stats.models_requests += 1
        if early := await self._outage(state.faults, "models", request):
            return early
        if state.faults.models_bad == "not_json":
            return Response(200, b"<html>not json</html>")
        return json_response(200, {"object": "list", "data": _bad_models(state)})

    async def costs(self, slug: str, request: Request) -> Response:
        state = self.registry.get(slug)
        state.stats.cost_requests += 1
        faults = state.faults
        if early := await self._outage(faults, "costs", request):
            return early
        if not self._authorized(state, request):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return bad_request("the body is not valid JSON", "body")
        ids = body.get("requestIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(rid, str) for rid in ids):
            return bad_request("'requestIds' must be an array of strings", "requestIds")
        if len(ids) > MAX_IDS_PER_REQUEST:
            return error_response(
                413,
                f"at most {MAX_IDS_PER_REQUEST} requestIds per request (got {len(ids)})",
                "invalid_request_error",
                "too_many_ids",
                "requestIds",
            )
        asked = list(dict.fromkeys(ids))
        issued = state.issued
        state.stats.ids_asked += len(ids)
        state.stats.ids_asked_issued += sum(1 for rid in asked if rid in issued)
        if faults.garbage_body:
            return Response(200, GARBAGE_BODY)
        if faults.requests_null:
            return json_response(200, {"requests": None})
        entries = cost_entries(slug, asked, faults)
        state.stats.ids_answered += len(entries)
        if faults.huge_body_mb:
            return _padded(entries, faults.huge_body_mb * _MIB)
        return Response(200, b'{"requests":' + entries_json(entries) + b"}")

    # ----- control ------------------------------------------------------------------------

    async def faults(self, slug: str, request: Request) -> Response:
        state = self.registry.get(slug)
        if request.method == "PUT":
            try:
                state.faults = parse_faults(await request.json())
            except FaultError as exc:
                return bad_request(str(exc), exc.field)
            except ValueError:
                return bad_request("the body is not valid JSON", "body")
        return json_response(200, state.faults.given)

    async def set_models(self, slug: str, request: Request) -> Response:
        state = self.registry.get(slug)
        if request.method == "PUT":
            try:
                models = await request.json()
            except ValueError:
                return bad_request("the body is not valid JSON", "body")
            if models is not None:
                if not isinstance(models, list):
                    return bad_request("the body must be an array of models (or null)", "body")
                for index, model in enumerate(models):
                    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
                        return bad_request(
                            f"models[{index}] must be an object with a string 'id'",
                            f"models[{index}].id",
                        )
            state.models = models
        return json_response(200, state.model_list())

    def _root_control(self, request: Request) -> Response:
        if request.path == "/_sim/hits":
            if bad := self._only(request, "GET", "DELETE"):
                return bad
            if request.method == "DELETE":
                self.hits.counts.clear()
            return json_response(200, {"hits": self.hits.counts})
        if request.path == "/_sim/health":
            if request.method != "GET":
                return method_not_allowed(("GET",))
            return json_response(200, {"status": "ok"})
        if request.method != "POST":
            return method_not_allowed(("POST",))
        self.registry.reset()
        return json_response(200, {"reset": "all"})

    # ----- helpers ------------------------------------------------------------------------

    @staticmethod
    def _only(request: Request, *methods: str) -> Response | None:
        return None if request.method in methods else method_not_allowed(methods)

    @staticmethod
    def _authorized(state: ProviderState, request: Request) -> bool:
        token = request.bearer()
        return token is not None and secrets.compare_digest(token.encode(), state.api_key.encode())

    @staticmethod
    async def _outage(faults: Faults, endpoint: Scope, request: Request) -> Response | None:
        """Applies latency, then the timeout and error switches; a Response if one fires."""
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.timeout and faults.applies_to(endpoint):
            if await request.wait_disconnect(HANG_SECONDS):
                raise ClientGone
            return error_response(504, "simulated timeout", "server_error", "simulated_timeout")
        if faults.error_status and faults.applies_to(endpoint):
            return error_response(
                faults.error_status,
                f"simulated failure (error_status={faults.error_status})",
                "server_error" if faults.error_status >= 500 else "invalid_request_error",
                "simulated_error",
            )
        return None

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def unauthorized() -> Response:
    return error_response(
        401,
        "invalid API key: send 'Authorization: Bearer <key>'",
        "authentication_error",
        "invalid_api_key",
    )


def bad_request(message: str, param: str) -> Response:
    return error_response(400, message, "invalid_request_error", "invalid_body", param)


def not_found(request: Request) -> Response:
    return error_response(
        404, f"no route for {request.method} {request.path}", "invalid_request_error", "not_found"
    )


def method_not_allowed(methods: tuple[str, ...]) -> Response:
    response = error_response(
        405, f"method not allowed (use {', '.join(methods)})", "invalid_request_error", "method"
    )
    response.headers.append(("Allow", ", ".join(methods)))
    return response


class StreamBroken(Exception):
    """Raised inside a stream by `break_stream_after`: the server drops the connection."""


async def _sse(
    chunks: list[dict[str, Any]], delay_s: float, break_after: int = 0
) -> AsyncIterator[bytes]:
    """The SSE messages of a stream: one per chunk, then `[DONE]`."""
    for index, chunk in enumerate(chunks):
        if break_after and index >= break_after:
            raise StreamBroken
        if index and delay_s:
            await asyncio.sleep(delay_s)
        yield b"data: " + dumps(chunk) + b"\n\n"
    if delay_s:
        await asyncio.sleep(delay_s)
    yield b"data: [DONE]\n\n"


def _bomb(response: Response, faults: Faults, *, stream: bool, model: str) -> Response:
    """`response` (its request-ID header set) carrying a `bomb_mb` answer."""
    response.content_type = "text/event-stream" if stream else JSON
    encoding = bombs.CONTENT_ENCODINGS[faults.bomb_encoding]
    if encoding:
        response.headers.append(("Content-Encoding", encoding))
    response.stream = bombs.encoded_parts(
        stream=stream, size_mb=faults.bomb_mb, encoding=faults.bomb_encoding, model=model
    )
    return response


def _padded(entries: list[dict[str, Any]], target_bytes: int) -> Response:
    """A cost answer of `target_bytes` (at least), padded by a `padding` string field."""
    head = b'{"requests":' + entries_json(entries) + b',"padding":"'
    tail = b'"}'
    pad = max(0, target_bytes - len(head) - len(tail))

    async def parts() -> AsyncIterator[bytes]:
        yield head
        full, remainder = divmod(pad, _MIB)
        for _ in range(full):
            yield _PADDING_BLOCK
        if remainder:
            yield _PADDING_BLOCK[:remainder]
        yield tail

    return Response(200, stream=parts(), content_length=len(head) + pad + len(tail))


async def send_response(send: Send, response: Response, receive: Receive | None = None) -> None:
    headers = [(b"content-type", response.content_type.encode())]
    length = len(response.body) if response.stream is None else response.content_length
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
    )
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.stream is None:
        await send({"type": "http.response.body", "body": response.body})
        return
    stats = response.stats
    gone = asyncio.ensure_future(_disconnected(receive)) if receive else None
    try:
        async for part in response.stream:
            if gone is not None and gone.done():
                if stats is not None:
                    stats.streams_abandoned += 1
                return
            await send({"type": "http.response.body", "body": part, "more_body": True})
    finally:
        if gone is not None:
            gone.cancel()
    await send({"type": "http.response.body", "body": b""})
    if stats is not None:
        stats.streams_completed += 1


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app() -> SimulatorApp:
    """A fresh simulator (its own providers), e.g. for in-process use."""
    return SimulatorApp()


app = create_app()
