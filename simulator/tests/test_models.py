"""`GET /<slug>/v1/models`: the OpenAI list with pricing and context length, configurable."""

from __future__ import annotations

import pytest

from simulator.app import MODELS_ROUTES
from simulator.tests.conftest import Provider


def test_models_lists_realistic_models_with_pricing_and_context_length(provider: Provider):
    response = provider.models()

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert len(body["data"]) >= 3
    for model in body["data"]:
        assert isinstance(model["id"], str) and "/" in model["id"]
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)
        assert set(model["pricing"]) == {"input", "output"}
        assert all(isinstance(v, int | float) and v > 0 for v in model["pricing"].values())
        assert isinstance(model["context_length"], int) and model["context_length"] > 0


@pytest.mark.parametrize("route", sorted(MODELS_ROUTES))
def test_models_answer_under_every_native_route_prefix(provider: Provider, route: str):
    response = provider.http.get(f"/{provider.slug}{route}")

    assert response.status_code == 200
    assert response.json() == provider.models().json()


def test_the_model_list_can_be_replaced_at_runtime_and_restored(provider: Provider):
    custom = [
        {"id": "acme/cheap", "pricing": {"input": 0.01, "output": 0.02}, "context_length": 8192},
        {"id": "acme/no-pricing", "owned_by": "acme"},
    ]

    put = provider.http.put(f"/{provider.slug}/_sim/models", json=custom)
    listed = provider.models().json()["data"]

    assert put.status_code == 200
    assert [m["id"] for m in listed] == ["acme/cheap", "acme/no-pricing"]
    assert listed[0]["pricing"] == {"input": 0.01, "output": 0.02}
    assert listed[0]["owned_by"] == provider.slug  # filled in when absent
    assert listed[0]["object"] == "model"
    assert "pricing" not in listed[1] and "context_length" not in listed[1]
    assert provider.http.get(f"/{provider.slug}/_sim/models").json() == listed

    restored = provider.http.put(f"/{provider.slug}/_sim/models", content=b"null")
    assert restored.status_code == 200
    assert "acme/cheap" not in {m["id"] for m in provider.models().json()["data"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "x"}, "body"),
        ([{"pricing": {}}], "models[0].id"),
        ([{"id": "a"}, 3], "models[1].id"),
    ],
    ids=["not an array", "model without id", "model not an object"],
)
def test_an_invalid_model_list_is_refused_naming_the_item(
    provider: Provider, body: object, field: str
):
    response = provider.http.put(f"/{provider.slug}/_sim/models", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == field


def test_stats_count_models_requests(provider: Provider):
    provider.models()
    provider.models()

    assert provider.stats()["models_requests"] == 2


@pytest.mark.parametrize(
    ("bad", "check"),
    [
        ("missing_pricing", lambda m: "pricing" not in m),
        ("negative", lambda m: m["pricing"] == {"input": -0.5, "output": -1}),
        ("string", lambda m: m["pricing"] == {"input": "0.18", "output": "cheap"}),
        ("absurd", lambda m: m["pricing"] == {"input": 1_000_000, "output": 1e300}),
    ],
)
def test_models_bad_breaks_every_entry(provider: Provider, bad, check):
    provider.set_faults(models_bad=bad)

    data = provider.models().json()["data"]

    assert data and all(check(model) for model in data)
    assert all(model["context_length"] > 0 for model in data)  # the rest stays as it was


def test_models_bad_not_json_is_an_html_body_labelled_json(provider: Provider):
    provider.set_faults(models_bad="not_json")

    response = provider.models()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        response.json()


def test_an_unknown_models_bad_is_refused_naming_it(provider: Provider):
    response = provider.http.put(f"/{provider.slug}/_sim/faults", json={"models_bad": "weird"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "models_bad"
    assert provider.http.get(f"/{provider.slug}/_sim/faults").json() == {}
