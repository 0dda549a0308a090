"""Plane's header rules, as data: what the proxy drops, adds and forwards.

This module owns the names (lowercase bytes) of the headers the relay treats
specially, the rendering of the lines it adds, and the reading of ``Host``.
Nothing here does I/O; the parser (:mod:`plane.proxy.parsing`) applies the
rules while httptools hands it each header, the relay
(:mod:`plane.proxy.relay`) adds the lines.

Towards the backend the proxy

* drops every incoming header whose name normalizes to ``x-verified-*``
  (case-insensitive, ``_`` counting as ``-``: ``X_Verified_Secret`` too; only
  the proxy may set them), and the client's ``Forwarded`` and
  ``X-Forwarded-Proto`` (the proxy sets the latter itself),
* drops hop-by-hop headers: ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer`` and ``Upgrade`` (kept,
  with ``Connection: upgrade``, on an upgrade request); ``Content-Length`` and
  ``Transfer-Encoding`` describe the framing, which llhttp has validated and
  the relay re-frames byte for byte, so they are forwarded as they came,
* adds ``x-verified-backend`` and ``-path`` (the original path, token
  included, without the query) and, for a connect token (not a static one),
  ``x-verified-username`` (when the token has a user), ``-user-data`` (the
  token's ``auth`` JSON, ``null`` when none) and ``-secret``; for a backend
  claimed from a warm pool also ``x-verified-key`` (the key's name),
* sets, like Plane, ``x-forwarded-for`` to the peer's address (whatever the
  client sent is overwritten) and ``x-forwarded-proto: http``.  A peer inside
  one of ``ProxySettings.trust_forwarded_from`` (a front proxy) keeps its
  ``X-Forwarded-For`` chain (the peer is appended) and its
  ``X-Forwarded-Proto`` (a TLS terminator says ``https``).

Towards the client it drops the same hop-by-hop set (``Upgrade`` kept on a
101) and the backend's ``Transfer-Encoding`` (the relay frames the body
itself), and adds ``x-plane-backend-id`` and, unless the backend set any
``Access-Control-*`` header itself, Plane's CORS headers
(:data:`CORS_LINES`).
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

REQUEST_DROPPED: frozenset[bytes] = frozenset({b"forwarded"})
"""Client headers never forwarded, beside the hop-by-hop ones and
``x-verified-*`` (``X-Forwarded-For``/``-Proto`` are rewritten, not copied)."""

CORS_PREFIX = b"access-control-"
"""A response header with this prefix means the backend does its own CORS."""

CORS_LINES = (
    b"access-control-allow-origin: *\r\n"
    b"access-control-allow-methods: *\r\n"
    b"access-control-allow-headers: *, Authorization\r\n"
)
"""Plane's CORS headers, added to a response that has none of its own."""


def is_verified_name(lname: bytes) -> bool:
    """True if a (lowercase) header name normalizes to ``x-verified-*``
    (underscores count as dashes: some servers read ``X_Verified_Secret`` as
    ``X-Verified-Secret``)."""
    return lname.replace(b"_", b"-").startswith(VERIFIED_PREFIX)


def host_name(value: bytes) -> bytes:
    """The host of a ``Host`` value: lowercase, without port or trailing dot
    (``[::1]:80`` -> ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith(b"["):
        end = value.find(b"]")
        return value[: end + 1] if end >= 0 else value
    colon = value.find(b":")
    if colon >= 0:
        value = value[:colon]
    return value.rstrip(b".")


def subdomain_of(host: bytes | None, cluster_host: bytes | None) -> bytes | None:
    """The subdomain part of a ``Host`` value under ``cluster_host`` (``a`` of
    ``a.example.com:9090`` under ``example.com``), or None when the host is
    not below the cluster host (or either is unknown)."""
    if host is None or cluster_host is None:
        return None
    name = host_name(host)
    if len(name) > len(cluster_host) + 1 and name.endswith(cluster_host):
        cut = len(name) - len(cluster_host) - 1
        if name[cut] == 0x2E:  # "."
            return name[:cut]
    return None


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
    backend_id: str,
    user: str | None,
    auth: str | None,
    secret_token: str | None,
    key: str | None = None,
) -> bytes:
    """The ``x-verified-*`` header lines (except ``-path``, which is per request)
    for one token, ready to send; ``secret_token`` None for a static token,
    which has no user, user data or secret: only ``-backend``.  ``key``: the
    key's name of a backend claimed from a warm pool (``x-verified-key``: its
    env was fixed before it had a key)."""
    lines = [b"x-verified-backend: " + clean_value(backend_id) + b"\r\n"]
    if key is not None:
        lines.append(b"x-verified-key: " + clean_value(key) + b"\r\n")
    if secret_token is None:
        return b"".join(lines)
    if user is not None:
        lines.append(b"x-verified-username: " + clean_value(user) + b"\r\n")
    user_data = clean_value(auth) if auth is not None else b"null"
    lines.append(b"x-verified-user-data: " + user_data + b"\r\n")
    lines.append(b"x-verified-secret: " + clean_value(secret_token) + b"\r\n")
    return b"".join(lines)


def render_backend_id(backend_id: str) -> bytes:
    """The ``x-plane-backend-id`` line every proxied response carries."""
    return BACKEND_ID_HEADER + b": " + clean_value(backend_id) + b"\r\n"
