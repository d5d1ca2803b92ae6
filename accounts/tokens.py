"""Access token secrets: `hf_` + 34 base62 characters, stored only as a SHA-256 digest.

The secret has ~202 bits of entropy, so a fast digest is enough (a slow password hash would
only slow every request); the digest is unique in the database and looked up directly.
"""

import hashlib
import re
import secrets
import string

TOKEN_PREFIX = "hf_"  # noqa: S105 (a prefix, not a secret)
TOKEN_BODY_LENGTH = 34
TOKEN_LENGTH = len(TOKEN_PREFIX) + TOKEN_BODY_LENGTH
TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9]{{{TOKEN_BODY_LENGTH}}}$")
BASE62 = string.ascii_letters + string.digits
DISPLAY_PREFIX_LENGTH = 7  # "hf_" + 4 characters


def token_generate() -> str:
    return TOKEN_PREFIX + "".join(secrets.choice(BASE62) for _ in range(TOKEN_BODY_LENGTH))


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_is_well_formed(secret: str) -> bool:
    return bool(TOKEN_RE.match(secret))
