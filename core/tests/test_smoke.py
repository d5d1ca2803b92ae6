import pytest


@pytest.mark.django_db
def test_health_reports_database_and_broker_ok(api_client):
    response = api_client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["broker"] == "ok"
