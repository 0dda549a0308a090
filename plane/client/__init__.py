"""plane.client: the Python client of plane's HTTP API, for app servers.

:class:`Client` (blocking) and :class:`AsyncClient` (trio or asyncio) have the
same methods, built on one core (:mod:`plane.client.core`) so they cannot
drift::

    from plane.client import Client

    with Client("http://127.0.0.1:8080", api_key="...") as plane:
        conn = plane.connect("doc-42", image="my-app:latest", max_idle=60, wait=True)
        print(conn.url)       # hand this to the browser

Errors are exceptions, one class per error kind (:class:`KeyHeld`,
:class:`NotFound`...), all :class:`PlaneError` with ``kind``, ``id``,
``status_code`` and ``message``.

Importing this package pulls in no trio-only and no server-only module.
"""

from plane.client.aio import AsyncClient
from plane.client.errors import (
    API_ERRORS,
    BackendIdTaken,
    BackendTerminated,
    CapacityExceeded,
    InternalError,
    InvalidJson,
    InvalidRequest,
    InvalidResponse,
    KeyHeld,
    KeyUnheldNoSpawnConfig,
    LogUnavailable,
    NoDroneAvailable,
    NoSuchRoute,
    NotFound,
    PlaneConnectionError,
    PlaneError,
    Unauthorized,
    WaitTimeout,
)
from plane.client.models import (
    Backend,
    BackendStatus,
    Connection,
    Event,
    Status,
    TerminationKind,
    TerminationReason,
    WarmPool,
)
from plane.client.sync import Client
from plane.events.spec import BackendKey, Executable, ResourceLimits, SpawnConfig

__all__ = [
    "API_ERRORS",
    "AsyncClient",
    "Backend",
    "BackendIdTaken",
    "BackendKey",
    "BackendStatus",
    "BackendTerminated",
    "CapacityExceeded",
    "Client",
    "Connection",
    "Event",
    "Executable",
    "InternalError",
    "InvalidJson",
    "InvalidRequest",
    "InvalidResponse",
    "KeyHeld",
    "KeyUnheldNoSpawnConfig",
    "LogUnavailable",
    "NoDroneAvailable",
    "NoSuchRoute",
    "NotFound",
    "PlaneConnectionError",
    "PlaneError",
    "ResourceLimits",
    "SpawnConfig",
    "Status",
    "TerminationKind",
    "TerminationReason",
    "Unauthorized",
    "WaitTimeout",
    "WarmPool",
]
