"""The router: an OpenAI-compatible proxy in front of the providers, as a plain ASGI app.

Routes (everything else goes to Django, see `config/asgi.py`):
- `POST /v1/chat/completions`: `model` is `namespace/name` with an optional `:fastest`
  (default), `:cheapest`, `:preferred` or `:<provider>` suffix (`router.selection`).
- `POST /<provider>/<route>`: the form huggingface_hub uses with a named provider; the body's
  `model` is already the provider's model id. Accepted only when the raw path is the
  provider's configured chat route or one of the chat routes the real clients send
  (`CHAT_ROUTE_ALIASES`, `/models/<model>/v1/chat/completions`); the upstream URL is always
  the provider's base URL + its configured route, never the client's path.

Per request: authenticate the `hf_` token (cached), pick the payer (`X-HF-Bill-To`), choose
candidates, ask billing whether the payer may start (402 otherwise; a bounded payer, i.e. one
without pay-as-you-go or an organization with a spending limit, reserves the request's upper
bound, kept alive while the request runs; docs/billing.md "Spending limits: the bound"),
forward with the platform key or the user's own key (BYOK), fail over before the first byte on
connection errors, timeouts and 5xx (re-checking the payer when the next provider's bound
differs), then write the usage record durably (`store.UsageWriter`) before the response
completes. Streams pass through chunk by chunk. Bodies, tokens and keys are never stored or logged.

Providers are not trusted (`router.upstream`): redirects are never followed (a 502), internal
addresses are refused when connecting, answers are decoded by the router itself and capped
(ROUTER_MAX_RESPONSE_BYTES, ROUTER_MAX_STREAM_BYTES), and only inert content types are relayed,
with `X-Content-Type-Options: nosniff`.

It is plain ASGI, not a Django view, because the hot path must stay cheap (see
`bench/router_overhead.py`); aiohttp is the upstream client for the same reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
from django.conf import settings

from accounts import rules as accounts_rules
from accounts.aio import OrgRow
from accounts.models import NAME_PATTERN
from billing import limits
from billing.models import UsageState
from billing.usage_row import UsageRow
from core import ratelimit
from core.errors import DomainError
from core.netguard import ResponseTooLarge
from registry import rules as registry_rules
from registry.aio import ChatCandidate, ModelCandidates, ProviderRow
from registry.task_types import CONVERSATIONAL
from router import selection
from router.errors import RouterError, bad_request, from_domain
from router.store import Caller, Store
from router.upstream import (
    BadEncoding,
    BodyDecoder,
    GuardedResolver,
    UpstreamRefused,
    literal_refusal,
    refusal_in,
)

logger = logging.getLogger("router")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# First path segments that are never a provider (Django's URLs).
RESERVED_SEGMENTS = frozenset({"", "api", "admin", "static", "v1", "favicon.ico"})
CHAT_PATH = "/v1/chat/completions"
JSON_TYPE = b"application/json"
SSE_TYPE = "text/event-stream"
TAIL_BYTES = 16_384  # enough of a stream's end to find the final chunk's `usage`
DONE_MARKER = b"data: [DONE]"
MAX_TOKENS = 10_000_000  # far above any model's context; bounds the cost estimate
TOKENS_COLUMN_MAX = 2**31 - 1  # usage counts beyond this are not believable
NOSNIFF = (b"x-content-type-options", b"nosniff")

# Paths the router serves: only these characters (RFC 3986 pchars without `%`), no `..`, no
# empty segment. Anything else (`?` `#` `%` `\` controls, escapes of any kind) is a 404.
_SAFE_PATH = re.compile(rb"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")
# Chat routes the real clients send after `/<provider>` (huggingface_hub and
# @huggingface/inference per provider, the openai SDK with base URL `.../<provider>` or
# `.../<provider>/v1`; ../shared/reference/client-wire-formats.md §2), accepted for any
# provider besides its own configured route; plus hf-inference's
# `/models/<model>/v1/chat/completions`, where <model> must be the body's `model`.
CHAT_ROUTE_ALIASES = frozenset({
    "/v1/chat/completions",
    "/chat/completions",
    "/inference/v1/chat/completions",
    "/openai/v1/chat/completions",
    "/compatibility/v1/chat/completions",
    "/v1/openai/chat/completions",
    "/v3/openai/chat/completions",
    "/api/paas/v4/chat/completions",
})  # fmt: skip
HF_MODEL_ROUTE = ("/models/", "/v1/chat/completions")
PROVIDER_MODEL = "{providerModel}"  # a chat route's placeholder for the provider's model id
# A model id substituted into a URL: `/`-separated segments of letters, digits and `._:@+-`,
# none starting with `.` (so no `.` or `..` segment), no leading or doubled `/`.
_MODEL_ID = re.compile(
    r"[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]*(?:/[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]*)*"
)
MODEL_MAX_CHARS = 320  # a hub id (193) + `:<provider>`; a provider model id (255)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # controls, lone surrogates
_BILL_TO = re.compile(NAME_PATTERN)
_HEADER_TEXT = re.compile(r"[\x20-\x7e]+")
# Provider content types relayed as they are; any other is relayed as text/plain.
_INERT_TYPES = frozenset({"application/json", SSE_TYPE, "text/plain"})
TEXT_TYPE = "text/plain; charset=utf-8"
ACCEPT_ENCODING = "gzip, deflate"  # what `router.upstream.BodyDecoder` decodes
SSE_SEPARATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")  # what ends an SSE event
UNFINISHED_EVENT_MAX = 1024 * 1024  # an SSE event without its end is passed on beyond this


def route_path(scope: Message) -> str:
    """The request's raw path (as sent, before percent-decoding) if the router may serve it;
    else a 404."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = scope["path"].encode("utf-8", "surrogateescape")
    if not _SAFE_PATH.fullmatch(raw) or b".." in raw:
        raise RouterError(404, "No route at this path.", "not_found")
    return raw.decode("ascii")


