"""Plane's header rules, as data: what the proxy drops, adds and forwards.

This module owns the names (lowercase bytes) of the headers the relay treats
specially and the rendering of the ``x-verified-*`` block a backend receives.
Nothing here does I/O; the relay (:mod:`plane.proxy.relay`) applies the rules
while the parser hands it each header.

Towards the backend the proxy

* drops every incoming ``x-verified-*`` header (only the proxy may set them),
* drops hop-by-hop headers: ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer`` and ``Upgrade`` (kept,
  with ``Connection: upgrade``, on an upgrade request); ``Content-Length`` and
  ``Transfer-Encoding`` describe the framing, which llhttp has validated and
  the relay re-frames byte for byte, so they are forwarded as they came,
* adds ``x-verified-username`` (when the token has a user),
  ``-user-data`` (the token's ``auth`` JSON, ``null`` when none), ``-secret``,
  ``-backend`` and ``-path`` (the original path, token included, without the
  query), and, like Plane, ``x-forwarded-for`` (the peer's address, appended
  to an incoming chain) and ``x-forwarded-proto`` (``http`` unless an
  upstream TLS terminator already said otherwise).

Towards the client it drops the same hop-by-hop set (``Upgrade`` kept on a
101) and the backend's ``Transfer-Encoding`` (the relay frames the body
itself), and adds ``x-plane-backend-id``.
"""

from __future__ import annotations

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Headers never forwarded, in either direction (``proxy-*`` also by prefix)."""


VERIFIED_PREFIX = b"x-verified-"
BACKEND_ID_HEADER = b"x-plane-backend-id"

CONNECTION_OPTIONS: frozenset[bytes] = frozenset({b"keep-alive", b"close", b"upgrade"})
"""``Connection`` tokens that name no header to drop."""


def connection_tokens(value: bytes) -> list[bytes]:
    """The comma-separated tokens of a ``Connection`` value, lowercased."""
    return [t for t in (part.strip().lower() for part in value.split(b",")) if t]


def clean_value(text: str) -> bytes:
    """A header value from free text: UTF-8, with control characters (CR, LF,
    NUL...) removed so that no value can end the header early."""
    return "".join(c for c in text if c == "\t" or (c >= " " and c != "\x7f")).encode(
        "utf-8", "surrogateescape"
    )


def render_verified(
    backend_id: str, user: str | None, auth: str | None, secret_token: str
) -> bytes:
    """The ``x-verified-*`` header lines (except ``-path``, which is per request)
    for one token, ready to send."""
    lines = [b"x-verified-backend: " + clean_value(backend_id) + b"\r\n"]
    if user is not None:
        lines.append(b"x-verified-username: " + clean_value(user) + b"\r\n")
    user_data = clean_value(auth) if auth is not None else b"null"
    lines.append(b"x-verified-user-data: " + user_data + b"\r\n")
    lines.append(b"x-verified-secret: " + clean_value(secret_token) + b"\r\n")
    return b"".join(lines)


def render_backend_id(backend_id: str) -> bytes:
    """The ``x-plane-backend-id`` line every proxied response carries."""
    return BACKEND_ID_HEADER + b": " + clean_value(backend_id) + b"\r\n"
