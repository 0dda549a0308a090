"""What the API answers, as typed values: the client's wire models.

This module owns the shapes the client reads.  Requests reuse the server's own
spec types (:class:`~plane.events.spec.BackendKey`,
:class:`~plane.events.spec.SpawnConfig`...), so a field added there reaches the
client at once; the server keeps its answers as plain JSON views, so their
models live here, and only here.

Statuses are Plane's (:class:`Status`, :class:`TerminationReason`); our own
finer words (``idle``, ``exited``...) are on :class:`Backend` as ``state`` and
``reason``.  Unknown fields are ignored, as Plane's serde ignores them.
:func:`structure` turns JSON into a model or raises
:class:`~plane.client.errors.InvalidResponse`.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import attrs
import cattrs

from plane.client.errors import InvalidResponse
from plane.events.spec import BackendKey

T = TypeVar("T")


class Status(enum.StrEnum):
    """Plane's backend status; only ever moves forward."""

    SCHEDULED = "scheduled"
    LOADING = "loading"
    STARTING = "starting"
    WAITING = "waiting"
    READY = "ready"
    TERMINATING = "terminating"
    HARD_TERMINATING = "hard-terminating"
    TERMINATED = "terminated"

    @property
    def ending(self) -> bool:
        """Terminating, hard-terminating or terminated: it will never be ready again."""
        return self in (Status.TERMINATING, Status.HARD_TERMINATING, Status.TERMINATED)


class TerminationReason(enum.StrEnum):
    """Plane's termination reason."""

    SWEPT = "swept"
    EXTERNAL = "external"
    KEY_EXPIRED = "keyexpired"
    LOST = "lost"
    STARTUP_TIMEOUT = "startuptimeout"
    INTERNAL_ERROR = "internalerror"


class TerminationKind(enum.StrEnum):
    """How a backend was asked to stop: SIGTERM first (soft) or SIGKILL (hard)."""

    SOFT = "soft"
    HARD = "hard"


# --------------------------------------------------------------- the models


@attrs.frozen
class BackendStatus:
    """Plane's status entry (``/pub/b/{id}/status`` and each status-stream event)."""

    status: Status
    time: int
    """When the backend entered this status, in milliseconds since the epoch."""
    termination_reason: TerminationReason | None = None
    termination_kind: TerminationKind | None = None
    exit_error: bool | None = None
    """True when the backend failed: it exited non-zero or could not be spawned."""
    exit_code: int | None = None
    """The backend's exit code, when it has exited (ours)."""


@attrs.frozen
class Connection:
    """Plane's ``ConnectResponse``: the backend for a key and a fresh token to it."""

    backend_id: str
    spawned: bool
    """True when this connect started the backend; False when it joined a live one."""
    status: Status
    token: str
    url: str
    """Where the browser goes: ``<proxy>/<token>/``."""
    secret_token: str | None = None
    status_url: str | None = None
    subdomain: str | None = None
    drone: str | None = None


@attrs.frozen
class Backend:
    """Everything the API tells about one backend (``/ctrl/b/{id}``, ``/ctrl/backends``)."""

    backend_id: str
    status: Status
    """Plane's status."""
    state: str
    """Our lifecycle state: requested, starting, ready, idle, terminating, terminated."""
    time: int
    key: BackendKey | None = None
    reason: str | None = None
    """Our termination reason (idle, lifetime, exited, spawnfailed, ...)."""
    termination_reason: TerminationReason | None = None
    termination_kind: TerminationKind | None = None
    exit_error: bool | None = None
    exit_code: int | None = None
    requested_at: int | None = None
    address: str | None = None
    fencing_token: int | None = None
    connections: int | None = None
    last_activity_at: int | None = None
    message: str | None = None
    """What went wrong, in words, when something did."""
    version: int | None = None
    spawn_config: dict[str, Any] | None = None
    """The spawn config as the API shows it (env values never included)."""
    engine: str | None = None
    """The engine (Plane's drone) the backend runs on."""


@attrs.frozen
class WarmPool:
    """One warm pool (``GET /ctrl/warm-pools``)."""

    name: str
    size: int
    warm: int = 0
    """Backends started and ready, waiting to be claimed."""
    starting: int = 0
    claim_path: str | None = None


@attrs.frozen
class Engine:
    """One engine plane places backends on (``GET /ctrl/engines``)."""

    name: str
    state: str
    """healthy, draining or lost."""
    url: str = ""
    publish: str = "127.0.0.1"
    pool: str = ""
    max: int | None = None
    live_backends: int = 0
    last_answer: int | None = None
    """When it last answered (ms since the epoch), or None."""


@attrs.frozen
class BackendPage:
    """One page of ``/ctrl/backends``; ``next`` is the cursor of the following page."""

    backends: list[Backend]
    next: str | None = None


@attrs.frozen
class Event:
    """One event of the global log (``/ctrl/events``)."""

    seq: int
    stream: str
    type: str
    data: dict[str, Any]
    version: int | None = None


# -------------------------------------------------------------- structuring

_converter = cattrs.Converter(forbid_extra_keys=False)
_converter.register_structure_hook(
    BackendPage,
    lambda raw, _: BackendPage(
        backends=[structure(b, Backend) for b in raw["backends"]], next=raw.get("next")
    ),
)


def structure(raw: Any, cls: type[T]) -> T:
    """``raw`` JSON as a ``cls``; :class:`InvalidResponse` if it does not fit."""
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
        return _converter.structure(raw, cls)
    except InvalidResponse:
        raise
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise InvalidResponse(f"cannot read the API's answer as {cls.__name__}: {exc}") from None


def unstructure(value: Any) -> Any:
    """A model (or spec value) as JSON-ready data."""
    return _converter.unstructure(value)