def loggable_path(scope: Message) -> str:
    """The path for a log line: as sent (escapes kept), control characters escaped, so a path
    cannot forge a log line."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    return text[:500].encode("unicode_escape").decode("ascii")


def is_model_id(value: str) -> bool:
    return bool(_MODEL_ID.fullmatch(value)) and ".." not in value


def upstream_url(provider: ProviderRow, provider_model: str) -> str:
    """The provider's base URL + its configured chat route, `{providerModel}` replaced by
    `provider_model`, which must then be a model id (else a 400 naming `model`)."""
    route = provider.chat_route
    if PROVIDER_MODEL in route:
        if not is_model_id(provider_model):
            raise bad_request(
                f"The provider model id {provider_model[:100]!r} of {provider.slug!r} is not a "
                "valid model id (letters, digits, `-_.:/@+`), so it cannot be put in a URL.",
                "invalid_model",
                param="model",
            )
        route = route.replace(PROVIDER_MODEL, provider_model)
    return join_url(provider.base_url, route)


def named_route_matches(route: str, provider: ProviderRow, model: str) -> bool:
    """Is `route` (the raw path after `/<provider>`) the provider's configured chat route or a
    known client alias, for a request whose body names `model`?"""
    if route in CHAT_ROUTE_ALIASES:
        return True
    configured = "/" + provider.chat_route.lstrip("/")
    if PROVIDER_MODEL in configured:
        configured = configured.replace(PROVIDER_MODEL, model) if is_model_id(model) else ""
    if route == configured:
        return True
    prefix, suffix = HF_MODEL_ROUTE
    return route == f"{prefix}{model}{suffix}" and is_model_id(model)


def inert_content_type(value: str | None) -> str:
    """The Content-Type to relay for a provider's answer: JSON, SSE and plain text as sent (if
    printable); anything else (HTML, SVG, scripts...) as text/plain; none as JSON."""
    if not value:
        return JSON_TYPE.decode()
    mime = value.partition(";")[0].strip().lower()
    inert = mime in _INERT_TYPES or (mime.startswith("application/") and mime.endswith("+json"))
    if not inert:
        return TEXT_TYPE
    return value if _HEADER_TEXT.fullmatch(value) else mime


def header_text(value: str | None) -> str | None:
    """A provider's header value if it is printable ASCII (else None: not echoed or stored)."""
    return value if value is not None and _HEADER_TEXT.fullmatch(value) else None


def is_router_path(path: str) -> bool:
    if path == CHAT_PATH:
        return True
    first, sep, rest = path[1:].partition("/")
    return bool(sep and rest) and first not in RESERVED_SEGMENTS


