"""The cost endpoint over HTTP, and the pure functions callers use to predict it."""

from __future__ import annotations

import hashlib
import time

import pytest

from simulator.costs import MAX_IDS_PER_REQUEST, affected, cost_nanousd
from simulator.tests.conftest import Provider


def test_cost_nanousd_is_the_documented_formula():
    request_id = "sim-together-0123456789abcdef01234567"
    expected = 1_000 + int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % 2_000_000

    assert cost_nanousd(request_id) == expected
    assert cost_nanousd("sim-together-abc") == 1_769_152  # pinned: benchmarks rely on it


def test_costs_are_non_negative_integers_in_the_documented_range():
    costs = [cost_nanousd(f"sim-x-{n}") for n in range(2_000)]

    assert all(isinstance(c, int) and 1_000 <= c < 2_001_000 for c in costs)
    assert len(set(costs)) > 1_900  # spread out, not a constant


def test_affected_hits_about_the_fraction_deterministically_and_per_salt():
    ids = [f"sim-x-{n}" for n in range(10_000)]

    hit = [rid for rid in ids if affected(rid, 0.25, "withheld")]

    assert 2_250 < len(hit) < 2_750
    assert hit == [rid for rid in ids if affected(rid, 0.25, "withheld")]
    assert hit != [rid for rid in ids if affected(rid, 0.25, "negative_costs")]
    assert not any(affected(rid, 0, "withheld") for rid in ids)
    assert all(affected(rid, 1, "withheld") for rid in ids)
    assert set(hit) <= {rid for rid in ids if affected(rid, 0.5, "withheld")}


def test_costs_of_ids_issued_by_the_chat_endpoint_equal_cost_nanousd(provider: Provider):
    ids = [provider.chat().headers["Inference-Id"] for _ in range(3)]

    response = provider.costs(ids)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "requests": [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)} for rid in ids]
    }
    assert provider.stats()["ids_asked_issued"] == 3


def test_fabricated_ids_of_the_provider_are_priced_without_any_chat_request(
    provider: Provider,
):
    ids = [*provider.fabricated_ids(5), f"sim-{provider.slug}-anything-at-all"]

    answer = provider.costs(ids).json()

    assert {e["requestId"]: e["costNanoUsd"] for e in answer["requests"]} == {
        rid: cost_nanousd(rid) for rid in ids
    }
    assert provider.stats()["chat_requests"] == 0


def test_ids_of_other_providers_and_unknown_ids_are_left_out(
    provider: Provider, other_provider: Provider
):
    mine = provider.fabricated_ids(2)
    foreign = [*other_provider.fabricated_ids(2), "deadbeef0", "", f"{provider.slug}-x"]

    answer = provider.costs([foreign[0], mine[0], *foreign[1:], mine[1]]).json()

    assert [e["requestId"] for e in answer["requests"]] == mine


def test_an_empty_list_gets_an_empty_answer(provider: Provider):
    assert provider.costs([]).json() == {"requests": []}


def test_an_id_asked_twice_is_answered_once(provider: Provider):
    (rid,) = provider.fabricated_ids(1)

    answer = provider.costs([rid, rid]).json()

    assert answer == {"requests": [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)}]}


def test_10000_ids_are_answered_correctly_in_well_under_100_ms(provider: Provider):
    ids = provider.fabricated_ids(MAX_IDS_PER_REQUEST)
    provider.costs(ids[:10])  # warm the connection

    durations = []
    for _ in range(5):
        started = time.perf_counter()
        response = provider.costs(ids)
        durations.append(time.perf_counter() - started)

    entries = response.json()["requests"]
    assert len(entries) == MAX_IDS_PER_REQUEST
    assert all(e["costNanoUsd"] == cost_nanousd(e["requestId"]) for e in entries)
    assert min(durations) < 0.1, f"10,000 ids took {[round(d * 1000) for d in durations]} ms"


def test_more_than_10000_ids_are_refused_with_413(provider: Provider):
    response = provider.costs(provider.fabricated_ids(MAX_IDS_PER_REQUEST + 1))

    assert response.status_code == 413
    assert response.json()["error"]["param"] == "requestIds"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"requestIds": None},
        {"requestIds": "sim-x-1"},
        {"requestIds": ["sim-x-1", 2]},
        {"requestIds": [None]},
        ["sim-x-1"],
        "requestIds",
    ],
    ids=[
        "missing requestIds",
        "null",
        "a string",
        "a number in the list",
        "null in the list",
        "a bare list",
        "a bare string",
    ],
)
def test_a_body_without_a_list_of_string_ids_is_refused_with_400(provider: Provider, body: object):
    response = provider.costs(body=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "requestIds"


def test_a_body_that_is_not_json_is_refused_with_400(provider: Provider):
    response = provider.http.post(
        f"/{provider.slug}/costs", content=b"requestIds=1", headers=provider.auth
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "sim-key"}],
    ids=["no header", "wrong key", "no scheme"],
)
def test_the_cost_endpoint_requires_the_providers_bearer_key(
    provider: Provider, headers: dict[str, str]
):
    response = provider.http.post(
        f"/{provider.slug}/costs", json={"requestIds": provider.fabricated_ids(1)}, headers=headers
    )

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_stats_count_cost_requests_ids_asked_and_entries_answered(provider: Provider):
    provider.costs(provider.fabricated_ids(3))
    provider.costs([*provider.fabricated_ids(2), "foreign-id"])

    stats = provider.stats()

    assert stats["cost_requests"] == 2
    assert stats["ids_asked"] == 6
    assert stats["ids_answered"] == 5
    assert stats["ids_asked_issued"] == 0
