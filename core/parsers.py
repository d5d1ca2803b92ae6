"""The API's JSON parser: DRF's, made safe for any body.

- Deep nesting is a 400 (`parse_error`): Python's parser raises RecursionError (not a
  ValueError, so DRF let it through as a 500) on a body like `[[[[…]]]]`, and no request body
  of this API nests deeper than a few levels, so anything past `JSON_DEPTH_MAX` is refused
  before a serializer walks it.
- A string (value or key) holding NUL or a lone surrogate (`"\\u0000"`, `"\\ud800"`, valid
  JSON both) is a 400 naming where it is: PostgreSQL cannot store or compare either one.
"""

from __future__ import annotations

from rest_framework import exceptions, parsers

from core.text import invalid_characters_message, printable, unstorable_character

JSON_DEPTH_MAX = 32


def _check(data) -> None:
    """Walks the parsed body once, without recursion (a 32-level body is still cheap)."""
    stack = [(data, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            reason = unstorable_character(value)
            if reason:
                raise _field_error(path or "body", reason)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > JSON_DEPTH_MAX:
            raise exceptions.ParseError(
                f"JSON parse error - nested deeper than {JSON_DEPTH_MAX} levels."
            )
        if isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{printable(key)}" if path else printable(key)
                reason = unstorable_character(key)
                if reason:
                    raise _field_error(path or "body", f"a key with {reason}")
                stack.append((item, name, depth + 1))
        else:
            for index, item in enumerate(value):
                stack.append((item, f"{path}.{index}" if path else str(index), depth + 1))


def _field_error(field: str, reason: str) -> exceptions.ValidationError:
    return exceptions.ValidationError(
        {field: [invalid_characters_message(reason)]}, code="invalid_characters"
    )


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError(
                f"JSON parse error - nested deeper than {JSON_DEPTH_MAX} levels."
            ) from exc
        _check(data)
        return data
