"""`Authorization: Bearer hf_...` authentication for DRF.

A request without an Authorization header is anonymous (public endpoints serve it; protected
ones answer 401). A header that is present but malformed, or names an unknown or revoked
token, is a 401 with a message saying which: never a 500, never silently anonymous.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from accounts import selectors, services
from accounts.tokens import TOKEN_LENGTH, token_is_well_formed

HEADER_LENGTH_MAX = 512
BEARER_HINT = "expected 'Authorization: Bearer hf_...'"


class AccessTokenAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None
        if len(header) > HEADER_LENGTH_MAX:
            raise exceptions.AuthenticationFailed(
                f"Authorization header is too long ({len(header)} characters); {BEARER_HINT}."
            )
        parts = header.split()
        if not parts:
            raise exceptions.AuthenticationFailed(f"Empty Authorization header; {BEARER_HINT}.")
        if parts[0].lower() != self.keyword.lower():
            scheme = parts[0][:20].encode("ascii", "replace").decode()
            raise exceptions.AuthenticationFailed(
                f"Unsupported authorization scheme '{scheme}'; {BEARER_HINT}."
            )
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(f"Malformed Authorization header; {BEARER_HINT}.")
        secret = parts[1]
        if len(secret) > TOKEN_LENGTH:
            raise exceptions.AuthenticationFailed(
                f"Access token is too long: tokens are {TOKEN_LENGTH} characters."
            )
        if not token_is_well_formed(secret):
            raise exceptions.AuthenticationFailed(
                "Malformed access token: tokens are 'hf_' followed by 34 letters and digits."
            )
        token = selectors.access_token_get_by_secret(secret=secret)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid credentials in Authorization header.")
        if not token.is_active:
            raise exceptions.AuthenticationFailed("This access token has been revoked.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        services.access_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) when credentials are missing or bad.
        return f'{self.keyword} realm="api"'
