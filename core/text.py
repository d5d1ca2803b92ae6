"""Characters no name, id or text column can hold (no Django or DRF import: the JSON parser and
the error middleware both use it, and DRF loads the parser while `core.errors` imports DRF)."""


def unstorable_character(text: str) -> str | None:
    """What makes `text` impossible to look up or store, or None: PostgreSQL refuses NUL in
    text, and a lone surrogate (`"\\ud800"` in JSON) cannot be encoded to UTF-8. Either one
    reaching a query used to fail in the driver, a 500."""
    if "\x00" in text:
        return "a NUL character (%00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (not a Unicode character)"
    return None


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates escaped, for an error message."""
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def invalid_characters_message(reason: str) -> str:
    return f"contains {reason}, which no value here may hold."
