"""API errors: Plane's ``ApiError`` body and the exception that carries it.

This module owns how the API says no.  Every error leaves the server as
Plane's ``ApiError``::

    {"id": "<random>", "kind": "<Kind>", "message": "..."}

with a matching HTTP status.  ``id`` is random per error and is logged with
it (``api error <id> <status> <kind>: <message>``), so a client's report can
be found in the server log.  ``kind`` is Plane's name where Plane has one,
ours otherwise; a strict client written from Plane's types must treat
``kind`` as an open enum (it is the only one).  Handlers raise
:class:`ApiError`; the router turns it into a response, and turns any other
exception into a 500 ``InternalError`` whose body never contains a traceback
(the traceback goes to the log).

Plane's kinds that plane sends: ``KeyHeld`` (409), ``KeyUnheldNoSpawnConfig``
(409), ``NotFound`` (404, an unknown backend), ``NoDroneAvailable``,
``InvalidClusterName`` (400), ``NoClusterProvided`` (400).

Ours (each also in the README's table):

=====  ======================  ==============================================
400    ``InvalidJson``         the body is not JSON (or not UTF-8)
400    ``InvalidRequest``      a field is wrong; the message names it
400    ``BadRequest``          the HTTP request itself is malformed
400    ``WebSocketRequired``   ``/ctrl/proxy-feed`` without a WebSocket upgrade
401    ``Unauthorized``        missing or wrong API key on ``/ctrl``
403    ``ReadOnlyKey``         the read-only key on a request that changes state
403    ``ProxyKey``            the proxy key anywhere but ``/ctrl/proxy-feed``
403    ``ProxyKeyRequired``    ``/ctrl/proxy-feed`` without the proxy key
404    ``NoSuchRoute``         no endpoint at that path
405    ``MethodNotAllowed``    wrong method for the path (``Allow`` says which)
408    ``RequestTimeout``      the request's head or body came too slowly
409    ``BackendIdTaken``      ``spawn_config.id`` names an existing backend
413    ``PayloadTooLarge``     the body exceeds the API's limit
431    ``HeadersTooLarge``     the head exceeds the API's limit
500    ``InternalError``       a bug; details only in the server log
503    ``CapacityExceeded``    at ``--max-backends`` live backends
503    ``LogUnavailable``      the event log refused a write (nothing done)
503    ``TooManyStreams``      at ``--api-max-streams`` streamed answers
=====  ======================  ==============================================
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import orjson

log = logging.getLogger("plane.api.errors")

PLANE_KINDS: tuple[str, ...] = (
    "KeyUnheldNoSpawnConfig",
    "KeyHeld",
    "KeyHeldUnhealthy",
    "FailedToAcquireKey",
    "FailedToRemoveKey",
    "DatabaseError",
    "NoDroneAvailable",
    "NoClusterProvided",
    "NotFound",
    "InvalidClusterName",
    "Other",
)
"""Every ``kind`` of Plane's ``ApiErrorKind``."""

ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("InvalidJson", "InvalidRequest", "BadRequest", "InvalidClusterName", "WebSocketRequired"),
    401: ("Unauthorized",),
    403: ("ReadOnlyKey", "ProxyKey", "ProxyKeyRequired"),
    404: ("NotFound", "NoSuchRoute"),
    405: ("MethodNotAllowed",),
    408: ("RequestTimeout",),
    409: ("KeyHeld", "KeyUnheldNoSpawnConfig", "BackendIdTaken"),
    413: ("PayloadTooLarge",),
    431: ("HeadersTooLarge",),
    500: ("InternalError",),
    503: ("CapacityExceeded", "LogUnavailable", "NoDroneAvailable", "TooManyStreams"),
}
"""Every (status, kind) the API can answer with; the OpenAPI document lists them."""

OUR_KINDS: tuple[str, ...] = tuple(
    sorted({k for kinds in ERROR_CODES.values() for k in kinds} - set(PLANE_KINDS))
)
"""The kinds that are ours, not Plane's (the module docstring's table)."""


class ApiError(Exception):
    """A request the API refuses; becomes Plane's ``{"id", "kind", "message"}``."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or []

    @property
    def code(self) -> str:
        """The kind, under its old name."""
        return self.kind


def new_error_id() -> str:
    return secrets.token_hex(8)


def error_body(kind: str, message: str, status: int = 0) -> dict[str, Any]:
    """Plane's ApiError body with a fresh id, logged with the error."""
    error_id = new_error_id()
    level = logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "api error %s %s %s: %s", error_id, status or "-", kind, message)
    return {"id": error_id, "kind": kind, "message": message}


def error_json(kind: str, message: str, status: int = 0) -> bytes:
    return orjson.dumps(error_body(kind, message, status))


def not_found(backend_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"no backend {backend_id!r}")


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)
