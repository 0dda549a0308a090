"""What the API answers, as wire models: one attrs class per JSON answer.

This module owns the shapes of the API's JSON answers.  Handlers build the
simple ones from these classes (:func:`to_json`); the views shared with the
CLI and plane-replay (:mod:`plane.views`, :mod:`plane.api.feeds`) build
theirs as dicts, and the class here is their published shape (the OpenAPI
tests check every answer against it).  :mod:`plane.api.openapi` generates the
document's response schemas from these classes, with the descriptions and
constraints declared on their fields (:func:`plane.api.body.wire_field`).

A field whose metadata says ``omit`` is left out of the JSON when it is None
(Plane's ``Option`` fields with ``skip_serializing_if``), so its schema is
not nullable, only not required.

To add an answer: declare its class here, build it in the handler with
:func:`to_json`, and name it in the route's ``answers`` in
:mod:`plane.api.routes`.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs

from plane.api.body import checks
from plane.api.errors import ERROR_CODES
from plane.engines.registry import EngineState
from plane.events.types import Status, TerminationKind, TerminationReason
from plane.plane_words import PlaneReason, PlaneStatus

OMIT = "plane.omit"
"""Metadata key: leave the field out of the JSON when it is None."""


def _omitted(description: str) -> Any:
    return attrs.field(default=None, metadata={**checks(description=description), OMIT: True})


def _about(description: str, **more: Any) -> dict[str, Any]:
    return checks(description=description, **more)


# ------------------------------------------------------------------ Plane's


@attrs.frozen
class ApiErrorBody:
    """Plane's ApiError: every error's body."""

    id: str = attrs.field(metadata=_about("Random; also in the server log."))
    kind: str = attrs.field(
        metadata=_about(
            "Plane's kind where Plane has one, ours otherwise.",
            enum=tuple(sorted({k for kinds in ERROR_CODES.values() for k in kinds})),
        )
    )
    message: str = attrs.field(
        metadata=_about("What is wrong; a 400 names the field by its JSON path.")
    )


@attrs.frozen
class ConnectResponse:
    """Plane's ConnectResponse: the backend for a key and a fresh token to it."""

    backend_id: str
    spawned: bool = attrs.field(metadata=_about("True when this connect started the backend."))
    status: PlaneStatus
    token: str
    url: str = attrs.field(metadata=_about("Where the browser goes: <proxy>/<token>/."))
    secret_token: str | None
    status_url: str
    subdomain: str | None = None
    drone: str | None = attrs.field(
        default=None, metadata=_about("The executor that runs it, when spawned.")
    )


@attrs.frozen
class BackendStatus:
    """Plane's BackendStatusStreamEntry (absent fields omitted)."""

    status: PlaneStatus
    time: int = attrs.field(metadata=_about("When the status began, ms since the epoch."))
    termination_reason: PlaneReason | None = _omitted("Why it ended (Plane's words).")  # noqa: RUF009
    termination_kind: TerminationKind | None = _omitted("The stop plane decided on.")  # noqa: RUF009
    exit_error: bool | None = _omitted("Once terminated: true when it failed.")


@attrs.frozen
class PlaneStatusAnswer:
    """Plane's ``/ctrl/status``."""

    status: str = attrs.field(metadata=_about("Always ok.", enum=("ok",)))
    version: str
    hash: str


@attrs.frozen
class Health:
    """Liveness: always ok."""

    status: str = attrs.field(metadata=_about("Always ok.", enum=("ok",)))


# --------------------------------------------------------------------- ours


@attrs.frozen
class Info:
    """This plane: version, hash, executor, backend counts."""

    version: str
    hash: str
    executor: str
    live_backends: int = attrs.field(metadata=_about("Backends holding their key.", minimum=0))
    backends: int = attrs.field(metadata=_about("Backends known (retained).", minimum=0))
    last_seq: int = attrs.field(
        metadata=_about("The global log's last sequence number.", minimum=0)
    )


@attrs.frozen
class KeyView:
    """A backend's key, as the views show it."""

    name: str
    namespace: str
    tag: str


@attrs.frozen
class ExecutableView:
    """The executable as the API shows it: env values and credentials redacted."""

    image: str | None
    command: list[str] | None
    cwd: str | None
    env: dict[str, str]
    pull_policy: str
    port: int
    resource_limits: dict[str, int]
    credentials: dict[str, str] | None
    mount: bool | str
    network_name: str | None


@attrs.frozen
class SpawnConfigView:
    """The spawn config, defaults filled in, secrets redacted."""

    executable: ExecutableView
    max_idle_seconds: float | None
    lifetime_limit_seconds: float | None
    start_timeout_seconds: float
    stop_grace_seconds: float
    use_static_token: bool
    subdomain: str | None
    pool: str


@attrs.frozen
class BackendDetail:
    """Everything known about a backend, in both vocabularies: ``state`` and
    ``reason`` ours, ``status`` and ``termination_*`` Plane's."""

    backend_id: str
    key: KeyView | None
    state: Status | None
    reason: TerminationReason | None
    state_at: int = attrs.field(metadata=_about("When our state began, ms since the epoch."))
    status: PlaneStatus | None = attrs.field(
        metadata=_about("Plane's status; null for an unclaimed warm backend (Plane never sees it).")
    )
    time: int | None = attrs.field(
        metadata=_about("When Plane's status began, ms since the epoch; null while unclaimed.")
    )
    termination_reason: PlaneReason | None
    termination_kind: TerminationKind | None
    exit_error: bool | None
    exit_code: int | None
    requested_at: int
    address: str | None
    fencing_token: int
    connections: int
    last_activity_at: int | None
    message: str | None
    version: int
    spawn_config: SpawnConfigView | None
    engine: str = attrs.field(metadata=_about("The engine (Plane's drone) it is placed on."))
    warm_pool: str | None = attrs.field(
        metadata=_about("The warm pool it was started for (ours), if any.")
    )
    claimed_at: int | None = attrs.field(
        metadata=_about("When a connect claimed it from its warm pool, ms.")
    )


