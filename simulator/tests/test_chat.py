"""Chat completions over HTTP: shape, determinism, routes, streaming, tools, JSON, auth."""

from __future__ import annotations

import json
import re

import pytest

from simulator.app import CHAT_ROUTES
from simulator.tests.conftest import Provider, sse_data

REQUEST_ID = re.compile(r"^sim-(?P<slug>.+)-[0-9a-f]{24}$")


def test_a_chat_completion_has_the_fields_clients_require_and_a_request_id_header(
    provider: Provider,
):
    response = provider.chat()

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["id"], str) and body["id"]
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert body["choices"][0]["index"] == 0
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    match = REQUEST_ID.match(response.headers["Inference-Id"])
    assert match and match["slug"] == provider.slug


def test_the_reply_is_derived_from_the_last_user_message_and_is_deterministic(
    provider: Provider,
):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about Lyon"},
        {"role": "assistant", "content": "Lyon is a city."},
        {"role": "user", "content": [{"type": "text", "text": "And about Paris?"}]},
    ]
    body = {"model": "m", "messages": messages}

    first = provider.chat(body).json()["choices"][0]["message"]["content"]
    second = provider.chat(body).json()["choices"][0]["message"]["content"]

    assert first == second == f"Simulated reply from {provider.slug}: And about Paris?"


def test_usage_counts_the_words_of_every_message_and_of_the_reply(provider: Provider):
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are terse."},  # 3 words
            {"role": "user", "content": "one two three four"},  # 4 words
        ],
    }

    answer = provider.chat(body).json()

    content = answer["choices"][0]["message"]["content"]
    assert answer["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": len(content.split()),
        "total_tokens": 7 + len(content.split()),
    }


def test_max_tokens_cuts_the_reply_and_reports_finish_reason_length(provider: Provider):
    answer = provider.chat(max_tokens=3).json()

    assert answer["choices"][0]["message"]["content"] == "Simulated reply from"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


def test_every_answer_carries_a_fresh_request_id(provider: Provider):
    ids = {provider.chat().headers["Inference-Id"] for _ in range(5)}

    assert len(ids) == 5
    assert all(REQUEST_ID.match(rid) for rid in ids)


def test_error_answers_carry_a_request_id_too(provider: Provider):
    response = provider.chat(headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401
    assert REQUEST_ID.match(response.headers["Inference-Id"])


@pytest.mark.parametrize(
    "route",
    [*sorted(CHAT_ROUTES), "/models/meta-llama/Llama-3.1-8B-Instruct/v1/chat/completions"],
)
def test_every_native_chat_route_answers_like_the_openai_route(provider: Provider, route: str):
    response = provider.chat(route=route)

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert "Inference-Id" in response.headers


def test_a_streamed_completion_sends_chunks_a_final_usage_chunk_and_done(provider: Provider):
    with provider.http.stream(
        "POST",
        f"/{provider.slug}/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi you"}]},
        headers=provider.auth,
    ) as response:
        text = response.read().decode()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert REQUEST_ID.match(response.headers["Inference-Id"])
    payloads = sse_data(text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) >= 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert all(isinstance(c["created"], int) and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == f"Simulated reply from {provider.slug}: Hi you"
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": len(content.split()),
        "total_tokens": 2 + len(content.split()),
    }


