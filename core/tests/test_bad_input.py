"""No 5xx on any input (issue 12, finding 10, API side): each hostile input below is a 400 in the
API's error format naming what is wrong, never a 500.

PostgreSQL refuses NUL in text and a lone surrogate cannot be encoded to UTF-8, so any lookup
with one used to fail in the database driver; Python's JSON parser raises RecursionError on deep
nesting; keyset cursors carried times and ids the database cannot compare."""

import base64
import json

import pytest
from django.test import Client

from accounts.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    bearer,
    token_for,
)
from billing.tests.factories import payer_for_new_user, pending_usage, usage_ingester
from registry.tests.factories import HubModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _cursor(text: str) -> str:
    """A cursor as the APIs make them (urlsafe base64 without padding) around any text."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def assert_bad_request(response, field: str) -> dict:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert field in body["error"], body
    assert body["error_type"], body
    return body


@pytest.fixture
def admin(db):
    """A staff user (not a superuser) who may ingest usage and administers an organization."""
    user = usage_ingester(username="ada")
    MembershipFactory(user=user, organization=OrganizationFactory(name="acme"), role="admin")
    return user


@pytest.fixture
def admin_token(admin) -> str:
    return token_for(admin, "write")


# --- NUL (and lone surrogates) in paths, query strings and cookies --------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/api/models/meta%00llama/Llama",
        "/api/models/meta-llama/Llama%00",
        "/api/partners/tog%00ether/models",
        "/api/organizations/ac%00me",
    ],
)
def test_a_nul_byte_in_the_path_is_a_400_for_anyone(api_client, url):
    body = assert_bad_request(api_client.get(url), "path")
    assert body["error_type"] == "invalid_characters"


@pytest.mark.parametrize(
    "url",
    [
        "/api/organizations/ac%00me",
        "/api/organizations/ac%00me/members",
        "/api/billing/accounts/ac%00me",
        "/api/billing/accounts/ac%00me/ledger",
        "/api/settings/inference-providers/keys/tog%00ether",
        "/api/partners/tog%00ether/models/000000000000000000000000",
    ],
)
def test_a_nul_byte_in_the_path_is_a_400_with_a_token(api_client, admin_token, url):
    for method in ("get", "delete"):
        response = getattr(api_client, method)(url, **bearer(admin_token))
        assert_bad_request(response, "path")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/models?author=me%00ta", "author"),
        ("/api/models?search=lla%00ma", "search"),
        ("/api/models?pipeline_tag=text%00", "pipeline_tag"),
        ("/api/models?inference_provider=tog%00ether", "inference_provider"),
        ("/api/models?expand=author&expand[]=%00", "expand[]"),
        ("/api/partners/together/models?status=%00", "status"),
        ("/api/models?lim%00it=1", "lim\\x00it"),
    ],
)
def test_a_nul_byte_in_the_query_string_is_a_400_naming_the_parameter(api_client, url, field):
    ProviderFactory(slug="together")
    assert_bad_request(api_client.get(url), field)


@pytest.mark.parametrize("param", ["payer", "member", "provider", "model"])
def test_a_nul_byte_in_a_usage_filter_is_a_400_naming_it(api_client, admin_token, param):
    response = api_client.get(f"/api/billing/usage?{param}=x%00y", **bearer(admin_token))
    assert_bad_request(response, param)


def test_a_nul_byte_in_a_partner_delete_query_is_a_400(api_client, admin, admin_token):
    provider = ProviderFactory(slug="together")
    MembershipFactory(user=admin, organization=provider.organization, role="write")
    response = api_client.delete(
        "/api/partners/together/models?hfModel=meta%00/llama", **bearer(admin_token)
    )
    assert_bad_request(response, "hfModel")


def test_a_nul_byte_in_the_session_cookie_is_a_400_naming_it(api_client):
    # Django unquotes `\\000` in a quoted cookie value to NUL; the session lookup then failed.
    cookie = 'sessionid="\\000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"'
    response = api_client.get("/api/whoami-v2", HTTP_COOKIE=cookie)
    assert_bad_request(response, "cookie sessionid")


# --- JSON bodies ---------------------------------------------------------------------------------
def test_a_deeply_nested_json_body_is_a_400_parse_error(api_client, admin_token):
    depth = 100_000
    response = api_client.generic(
        "POST",
        "/api/settings/tokens",
        "[" * depth + "]" * depth,
        content_type="application/json",
        **bearer(admin_token),
    )
    body = assert_bad_request(response, "JSON")
    assert body["error_type"] == "parse_error"


def test_a_json_body_nested_past_the_limit_is_a_400_even_when_python_could_parse_it(
    api_client, admin_token
):
    depth = 500  # under Python's recursion limit, far above any legitimate body
    payload = {"name": "t", "permissions": json.loads("[" * depth + "]" * depth)}
    response = api_client.post(
        "/api/settings/tokens", payload, format="json", **bearer(admin_token)
    )
    body = assert_bad_request(response, "JSON")
    assert body["error_type"] == "parse_error"


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_nul_or_a_lone_surrogate_in_a_json_key_is_a_400_naming_it(api_client, admin_token, bad):
    ProviderFactory(slug="together")
    raw = json.dumps({"keys": {f"toge{bad}ther": "sk-" + "x" * 30}})  # \u escapes: valid JSON
    response = api_client.generic(
        "PUT",
        "/api/settings/inference-providers",
        raw,
        content_type="application/json",
        **bearer(admin_token),
    )
    assert_bad_request(response, "keys")


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_nul_or_a_lone_surrogate_in_a_json_value_is_a_400_naming_it(api_client, admin_token, bad):
    raw = json.dumps({"name": f"org{bad}"})
    response = api_client.generic(
        "POST", "/api/organizations", raw, content_type="application/json", **bearer(admin_token)
    )
    assert_bad_request(response, "name")


# --- cursors -------------------------------------------------------------------------------------
@pytest.fixture
def usage(admin):
    """Two of the admin's usage records, so that the usage list has pages."""
    provider = ProviderFactory(slug="together")
    payer = payer_for_new_user(username="ada")
    for request_id in ("r-1", "r-2"):
        pending_usage(provider=provider, payer=payer, request_id=request_id)


