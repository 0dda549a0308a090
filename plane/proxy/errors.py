"""The proxy's own answers: errors as Plane's ``ApiError``, ``/ready``, the root.

This module owns every response the proxy writes itself (never a backend's):
their status codes, kinds and rendering.  Error bodies are Plane's
``ApiError``: ``{"id": "<random>", "kind": "<Kind>", "message": "..."}``; the
``id`` is fresh per answer and logged with it (logger ``plane.proxy``, INFO)
so that a client's report can be found in the logs.  Every answer of the
proxy's own carries ``Server: plane/<version>`` and, like Plane's, the CORS
headers (:data:`~plane.proxy.headers.CORS_LINES`), so that a browser page on
another origin can read why it was refused.

Error handling follows h11's split: :class:`ClientFault` is the peer's fault
(a malformed or hostile request: 400, 408, 431), :class:`GatewayFault` is the
backend's (502, 504).  Both carry what the client is told.
"""

from __future__ import annotations

import logging
import uuid

import orjson

from plane import __version__
from plane.proxy.headers import CORS_LINES, clean_value

log = logging.getLogger("plane.proxy")

REASONS: dict[int, bytes] = {
    200: b"OK",
    302: b"Found",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    410: b"Gone",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

SERVER_LINE = b"server: plane/" + __version__.encode() + b"\r\n"
"""The ``Server`` line of the proxy's own answers."""


class ProxyFault(Exception):
    """A request the proxy answers itself with ``status`` and ``kind``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class ClientFault(ProxyFault):
    """The client's fault: a malformed, oversized or too slow request."""


class GatewayFault(ProxyFault):
    """The backend's fault: unreachable, refused, or it broke the protocol."""


def render_answer(
    status: int,
    body: bytes,
    *,
    close: bool,
    content_type: bytes = b"application/json",
    extra_headers: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response of the proxy's own (``head_only``: the
    answer to HEAD, sized but without the body)."""
    reason = REASONS.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\n%scontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        SERVER_LINE,
        content_type,
        len(body),
    )
    if close:
        head += b"connection: close\r\n"
    return head + CORS_LINES + extra_headers + b"\r\n" + (b"" if head_only else body)


def render_error(
    status: int,
    kind: str,
    message: str,
    *,
    close: bool,
    extra_headers: bytes = b"",
    head_only: bool = False,
    logged: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response with Plane's ``ApiError`` body (a fresh
    ``id``, logged with the error unless ``logged`` is false)."""
    error_id = str(uuid.uuid4())
    if logged:
        log.info("answered %d %s (id %s): %s", status, kind, error_id, message)
    body = orjson.dumps({"id": error_id, "kind": kind, "message": message})
    return render_answer(
        status, body, close=close, extra_headers=extra_headers, head_only=head_only
    )


def render_redirect(location: str, *, close: bool, head_only: bool = False) -> bytes:
    """A ``302 Found`` to ``location`` (the configured root redirect)."""
    return render_answer(
        302,
        b"",
        close=close,
        content_type=b"text/plain",
        extra_headers=b"location: " + clean_value(location) + b"\r\n",
        head_only=head_only,
    )


OVERLOADED_MESSAGE = "the proxy is at its connection limit"


def render_overloaded() -> bytes:
    """Sent to a connection past ``max_connections`` that cannot even be read
    (not logged: an overload must not also flood the log; the metrics count it)."""
    return render_error(503, "ProxyOverloaded", OVERLOADED_MESSAGE, close=True, logged=False)
