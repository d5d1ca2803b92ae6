"""Rate limits on the Django side, kept in Django's cache (Redis, shared by every process):

- `PartnerWriteRateThrottle`: DRF's throttling on writes (POST, PUT, PATCH, DELETE) per access
  token (per user for a browser session), at `settings.PARTNER_WRITE_RATE_LIMIT`. Past it DRF
  raises `Throttled`: a 429 in the Hub's format with `Retry-After` (core/errors.py).
- `LoginThrottleMiddleware`: failed logins on the admin's login form per username and per client
  address; past either limit the form answers a plain 429 with `Retry-After` until its window
  ends, even to the right password.

Both read their limits from settings per request and, when Redis is unreachable, let the request
through with a warning (`core.ratelimit.FailOpen`), as the router's limit does.
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.contrib.auth.forms import UsernameField
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from redis.exceptions import RedisError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import SimpleRateThrottle

from core.ratelimit import FailOpen

_fail_opens: dict[str, FailOpen] = {}


def _fail_open() -> FailOpen:
    """The failure state of the cache's Redis (one per server: tests point at a dead one)."""
    location = str(settings.CACHES["default"].get("LOCATION", ""))
    return _fail_opens.setdefault(location, FailOpen())


class WriteRateThrottle(SimpleRateThrottle):
    """Writes per access token (the request's `auth` object), or per user for a session; reads
    and anonymous requests (refused before throttling) are not counted. The rate is the setting
    named by `rate_setting`, read when the request comes (so tests may override it)."""

    rate_setting = ""

    def get_rate(self) -> str:
        return getattr(settings, self.rate_setting)

    def get_cache_key(self, request, view) -> str | None:
        if request.method in SAFE_METHODS or not request.user.is_authenticated:
            return None
        token_id = getattr(request.auth, "pk", None)
        ident = f"token-{token_id}" if token_id is not None else f"user-{request.user.pk}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request, view) -> bool:
        fail_open = _fail_open()
        if fail_open.active():
            return True
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            fail_open.failed(self.scope, exc)
            return True


class PartnerWriteRateThrottle(WriteRateThrottle):
    scope = "partner_writes"
    rate_setting = "PARTNER_WRITE_RATE_LIMIT"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def login_username_key(value) -> str:
    """The username as the login form cleans it before authenticating (whitespace stripped,
    NFKC-normalized: fullwidth letters are plain ones), case-folded: every spelling that
    logs into one account shares one failure counter."""
    try:
        cleaned = UsernameField().clean(str(value))
    except ValidationError:  # empty: the form refuses it too, without authenticating
        cleaned = ""
    return cleaned.casefold()


class LoginThrottleMiddleware:
    """Counts refused POSTs to the admin's login form (it answers 200, the form again, when it
    refuses the credentials; 302 when it accepts them) in fixed windows of
    ADMIN_LOGIN_WINDOW_S, per username (ADMIN_LOGIN_FAILURES_PER_USERNAME) and per client
    address (ADMIN_LOGIN_FAILURES_PER_ADDRESS, REMOTE_ADDR: see docs/deploy.md for proxies)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self._login_path: str | None = None

    def login_path(self) -> str:
        if self._login_path is None:
            self._login_path = reverse("admin:login")
        return self._login_path

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path != self.login_path():
            return self.get_response(request)
        window_s = settings.ADMIN_LOGIN_WINDOW_S
        now = time.time()
        window = int(now // window_s)
        username = login_username_key(request.POST.get("username", ""))
        address = request.META.get("REMOTE_ADDR", "")
        limits = {
            f"login-failures:user:{_digest(username)}:{window}": (
                settings.ADMIN_LOGIN_FAILURES_PER_USERNAME
            ),
            f"login-failures:addr:{_digest(address)}:{window}": (
                settings.ADMIN_LOGIN_FAILURES_PER_ADDRESS
            ),
        }
        if self._locked(limits):
            retry_after_s = max(1, math.ceil((window + 1) * window_s - now))
            return HttpResponse(
                f"Too many failed logins. Try again in {retry_after_s} seconds.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
                headers={"Retry-After": str(retry_after_s)},
            )
        response = self.get_response(request)
        if response.status_code == 200:  # the form again: the credentials were refused
            self._count(limits, window_s)
        return response

    @staticmethod
    def _locked(limits: dict[str, int]) -> bool:
        fail_open = _fail_open()
        if fail_open.active():
            return False
        try:
            counts = cache.get_many(list(limits))
        except (RedisError, OSError) as exc:
            fail_open.failed("admin login", exc)
            return False
        return any(counts.get(key, 0) >= limit for key, limit in limits.items())

    @staticmethod
    def _count(limits: dict[str, int], window_s: int) -> None:
        fail_open = _fail_open()
        if fail_open.active():
            return
        try:
            for key in limits:
                cache.add(key, 0, timeout=window_s + 1)
                cache.incr(key)
        except (RedisError, OSError) as exc:
            fail_open.failed("admin login", exc)
        except ValueError:  # the key expired between add and incr: the window is over
            pass