@dataclass
class Attempt:
    provider: ProviderRow
    candidate: ChatCandidate
    url: str


class Router:
    def __init__(self) -> None:
        self.store: Store | None = None
        self.session: aiohttp.ClientSession | None = None
        self._ready: asyncio.Lock | None = None

    async def _ensure_ready(self) -> None:
        if self.session is not None:
            return
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self.session is not None:
                return
            store = Store()
            await store.open()
            self.store = store
            self.session = aiohttp.ClientSession(
                # Internal addresses are dropped when resolving (`router.upstream`).
                connector=aiohttp.TCPConnector(
                    limit=0, ttl_dns_cache=300, resolver=GuardedResolver()
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.ROUTER_CONNECT_TIMEOUT_S,
                    sock_read=settings.ROUTER_READ_TIMEOUT_S,
                ),
                # Bodies are decoded by `BodyDecoder`, in bounded steps: aiohttp would inflate
                # each network chunk whole (a 64 KiB gzip chunk can be 64 MiB).
                auto_decompress=False,
            )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.store is not None:
            await self.store.close()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        outcome = "error"
        response_started = False

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        try:
            try:
                outcome = await self.handle(scope, receive, tracked_send)
            except DomainError as exc:  # a rule said no: rendered in the router's format
                raise from_domain(exc) from exc
        except RouterError as exc:
            outcome = f"{exc.status} {exc.code}"
            if response_started:
                raise
            await send_bytes(send, exc.status, exc.body(), [(b"content-type", JSON_TYPE)])
        except Exception:
            logger.exception("router: unexpected error on %s", loggable_path(scope))
            if response_started:
                raise  # the server closes the connection: the client sees a cut response
            error = RouterError(502, "The router failed to handle this request.", "router_error")
            await send_bytes(send, 502, error.body(), [(b"content-type", JSON_TYPE)])
        finally:
            if logger.isEnabledFor(logging.INFO):
                # Never the body, the token or a key: the path, the outcome and the time.
                logger.info(
                    "%s %s -> %s in %.1f ms",
                    scope.get("method"),
                    loggable_path(scope),
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )

    # --- the request ------------------------------------------------------------------------
    async def handle(self, scope: Message, receive: Receive, send: Send) -> str:
        path = route_path(scope)
        if scope["method"] != "POST":
            raise RouterError(405, "Use POST.", "method_not_allowed", "invalid_request_error")
        await self._ensure_ready()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        caller = await self.authenticate(headers.get("authorization", ""))
        await ratelimit.rate_check(scope, "router", caller.token_id, settings.ROUTER_RATE_LIMIT)
        body = await read_body(receive, settings.ROUTER_MAX_BODY_BYTES)
        payload = parse_payload(body)
        org = self.bill_to(caller, headers.get("x-hf-bill-to", "").strip())
        disabled = frozenset(org.disabled_providers) if org is not None else frozenset()
        if path == CHAT_PATH:
            model, attempts, automatic = await self.resolve_model(
                payload["model"], caller, disabled
            )
        else:
            model, attempts = await self.resolve_named(path, payload["model"], caller, disabled)
            automatic = False
        payer_id = await self.store.payer_id(
            user_id=caller.user_id, org_id=org.id if org is not None else None
        )
        terms = (
            limits.terms_for(payer_id=payer_id, org_name=org.name, org_plan=org.plan,
                             org_seats=org.seats,
                             org_limit_nanousd=org.spending_limit_nanousd)
            if org is not None
            else limits.terms_for(payer_id=payer_id, user_name=caller.username,
                                  user_plan=caller.plan)
        )  # fmt: skip
        request = RoutedRequest(
            router=self, caller=caller, payload=payload, body_size=len(body), terms=terms,
            model=model, receive=receive, send=send,
        )  # fmt: skip
        return await request.run(attempts, automatic=automatic)

    async def authenticate(self, authorization: str) -> Caller:
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise RouterError(401, "Authorization: Bearer hf_... is required.", "missing_token")
        caller = await self.store.caller(secret) if secret.startswith("hf_") else None
        if caller is None or caller.revoked or not caller.user_active:
            raise RouterError(401, "Invalid username or password.", "invalid_token")
        accounts_rules.inference_call_check(
            role=caller.token_role, permissions=caller.token_permissions
        )
        return caller

    def bill_to(self, caller: Caller, name: str) -> OrgRow | None:
        if not name:
            return None
        if not _BILL_TO.fullmatch(name):
            raise bad_request(
                "X-HF-Bill-To must be an organization name (letters, digits, `-`, `_`, `.`; at "
                "most 96 characters).",
                "invalid_bill_to",
                param="X-HF-Bill-To",
            )
        org = caller.orgs.get(name.lower())
        accounts_rules.bill_to_check(requested=name, org=org)
        return org

    async def resolve_model(self, model: str, caller: Caller, disabled: frozenset[str]):
        model_id, suffix = selection.split_model(model)
        hub_model = await self.store.hub_model(model_id)
        if hub_model is None:
            raise RouterError(
                404, f"Model {model_id} does not exist", "model_not_found", param="model"
            )
        providers = await self.store.provider_table()
        visible = selection.best_per_provider(hub_model.candidates, member_of=caller.org_ids)
        if suffix not in selection.POLICIES and suffix not in providers:
            raise bad_request(
                f"Unknown provider or policy {suffix!r} in model: use :fastest, :cheapest, "
                ":preferred or a provider name.",
                "invalid_model_suffix",
                param="model",
            )
        ordered = selection.order(
            visible, suffix=suffix, model_id=model_id,
            provider_order=caller.provider_order, disabled=disabled,
        )  # fmt: skip
        attempts, refused = [], None
        for candidate in ordered:
            provider = providers[candidate.slug]
            try:
                url = upstream_url(provider, candidate.provider_model)
            except RouterError as exc:  # a mapping whose model id cannot go into the route
                logger.warning("router: %s: %s", provider.slug, exc.message)
                refused = refused or exc
                continue
            attempts.append(Attempt(provider, candidate, url))
        if not attempts and refused is not None:
            raise refused
        automatic = suffix in selection.POLICIES
        limit = settings.ROUTER_MAX_ATTEMPTS if automatic else 1
        return hub_model, attempts[:limit], automatic

    async def resolve_named(self, path: str, model: str, caller: Caller, disabled):
        """`path` is the raw path (`route_path`); the upstream URL is the provider's own."""
        slug, _, route = path[1:].partition("/")
        route = "/" + route
        provider = (await self.store.provider_table()).get(slug)
        if provider is None:
            raise RouterError(404, f"Unknown provider {slug!r}.", "provider_not_found")
        if not named_route_matches(route, provider, model):
            raise RouterError(
                404,
                f"{route} is not a chat-completions route of {slug!r}: use "
                f"/{slug}/v1/chat/completions.",
                "route_not_supported",
            )
        if PROVIDER_MODEL in provider.chat_route and not is_model_id(model):
            upstream_url(provider, model)  # raises the 400 naming `model`
        registry_rules.provider_active_check(slug=slug, active=provider.active)
        if not provider.billable:
            raise RouterError(
                403,
                f"The provider {slug!r} is not available: its requests cannot be billed yet.",
                "provider_not_billable",
            )
        registry_rules.provider_enabled_check(slug=slug, disabled=disabled)
        served = await self.store.provider_model(provider, model)
        visible = selection.best_per_provider(served.candidates, member_of=caller.org_ids)
        if not visible:
            raise RouterError(
                404,
                f"The model {model!r} is not served by provider {slug!r} for chat completions.",
                "model_not_supported",
                param="model",
            )
        candidate = visible[0]
        return served, [
            Attempt(provider, candidate, upstream_url(provider, candidate.provider_model))
        ]


