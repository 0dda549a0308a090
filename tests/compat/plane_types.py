"""Plane's protocol types, written from Plane's own Rust types (jamsocket/plane,
``plane/src/types``; summarised in ``../shared/PLANE-WIRE.md``), as a strict
client would hold them.

Strict as serde is: a string is never accepted for a number nor a number for a
string, every enum is closed (an unknown status is an error), a required field
must be there, an ``Option`` may be missing or null.  Unknown keys are ignored,
as serde ignores them.  The one open enum is ``ApiError.kind``: Plane's kinds
plus the ones plane documents as its own (:data:`plane.api.errors.OUR_KINDS`).

Nothing here is imported from plane's own wire code: the point is to check
plane against Plane's types, not against itself.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import attrs
import cattrs

from plane.api.errors import OUR_KINDS

T = TypeVar("T")


class BackendStatus(enum.Enum):
    SCHEDULED = "scheduled"
    LOADING = "loading"
    STARTING = "starting"
    WAITING = "waiting"
    READY = "ready"
    TERMINATING = "terminating"
    HARD_TERMINATING = "hard-terminating"
    TERMINATED = "terminated"


STATUS_ORDER = list(BackendStatus)


class TerminationReason(enum.Enum):
    SWEPT = "swept"
    EXTERNAL = "external"
    KEY_EXPIRED = "keyexpired"
    LOST = "lost"
    STARTUP_TIMEOUT = "startuptimeout"
    INTERNAL_ERROR = "internalerror"


class TerminationKind(enum.Enum):
    SOFT = "soft"
    HARD = "hard"


class Ok(enum.Enum):
    OK = "ok"


PLANE_KINDS = frozenset(
    {
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
    }
)


@attrs.frozen
class BackendStatusStreamEntry:
    status: BackendStatus
    time: int  # LoggableTime: milliseconds since the epoch
    termination_reason: TerminationReason | None = None
    termination_kind: TerminationKind | None = None
    exit_error: bool | None = None


@attrs.frozen
class ConnectResponse:
    backend_id: str
    spawned: bool
    status: BackendStatus
    token: str
    url: str
    status_url: str
    subdomain: str | None = None
    secret_token: str | None = None
    drone: str | None = None


def _kind(instance: Any, attribute: Any, value: str) -> None:
    if value not in PLANE_KINDS and value not in OUR_KINDS:
        raise ValueError(f"kind {value!r} is neither Plane's nor one plane documents")


@attrs.frozen
class ApiError:
    id: str
    kind: str = attrs.field(validator=_kind)
    message: str


@attrs.frozen
class StatusResponse:
    """``GET /ctrl/status``."""

    status: Ok
    version: str
    hash: str


@attrs.frozen
class Health:
    status: Ok


class WrongType(TypeError):
    pass


def _strict(kind: type) -> Any:
    def hook(value: object, _: type) -> Any:
        if type(value) is not kind:
            raise WrongType(f"expected {kind.__name__}, got {type(value).__name__}: {value!r}")
        return value

    return hook


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    for kind in (str, int, bool):
        conv.register_structure_hook(kind, _strict(kind))
    return conv


converter = _converter()


def parse(cls: type[T], data: Any) -> T:
    """``data`` (JSON-decoded) as ``cls``; raises if Plane's types would refuse it."""
    if not isinstance(data, dict):
        raise WrongType(f"expected an object for {cls.__name__}, got {data!r}")
    return converter.structure(data, cls)


def parse_error(response: Any) -> ApiError:
    """An error response's body as Plane's ApiError."""
    return parse(ApiError, response.json())
