"""The one error format: every API failure is JSON, never an HTML page or a 500."""

import pytest
from django.core.management import call_command
from django.urls import path


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def boom(request):
    raise RuntimeError("internal detail that must not leak")


urlpatterns = [path("api/boom", boom)]


@pytest.mark.django_db
def test_an_unknown_api_path_is_a_json_404(api_client):
    response = api_client.get("/api/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": "No API endpoint at /api/no/such/thing.",
        "error_type": "not_found",
    }


@pytest.mark.django_db
def test_malformed_json_is_a_400_parse_error(api_client, user, write_token):
    response = api_client.generic(
        "POST",
        "/api/settings/tokens",
        "{not json",
        content_type="application/json",
        **bearer(write_token),
    )
    assert response.status_code == 400
    assert response.json()["error_type"] == "parse_error"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("[]", "JSON object"),
        ('"name"', "JSON object"),
        ("42", "JSON object"),
        ("null", "No data provided"),
    ],
)
def test_a_json_body_that_is_not_an_object_is_a_400(
    api_client, user, write_token, payload, fragment
):
    response = api_client.generic(
        "POST",
        "/api/settings/tokens",
        payload,
        content_type="application/json",
        **bearer(write_token),
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.django_db
def test_a_form_encoded_body_is_a_415(api_client, user, write_token):
    response = api_client.post("/api/settings/tokens", {"name": "x"}, **bearer(write_token))
    assert response.status_code == 415
    assert response.json()["error_type"] == "unsupported_media_type"


@pytest.mark.django_db
def test_a_wrong_method_is_a_405(api_client, user, write_token):
    response = api_client.put("/api/whoami-v2", {}, format="json", **bearer(write_token))
    assert response.status_code == 405
    assert response.json()["error_type"] == "method_not_allowed"


@pytest.mark.django_db
@pytest.mark.urls("core.tests.test_errors")
def test_an_unexpected_exception_is_a_json_500_without_internals(client, settings):
    settings.DEBUG = True  # even the debug page is not shown on API paths
    client.raise_request_exception = False
    response = client.get("/api/boom")
    assert response.status_code == 500
    assert response.json()["error_type"] == "server_error"
    assert "internal detail" not in response.content.decode()


@pytest.mark.django_db
def test_the_openapi_schema_and_docs_render(api_client):
    schema = api_client.get("/api/schema", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/whoami-v2" in paths
    assert "/api/settings/tokens" in paths
    docs = api_client.get("/api/docs")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


@pytest.mark.django_db
def test_migrations_match_the_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_the_openapi_schema_is_valid_and_documents_every_endpoint(tmp_path):
    # Fails on any drf-spectacular warning: an undocumented view, an unknown auth class...
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml")
    )
    assert "bearer" in (tmp_path / "schema.yml").read_text()