class RoutedRequest:
    def __init__(self, *, router: Router, caller: Caller, payload: dict, body_size: int,
                 terms: limits.PayerTerms, model: ModelCandidates, receive: Receive,
                 send: Send):  # fmt: skip
        self.router = router
        self.store = router.store
        self.caller = caller
        self.payload = payload
        self.body_size = body_size
        self.terms = terms
        self.model = model
        self.hub_model_id = model.hub_model_id
        self.receive = receive
        self.send = send
        self.stream = payload.get("stream") is True
        self.reservation_id: int | None = None
        self.reserved_nanousd: int | None = None  # the bound the payer was checked for
        self.released = False
        self.last_failure_status = 502

    def prices(self, candidate: ChatCandidate) -> tuple[int, int]:
        return selection.prices_nanousd_per_mtok(
            candidate,
            self.model,
            default_input=settings.BILLING_DEFAULT_INPUT_PRICE_NANOUSD_PER_MTOK,
            default_output=settings.BILLING_DEFAULT_OUTPUT_PRICE_NANOUSD_PER_MTOK,
        )

    def upper_bound_nanousd(self, candidate: ChatCandidate) -> int:
        """The most this request can cost at `candidate` (docs/billing.md "Spending limits:
        the bound"): prompt tokens <= the body's bytes; completion tokens <= the larger of
        `max_tokens` / `max_completion_tokens`, else the mapping's context length, else
        ROUTER_RESERVE_MAX_TOKENS (each at most the context length when it is known); priced
        by `prices`."""
        context = candidate.context_length or None
        asked = max(self.payload.get("max_tokens") or 0,
                    self.payload.get("max_completion_tokens") or 0)  # fmt: skip
        completion = asked or context or settings.ROUTER_RESERVE_MAX_TOKENS
        prompt = self.body_size
        if context:
            completion, prompt = min(completion, context), min(prompt, context)
        return selection.cost_nanousd(
            self.prices(candidate), prompt_tokens=prompt, completion_tokens=completion
        )

    async def ensure_allowed(self, attempt: Attempt) -> None:
        """The billing check before an attempt charged to the platform: once, and again on a
        fail-over whose upper bound differs (the reservation then follows the provider that
        serves)."""
        if self.terms.always_allowed:
            return  # nothing to read or reserve: no round trip
        estimate = self.upper_bound_nanousd(attempt.candidate)
        if estimate == self.reserved_nanousd:
            return
        replaces, self.reservation_id = self.reservation_id, None
        decision, self.reservation_id = await self.store.reserve(
            self.terms, estimate, replaces=replaces
        )
        if not decision.allowed:
            raise RouterError(402, decision.reason, decision.code)
        self.reserved_nanousd = estimate

    async def run(self, attempts: list[Attempt], *, automatic: bool) -> str:
        failures: list[str] = []
        last_status = 502
        try:
            for index, attempt in enumerate(attempts):
                byok_key = self.caller.keys.get(attempt.provider.id)
                if byok_key is None:
                    await self.ensure_allowed(attempt)
                can_fail_over = automatic and index + 1 < len(attempts)
                outcome = await self.forward(attempt, byok_key, can_fail_over=can_fail_over)
                if outcome is not None:
                    return outcome
                failures.append(attempt.provider.slug)
                last_status = self.last_failure_status
        finally:
            if self.reservation_id is not None and not self.released:
                await self.store.release(self.reservation_id)
        raise RouterError(
            last_status,
            f"Every provider tried failed before answering ({', '.join(failures)}).",
            "upstream_timeout" if last_status == 504 else "upstream_unavailable",
        )

    async def forward(self, attempt: Attempt, byok_key: str | None, *, can_fail_over: bool):
        """Sends one attempt. Returns the outcome once a response reached the client, or None
        after a failure before any byte was sent, when failing over is allowed."""
        provider, candidate = attempt.provider, attempt.candidate
        body = json.dumps({**self.payload, "model": candidate.provider_model}).encode()
        headers = {
            "Authorization": f"Bearer {byok_key or provider.api_key}",
            "Content-Type": "application/json",
            "Accept": SSE_TYPE if self.stream else "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        created_at = datetime.now(UTC)
        try:
            refused = literal_refusal(provider.base_url)
            if refused is not None:
                raise refused
            response = await self.router.session.post(
                attempt.url, data=body, headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError, UpstreamRefused) as exc:
            timeout = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            refusal = refusal_in(exc)
            if refusal is not None:
                logger.error("router: %s not connected to: %s", provider.slug, refusal)
            else:
                logger.warning("router: %s unreachable (%s)", provider.slug, type(exc).__name__)
            await self.record(attempt, None, None, None, created_at, byok_key is not None)
            if can_fail_over:
                self.last_failure_status = 504 if timeout else 502
                return None
            raise RouterError(
                504 if timeout else 502,
                f"The provider {provider.slug!r} "
                + ("did not answer in time." if timeout else "could not be reached."),
                "upstream_timeout" if timeout else "upstream_unavailable",
            ) from exc
        request_id = header_text(response.headers.get(provider.request_id_header))
        # The platform's own key refused: the provider's problem, not the caller's (who would
        # otherwise read a 401 about a token that is fine). A refused BYOK key passes through.
        platform_refused = byok_key is None and response.status in (401, 403)
        byok = byok_key is not None
        try:
            if 300 <= response.status < 400:
                return await self.redirected(attempt, response, request_id, created_at, byok,
                                             can_fail_over=can_fail_over)  # fmt: skip
            if (response.status >= 500 or platform_refused) and can_fail_over:
                response.close()  # its body is not needed (and could be anything)
                await self.record(attempt, request_id, response.status, None, created_at, byok)
                self.last_failure_status = 502
                return None
            if platform_refused:
                response.close()
                await self.record(attempt, request_id, response.status, None, created_at,
                                  False, final=True)  # fmt: skip
                logger.error("router: %s refused the platform's API key", provider.slug)
                raise RouterError(
                    502,
                    f"The provider {provider.slug!r} refused the platform's credentials.",
                    "upstream_auth_failed",
                )
            stream = self.stream and response.content_type == SSE_TYPE and response.status < 300
            cap = settings.ROUTER_MAX_STREAM_BYTES if stream else settings.ROUTER_MAX_RESPONSE_BYTES
            try:
                decoder = BodyDecoder(response.headers.get("Content-Encoding", ""), cap=cap)
            except BadEncoding as exc:
                await self.unusable(attempt, response, request_id, created_at, byok, exc)
            if stream:
                return await self.relay_stream(attempt, response, decoder, request_id,
                                               created_at, byok)  # fmt: skip
            return await self.relay_whole(attempt, response, decoder, request_id, created_at,
                                          byok)  # fmt: skip
        finally:
            response.release()

    async def redirected(self, attempt, response, request_id, created_at, byok, *,
                         can_fail_over: bool) -> None:  # fmt: skip
        """A 3xx: never followed (it could point anywhere, internal addresses included, and
        would carry the request again). Recorded not billable; fails over when allowed, else
        a 502."""
        slug, status = attempt.provider.slug, response.status
        location = response.headers.get("Location", "")
        response.close()
        logger.warning("router: %s answered %d (Location %r): not followed", slug, status,
                       location[:200])  # fmt: skip
        await self.record(attempt, request_id, status, None, created_at, byok,
                          final=not can_fail_over,
                          not_billable=f"the provider answered a redirect (HTTP {status}), "
                          "which is not followed")  # fmt: skip
        if can_fail_over:
            self.last_failure_status = 502
            return None
        raise RouterError(
            502,
            f"The provider {slug!r} answered with a redirect (HTTP {status}), which the router "
            "does not follow.",
            "upstream_redirect",
        )

    async def unusable(self, attempt, response, request_id, created_at, byok, exc) -> NoReturn:
        """An answer the router cannot relay (too large, an unknown encoding, data that does
        not decode, a body cut short): recorded not billable, a 502 for the client."""
        response.close()
        slug = attempt.provider.slug
        if isinstance(exc, ResponseTooLarge):
            code = "upstream_response_too_large"
            reason = f"answer too large: {exc}"
            message = f"The provider {slug!r} answered more than the router relays ({exc})."
        elif isinstance(exc, BadEncoding):
            code = "upstream_bad_encoding"
            reason = f"answer not decodable: {exc}"
            message = f"The provider {slug!r} answered a body the router cannot decode ({exc})."
        else:
            code = "upstream_unavailable"
            reason = f"answer cut short ({type(exc).__name__})"
            message = f"The provider {slug!r} stopped answering midway."
        logger.warning("router: %s: %s", slug, reason)
        await self.record(attempt, request_id, response.status, None, created_at, byok,
                          final=True, not_billable=reason)  # fmt: skip
        raise RouterError(502, message, code)

    def response_headers(self, attempt: Attempt, request_id: str | None, content_type: str):
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"x-inference-provider", attempt.provider.slug.encode()),
        ]
        if request_id is not None:
            headers.append(
                (attempt.provider.request_id_header.lower().encode("latin-1"),
                 request_id.encode("latin-1"))
            )  # fmt: skip
        return headers

    async def relay_whole(self, attempt, response, decoder, request_id, created_at, byok) -> str:
        try:
            if decoder.identity and (response.content_length or 0) > decoder.cap:
                raise ResponseTooLarge(decoder.cap)
            parts = []
            async for chunk in response.content.iter_any():
                parts.extend(decoder.feed(chunk))
            data = b"".join(parts)
        except (ResponseTooLarge, BadEncoding, aiohttp.ClientError, TimeoutError) as exc:
            await self.unusable(attempt, response, request_id, created_at, byok, exc)
        usage = usage_of_body(data) if response.status < 300 else None
        await self.record(attempt, request_id, response.status, usage, created_at, byok,
                          final=True)  # fmt: skip
        content_type = inert_content_type(response.headers.get("Content-Type"))
        await send_bytes(self.send, response.status, data,
                         self.response_headers(attempt, request_id, content_type))  # fmt: skip
        return f"{response.status} via {attempt.provider.slug}"

    async def relay_stream(self, attempt, response, decoder, request_id, created_at, byok) -> str:
        """Passes the stream through, whole SSE events at a time (a piece's unfinished last
        event waits for its end). The chunk that completes `data: [DONE]` (where clients stop
        reading) is held until the usage record is committed, so a client never has a complete
        answer whose record could still be lost. Past ROUTER_MAX_STREAM_BYTES (decoded), the
        stream ends with an SSE error event."""
        headers = self.response_headers(attempt, request_id, SSE_TYPE)
        headers += [(b"cache-control", b"no-cache"), NOSNIFF]
        await self.send({"type": "http.response.start", "status": response.status,
                         "headers": headers})  # fmt: skip
        disconnected = asyncio.ensure_future(wait_disconnect(self.receive))
        tail = pending = b""
        recorded = client_gone = False
        outcome = f"{response.status} stream via {attempt.provider.slug}"

        async def record_once() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                await self.record(attempt, request_id, response.status, usage_of_stream(tail),
                                  created_at, byok, final=True)  # fmt: skip

        async def relay(piece: bytes) -> None:
            nonlocal tail
            marker = len(DONE_MARKER)
            ends = DONE_MARKER in piece or DONE_MARKER in tail[-marker:] + piece[:marker]
            tail = piece[-TAIL_BYTES:] if len(piece) >= TAIL_BYTES else (tail + piece)[-TAIL_BYTES:]
            if ends:
                await record_once()
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})

        try:
            while True:
                read = asyncio.ensure_future(response.content.readany())
                done, _ = await asyncio.wait(
                    {read, disconnected}, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    response.close()  # the client left: stop the provider's generation
                    client_gone = True
                    outcome += " (client disconnected)"
                    break
                chunk = read.result()
                if not chunk:
                    break
                for piece in decoder.feed(chunk):
                    pending += piece
                    cut = sse_events_end(pending)
                    if cut or len(pending) > UNFINISHED_EVENT_MAX:
                        cut = cut or len(pending)
                        piece, pending = pending[:cut], pending[cut:]
                        await relay(piece)
            if pending and not client_gone:
                await relay(pending)
        except (ResponseTooLarge, BadEncoding) as exc:
            response.close()
            too_large = isinstance(exc, ResponseTooLarge)
            code = "upstream_response_too_large" if too_large else "upstream_bad_encoding"
            outcome += f" (cut: {code})"
            logger.warning("router: %s stream cut: %s", attempt.provider.slug, exc)
            await self.send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": sse_error(code, f"The provider's stream was cut: {exc}."),
                }
            )
        except (aiohttp.ClientError, TimeoutError):
            outcome += " (provider stream broken)"
        finally:
            try:
                await record_once()
            finally:
                if not disconnected.done():
                    disconnected.cancel()
        if not client_gone:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome

    async def record(
        self, attempt, request_id, status, usage, created_at, byok, *, final: bool = False,
        not_billable: str = "",
    ) -> None:  # fmt: skip
        """Writes the usage record of one attempt; the one that ends the request (`final`)
        also releases the spending-limit reservation, in the same transaction. `not_billable`
        says why an answer that would be charged is not (a redirect, an unusable answer)."""
        candidate = attempt.candidate
        prompt, completion = usage or (None, None)
        # The record counts against limits until its cost is known: its estimate is the
        # request's upper bound (what was reserved). Never raised by the usage the provider
        # reports: a provider claiming 2**31 tokens would otherwise lift the review threshold
        # (10x the estimate) past any cost it chooses; a cost above the bound is the bounded
        # overshoot, and far above it is held for review.
        estimate = self.upper_bound_nanousd(candidate)
        row = UsageRow.build(
            provider_id=attempt.provider.id,
            request_id=request_id,
            user_id=self.caller.user_id,
            payer_id=self.terms.payer_id,
            hub_model_id=self.hub_model_id,
            provider_model=candidate.provider_model,
            task=CONVERSATIONAL,
            http_status=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            estimated_cost_nanousd=estimate,
            byok=byok,
            created_at=created_at,
        )
        if not_billable and row.state == UsageState.PENDING:
            row = dataclasses.replace(
                row, state=UsageState.NOT_BILLABLE, estimated_cost_nanousd=0,
                cost_error=not_billable[:300],
            )  # fmt: skip
        reservation = self.reservation_id if final and not self.released else None
        await self.store.writer.write(
            row,
            reservation_id=reservation,
            token_id=self.caller.token_id,
            missing_request_id=not request_id and status is not None and 200 <= status < 300,
        )
        if reservation is not None:
            self.released = True
            self.store.reservation_done(reservation)