def test_a_streamed_and_a_plain_answer_have_the_same_content(provider: Provider):
    plain = provider.chat().json()["choices"][0]["message"]["content"]
    streamed = provider.chat(stream=True)

    chunks = [json.loads(p) for p in sse_data(streamed.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == plain


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def test_tools_make_the_answer_a_call_of_the_first_tool_with_json_arguments(
    provider: Provider,
):
    answer = provider.chat(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="auto").json()

    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"]
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    assert answer["usage"]["completion_tokens"] >= 1


def test_tool_choice_naming_a_function_calls_that_function(provider: Provider):
    answer = provider.chat(
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    ).json()

    (call,) = answer["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {}


def test_tool_choice_none_answers_with_text(provider: Provider):
    answer = provider.chat(tools=[WEATHER_TOOL], tool_choice="none").json()

    assert "tool_calls" not in answer["choices"][0]["message"]
    assert answer["choices"][0]["message"]["content"].startswith("Simulated reply")


def test_a_streamed_tool_call_sends_the_call_then_its_arguments(provider: Provider):
    response = provider.chat(tools=[WEATHER_TOOL], stream=True)

    chunks = [json.loads(p) for p in sse_data(response.text)[:-1]]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-1]]
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments)["city"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_object_response_format_makes_the_content_valid_json(provider: Provider):
    answer = provider.chat(response_format={"type": "json_object"}).json()

    content = json.loads(answer["choices"][0]["message"]["content"])
    assert content == {
        "answer": f"Simulated reply from {provider.slug}: What is the capital of France?"
    }


def test_json_schema_response_format_makes_content_that_follows_the_schema(provider: Provider):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 5},
            "population": {"type": "integer", "minimum": 1},
            "score": {"type": ["number", "null"]},
            "capital": {"type": "boolean"},
            "kind": {"enum": ["town", "city"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "mayor": {"$ref": "#/$defs/Person"},
        },
        "required": ["city", "population", "score", "capital", "kind", "tags", "mayor"],
        "additionalProperties": False,
        "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }

    answer = provider.chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "City", "schema": schema, "strict": True},
        }
    ).json()

    content = json.loads(answer["choices"][0]["message"]["content"])
    assert set(content) == set(schema["required"])
    assert isinstance(content["city"], str) and len(content["city"]) >= 5
    assert isinstance(content["population"], int) and content["population"] >= 1
    assert isinstance(content["score"], float)
    assert content["capital"] is True
    assert content["kind"] == "town"
    assert len(content["tags"]) == 2 and all(isinstance(t, str) for t in content["tags"])
    assert isinstance(content["mayor"]["name"], str)


def test_tgi_json_response_format_with_a_schema_string_is_understood(provider: Provider):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}

    answer = provider.chat(response_format={"type": "json", "value": json.dumps(schema)}).json()

    assert json.loads(answer["choices"][0]["message"]["content"]) == {"answer": "sim"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic c2ltOmtleQ=="},
        {"Authorization": "Bearer"},
    ],
    ids=["no header", "wrong key", "basic scheme", "empty bearer"],
)
def test_a_missing_or_wrong_bearer_key_is_refused_with_a_json_401(
    provider: Provider, headers: dict[str, str]
):
    response = provider.chat(headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_key_of_another_provider_is_refused(provider: Provider, other_provider: Provider):
    response = provider.chat(headers=other_provider.auth)

    assert response.status_code == 401


def test_the_bearer_scheme_is_case_insensitive(provider: Provider):
    response = provider.chat(headers={"Authorization": f"bearer {provider.key}"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "yaml"},
            },
            "response_format",
        ),
        (["not", "an", "object"], "body"),
    ],
    ids=[
        "no model",
        "no messages",
        "empty messages",
        "message not an object",
        "stream not a boolean",
        "max_tokens zero",
        "tool without a name",
        "unknown response format",
        "body not an object",
    ],
)
def test_an_invalid_body_is_refused_with_a_400_naming_the_field(
    provider: Provider, body: object, field: str
):
    response = provider.http.post(
        f"/{provider.slug}/v1/chat/completions", json=body, headers=provider.auth
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert field in error["message"] or field == "body"


def test_a_body_that_is_not_json_is_refused_with_a_400(provider: Provider):
    response = provider.http.post(
        f"/{provider.slug}/v1/chat/completions", content=b"{nope", headers=provider.auth
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the body is not valid JSON"


def test_stats_count_chat_requests_streams_and_issued_ids(provider: Provider):
    provider.chat()
    provider.chat(stream=True)
    provider.chat(headers={})

    stats = provider.stats()

    assert stats["chat_requests"] == 3
    assert stats["chat_streams"] == 1
    assert stats["ids_issued"] == 3
    assert stats["ids_remembered"] == 3
