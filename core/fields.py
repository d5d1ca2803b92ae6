"""A text field encrypted at rest (provider API keys, users' custom provider keys).

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`, keyed by FIELD_ENCRYPTION_KEY.
Several comma-separated keys may be configured: the first encrypts, all decrypt. To rotate,
prepend a new key, then run `manage.py encryption_rotate` (re-encrypts every stored value under
the first key), then drop the old key. The database never sees the clear text.
"""

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "fernet:"


def _fernet_key(secret: str) -> bytes:
    # Any passphrase becomes a valid 32-byte Fernet key.
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


@cache
def _cipher(keys: str) -> MultiFernet:
    secrets = [k.strip() for k in keys.split(",") if k.strip()]
    if not secrets:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEY is empty")
    return MultiFernet([Fernet(_fernet_key(s)) for s in secrets])


def encrypt(value: str) -> str:
    return PREFIX + _cipher(settings.FIELD_ENCRYPTION_KEY).encrypt(value.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise ValueError("value is not encrypted")
    try:
        return _cipher(settings.FIELD_ENCRYPTION_KEY).decrypt(stored[len(PREFIX) :]).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "An encrypted field cannot be decrypted with FIELD_ENCRYPTION_KEY "
            "(was the key changed without keeping the old one after a comma?)"
        ) from exc


@cache
def _first_cipher(keys: str) -> Fernet:
    return Fernet(_fernet_key(next(k.strip() for k in keys.split(",") if k.strip())))


def key_state(stored: str) -> str:
    """ "current" (readable with the first key), "old" (only with a later key) or
    "unreadable" (with none of the configured keys, or not an encrypted value)."""
    if not stored.startswith(PREFIX):
        return "unreadable"
    token = stored[len(PREFIX) :].encode()
    try:
        _first_cipher(settings.FIELD_ENCRYPTION_KEY).decrypt(token)
        return "current"
    except InvalidToken:
        pass
    try:
        _cipher(settings.FIELD_ENCRYPTION_KEY).decrypt(token)
        return "old"
    except InvalidToken:
        return "unreadable"


def reencrypt(stored: str) -> str:
    """The same secret encrypted under the first key, without exposing it to the caller."""
    token = stored[len(PREFIX) :].encode()
    return PREFIX + _cipher(settings.FIELD_ENCRYPTION_KEY).rotate(token).decode()


class EncryptedTextField(models.TextField):
    """Stores `fernet:<token>`; Python code sees the clear text. Not searchable."""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)
