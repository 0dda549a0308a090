"""Connection tokens: minted at random, stored and looked up only as hashes.

This module owns the token format: 256 random bits as 43 characters of
base64url (Plane's format), and their SHA-256 hex digest, the only form of a
connection token that reaches the log.  A *static* token (Plane's
``use_static_token``) is ``s.`` followed by the same 256 random bits: one per
backend, handed to every connect, so it is kept in the log itself (like a
secret token) and redacted in every view.  Lookups go through the hash, so no
comparison ever touches a stored secret; :func:`same` compares two secrets in constant time.

It also owns the backend id: :func:`new_backend_id` mints one, and
:data:`BACKEND_ID_PATTERN` is the one rule every id must follow (the API's
``spawn_config.id``, the executors' container and file names): a letter or
digit, then up to 63 letters, digits, ``_``, ``.`` or ``-``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

BACKEND_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A backend id, to embed in a larger pattern (a list cursor's)."""
BACKEND_ID_PATTERN = f"^{BACKEND_ID}$"
"""Every backend id matches this (as a whole: see :func:`is_backend_id`)."""
_BACKEND_ID = re.compile(BACKEND_ID_PATTERN)


def mint() -> str:
    """A new unguessable token: 32 random bytes, base64url, no padding (43 chars)."""
    return secrets.token_urlsafe(32)


STATIC_PREFIX = "s."


def mint_static() -> str:
    """A new static token: ``s.`` + 32 random bytes, base64url (Plane's static token)."""
    return STATIC_PREFIX + mint()


def digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored and found."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_backend_id() -> str:
    """A fresh backend id: 16 lowercase base32 characters (80 random bits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def is_backend_id(value: str) -> bool:
    """Whether ``value`` is a well-formed backend id (:data:`BACKEND_ID_PATTERN`)."""
    return _BACKEND_ID.fullmatch(value) is not None
