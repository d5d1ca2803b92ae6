"""What an access token may do, and DRF permission classes built on it.

`read` tokens may only read. `write` tokens may do everything their user may do.
`fine-grained` tokens may do exactly what their permission list names.
"""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts.models import AccessToken, TokenRole

INFERENCE_SERVERLESS_WRITE = "inference.serverless.write"

# Fine-grained permissions a token can carry, with what each allows (shown in the admin).
FINE_GRAINED_PERMISSIONS = {
    INFERENCE_SERVERLESS_WRITE: "Make calls to inference providers through the router",
    "inference.endpoints.infer.write": "Make calls to inference endpoints",
    "user.billing.read": "Read the user's billing usage",
    "org.read": "Read organizations the user belongs to",
    "org.write": "Manage organizations the user administers (including their provider mappings)",
    "tokens.write": "Create and revoke the user's access tokens",
    "user.settings.write": (
        "Change the user's settings: inference provider order and custom provider keys"
    ),
}
# Permissions that only read; a `read` token carries these.
READ_PERMISSIONS = frozenset({"user.billing.read", "org.read"})


def token_allows(token: AccessToken, permission: str) -> bool:
    if token.role == TokenRole.WRITE:
        return True
    if token.role == TokenRole.READ:
        return permission in READ_PERMISSIONS
    return permission in token.permissions


def request_token(request) -> AccessToken | None:
    """The token that authenticated the request (None for an admin session)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, AccessToken) else None


class TokenPermission(BasePermission):
    """Requires the request's token to allow `permission`; a browser session passes.

    Subclass with `permission = "..."`, or use `token_permission("...")`. When
    `only_unsafe` is set, reads (GET, HEAD, OPTIONS) need no permission.
    """

    permission = ""
    only_unsafe = False

    def has_permission(self, request, view) -> bool:
        if self.only_unsafe and request.method in SAFE_METHODS:
            return True
        token = request_token(request)
        if token is None:
            return bool(request.user and request.user.is_authenticated)
        if token_allows(token, self.permission):
            return True
        self.message = (
            f"This {token.role} access token does not have the '{self.permission}' permission."
        )
        return False


def token_permission(permission: str, *, only_unsafe: bool = False) -> type[TokenPermission]:
    return type(
        f"TokenPermission_{permission.replace('.', '_')}",
        (TokenPermission,),
        {"permission": permission, "only_unsafe": only_unsafe},
    )
