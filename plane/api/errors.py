"""API errors: the one JSON error body and the exception that carries it.

This module owns how the API says no.  Every error leaves the server as
``{"error": {"code": "...", "message": "..."}}`` with a matching HTTP status;
``code`` uses Plane's ``kind`` names where Plane has one (``KeyHeld``,
``KeyUnheldNoSpawnConfig``, ``NotFound``).  Handlers raise :class:`ApiError`;
the router turns it into a response, and turns any other exception into a 500
``InternalError`` whose body never contains a traceback (the traceback goes to
the log).

The codes, by status:

=====  ==========================================================
400    ``InvalidJson``, ``InvalidRequest``, ``BadRequest`` (HTTP), ``InvalidClusterName``
401    ``Unauthorized``
403    ``ReadOnlyKey`` (the read-only key on a request that changes state)
404    ``NotFound`` (backend), ``NoSuchRoute``
405    ``MethodNotAllowed`` (with an ``Allow`` header)
408    ``RequestTimeout``
409    ``KeyHeld``, ``KeyUnheldNoSpawnConfig``, ``BackendIdTaken``
413    ``PayloadTooLarge``
431    ``HeadersTooLarge``
500    ``InternalError``
503    ``CapacityExceeded``, ``TooManyStreams`` (``--api-max-streams``)
=====  ==========================================================
"""

from __future__ import annotations

import json
from typing import Any

ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("InvalidJson", "InvalidRequest", "BadRequest", "InvalidClusterName"),
    401: ("Unauthorized",),
    403: ("ReadOnlyKey",),
    404: ("NotFound", "NoSuchRoute"),
    405: ("MethodNotAllowed",),
    408: ("RequestTimeout",),
    409: ("KeyHeld", "KeyUnheldNoSpawnConfig", "BackendIdTaken"),
    413: ("PayloadTooLarge",),
    431: ("HeadersTooLarge",),
    500: ("InternalError",),
    503: ("CapacityExceeded", "LogUnavailable", "TooManyStreams"),
}
"""Every (status, code) the API can answer with; the OpenAPI document lists them."""


class ApiError(Exception):
    """A request the API refuses; becomes ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_json(code: str, message: str) -> bytes:
    return json.dumps(error_body(code, message)).encode()


def not_found(backend_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"no backend {backend_id!r}")


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)
