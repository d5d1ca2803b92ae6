"""Query parameters shared by the paginated APIs: `limit` and opaque keyset cursors."""

import base64
import binascii
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from core.errors import DomainError
from core.text import unstorable_character

ID_MAX = 2**63 - 1  # a bigint primary key


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
        raise _not_a_cursor(source) from exc
    if not text or unstorable_character(text):
        raise _not_a_cursor(source)
    return text


def _not_a_cursor(source: str) -> DomainError:
    return DomainError("validation_error", f"cursor: not a cursor from a {source}.", field="cursor")


def encode_time_cursor(created_at: datetime, pk: int) -> str:
    """A keyset cursor on (created_at, id): the time in UTC and the id."""
    return encode_cursor(f"{created_at.astimezone(UTC).isoformat()}|{pk}")


def decode_time_cursor(raw: str, *, source: str) -> tuple[datetime, int]:
    """The (created_at, id) in a cursor made by `encode_time_cursor`; a 400 naming `cursor`
    for anything else: a time that is not UTC (an offset such as `+23:59:59.5` PostgreSQL
    cannot read, or one that moves the time out of the years it can compare) or an id that
    is not a positive bigint."""
    text = decode_cursor(raw, source=source)
    moment, _, pk = text.partition("|")
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        raise _not_a_cursor(source) from None
    digits = pk.isascii() and pk.isdigit() and len(pk) <= len(str(ID_MAX))
    if when.utcoffset() != timedelta(0) or not digits:
        raise _not_a_cursor(source)
    if not 1 <= int(pk) <= ID_MAX:
        raise _not_a_cursor(source)
    return when, int(pk)


def next_link(request, key: str) -> str:
    """The `Link` header value for the page after `key`, keeping the request's other
    parameters (as the Hub and GitHub paginate; `huggingface_hub` follows it)."""
    query = request.query_params.copy()
    query["cursor"] = encode_cursor(key)
    url = (
        request.build_absolute_uri(request.path) + "?" + urlencode(list(query.lists()), doseq=True)
    )
    return f'<{url}>; rel="next"'
