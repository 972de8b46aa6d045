"""Password hashing with scrypt (stdlib): no plaintext password is ever kept in memory longer than a check.

The cost parameters live here only (``SCRYPT``); a stored hash carries its own, so raising them
later still verifies older hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class ScryptCost:
    n: int
    r: int
    p: int


SCRYPT = ScryptCost(n=2**14, r=8, p=1)  # ~16 MiB and ~50 ms of CPU per check on the shared box


def derive(password: str, salt: bytes, cost: ScryptCost, length: int) -> bytes:
    """The key derivation itself: every check, right or wrong, known client or not, runs it once."""
    return hashlib.scrypt(password.encode(), salt=salt, n=cost.n, r=cost.r, p=cost.p, dklen=length)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), for storage."""
    salt = secrets.token_bytes(16)
    digest = derive(password, salt, SCRYPT, 32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT.n}${SCRYPT.r}${SCRYPT.p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant time in the password: the digests are compared with ``hmac.compare_digest``."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        cost = ScryptCost(int(n), int(r), int(p))
    except (ValueError, binascii.Error):
        return False
    if scheme != "scrypt":
        return False
    return hmac.compare_digest(derive(password, salt, cost, len(expected)), expected)


@cache
def dummy_hash() -> str:
    """A hash no password matches, with today's cost: checked for an unknown client id, so that
    answering "no such client" takes as long as "wrong password" (the timing tells no ids)."""
    return hash_password(secrets.token_urlsafe(32))


def generate_password() -> str:
    return secrets.token_urlsafe(24)
