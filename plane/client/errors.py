"""The client's exceptions: one class per error kind the API answers, and the
client's own failures (unreachable API, unreadable answer, a backend that ended
before it was ready, a wait that timed out).

This module owns how an error answer becomes an exception.  Every error from
the API carries ``kind``, ``id`` (the server logs it too: quote it when asking
for help), ``status_code`` and ``message``.  Two body shapes are read, the new
first: Plane's ``ApiError`` ``{"id", "kind", "message"}`` and the older
``{"error": {"code", "message"}}`` (no id).  A kind with no class of its own
becomes a plain :class:`PlaneError` with that ``kind``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    from plane.client.models import Backend, BackendStatus, TerminationReason


class PlaneError(Exception):
    """Anything that went wrong talking to plane; the base of every client error.

    ``kind`` is Plane's error kind (``KeyHeld``, ``NotFound``...) or the
    client's own (``ConnectionFailed``, ``InvalidResponse``, ``BackendTerminated``,
    ``Timeout``); ``id`` the server's error id (None when the server gave none);
    ``status_code`` the HTTP status (None when there was no answer).
    """

    default_kind: ClassVar[str] = "PlaneError"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.id = id
        self.status_code = status_code

    def __str__(self) -> str:
        details = [self.kind]
        if self.status_code is not None:
            details.append(f"HTTP {self.status_code}")
        if self.id:
            details.append(f"id {self.id}")
        return f"{self.message} ({', '.join(details)})"


# ---------------------------------------------------------- the API's kinds


class InvalidRequest(PlaneError):
    """400: the request was malformed; ``message`` names the offending field."""

    default_kind = "InvalidRequest"


class InvalidJson(InvalidRequest):
    """400: the body was not JSON."""

    default_kind = "InvalidJson"


class Unauthorized(PlaneError):
    """401: the API key is missing or wrong."""

    default_kind = "Unauthorized"


class NotFound(PlaneError):
    """404: no such backend."""

    default_kind = "NotFound"


class NoSuchRoute(PlaneError):
    """404: the server has no such endpoint (an older or newer plane?)."""

    default_kind = "NoSuchRoute"


class KeyHeld(PlaneError):
    """409: a live backend holds the key with a different tag."""

    default_kind = "KeyHeld"


class KeyUnheldNoSpawnConfig(PlaneError):
    """409: no live backend holds the key and the connect had no spawn config."""

    default_kind = "KeyUnheldNoSpawnConfig"


class BackendIdTaken(PlaneError):
    """409: the requested backend id is already used."""

    default_kind = "BackendIdTaken"


class CapacityExceeded(PlaneError):
    """503: plane runs as many backends as it may."""

    default_kind = "CapacityExceeded"


class NoDroneAvailable(PlaneError):
    """Plane's: no engine can take the backend."""

    default_kind = "NoDroneAvailable"


class LogUnavailable(PlaneError):
    """503: the backend's logs cannot be read."""

    default_kind = "LogUnavailable"


class InternalError(PlaneError):
    """500: the server failed; its log has the details under ``id``."""

    default_kind = "InternalError"


API_ERRORS: dict[str, type[PlaneError]] = {
    cls.default_kind: cls
    for cls in (
        InvalidRequest,
        InvalidJson,
        Unauthorized,
        NotFound,
        NoSuchRoute,
        KeyHeld,
        KeyUnheldNoSpawnConfig,
        BackendIdTaken,
        CapacityExceeded,
        NoDroneAvailable,
        LogUnavailable,
        InternalError,
    )
}
"""The error kinds with a class of their own, by ``kind``."""


# ----------------------------------------------------------- the client's own


class PlaneConnectionError(PlaneError):
    """The API could not be reached (after the retries that were safe)."""

    default_kind = "ConnectionFailed"


class InvalidResponse(PlaneError):
    """The API answered something this client cannot read."""

    default_kind = "InvalidResponse"


class WaitTimeout(PlaneError, TimeoutError):
    """A wait (``wait_ready``) ran out of time."""

    default_kind = "Timeout"


class BackendTerminated(PlaneError):
    """The backend ended (or began to) before it was ready.

    ``status`` is the status entry that said so; ``reason`` Plane's termination
    reason (None where Plane has none, e.g. the backend exited by itself or
    failed to spawn: then ``exit_error`` says whether it failed);
    ``detail`` our fuller view (``detail.reason`` our reason, ``detail.message``
    what went wrong) when the API key allowed reading it.
    """

    default_kind = "BackendTerminated"

    def __init__(
        self, backend_id: str, status: BackendStatus, detail: Backend | None = None
    ) -> None:
        self.backend_id = backend_id
        self.status = status
        self.detail = detail
        why = detail.reason if detail is not None and detail.reason else None
        why = why or (status.termination_reason.value if status.termination_reason else None)
        message = f"backend {backend_id} ended before it was ready"
        if why:
            message += f": {why}"
        if detail is not None and detail.message:
            message += f" ({detail.message})"
        super().__init__(message)

    @property
    def reason(self) -> TerminationReason | None:
        """Plane's termination reason, if it has one for this ending."""
        return self.status.termination_reason

    @property
    def exit_error(self) -> bool:
        """Whether the backend failed (exit code != 0, or it could not be spawned)."""
        return bool(self.status.exit_error)


def error_from_response(status_code: int, content: bytes) -> PlaneError:
    """The exception for an error answer: Plane's ApiError body, else the older one."""
    kind, error_id, message = None, None, None
    try:
        body: Any = orjson.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("kind"), str):  # Plane's ApiError
            kind = body["kind"]
            error_id = body.get("id") if isinstance(body.get("id"), str) else None
            message = body.get("message")
        elif isinstance(body.get("error"), dict):  # the older {"error": {code, message}}
            kind = body["error"].get("code")
            message = body["error"].get("message")
    if not isinstance(kind, str):
        kind = "HttpError"
    if not isinstance(message, str):
        message = content.decode("utf-8", "replace").strip()[:200] or f"HTTP {status_code}"
    cls = API_ERRORS.get(kind, PlaneError)
    return cls(message, kind=kind, id=error_id, status_code=status_code)
