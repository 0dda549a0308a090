"""The proxy's own answers: errors as ``{"error": {"code", "message"}}`` responses.

This module owns every response the proxy writes itself (never a backend's):
their status codes, Plane-style codes and rendering.  Error handling follows
h11's split: :class:`ClientFault` is the peer's fault (a malformed or hostile
request: 400, 408, 431), :class:`GatewayFault` is the backend's (502, 504).
Both carry what the client is told.
"""

from __future__ import annotations

import json

REASONS: dict[int, bytes] = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    410: b"Gone",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class ProxyFault(Exception):
    """A request the proxy answers itself with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ClientFault(ProxyFault):
    """The client's fault: a malformed, oversized or too slow request."""


class GatewayFault(ProxyFault):
    """The backend's fault: unreachable, refused, or it broke the protocol."""


def render_error(
    status: int,
    code: str,
    message: str,
    *,
    close: bool,
    extra_headers: bytes = b"",
) -> bytes:
    """A complete HTTP/1.1 response with the JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    reason = REASONS.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    if close:
        head += b"connection: close\r\n"
    return head + extra_headers + b"\r\n" + body


OVERLOADED = render_error(
    503, "ProxyOverloaded", "the proxy is at its connection limit", close=True
)
"""Sent (non-blocking) to a connection accepted past ``max_connections``."""