@attrs.frozen
class BackendList:
    """One page of backends, oldest request first."""

    backends: list[BackendDetail]
    next: str | None = attrs.field(
        metadata=_about("Pass as `cursor` for the next page; null on the last.")
    )


@attrs.frozen
class RevokeAnswer(BackendDetail):
    """What was revoked, and the backend after it."""

    revoked: str = attrs.field(metadata=_about("all, or one token", enum=("all", "token")))


@attrs.frozen
class Event:
    """A recorded event; env values and secret tokens are redacted."""

    seq: int = attrs.field(metadata=_about("Global sequence number.", minimum=1))
    stream: str
    version: int = attrs.field(metadata=_about("Version in its stream.", minimum=1))
    type: str = attrs.field(metadata=_about("The wire tag."))
    data: dict[str, Any]


@attrs.frozen
class EventList:
    """A backend's events, in order."""

    events: list[Event]


# ------------------------------------------------------------ engines


@attrs.frozen
class Engine:
    """One engine (a drone, in Plane's words) backends are placed on."""

    name: str
    url: str = attrs.field(metadata=_about("The Docker engine's address (`default`: local)."))
    publish: str = attrs.field(metadata=_about("The host its backends' ports are published on."))
    pool: str = attrs.field(metadata=_about("The pool it serves (empty: the default pool)."))
    max: int | None = attrs.field(metadata=_about("Most live backends it takes; null: no cap."))
    state: EngineState
    live_backends: int = attrs.field(metadata=_about("Live backends on it.", minimum=0))
    last_answer: int | None = attrs.field(
        metadata=_about("When it last answered, ms since the epoch; null: not yet.")
    )


@attrs.frozen
class EngineList:
    """Every configured engine."""

    engines: list[Engine]


@attrs.frozen
class Updated:
    """Whether a drain or undrain changed the engine."""

    updated: bool


@attrs.frozen
class DroneNode:
    """Plane's node of a drone."""

    name: str
    plane_version: str
    plane_hash: str
    controller: str
    controller_heartbeat_age: int


@attrs.frozen
class DroneState:
    """Plane's state of one drone (here: an engine)."""

    ready: bool
    draining: bool
    last_heartbeat_age: int | None = attrs.field(
        metadata=_about("Milliseconds since the engine last answered; null: not yet.")
    )
    backend_count: int = attrs.field(metadata=_about("Live backends on it.", minimum=0))
    node: DroneNode


@attrs.frozen
class ClusterState:
    """Plane's ClusterState: the drones (engines) and proxies of a cluster."""

    drones: list[DroneState]
    proxies: list[dict[str, Any]] = attrs.field(metadata=_about("Always empty here."))


# ---------------------------------------------------------- the dashboard


@attrs.frozen
class DashboardBackend(BackendDetail):
    """A backend as the dashboard shows it: its detail plus its timers."""

    idle_deadline: int | None = attrs.field(
        metadata=_about("When the idle sweep stops it, ms since the epoch; null: none.")
    )
    next_deadline: int | None = attrs.field(
        metadata=_about("Its next timer of any kind, ms since the epoch; null: none.")
    )


@attrs.frozen
class StatePage:
    """One page of every backend's state at a point of the log (or now)."""

    at: str | None = attrs.field(metadata=_about("The point asked for; null: now."))
    seq: int = attrs.field(metadata=_about("The last sequence number folded.", minimum=0))
    time: int | None = attrs.field(metadata=_about("Its event's time, ms since the epoch."))
    last_seq: int = attrs.field(metadata=_about("The log's last sequence number.", minimum=0))
    first_time: int | None = attrs.field(metadata=_about("The log's first event's time (ms)."))
    last_time: int | None = attrs.field(metadata=_about("The log's last event's time (ms)."))
    backends: list[DashboardBackend]
    next: str | None = attrs.field(
        metadata=_about("Pass as `cursor` for the next page; null on the last.")
    )


@attrs.frozen
class EventTypes:
    """Which event tags are inputs and which are the decider's decisions."""

    inputs: list[str]
    decisions: list[str]
    connection_opened: str
    connection_closed: str
    terminated: str


@attrs.frozen
class DashboardSettings:
    """What the dashboard's page needs to know before its first call."""

    auth: bool = attrs.field(metadata=_about("Whether the API wants a key."))
    panels: dict[str, bool] = attrs.field(
        metadata=_about("Optional panels, by name: whether the API has their route.")
    )


# --------------------------------------------------------------- building

_converter = cattrs.Converter()


def to_json(answer: Any) -> Any:
    """An answer model as JSON-ready data (``omit`` fields left out when None)."""
    data = _converter.unstructure(answer)
    for field in attrs.fields(type(answer)):
        if field.metadata.get(OMIT) and data.get(field.name) is None:
            data.pop(field.name, None)
    return data