@pytest.mark.parametrize(
    "key",
    [
        "2026-01-01T00:00:00+23:59:59.500000|1",  # an offset PostgreSQL cannot read
        "2026-01-01T00:00:00+05:00|1",  # a real offset, but never one of our cursors
        "0001-01-01T00:00:00+23:00|1",  # before year 1 in UTC
        "9999-12-31T23:59:59-23:00|1",  # after year 9999 in UTC
        "2026-01-01T00:00:00+00:00|99999999999999999999999",  # beyond bigint
        "2026-01-01T00:00:00+00:00|-9223372036854775809",
        "2026-01-01T00:00:00+00:00|0",
        "2026-01-01T00:00:00+00:00|1\x00",
        "2026-01-01T00:00:00+00:00| 1",
        "2026-01-01T00:00:00+00:00|1_0",
        pytest.param("2026-01-01T00:00:00+00:00|" + "9" * 5000, id="5000-digit id"),
    ],
)
@pytest.mark.parametrize("url", ["/api/billing/usage", "/api/billing/accounts/ada/ledger"])
def test_an_odd_time_cursor_is_a_400_naming_cursor(api_client, admin_token, usage, url, key):
    response = api_client.get(url, {"cursor": _cursor(key)}, **bearer(admin_token))
    assert_bad_request(response, "cursor")


def test_the_usage_cursor_from_a_next_link_still_works(api_client, admin_token, usage):
    first = api_client.get("/api/billing/usage", {"limit": 1}, **bearer(admin_token)).json()
    assert first["next"]
    second = api_client.get(first["next"], **bearer(admin_token))
    assert second.status_code == 200
    assert len(second.json()["results"]) == 1


