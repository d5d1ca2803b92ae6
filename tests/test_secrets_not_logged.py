"""Secrets never reach logs or cookies (issue 12, "Production settings and a guide"): every log
record at DEBUG level, and everything written to stdout and stderr, while a token is created,
a user's own provider key (BYOK) is set and used by the router, the platform's provider key is
used by the router and by cost polling (answered and refused), is searched for every secret
involved: access tokens, the BYOK key, the provider's API key, SECRET_KEY and each
FIELD_ENCRYPTION_KEY. So are the cookies and headers of every response.

Log forging (issue 12, Low): a decoded request path with CR or LF does not start a new log
line, in Django's request log or ours."""

import io
import logging
import secrets

import httpx
import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import re_path
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory, bearer, token_for
from billing.models import UsageRecord
from billing.polling import cost_poll_provider
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory
from testsupport.processes import WebServer

PLATFORM_KEY = "platform-" + secrets.token_urlsafe(24)
USER_KEY = "byok-" + secrets.token_urlsafe(24)
MODEL = "secrets-test/chat-model"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # config/settings.py LOGGING


class Captured:
    """Every record of every logger at DEBUG, formatted as production formats it (with
    tracebacks), while the test runs."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def all_logs(capfd):
    captured = Captured()
    keep_records = logging.Handler(logging.DEBUG)
    keep_records.emit = captured.records.append
    # The root logger, and those that do not propagate to it (`django` in LOGGING).
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(captured.handler)
        logger.addHandler(keep_records)
        logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(captured.handler)
            logger.removeHandler(keep_records)
            logger.setLevel(level)


def secrets_of_the_platform() -> dict[str, str]:
    keys = [k.strip() for k in settings.FIELD_ENCRYPTION_KEY.split(",") if k.strip()]
    named = {"SECRET_KEY": settings.SECRET_KEY, "PLATFORM_KEY": PLATFORM_KEY, "USER_KEY": USER_KEY}
    named.update({f"FIELD_ENCRYPTION_KEY[{i}]": key for i, key in enumerate(keys)})
    return named


def assert_nowhere(secret_values: dict[str, str], **places: str) -> None:
    for place, text in places.items():
        for name, value in secret_values.items():
            assert value not in text, f"{name} appears in {place}"


def response_metadata(response) -> str:
    """The headers (Set-Cookie included) of a Django test or httpx response, as text."""
    if isinstance(response, httpx.Response):
        return "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    cookies = "\n".join(morsel.OutputString() for morsel in response.cookies.values())
    return "\n".join(f"{k}: {v}" for k, v in response.items()) + "\n" + cookies


def set_faults(sim: str, slug: str, **faults) -> None:
    response = httpx.put(f"{sim}/{slug}/_sim/faults", json=faults, timeout=10)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def debug_logging_server(tmp_path_factory, django_db_setup, django_db_blocker):
    """The real web process (Django and the router), logging at DEBUG level."""
    server = WebServer(tmp_path_factory.mktemp("web") / "uvicorn.log", LOG_LEVEL="DEBUG")
    server.start()
    yield server
    server.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_no_secret_reaches_a_log_a_cookie_or_a_header(
    all_logs, capfd, debug_logging_server, simulator_url
):
    server = debug_logging_server
    slug = f"sim-{secrets.token_hex(4)}"
    provider = ProviderFactory(
        slug=slug,
        base_url=f"{simulator_url}/{slug}",
        cost_url=f"{simulator_url}/{slug}/costs",
        api_key=PLATFORM_KEY,
        first_cost_query_delay_s=0,
    )
    MappingFactory(provider=provider, hub_model=HubModelFactory(model_id=MODEL), status="live")
    set_faults(simulator_url, slug, api_key=PLATFORM_KEY)
    user = UserFactory(username="secret-keeper", plan="pro")
    other = UserFactory(username="platform-payer", plan="pro")
    first_token, other_token = token_for(user), token_for(other)
    responses = []

    # 1. a token created through the API, then the user's own key set with it
    api = APIClient()
    created = api.post(
        "/api/settings/tokens",
        {"name": "laptop", "role": "write"},
        format="json",
        **bearer(first_token),
    )
    assert created.status_code == 201, created.content
    new_token = created.json()["token"]
    keys = api.put(
        "/api/settings/inference-providers",
        {"keys": {slug: USER_KEY}},
        format="json",
        **bearer(new_token),
    )
    assert keys.status_code == 200, keys.content
    responses += [created, keys]

    # 2. the router: the platform's key (other), then the user's own key (BYOK)
    def chat(token: str) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": f"{MODEL}:{slug}", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    platform = chat(other_token)
    set_faults(simulator_url, slug, api_key=USER_KEY)  # from now on only the user's key works
    byok = chat(new_token)
    refused = chat(other_token)  # the platform's key refused: an upstream error, logged
    assert platform.status_code == 200, platform.text
    assert byok.status_code == 200, byok.text
    assert refused.status_code >= 400
    responses += [platform, byok, refused]
    states = sorted(UsageRecord.objects.values_list("state", flat=True))
    assert "byok" in states

    # 3. cost polling with the platform's key: refused (logged as a failure), then answered
    failed = cost_poll_provider(provider=provider)
    set_faults(simulator_url, slug, api_key=PLATFORM_KEY)
    polled = cost_poll_provider(provider=provider)
    assert "401" in failed.error
    assert (polled.error, polled.billed) == ("", 1)  # the platform-key request, charged

    # The capture works: records of loggers that do not propagate (django), the poll's warning,
    # the web server's own lines.
    logging.getLogger("django.request").debug("probe %s", "capture-probe-1f3a")
    assert "capture-probe-1f3a" in all_logs.text()
    assert f"cost poll of {slug} failed" in all_logs.text()
    assert "/v1/chat/completions" in server.output()
    out, err = capfd.readouterr()
    every_secret = {
        **secrets_of_the_platform(),
        "the first token": first_token,
        "the other token": other_token,
        "the created token": new_token,
    }
    assert_nowhere(
        every_secret,
        logs=all_logs.text(),
        stdout=out,
        stderr=err,
        web_server_output=server.output(),
        responses="\n".join(response_metadata(r) for r in responses),
    )
    # the created token's secret is in its creation's body, and nowhere in the others
    assert_nowhere(
        {"the created token": new_token},
        bodies="\n".join(r.content.decode(errors="replace") for r in responses[1:]),
    )


# --- log forging --------------------------------------------------------------------------------
def boom(request, rest):
    raise RuntimeError("an unexpected failure")


urlpatterns = [re_path(r"^api/boom/(?P<rest>[\s\S]*)$", boom)]

FORGED = "1970-01-01 00:00:00,000 INFO security: forged"


@pytest.mark.parametrize("newline", ["%0A", "%0D", "%0D%0A", "%E2%80%A8"])
def test_a_newline_in_a_path_cannot_forge_a_log_line(all_logs, db, newline):
    client = Client(raise_request_exception=False)
    path = f"x{newline}{FORGED.replace(' ', '%20')}"

    not_found = client.get(f"/api/{path}")
    bad_host = client.get(f"/api/{path}", HTTP_HOST="evil.example")
    with override_settings(ROOT_URLCONF=__name__):
        failed = client.get(f"/api/boom/{path}")

    assert (not_found.status_code, bad_host.status_code, failed.status_code) == (404, 400, 500)
    lines = all_logs.text().splitlines()
    assert any("boom" in line for line in lines)  # the failure was logged, on one line
    assert not [line for line in lines if line.startswith(("1970", "\r1970"))]
    assert "\r" not in all_logs.text()
