"""What an access token may do, and DRF permission classes built on it.

`read` tokens may only read. `write` tokens may do everything their user may do.
`fine-grained` tokens may do exactly what their permission list names.
"""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts import rules
from accounts.models import AccessToken
from accounts.rules import (  # noqa: F401 (the permission names live with the rules)
    FINE_GRAINED_PERMISSIONS,
    INFERENCE_SERVERLESS_WRITE,
    READ_PERMISSIONS,
)


def token_allows(token: AccessToken, permission: str) -> bool:
    return rules.token_allows(role=token.role, permissions=token.permissions, permission=permission)


def request_token(request) -> AccessToken | None:
    """The token that authenticated the request (None for an admin session)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, AccessToken) else None


class TokenPermission(BasePermission):
    """Requires an authenticated caller whose token allows `permission`; a browser session
    passes. Subclass, or use `token_permission("...")`.

    For reads (GET, HEAD, OPTIONS): `read_permission` if set, nothing more than being
    authenticated if `only_unsafe` is set, else `permission` too.
    """

    permission = ""
    read_permission = ""
    only_unsafe = False

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False  # DRF answers 401, since a token could have been given
        needed = self.permission
        if request.method in SAFE_METHODS:
            if self.read_permission:
                needed = self.read_permission
            elif self.only_unsafe:
                return True
        token = request_token(request)
        if token is None or token_allows(token, needed):
            return True
        self.message = f"This {token.role} access token does not have the '{needed}' permission."
        return False


def token_permission(
    permission: str, *, only_unsafe: bool = False, read: str = ""
) -> type[TokenPermission]:
    """A permission class: `permission` for writes; for reads, `read` if given, nothing if
    `only_unsafe`, else `permission` as well."""
    return type(
        f"TokenPermission_{permission.replace('.', '_')}_{read.replace('.', '_')}",
        (TokenPermission,),
        {"permission": permission, "only_unsafe": only_unsafe, "read_permission": read},
    )
