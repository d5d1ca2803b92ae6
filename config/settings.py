"""Settings, all from environment variables (12-factor), with working local defaults.

Precedence: real environment variables, then `.env` at the repository root (written by
`make run`), then the defaults below, which match what `make run` starts.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

INSECURE_SECRET_KEY = "insecure-local-development-key-change-me"  # noqa: S105
INSECURE_FIELD_KEY = "insecure-local-field-encryption-key"

# Development only: `make run` turns it on (in the .env it writes); nothing else does.
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default=INSECURE_SECRET_KEY)
# Earlier SECRET_KEYs, still accepted for signatures (sessions, messages) while rotating it.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# Keys for provider API keys and custom provider keys stored encrypted at rest (core/fields.py):
# comma-separated, the first encrypts, every one decrypts (docs/settings.md, rotating).
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default=INSECURE_FIELD_KEY)
# With DEBUG off, a missing, default or weak key refuses to start (docs/deploy.md says how to
# generate them). SECRET_KEY: Django's own bar (`check --deploy`, security.W009). The first
# FIELD_ENCRYPTION_KEY is hashed into the 256-bit Fernet key, so it must carry that much
# randomness; later ones only read what they encrypted, so a weak one can be rotated away.
SECRET_KEY_MIN_CHARS = 50
FIELD_ENCRYPTION_KEY_MIN_CHARS = 32


def _key_problem(name: str, key: str, min_chars: int) -> str:
    """What is wrong with a key, naming the setting and never the value ("" if nothing)."""
    if key in (INSECURE_SECRET_KEY, INSECURE_FIELD_KEY):
        return f"{name} is unset (the development default)"
    if len(key) < min_chars:
        return f"{name} is shorter than {min_chars} characters"
    if len(set(key)) < 5 or key.startswith("django-insecure-"):
        return f"{name} is not a random key"
    return ""


if not DEBUG:
    _field_keys = [k.strip() for k in FIELD_ENCRYPTION_KEY.split(",") if k.strip()]
    _problems = [
        _key_problem("SECRET_KEY", SECRET_KEY, SECRET_KEY_MIN_CHARS),
        _key_problem(
            "FIELD_ENCRYPTION_KEY", (_field_keys or [""])[0], FIELD_ENCRYPTION_KEY_MIN_CHARS
        ),
    ]
    if any(_problems):
        raise ImproperlyConfigured(
            "; ".join(p for p in _problems if p)
            + ". DEBUG is off: set random keys (docs/deploy.md, Secrets)."
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / ".data")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "accounts",
    "registry",
    "billing",
    "router",
    "demo",
]

MIDDLEWARE = [
    # A Host not in ALLOWED_HOSTS: a 400 in the path's error format, never the debug page.
    "core.errors.AllowedHostsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # NUL or a lone surrogate in the path, query or cookies: a 400 before anything looks it up.
    "core.errors.InputCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Failed admin logins per username and per address: a 429 past ADMIN_LOGIN_FAILURES_*.
    "core.throttling.LoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.errors.JsonErrorMiddleware",
]

ROOT_URLCONF = "config.urls"
# Paths whose Django-level errors (400, 403, 404, 500) are JSON, not HTML pages (core.errors);
# unknown `/v1/` paths get the router's OpenAI-shaped 404 (router.views.unknown_path).
JSON_ERROR_PATH_PREFIXES = ("/api/", "/v1/")
CSRF_FAILURE_VIEW = "core.errors.csrf_failure"  # JSON on those paths too
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Two PostgreSQL roles (docs/operations.md "Database roles"): the application (web, router,
# worker, beat) connects as DATABASE_URL's role, which owns nothing and may not bend the ledger;
# `migrate` runs as the tables' owner: `DATABASE_URL=$DATABASE_OWNER_URL manage.py migrate`.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://hfbill_app@127.0.0.1:54329/hfbill"),
}
# The role migrations grant the application's privileges to (billing migration 0007).
DATABASE_APP_ROLE = env.str("DATABASE_APP_ROLE", default="hfbill_app")
# The owner's credentials, for the test suite only (it creates and migrates the test database
# as the owner, then runs every test as the application; the flush between transactional
# tests truncates as the owner). In production only the migrate job needs them.
if env.str("DATABASE_OWNER_URL", default=""):
    DATABASES["owner"] = {**env.db_url("DATABASE_OWNER_URL"), "TEST": {"MIRROR": "default"}}
# Under ASGI, Django runs sync views in changing threads, and a persistent connection per
# thread leaks connections until PostgreSQL refuses more ("too many clients", seen in
# bench/registry_api.py). So connections come from a psycopg pool per process instead.
if env.bool("DB_POOL", default=True):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
        "timeout": env.int("DB_POOL_TIMEOUT_S", default=10),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_USE_FINDERS = DEBUG  # serve straight from the apps in development

# Request bodies: the largest legitimate one is a batch of 10,000 usage records.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=20 * 1024 * 1024)
# Limits of the served process (docs/operations.md "Limits"). The edge (core/edge.py) answers
# 413 to a body above its path's limit before reading beyond it: the usage ingest endpoint
# takes DATA_UPLOAD_MAX_MEMORY_SIZE, the router's paths ROUTER_MAX_BODY_BYTES, the rest:
HTTP_MAX_BODY_BYTES = env.int("HTTP_MAX_BODY_BYTES", default=1024 * 1024)
# ...and 408 when nothing of a body arrives for this long (between chunks).
HTTP_BODY_TIMEOUT_S = env.float("HTTP_BODY_TIMEOUT_S", default=30.0)
# ...and 408 when the whole body has not arrived this long after the application asked for it
# (a byte every 29 s would otherwise hold a connection for ever; 20 MB in 120 s is 170 kB/s).
HTTP_BODY_DEADLINE_S = env.float("HTTP_BODY_DEADLINE_S", default=120.0)
# config/serve.py (uvicorn): a connection whose request headers are not complete this long
# after it opened (or after the request's first byte) is closed; larger headers get a 431.
HTTP_HEADER_TIMEOUT_S = env.float("HTTP_HEADER_TIMEOUT_S", default=10.0)
HTTP_MAX_HEADER_BYTES = env.int("HTTP_MAX_HEADER_BYTES", default=64 * 1024)
HTTP_KEEPALIVE_TIMEOUT_S = env.float("HTTP_KEEPALIVE_TIMEOUT_S", default=5.0)
# Connections plus running requests per web process; beyond it the server answers 503.
HTTP_LIMIT_CONCURRENCY = env.int("HTTP_LIMIT_CONCURRENCY", default=1000)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.AccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],  # deep nesting, NUL: a 400
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "core.openapi.AutoSchema",  # declares the error responses
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DATETIME_FORMAT": "iso-8601",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Inference providers: registry and billing API",
    "DESCRIPTION": (
        "Partner Model Mapping API, Hub API, router and billing. "
        "Authenticate with `Authorization: Bearer hf_...`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One name per choice set (`manage.py spectacular --validate --fail-on-warn` is clean).
    "ENUM_NAME_OVERRIDES": {
        "MappingTypeEnum": "registry.models.MappingType.choices",
        "MappingStatusEnum": "registry.models.MappingStatus.choices",
        "ProviderEntryStatusEnum": ["staging", "live", "error"],
        "CheckStateEnum": ["ok", "error"],
        "PayerTypeEnum": ["user", "org"],
    },
}

# Celery: Redis broker. A task is acknowledged after it ran (acks_late) and requeued when its
# worker dies, so every task must be idempotent. Hard time limits stay well below the broker's
# visibility timeout, or Redis would hand a still-running task to a second worker.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:63790/0")
CELERY_BROKER_URL = REDIS_URL
# Django's cache is Redis, shared by every process: the rate limits (core/throttling.py) hold
# across web processes. Nothing else uses it. Short timeouts: without Redis, limits fail open.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "hfbill",
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}
# Rate limits ("<count>/<period>", period s, min, h or day; docs/operations.md "Limits"): per
# access token, a 429 with Retry-After beyond them. The router (core/ratelimit.py, Redis):
ROUTER_RATE_LIMIT = env.str("ROUTER_RATE_LIMIT", default="600/min")
# Writes (POST, PUT, DELETE) of the partner Model Mapping API (DRF throttling):
PARTNER_WRITE_RATE_LIMIT = env.str("PARTNER_WRITE_RATE_LIMIT", default="600/min")
# Refused admin logins per username and per client address in a window; beyond: 429.
ADMIN_LOGIN_FAILURES_PER_USERNAME = env.int("ADMIN_LOGIN_FAILURES_PER_USERNAME", default=5)
ADMIN_LOGIN_FAILURES_PER_ADDRESS = env.int("ADMIN_LOGIN_FAILURES_PER_ADDRESS", default=20)
ADMIN_LOGIN_WINDOW_S = env.int("ADMIN_LOGIN_WINDOW_S", default=15 * 60)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "worker-heartbeat": {
        "task": "core.tasks.heartbeat_record",
        "schedule": 60.0,
        "kwargs": {"source": "beat"},
    },
    "billing-cost-poll": {
        "task": "billing.tasks.cost_poll_enqueue",
        "schedule": env.float("BILLING_POLL_INTERVAL_S", default=60.0),
    },
    "billing-monthly-credits": {
        "task": "billing.tasks.credits_ensure_month_all",
        "schedule": env.float("BILLING_CREDITS_INTERVAL_S", default=3600.0),
    },
    "billing-in-flight-expire": {
        "task": "billing.tasks.in_flight_expire",
        "schedule": 3600.0,
    },
    "registry-price-sync": {
        "task": "registry.tasks.price_sync_enqueue",
        "schedule": env.float("PRICE_SYNC_INTERVAL_S", default=600.0),
    },
}

# Price sync (docs/registry.md "Price sync"): every PRICE_SYNC_INTERVAL_S, each active
# provider's `/v1/models`. Timeout per request, and the largest answer read (bytes):
PRICE_SYNC_INTERVAL_S = env.float("PRICE_SYNC_INTERVAL_S", default=600.0)
PRICE_SYNC_TIMEOUT_S = env.float("PRICE_SYNC_TIMEOUT_S", default=10.0)
PRICE_SYNC_MAX_BYTES = env.int("PRICE_SYNC_MAX_BYTES", default=4 * 1024 * 1024)
# A published price above this (nano-USD per million tokens; default $1,000) is refused as
# absurd: the last good price is kept and the problem recorded.
PRICE_SYNC_MAX_NANOUSD_PER_MTOK = env.int("PRICE_SYNC_MAX_NANOUSD_PER_MTOK", default=1_000 * 10**9)

# Billing: a usage record with no cost this long after its request is `failed_to_bill`.
BILLING_FAILED_AFTER_S = env.int("BILLING_FAILED_AFTER_S", default=30 * 60)
# A month's included credits expire this long after its billing window (month end + the
# failed-to-bill window) has passed, and only once none of its requests is still pending.
BILLING_CREDITS_CLOSE_LAG_S = env.int("BILLING_CREDITS_CLOSE_LAG_S", default=5 * 60)
# A reported cost above max(factor x the request's estimate, the minimum) is held for review.
BILLING_REVIEW_FACTOR = env.int("BILLING_REVIEW_FACTOR", default=10)
BILLING_REVIEW_MIN_NANOUSD = env.int("BILLING_REVIEW_MIN_NANOUSD", default=100_000_000)
BILLING_COST_TIMEOUT_S = env.float("BILLING_COST_TIMEOUT_S", default=30.0)
# A reported cost above this (per request) is invalid for its ID: never charged, recorded on the
# record and in the provider's billing health. Default $1,000; at most 2**63 - 1.
BILLING_COST_MAX_NANOUSD = min(env.int("BILLING_COST_MAX_NANOUSD", default=10**12), 2**63 - 1)
BILLING_POLL_INTERVAL_S = env.float("BILLING_POLL_INTERVAL_S", default=60.0)

# Token last-used times are written at most this often per token (a write per request is waste).
TOKEN_LAST_USED_RESOLUTION_S = env.int("TOKEN_LAST_USED_RESOLUTION_S", default=60)

# Router (router/proxy.py).
ROUTER_CACHE_TTL_S = env.float("ROUTER_CACHE_TTL_S", default=5.0)  # tokens, mappings, providers
ROUTER_DB_POOL_MAX_SIZE = env.int("ROUTER_DB_POOL_MAX_SIZE", default=10)
ROUTER_CONNECT_TIMEOUT_S = env.float("ROUTER_CONNECT_TIMEOUT_S", default=10.0)
ROUTER_READ_TIMEOUT_S = env.float("ROUTER_READ_TIMEOUT_S", default=120.0)  # between bytes
ROUTER_MAX_ATTEMPTS = env.int("ROUTER_MAX_ATTEMPTS", default=3)  # the first try + 2 fail-overs
ROUTER_MAX_BODY_BYTES = env.int("ROUTER_MAX_BODY_BYTES", default=16 * 1024 * 1024)
# A provider's answer, decoded (gzip and deflate are decoded by the router, in bounded steps):
# a whole answer above this is a 502 `upstream_response_too_large`; a stream is cut there with
# an SSE error event (docs/router.md "Hostile providers").
ROUTER_MAX_RESPONSE_BYTES = env.int("ROUTER_MAX_RESPONSE_BYTES", default=16 * 1024 * 1024)
ROUTER_MAX_STREAM_BYTES = env.int("ROUTER_MAX_STREAM_BYTES", default=64 * 1024 * 1024)
# Networks (CIDR) that provider URLs may point into although they are not on the internet
# (loopback, private, link-local...; core/netguard.py). Empty in production; `make run` and
# `make test` allow loopback, where the provider simulator runs.
UPSTREAM_ALLOWED_NETWORKS = env.list("UPSTREAM_ALLOWED_NETWORKS", default=[])
# Spending limits: the upper bound a bounded payer reserves before a request is forwarded
# (docs/billing.md "Spending limits: the bound"). Completion tokens when the body sets no
# max_tokens and the mapping has no context length:
ROUTER_RESERVE_MAX_TOKENS = env.int("ROUTER_RESERVE_MAX_TOKENS", default=32_768)
# A reservation counts until expires_at; the router moves it forward every REFRESH_S while the
# request runs (streams included), so only a dead router's reservations expire.
ROUTER_RESERVATION_TTL_S = env.float("ROUTER_RESERVATION_TTL_S", default=300.0)
ROUTER_RESERVATION_REFRESH_S = env.float("ROUTER_RESERVATION_REFRESH_S", default=60.0)
# Prices assumed for a mapping without one when no mapping of the model publishes one (nano-USD
# per million tokens; $3 and $15, the high end of today's chat models).
BILLING_DEFAULT_INPUT_PRICE_NANOUSD_PER_MTOK = env.int(
    "BILLING_DEFAULT_INPUT_PRICE_NANOUSD_PER_MTOK", default=3_000_000_000
)
BILLING_DEFAULT_OUTPUT_PRICE_NANOUSD_PER_MTOK = env.int(
    "BILLING_DEFAULT_OUTPUT_PRICE_NANOUSD_PER_MTOK", default=15_000_000_000
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}

# HTTPS (docs/deploy.md): production answers only over HTTPS, TLS terminated by a reverse
# proxy. With DEBUG off these default to what `manage.py check --deploy` asks for. `make run`
# (DEBUG on) has none of them; `make test` (DEBUG off, plain http on loopback) only no redirect.
# Session and CSRF cookies travel only over HTTPS; no script reads the session cookie.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
# A plain-http request to Django is redirected to https (the router's paths skip Django: the
# proxy redirects those), except the health check, for a load balancer's plain-http probe.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^api/health$"]
# Strict-Transport-Security on https responses: browsers then refuse plain http for the host.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
# Preloading binds the domain and its subdomains to https in browsers for years, and anyone
# may submit a domain whose header asks for it: the domain's owner decides, not a default (so
# `check --deploy` is not asked to insist on it).
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# The header by which the reverse proxy says a request came over https, e.g.
# `X-Forwarded-Proto`. Set it only when the proxy sets that header on every request, replacing
# any value a client sent; else a client could claim https. Empty: not trusted.
if _proxy_ssl_header := env.str("SECURE_PROXY_SSL_HEADER", default=""):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https")
