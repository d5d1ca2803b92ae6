"""Opaque public ids shaped like the Hub's: 24 lowercase hex characters (a MongoDB ObjectId).

Four bytes of creation time (so ids sort roughly by age) and eight random bytes.
"""

import re
import secrets
import time

OBJECT_ID_RE = re.compile(r"^[0-9a-f]{24}$")


def object_id() -> str:
    return int(time.time()).to_bytes(4, "big").hex() + secrets.token_hex(8)


def is_object_id(value: str) -> bool:
    return bool(OBJECT_ID_RE.match(value))
