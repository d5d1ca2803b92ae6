"""Deterministic chat completions: request validation, the answer, its JSON and SSE forms.

The answer depends only on the request (and the provider slug):

- plain: `"Simulated reply from <slug>: <first 24 words of the last user message>"`, cut to
  `max_tokens` words (then `finish_reason` is `"length"`, else `"stop"`);
- with `tools` (and `tool_choice` not `"none"`): one call of the first tool (or of the function
  named by `tool_choice`), arguments a JSON object holding a placeholder for each property of
  the tool's parameter schema, `finish_reason` `"tool_calls"`;
- with `response_format` `json_object`: `{"answer": <plain reply>}`; `json_schema` (OpenAI) or
  `json` (TGI, schema in `value`): an instance of the schema (see `example_for`). JSON content
  is never cut by `max_tokens`.

Tokens are words (whitespace-separated): prompt tokens are the words of every message's text,
completion tokens the words of the content (or of the tool call's arguments).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

REPLY_WORDS = 24
_PIECE = re.compile(r"\s*\S+")


class ChatError(ValueError):
    """An invalid chat request; `field` names the offending body field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat-completion body the simulator uses."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, serialized (as OpenAI sends it)


@dataclass(frozen=True)
class Completion:
    content: str | None
    tool_call: ToolCall | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def parse_chat_request(body: Any) -> ChatRequest:
    """Validates a decoded chat body; raises ChatError naming the first bad field."""
    if not isinstance(body, dict):
        raise ChatError("body", "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatError("model", "'model' is required and must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages", "'messages' is required and must be a non-empty array")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatError("messages", f"'messages[{index}]' must be an object with a 'role'")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ChatError("stream", "'stream' must be a boolean")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ChatError("max_tokens", "'max_tokens' must be a positive integer")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(_tool_name(tool) for tool in tools):
        raise ChatError("tools", "'tools' must be an array of {type: function, function: {name}}")
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in {_tool_name(tool) for tool in tools}:
            raise ChatError("tool_choice", "'tool_choice' names a function not in 'tools'")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema", "json"):
            raise ChatError(
                "response_format",
                "'response_format.type' must be text, json_object, json_schema or json",
            )
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=max_tokens,
        tools=tuple(tools),
        tool_choice=tool_choice,
        response_format=response_format,
    )


def complete(slug: str, request: ChatRequest, call_id: str) -> Completion:
    """The simulated answer to a valid request."""
    prompt_tokens = sum(count_words(text_of(m.get("content"))) for m in request.messages)
    tool = _chosen_tool(request)
    if tool is not None:
        arguments = json.dumps(example_for(tool.get("parameters") or {"type": "object"}))
        return Completion(
            content=None,
            tool_call=ToolCall(id=call_id, name=tool["name"], arguments=arguments),
            finish_reason="tool_calls",
            prompt_tokens=prompt_tokens,
            completion_tokens=max(1, count_words(arguments)),
        )
    reply = plain_reply(slug, request.messages)
    structured = _structured(request.response_format, reply)
    finish_reason = "stop"
    if structured is not None:
        content = json.dumps(structured)
    else:
        words = reply.split()
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words, finish_reason = words[: request.max_tokens], "length"
        content = " ".join(words)
    return Completion(
        content=content,
        tool_call=None,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=count_words(content),
    )


def plain_reply(slug: str, messages: list[dict[str, Any]]) -> str:
    """The plain-text reply before `max_tokens`: derived from the last user message."""
    last_user = next(
        (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    excerpt = " ".join(last_user.split()[:REPLY_WORDS]) or "(no user message)"
    return f"Simulated reply from {slug}: {excerpt}"


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def count_words(text: str) -> int:
    return len(text.split())


def completion_body(
    completion: Completion, *, response_id: str, created: int, model: str
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.content}
    if completion.tool_call is not None:
        message["tool_calls"] = [_tool_call_json(completion.tool_call)]
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage,
    }


def stream_chunks(
    completion: Completion, *, response_id: str, created: int, model: str
) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects of a stream, in order (without `[DONE]`).

    A role chunk, the content split into word pieces (or the tool call, then its arguments),
    and a final chunk with an empty delta, the finish reason and `usage`.
    """
    if completion.tool_call is not None:
        call = completion.tool_call
        deltas: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ],
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": call.arguments}}]},
        ]
    else:
        pieces = _PIECE.findall(completion.content or "")
        deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    chunks = [chunk(delta, None) for delta in deltas]
    final = chunk({}, completion.finish_reason)
    final["usage"] = completion.usage
    chunks.append(final)
    return chunks


def example_for(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small JSON value valid against a (reasonable) JSON schema.

    Handles const, enum, local `$ref`s, anyOf/oneOf/allOf (first branch), type lists, objects
    (every property), arrays (`minItems` items, at least one unless `maxItems` is 0), strings
    (`minLength`/`maxLength`, `date`/`date-time` formats), numbers (`minimum`), booleans, null.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 16:
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return example_for(_resolve(ref, root), root, depth + 1)
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            return example_for(branches[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: example_for(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = schema.get("minItems") or 1
        if schema.get("maxItems") == 0:
            count = 0
        return [example_for(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "string":
        return _example_string(schema)
    if kind in ("integer", "number"):
        value = schema.get("minimum", 0)
        if "exclusiveMinimum" in schema:
            value = schema["exclusiveMinimum"] + 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "sim"


def _example_string(schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2025-01-01T00:00:00Z"
    if fmt == "date":
        return "2025-01-01"
    value = "sim"
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value = value.ljust(min_length, "x")
    max_length = schema.get("maxLength")
    if isinstance(max_length, int):
        value = value[:max_length]
    return value


def _resolve(ref: str, root: Any) -> Any:
    """A local JSON pointer (`#/$defs/Name`) in the root schema; {} if it does not resolve."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def _chosen_tool(request: ChatRequest) -> dict[str, Any] | None:
    """The function the simulated model calls, or None for a plain answer."""
    if not request.tools or request.tool_choice == "none":
        return None
    wanted = None
    if isinstance(request.tool_choice, dict):
        wanted = request.tool_choice["function"]["name"]
    for tool in request.tools:
        if wanted is None or _tool_name(tool) == wanted:
            return tool["function"]
    return None  # unreachable: parse_chat_request checked the name


def _structured(response_format: dict[str, Any] | None, reply: str) -> Any:
    """The JSON value the answer must be, or None for free text."""
    if response_format is None:
        return None
    kind = response_format["type"]
    if kind == "json_object":
        return {"answer": reply}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return example_for(schema) if isinstance(schema, dict) else {"answer": reply}
    if kind == "json":
        schema = response_format.get("value")
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                schema = None
        return example_for(schema) if isinstance(schema, dict) else {"answer": reply}
    return None