@pytest.mark.parametrize("key", ["meta\x00llama/x", "\x00"])
def test_a_name_cursor_holding_nul_is_a_400_naming_cursor(api_client, admin_token, key):
    HubModelFactory(model_id="meta-llama/Llama-3.1-8B-Instruct")
    response = api_client.get("/api/models", {"cursor": _cursor(key)})
    assert_bad_request(response, "cursor")
    response = api_client.get(
        "/api/organizations/acme/members", {"cursor": _cursor(key)}, **bearer(admin_token)
    )
    assert_bad_request(response, "cursor")


# --- numbers beyond the columns on usage ingest --------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("promptTokens", 2**31),
        ("completionTokens", 2**63),
        ("promptTokens", -1),
        ("estimatedCostNanoUsd", 2**63),
        ("estimatedCostNanoUsd", 10**30),
        ("httpStatus", 2**31),
    ],
)
def test_usage_ingest_refuses_numbers_beyond_the_columns_naming_the_field(
    api_client, admin, admin_token, field, value
):
    ProviderFactory(slug="together")
    record = {"provider": "together", "user": "ada", "httpStatus": 200, "requestId": "r-1"}
    record[field] = value
    response = api_client.post(
        "/api/billing/usage", {"records": [record]}, format="json", **bearer(admin_token)
    )
    assert_bad_request(response, f"records.0.{field}")


def test_usage_ingest_refuses_a_time_before_year_1_in_utc(api_client, admin, admin_token):
    ProviderFactory(slug="together")
    record = {"provider": "together", "user": "ada", "httpStatus": 200, "requestId": "r-1"}
    record["createdAt"] = "0001-01-01T00:00:00+01:00"
    response = api_client.post(
        "/api/billing/usage", {"records": [record]}, format="json", **bearer(admin_token)
    )
    assert_bad_request(response, "records.0.createdAt")


# --- empty filters -------------------------------------------------------------------------------
def test_an_empty_inference_filter_on_the_model_list_is_a_400(api_client):
    assert_bad_request(api_client.get("/api/models?inference="), "inference")


# --- paths no view matches, and CSRF -------------------------------------------------------------
@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_an_unknown_api_path_is_a_json_404_for_every_method(method):
    client = Client(enforce_csrf_checks=True)  # as a real browser or HTTP client meets it
    response = getattr(client, method)("/api/settings/tokens/null,null")
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_a_csrf_failure_on_a_json_path_is_json():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/v1/no/such/endpoint", "{}", content_type="application/json")
    assert response.status_code in (403, 404)
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("token_id", [2**63, 10**30])
def test_a_token_id_beyond_bigint_is_a_404(api_client, admin_token, token_id):
    response = api_client.delete(f"/api/settings/tokens/{token_id}", **bearer(admin_token))
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


@pytest.mark.parametrize(
    "moment",
    [
        "2026-01-01T00:00:00+20:00",  # an offset PostgreSQL cannot read (it stops at 15:59)
        "2026-01-01T00:00:00-23:59:59",
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
    ],
)
@pytest.mark.parametrize("param", ["created_after", "created_before"])
def test_a_usage_time_filter_with_an_odd_offset_is_not_a_500(
    api_client, admin_token, usage, param, moment
):
    response = api_client.get("/api/billing/usage", {param: moment}, **bearer(admin_token))
    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        assert param in response.json()["error"]


@pytest.mark.parametrize("url", ["/v1/models/meta-llama/Lla%00ma", "/v1/models?x=%00"])
def test_a_nul_byte_on_the_routers_django_paths_is_a_400_in_openais_format(api_client, url):
    response = api_client.get(url)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_characters"
    assert error["type"] == "invalid_request_error"


def test_a_nul_byte_in_an_admin_path_is_a_400_page(staff_client):
    response = staff_client.get("/admin/accounts/user/%00/change/")
    assert response.status_code == 400


def test_a_body_above_djangos_limit_is_a_413_not_a_500_even_without_the_edge(
    api_client, admin_token, settings
):
    """Served, the edge (core/edge.py) refuses it first; a request reaching Django another
    way (a test client, another server) still gets a 413 in the API's format."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"records": [], "pad": "x" * 4096})
    response = api_client.post(
        "/api/billing/usage", body, content_type="application/json", **bearer(admin_token)
    )
    assert response.status_code == 413
    assert response.json()["error_type"] == "body_too_large"
