"""Every fault switch: its effect over HTTP, then normal behaviour once switches are reset."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from simulator.costs import affected, cost_nanousd, unasked_id
from simulator.tests.conftest import Provider, sse_data

MISSING = object()


def assert_normal_costs(provider: Provider, ids: list[str]) -> None:
    response = provider.costs(ids)
    assert response.status_code == 200
    assert response.json() == {
        "requests": [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)} for rid in ids]
    }


def assert_normal_chat(provider: Provider) -> None:
    response = provider.chat()
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert response.headers["Inference-Id"].startswith(f"sim-{provider.slug}-")


def timed(call: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call()
    return time.perf_counter() - started, response


# ----- the switch set itself ------------------------------------------------------------------


def test_faults_are_read_back_as_set_and_an_empty_object_resets_them(provider: Provider):
    switches = {"latency_ms": 5, "error_status": 502, "error_on": "costs", "withheld": 0.5}

    put = provider.http.put(f"/{provider.slug}/_sim/faults", json=switches)
    got = provider.http.get(f"/{provider.slug}/_sim/faults")

    assert put.status_code == 200 and put.json() == switches
    assert got.json() == switches
    assert provider.costs(provider.fabricated_ids(1)).status_code == 502

    provider.reset_faults()
    assert provider.http.get(f"/{provider.slug}/_sim/faults").json() == {}
    assert_normal_costs(provider, provider.fabricated_ids(1))


def test_a_put_replaces_every_switch_set_before(provider: Provider):
    provider.set_faults(error_status=500)
    provider.set_faults(latency_ms=1)

    assert provider.http.get(f"/{provider.slug}/_sim/faults").json() == {"latency_ms": 1}
    assert_normal_chat(provider)


@pytest.mark.parametrize(
    ("switches", "field"),
    [
        ({"latency": 5}, "latency"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": "5"}, "latency_ms"),
        ({"error_status": 200}, "error_status"),
        ({"error_status": True}, "error_status"),
        ({"error_on": "everything"}, "error_on"),
        ({"timeout": 1}, "timeout"),
        ({"negative_costs": 1.5}, "negative_costs"),
        ({"withheld": True}, "withheld"),
        ({"unasked_ids": 0.5}, "unasked_ids"),
        ({"huge_body_mb": 100_000}, "huge_body_mb"),
        ({"request_id_header": "Bad Header"}, "request_id_header"),
        ({"api_key": ""}, "api_key"),
        (["latency_ms"], "body"),
        ({"hostile_cost": "nan", "hostile_cost_fraction": 1}, "hostile_cost"),
        ({"hostile_cost": "deep"}, "hostile_cost_fraction"),
        ({"hostile_cost": "deep", "hostile_cost_fraction": 0}, "hostile_cost_fraction"),
        ({"hostile_cost_fraction": 0.5}, "hostile_cost"),
        ({"hostile_cost_prefix": "sim-x-"}, "hostile_cost"),
        ({"hostile_cost": "deep", "hostile_cost_fraction": 2}, "hostile_cost_fraction"),
        ({"hostile_cost": "deep", "hostile_cost_prefix": ""}, "hostile_cost_prefix"),
        ({"hostile_cost": "deep", "hostile_cost_prefix": 5}, "hostile_cost_prefix"),
    ],
)
def test_an_invalid_switch_is_refused_with_a_400_naming_it_and_nothing_changes(
    provider: Provider, switches: object, field: str
):
    provider.set_faults(latency_ms=1)

    response = provider.http.put(f"/{provider.slug}/_sim/faults", json=switches)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert provider.http.get(f"/{provider.slug}/_sim/faults").json() == {"latency_ms": 1}


def test_switches_of_one_provider_do_not_affect_another(
    provider: Provider, other_provider: Provider
):
    provider.set_faults(error_status=500)

    assert provider.chat().status_code == 500
    assert_normal_chat(other_provider)


def test_the_global_reset_forgets_every_provider(provider: Provider, other_provider: Provider):
    provider.set_faults(error_status=500)
    other_provider.set_faults(api_key="changed")
    provider.chat()

    response = provider.http.post("/_sim/reset")

    assert response.status_code == 200
    assert provider.http.get(f"/{provider.slug}/_sim/faults").json() == {}
    assert provider.stats()["chat_requests"] == 0
    assert_normal_chat(provider)
    assert_normal_chat(other_provider)


def test_a_provider_reset_forgets_that_provider_only(provider: Provider, other_provider: Provider):
    provider.set_faults(error_status=500)
    other_provider.set_faults(error_status=500)

    provider.http.post(f"/{provider.slug}/_sim/reset")

    assert_normal_chat(provider)
    assert other_provider.chat().status_code == 500


# ----- latency, errors, timeouts --------------------------------------------------------------


def test_latency_ms_delays_chat_models_and_cost_answers(provider: Provider):
    provider.set_faults(latency_ms=300)

    delays = [
        timed(provider.chat)[0],
        timed(provider.models)[0],
        timed(lambda: provider.costs(provider.fabricated_ids(1)))[0],
    ]

    assert all(delay >= 0.3 for delay in delays), delays
    provider.reset_faults()
    assert timed(provider.chat)[0] < 0.25


def test_latency_ms_delays_the_first_byte_of_a_stream(provider: Provider):
    provider.set_faults(latency_ms=300)

    delay, response = timed(lambda: provider.chat(stream=True))

    assert delay >= 0.3
    assert sse_data(response.text)[-1] == "[DONE]"
    provider.reset_faults()
    assert timed(lambda: provider.chat(stream=True))[0] < 0.25


def test_error_status_answers_every_endpoint_with_that_status_and_a_json_error(
    provider: Provider,
):
    provider.set_faults(error_status=502)

    responses = [provider.chat(), provider.models(), provider.costs(provider.fabricated_ids(1))]

    assert [r.status_code for r in responses] == [502, 502, 502]
    assert all(r.json()["error"]["code"] == "simulated_error" for r in responses)
    assert responses[0].headers["Inference-Id"].startswith(f"sim-{provider.slug}-")
    provider.reset_faults()
    assert_normal_chat(provider)
    assert provider.models().status_code == 200
    assert_normal_costs(provider, provider.fabricated_ids(1))


def test_error_status_comes_before_authentication(provider: Provider):
    provider.set_faults(error_status=503)

    assert provider.chat(headers={}).status_code == 503
    provider.reset_faults()
    assert provider.chat(headers={}).status_code == 401


@pytest.mark.parametrize("error_on", ["chat", "models", "costs"])
def test_error_on_limits_error_status_to_one_endpoint(provider: Provider, error_on: str):
    provider.set_faults(error_status=500, error_on=error_on)

    statuses = {
        "chat": provider.chat().status_code,
        "models": provider.models().status_code,
        "costs": provider.costs(provider.fabricated_ids(1)).status_code,
    }

    assert statuses == {name: 500 if name == error_on else 200 for name in statuses}
    provider.reset_faults()
    assert_normal_chat(provider)


def test_timeout_hangs_chat_requests_until_the_client_gives_up(provider: Provider):
    provider.set_faults(timeout=True, error_on="chat")

    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        provider.chat(timeout=0.5)

    assert time.perf_counter() - started >= 0.5
    assert_normal_costs(provider, provider.fabricated_ids(2))  # other endpoints still answer
    provider.reset_faults()
    assert_normal_chat(provider)


def test_timeout_on_costs_hangs_the_cost_endpoint_only(provider: Provider):
    provider.set_faults(timeout=True, error_on="costs")

    with pytest.raises(httpx.ReadTimeout):
        provider.costs(provider.fabricated_ids(1), timeout=0.5)

    assert_normal_chat(provider)
    provider.reset_faults()
    assert_normal_costs(provider, provider.fabricated_ids(1))


def test_timeout_without_error_on_hangs_the_models_endpoint_too(provider: Provider):
    provider.set_faults(timeout=True)

    with pytest.raises(httpx.ReadTimeout):
        provider.models(timeout=0.5)

    provider.reset_faults()
    assert provider.models().status_code == 200


# ----- cost answer corruption -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "corrupt"),
    [
        ("negative_costs", lambda cost: -cost),
        ("float_costs", lambda cost: cost + 0.5),
        ("string_costs", str),
        ("missing_costs", lambda cost: MISSING),
        ("null_costs", lambda cost: None),
    ],
)
def test_a_cost_corruption_switch_corrupts_exactly_the_predicted_share_of_entries(
    provider: Provider, switch: str, corrupt: Any
):
    ids = provider.fabricated_ids(200)
    hit = {rid for rid in ids if affected(rid, 0.3, switch)}
    assert 20 < len(hit) < 100  # the test is meaningful: some hit, some not
    provider.set_faults(**{switch: 0.3})

    entries = provider.costs(ids).json()["requests"]

    assert [e["requestId"] for e in entries] == ids
    for entry in entries:
        rid = entry["requestId"]
        expected = corrupt(cost_nanousd(rid)) if rid in hit else cost_nanousd(rid)
        got = entry.get("costNanoUsd", MISSING)
        assert got == expected and type(got) is type(expected), (rid, got, expected)
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_float_costs_are_sent_as_json_floats(provider: Provider):
    (rid,) = provider.fabricated_ids(1)
    provider.set_faults(float_costs=1)

    text = provider.costs([rid]).text

    assert f'"costNanoUsd":{cost_nanousd(rid)}.5' in text
    provider.reset_faults()
    assert f'"costNanoUsd":{cost_nanousd(rid)}}}' in provider.costs([rid]).text


def test_duplicate_ids_appends_a_second_entry_with_a_different_cost(provider: Provider):
    ids = provider.fabricated_ids(100)
    hit = [rid for rid in ids if affected(rid, 0.4, "duplicate_ids")]
    assert 0 < len(hit) < len(ids)
    provider.set_faults(duplicate_ids=0.4)

    entries = provider.costs(ids).json()["requests"]

    counts = Counter(e["requestId"] for e in entries)
    assert {rid for rid, n in counts.items() if n == 2} == set(hit)
    assert set(counts.values()) == {1, 2}
    first = {e["requestId"]: e["costNanoUsd"] for e in reversed(entries)}
    assert all(first[rid] == cost_nanousd(rid) for rid in ids)
    second = entries[len(ids) :]
    assert [e["requestId"] for e in second] == hit
    assert all(e["costNanoUsd"] != cost_nanousd(e["requestId"]) for e in second)
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_withheld_leaves_the_predicted_ids_out_of_the_answer(provider: Provider):
    ids = provider.fabricated_ids(100)
    kept = [rid for rid in ids if not affected(rid, 0.5, "withheld")]
    assert 0 < len(kept) < len(ids)
    provider.set_faults(withheld=0.5)

    entries = provider.costs(ids).json()["requests"]

    assert entries == [{"requestId": rid, "costNanoUsd": cost_nanousd(rid)} for rid in kept]
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_an_id_hit_by_several_switches_gets_the_first_in_precedence_order(provider: Provider):
    ids = provider.fabricated_ids(1)
    provider.set_faults(negative_costs=1, string_costs=1, null_costs=1)

    assert provider.costs(ids).json() == {"requests": [{"requestId": ids[0], "costNanoUsd": None}]}


def test_unasked_ids_appends_entries_nobody_asked_for(provider: Provider):
    ids = provider.fabricated_ids(2)
    provider.set_faults(unasked_ids=3)

    entries = provider.costs(ids).json()["requests"]

    extra = [unasked_id(provider.slug, n) for n in range(3)]
    assert [e["requestId"] for e in entries] == ids + extra
    assert not set(extra) & set(ids)
    assert all(e["costNanoUsd"] == cost_nanousd(e["requestId"]) for e in entries)
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_requests_null_answers_a_null_list(provider: Provider):
    ids = provider.fabricated_ids(2)
    provider.set_faults(requests_null=True)

    response = provider.costs(ids)

    assert response.status_code == 200
    assert response.json() == {"requests": None}
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_garbage_body_answers_200_with_a_body_that_is_not_json(provider: Provider):
    ids = provider.fabricated_ids(2)
    provider.set_faults(garbage_body=True)

    response = provider.costs(ids)

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    provider.reset_faults()
    assert_normal_costs(provider, ids)


def test_huge_body_mb_pads_the_answer_to_that_many_mebibytes(provider: Provider):
    ids = provider.fabricated_ids(3)
    provider.set_faults(huge_body_mb=3)

    response = provider.costs(ids)

    assert response.status_code == 200
    assert len(response.content) == 3 * 1024 * 1024
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert body["requests"] == [{"requestId": r, "costNanoUsd": cost_nanousd(r)} for r in ids]
    assert len(body["padding"]) > 3 * 1024 * 1024 - 1024
    provider.reset_faults()
    assert len(provider.costs(ids).content) < 1024
    assert_normal_costs(provider, ids)


# ----- hostile cost numbers -------------------------------------------------------------------

HOSTILE = {
    "overflow": str(2**63),
    "huge_exponent": "1e1000000",
    "deep": "[" * 10_000 + "]" * 10_000,
    "absurd": str(10**17),
}


def cost_answer_text(ids: list[str], hostile: dict[str, str]) -> bytes:
    """The exact answer bytes: `hostile` maps IDs to the raw JSON text of their cost."""
    entries = [
        f'{{"requestId":{json.dumps(rid)},"costNanoUsd":{hostile.get(rid, cost_nanousd(rid))}}}'
        for rid in ids
    ]
    return ('{"requests":[' + ",".join(entries) + "]}").encode()


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_cost_answers_that_raw_json_for_the_ids_with_the_prefix(
    provider: Provider, kind: str
):
    ids = provider.fabricated_ids(4)
    bad = f"sim-{provider.slug}-bad-1"
    provider.set_faults(hostile_cost=kind, hostile_cost_prefix=f"sim-{provider.slug}-bad")

    response = provider.costs([ids[0], bad, *ids[1:]])

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    # Compared as text: `1e1000000` takes json.loads most of a minute; 10**4 levels recurse.
    assert response.content == cost_answer_text([ids[0], bad, *ids[1:]], {bad: HOSTILE[kind]})
    assert provider.stats()["ids_answered"] == 5
    provider.reset_faults()
    assert_normal_costs(provider, [bad, *ids])


def test_hostile_cost_fraction_hits_exactly_the_predicted_ids(provider: Provider):
    ids = provider.fabricated_ids(100)
    hit = {rid for rid in ids if affected(rid, 0.1, "hostile_cost")}
    assert 0 < len(hit) < 30
    provider.set_faults(hostile_cost="huge_exponent", hostile_cost_fraction=0.1)

    response = provider.costs(ids)

    assert response.content == cost_answer_text(ids, dict.fromkeys(hit, "1e1000000"))


def test_hostile_cost_comes_before_the_other_corruptions_and_duplicates_stay_well_formed(
    provider: Provider,
):
    ids = provider.fabricated_ids(3)
    provider.set_faults(
        hostile_cost="overflow", hostile_cost_prefix=ids[1], withheld=1, duplicate_ids=1
    )

    entries = provider.costs(ids).json()["requests"]

    assert entries == [
        {"requestId": ids[1], "costNanoUsd": 2**63},
        {"requestId": ids[1], "costNanoUsd": 2 * cost_nanousd(ids[1])},
    ]


def test_hostile_cost_survives_huge_body_padding(provider: Provider):
    (rid,) = provider.fabricated_ids(1)
    provider.set_faults(hostile_cost="deep", hostile_cost_fraction=1, huge_body_mb=1)

    response = provider.costs([rid])

    assert len(response.content) == 1024 * 1024
    head = cost_answer_text([rid], {rid: HOSTILE["deep"]})[:-1] + b',"padding":"'
    assert response.content.startswith(head)
    assert response.content.endswith(b'x"}')


# ----- chat-side switches ---------------------------------------------------------------------


def test_omit_request_id_header_drops_the_header_from_chat_answers(provider: Provider):
    provider.set_faults(omit_request_id_header=True)

    plain, streamed = provider.chat(), provider.chat(stream=True)

    assert plain.status_code == streamed.status_code == 200
    assert "Inference-Id" not in plain.headers and "Inference-Id" not in streamed.headers
    provider.reset_faults()
    assert_normal_chat(provider)


def test_request_id_header_renames_the_header(provider: Provider):
    provider.set_faults(request_id_header="X-Request-Id")

    response = provider.chat()

    assert "Inference-Id" not in response.headers
    assert response.headers["X-Request-Id"].startswith(f"sim-{provider.slug}-")
    provider.reset_faults()
    assert_normal_chat(provider)


def test_api_key_changes_the_expected_bearer_key_for_chat_and_costs(provider: Provider):
    ids = provider.fabricated_ids(1)
    provider.set_faults(api_key="rotated-key-1")
    new_auth = {"Authorization": "Bearer rotated-key-1"}

    assert provider.chat().status_code == 401
    assert provider.costs(ids).status_code == 401
    assert provider.chat(headers=new_auth).status_code == 200
    assert provider.costs(ids, headers=new_auth).status_code == 200
    provider.reset_faults()
    assert provider.chat(headers=new_auth).status_code == 401
    assert_normal_chat(provider)
    assert_normal_costs(provider, ids)


def test_chunk_delay_ms_spaces_the_stream_messages_which_arrive_one_by_one(provider: Provider):
    provider.set_faults(chunk_delay_ms=150)
    arrivals: list[tuple[float, bytes]] = []
    started = time.perf_counter()

    with provider.http.stream(
        "POST",
        f"/{provider.slug}/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]},
        headers=provider.auth,
    ) as response:
        for part in response.iter_raw():
            arrivals.append((time.perf_counter() - started, part))

    events = sse_data(b"".join(part for _, part in arrivals).decode())
    assert events[-1] == "[DONE]"
    first_event_at = arrivals[0][0]
    done_at = arrivals[-1][0]
    # 1 role + 6 words + final + [DONE] = 9 messages, 8 gaps of 150 ms
    assert len(events) == 9
    assert done_at - first_event_at >= 8 * 0.15 * 0.9
    assert len(arrivals) >= 5  # not buffered into one body
    provider.reset_faults()
    assert timed(lambda: provider.chat(stream=True))[0] < 0.5