# --- helpers ----------------------------------------------------------------------------------
def join_url(base: str, route: str) -> str:
    return base.rstrip("/") + "/" + route.lstrip("/")


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RouterError(400, "The client disconnected.", "client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RouterError(413, f"The body is larger than {limit} bytes.", "body_too_large",
                              "invalid_request_error")  # fmt: skip
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def parse_payload(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise bad_request("The body is not valid JSON.", "invalid_json", param="body") from exc
    if not isinstance(payload, dict):
        raise bad_request("The body must be a JSON object.", "invalid_body", param="body")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("`model` is required: a string such as 'namespace/name'.",
                          "invalid_model", param="model")  # fmt: skip
    if len(model) > MODEL_MAX_CHARS or _CONTROL.search(model):
        raise bad_request(
            f"`model` must be a model id of at most {MODEL_MAX_CHARS} characters, without "
            "control characters or unpaired surrogates.",
            "invalid_model",
            param="model",
        )
    if not isinstance(payload.get("messages"), list) or not payload["messages"]:
        raise bad_request("`messages` is required: a non-empty list.", "invalid_messages",
                          param="messages")  # fmt: skip
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise bad_request("`stream` must be true or false.", "invalid_stream", param="stream")
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise bad_request(
                f"`{name}` must be a whole number from 1 to {MAX_TOKENS:,}.", f"invalid_{name}",
                param=name,
            )  # fmt: skip
    return payload


def _usage_pair(usage) -> tuple[int | None, int | None] | None:
    if not isinstance(usage, dict):
        return None

    def count(name):
        value = usage.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok and 0 <= value <= TOKENS_COLUMN_MAX else None

    pair = (count("prompt_tokens"), count("completion_tokens"))
    return pair if pair != (None, None) else None


def usage_of_body(data: bytes):
    try:
        return _usage_pair(json.loads(data).get("usage"))
    except (ValueError, AttributeError):
        return None


def usage_of_stream(tail: bytes):
    """`usage` of the last SSE data message that has one (OpenAI sends it in the final
    chunk)."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            pair = _usage_pair(json.loads(line[5:]).get("usage"))
        except (ValueError, AttributeError):
            continue
        if pair:
            return pair
    return None


def sse_events_end(data: bytes) -> int:
    """Where the last complete SSE event of `data` ends (0: none is complete)."""
    ends = [data.rfind(sep) + len(sep) for sep in SSE_SEPARATORS if sep in data]
    return max(ends, default=0)


def sse_error(code: str, message: str) -> bytes:
    """An SSE event carrying an OpenAI-shaped error (the clients raise on `error`)."""
    error = {"message": message, "type": "upstream_error", "code": code, "param": None}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_bytes(send: Send, status: int, body: bytes, headers: list) -> None:
    headers = [*headers, NOSNIFF, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
