"""Query parameters shared by the paginated APIs: `limit` and opaque keyset cursors."""

import base64
import binascii
from urllib.parse import urlencode

from core.errors import DomainError


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    """`?limit=`: a whole number of at least 1, capped at `maximum` (400 otherwise)."""
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError as exc:
        raise DomainError(
            "validation_error", f"limit: {raw!r} is not a whole number.", field="limit"
        ) from exc
    if limit < 1:
        raise DomainError("validation_error", "limit must be at least 1.", field="limit")
    return min(limit, maximum)


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(raw: str, *, source: str) -> str:
    """The key in a cursor made by `encode_cursor`; a 400 naming `cursor` otherwise.

    Strict: the lenient decoder drops foreign characters, so "!!!!" would decode to "" and
    silently restart at page 1.
    """
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
        text = key.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise DomainError(
            "validation_error", f"cursor: not a cursor from a {source}.", field="cursor"
        ) from exc
    if not text:
        raise DomainError(
            "validation_error", f"cursor: not a cursor from a {source}.", field="cursor"
        )
    return text


def next_link(request, key: str) -> str:
    """The `Link` header value for the page after `key`, keeping the request's other
    parameters (as the Hub and GitHub paginate; `huggingface_hub` follows it)."""
    query = request.query_params.copy()
    query["cursor"] = encode_cursor(key)
    url = (
        request.build_absolute_uri(request.path) + "?" + urlencode(list(query.lists()), doseq=True)
    )
    return f'<{url}>; rel="next"'
