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

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default=INSECURE_SECRET_KEY)
# Key for provider API keys and custom provider keys stored encrypted at rest.
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default=INSECURE_FIELD_KEY)
if not DEBUG and (SECRET_KEY == INSECURE_SECRET_KEY or FIELD_ENCRYPTION_KEY == INSECURE_FIELD_KEY):
    raise ImproperlyConfigured("Set SECRET_KEY and FIELD_ENCRYPTION_KEY when DEBUG is off.")

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
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.errors.JsonErrorMiddleware",
]

ROOT_URLCONF = "config.urls"
# Paths whose Django-level errors (400, 403, 404, 500) are JSON, not HTML pages (core.errors);
# unknown `/v1/` paths get the router's OpenAI-shaped 404 (router.views.unknown_path).
JSON_ERROR_PATH_PREFIXES = ("/api/", "/v1/")
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

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.AccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
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
}

# Celery: Redis broker. A task is acknowledged after it ran (acks_late) and requeued when its
# worker dies, so every task must be idempotent. Hard time limits stay well below the broker's
# visibility timeout, or Redis would hand a still-running task to a second worker.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:63790/0")
CELERY_BROKER_URL = REDIS_URL
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
}

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

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
