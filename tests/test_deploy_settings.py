"""Production settings (issue 12, finding 9; docs/deploy.md): DEBUG is off unless asked for,
missing, default or weak keys refuse to start, `manage.py check --deploy` is clean, and a
request with a bad `Host` is a plain 400 in its path's error format, never Django's debug page
(the Django stack and the router's plain-ASGI paths alike)."""

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client, override_settings

from testsupport.processes import WebServer

REPO_ROOT = Path(settings.BASE_DIR)
STRONG_SECRET_KEY = secrets.token_urlsafe(50)
STRONG_FIELD_KEY = secrets.token_urlsafe(32)
SHOWN = [
    "DEBUG",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_CONTENT_TYPE_NOSNIFF",
    "X_FRAME_OPTIONS",
    "SECURE_PROXY_SSL_HEADER",
]


def load_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Imports config/settings.py in a new interpreter with exactly `env` (and PATH). It runs a
    copy of the file: the settings read `.env` next to their package, and the checkout's
    `.env` (written by `make run`) must not decide what the defaults are."""
    package = tmp_path / "config"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(REPO_ROOT / "config" / "settings.py", package / "settings.py")
    code = (
        "import json, config.settings as s\n"
        f"print(json.dumps({{n: getattr(s, n, None) for n in {SHOWN!r}}}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def loaded(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, f"the settings loaded: {result.stdout}"
    assert "ImproperlyConfigured" in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


# --- DEBUG and the keys ------------------------------------------------------------------------
def test_debug_is_off_unless_asked_for_and_production_defaults_are_secure(tmp_path):
    values = loaded(
        load_settings(tmp_path, SECRET_KEY=STRONG_SECRET_KEY, FIELD_ENCRYPTION_KEY=STRONG_FIELD_KEY)
    )

    assert values == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_PROXY_SSL_HEADER": None,  # trusted only when the operator says so
    }


def test_without_keys_the_settings_refuse_to_start(tmp_path):
    message = refused(load_settings(tmp_path))

    assert "SECRET_KEY" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SECRET_KEY", "insecure-local-development-key-change-me"),  # the development default
        ("SECRET_KEY", "short-but-random-Zq81"),
        ("SECRET_KEY", "a" * 60),  # long, but four different characters at most
        ("SECRET_KEY", "django-insecure-" + secrets.token_urlsafe(50)),
        ("FIELD_ENCRYPTION_KEY", "insecure-local-field-encryption-key"),
        ("FIELD_ENCRYPTION_KEY", "new-key"),
        ("FIELD_ENCRYPTION_KEY", "new-key," + STRONG_FIELD_KEY),  # the first key encrypts
        ("FIELD_ENCRYPTION_KEY", " , "),
    ],
    ids=[  # stable: some values are random
        "secret-default",
        "secret-short",
        "secret-repetitive",
        "secret-django-insecure",
        "field-default",
        "field-short",
        "field-short-first-of-two",
        "field-empty",
    ],
)
def test_a_default_or_weak_key_refuses_to_start(tmp_path, variable, value):
    env = {"SECRET_KEY": STRONG_SECRET_KEY, "FIELD_ENCRYPTION_KEY": STRONG_FIELD_KEY}
    env[variable] = value

    result = load_settings(tmp_path, DEBUG="false", **env)

    assert variable in refused(result)
    if value.strip(" ,"):
        assert value not in result.stderr  # the error names the setting, never its value


def test_an_old_weak_field_key_may_follow_a_strong_one_while_rotating_away_from_it(tmp_path):
    values = loaded(
        load_settings(
            tmp_path,
            SECRET_KEY=STRONG_SECRET_KEY,
            FIELD_ENCRYPTION_KEY=f"{STRONG_FIELD_KEY},old-key",
        )
    )

    assert values["DEBUG"] is False


def test_debug_on_still_runs_with_the_development_defaults(tmp_path):
    """`make run` (DEBUG=true in its .env): no keys needed, plain http on loopback."""
    values = loaded(load_settings(tmp_path, DEBUG="true"))

    assert values["DEBUG"] is True
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0


def guide_environment() -> dict[str, str]:
    """The environment docs/deploy.md gives production (its "Environment" block), with keys."""
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    block = text.split("## Environment", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    values = {}
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("#", 1)[0].strip().split("=", 1)
            values[name] = value
    assert {"DEBUG", "SECRET_KEY", "FIELD_ENCRYPTION_KEY", "ALLOWED_HOSTS"} <= values.keys()
    return {**values, "SECRET_KEY": STRONG_SECRET_KEY, "FIELD_ENCRYPTION_KEY": STRONG_FIELD_KEY}


@pytest.mark.parametrize(
    "env",
    [
        {
            "DEBUG": "false",
            "SECRET_KEY": STRONG_SECRET_KEY,
            "FIELD_ENCRYPTION_KEY": STRONG_FIELD_KEY,
        },
        guide_environment(),
        {**guide_environment(), "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"},
    ],
    ids=["keys-only", "the-guides-environment", "behind-a-proxy"],
)
def test_check_deploy_is_clean_with_the_production_settings(env):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], **env},  # explicit values win over the checkout's .env
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@override_settings(SECURE_SSL_REDIRECT=True)
def test_plain_http_is_redirected_to_https_except_the_health_check(db):
    client = Client()  # its middleware is built on its first request, with these settings

    whoami = client.get("/api/whoami-v2")
    health = client.get("/api/health")
    over_https = client.get("/api/whoami-v2", secure=True)

    assert whoami.status_code == 301
    assert whoami["Location"] == "https://testserver/api/whoami-v2"
    assert health.status_code in (200, 503)  # a load balancer's plain-http probe
    assert over_https.status_code == 401


def test_https_responses_carry_the_security_headers_and_secure_cookies(db):
    """`make test` runs with production's settings (DEBUG off) but plain http: over https the
    admin's login page is what production serves."""
    page = Client().get("/admin/login/", secure=True)

    assert page.status_code == 200
    assert page["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert page["X-Content-Type-Options"] == "nosniff"
    assert page["X-Frame-Options"] == "DENY"
    assert page.cookies[settings.CSRF_COOKIE_NAME]["secure"] is True


# --- a bad Host --------------------------------------------------------------------------------
BAD_HOST = "evil.example"
HOST_ERROR = "The Host header names a host this server does not serve (ALLOWED_HOSTS)."


def assert_no_debug_page(response_text: str) -> None:
    for sign in ("Traceback", "DisallowedHost", "ALLOWED_HOSTS =", "technical"):
        assert sign not in response_text


@pytest.mark.parametrize("debug", [True, False], ids=["debug-on", "debug-off"])
def test_a_bad_host_is_a_400_in_the_paths_error_format_never_the_debug_page(debug):
    client = Client(raise_request_exception=False)
    with override_settings(DEBUG=debug):
        api = client.get("/api/health", HTTP_HOST=BAD_HOST)
        api_post = client.post("/api/settings/tokens", {}, HTTP_HOST=BAD_HOST)
        v1 = client.get("/v1/models", HTTP_HOST=BAD_HOST)
        admin = client.get("/admin/login/", HTTP_HOST=BAD_HOST)

    for response in (api, api_post):
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": HOST_ERROR, "error_type": "bad_host"}
    assert v1.status_code == 400
    assert v1.json() == {
        "error": {"message": HOST_ERROR, "type": "invalid_request_error", "code": "bad_host"}
    }
    assert admin.status_code == 400
    assert admin["Content-Type"].startswith("text/html")
    assert_no_debug_page(admin.content.decode())


@pytest.fixture(scope="module")
def web_servers(tmp_path_factory, django_db_setup, django_db_blocker):
    """The real web process (uvicorn + config.asgi), with DEBUG on and off."""
    servers = {}
    try:
        for debug in ("true", "false"):
            log = tmp_path_factory.mktemp(f"web-debug-{debug}") / "uvicorn.log"
            servers[debug] = WebServer(log, DEBUG=debug).start()
        yield {debug: server.url for debug, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.django_db(transaction=True)  # the servers' database: the test database
@pytest.mark.parametrize("debug", ["true", "false"], ids=["debug-on", "debug-off"])
def test_the_served_application_refuses_a_bad_host_on_every_path(web_servers, debug):
    """Over ASGI, as deployed: the router's paths skip Django's middleware, so they check the
    Host themselves."""
    url = web_servers[debug]
    headers = {"Host": BAD_HOST, "Authorization": "Bearer hf_not-a-real-token"}
    body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": []}

    api = httpx.get(f"{url}/api/health", headers=headers, timeout=10)
    chat = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    named = httpx.post(f"{url}/together/v1/chat/completions", json=body, headers=headers)
    admin = httpx.get(f"{url}/admin/login/", headers=headers, timeout=10)
    allowed = httpx.get(f"{url}/v1/chat/completions", timeout=10)  # Host: 127.0.0.1:<port>

    assert api.status_code == 400
    assert api.json() == {"error": HOST_ERROR, "error_type": "bad_host"}
    for response in (chat, named):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_host"
    assert admin.status_code == 400
    assert_no_debug_page(admin.text)
    assert allowed.status_code != 400  # the router answers its own way (a GET is not allowed)
