"""Router errors in OpenAI's shape, which its clients parse: `{"error": {"message", "type",
"code"}}` (the openai SDK reads `error.message`; huggingface_hub prints the body; the JS client
reads `error.message`), with `param` naming the input at fault when there is one (a body field
such as `model`, or a header such as `X-HF-Bill-To`). Never 503 for a permanent
condition: the JS client retries 503 forever."""

from __future__ import annotations

import json

from core.errors import DomainError


class RouterError(Exception):
    def __init__(
        self, status: int, message: str, code: str, type_: str = "", *, param: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_ or _TYPES.get(status, "api_error")
        self.param = param

    def as_dict(self) -> dict:
        error = {"message": self.message, "type": self.type, "code": self.code}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def body(self) -> bytes:
        return json.dumps(self.as_dict()).encode()


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "upstream_error",
    504: "upstream_timeout",
}


def bad_request(
    message: str, code: str = "invalid_request", *, param: str | None = None
) -> RouterError:
    return RouterError(400, message, code, param=param)


def from_domain(exc: DomainError) -> RouterError:
    """A rule's error in the router's format (the API renders the same error in the Hub's)."""
    return RouterError(exc.http_status, exc.message, exc.code, param=exc.field)
