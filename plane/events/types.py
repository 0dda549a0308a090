"""The event types of the log: everything that can happen to a backend.

This module owns *what happened*.  Every event is a frozen attrs class named in
the past tense and carries ``at``, the wall-clock time (seconds since the epoch)
at which it happened.  Events split in two families:

* **Inputs** are facts from outside the decider: a request, what the executor
  observed, what the proxy saw, an API call.  They are recorded verbatim.
* **Decisions** are what :func:`plane.actors.lifecycle.decide` concluded from
  an input or from the passing of time.

The split is what makes the log re-decidable: ``plane-replay verify`` feeds the
recorded inputs back through ``decide`` and compares the decisions.

Wire tags (``backend.ready.v1``) live in :mod:`plane.events.wire`, never here.
"""

from __future__ import annotations

import enum

import attrs

from plane.events.spec import BackendKey, SpawnConfig


class Status(enum.StrEnum):
    """A backend's lifecycle status; the values are the wire strings."""

    REQUESTED = "requested"
    STARTING = "starting"
    READY = "ready"
    WARM = "warm"
    """Started and ready in a warm pool, holding no key, reachable by nobody."""
    IDLE = "idle"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class TerminationReason(enum.StrEnum):
    """Why a backend ended; lowercase like Plane's (``external``, ``lost``...)."""

    IDLE = "idle"
    LIFETIME = "lifetime"
    START_TIMEOUT = "startuptimeout"
    SPAWN_FAILED = "spawnfailed"
    EXITED = "exited"
    LOST = "lost"
    EXTERNAL = "external"
    ORPHANED = "orphaned"


class TerminationKind(enum.StrEnum):
    SOFT = "soft"
    HARD = "hard"


# --------------------------------------------------------------------- inputs


@attrs.frozen
class BackendRequested:
    """A client asked for a backend for ``key`` (input; opens the stream)."""

    at: float
    backend_id: str
    key: BackendKey
    spawn_config: SpawnConfig
    fencing_token: int
    static_token: str | None = None
    """Plane's static token (``s.`` prefix) when ``spawn_config.use_static_token``:
    the same token is handed to every connect, so it is kept (a secret, redacted
    in every view) rather than only its hash."""
    engine: str = "local"
    """The engine (Plane's drone) the backend was placed on; logs written before
    engines existed hold one engine, ``local``."""


@attrs.frozen
class ExecutorStarted:
    """The executor reports the container/process running at ``address``."""

    at: float
    address: str
    handle: str = ""


@attrs.frozen
class ReadinessObserved:
    """The backend answered its first HTTP request (any status)."""

    at: float


@attrs.frozen
class SpawnFailed:
    """The executor could not start the backend (e.g. the image is missing)."""

    at: float
    message: str


@attrs.frozen
class ExecutorExited:
    """The container/process exited with ``exit_code`` (None when unknown)."""

    at: float
    exit_code: int | None


@attrs.frozen
class ExecutorVanished:
    """The executor no longer knows the backend (found missing on recovery)."""

    at: float
    message: str = ""


@attrs.frozen
class ConnectionOpened:
    """The proxy opened a long-lived connection (WebSocket, stream)."""

    at: float
    connection_id: str


@attrs.frozen
class ConnectionClosed:
    """A long-lived connection the proxy had opened is closed."""

    at: float
    connection_id: str


@attrs.frozen
class HttpActivityRecorded:
    """Plain HTTP requests went through the proxy (coalesced, <= 1 per second)."""

    at: float
    requests: int = 1


@attrs.frozen
class TerminationRequested:
    """The API asked to terminate the backend, softly or hard."""

    at: float
    kind: TerminationKind


@attrs.frozen
class TokenIssued:
    """A connection token was minted; only its SHA-256 hash is stored."""

    at: float
    token_hash: str
    expires_at: float
    secret_token: str = ""
    user: str | None = None
    auth: str | None = None


@attrs.frozen
class TokenRevoked:
    """Connection tokens were revoked: one by hash, or all when ``token_hash`` is None."""

    at: float
    token_hash: str | None = None


@attrs.frozen
class OrphanRemoved:
    """Recovery found a plane-labelled backend the log does not hold as live, and
    removed it.  Recorded in the supervisor's own stream, ``SYSTEM_STREAM``."""

    at: float
    backend_id: str
    handle: str = ""


@attrs.frozen
class KeyFencing:
    """A key's highest fencing token so far (in :class:`HistoryArchived`)."""

    namespace: str
    name: str
    fencing_token: int


@attrs.frozen
class HistoryArchived:
    """Retention moved the streams of ``backend_ids`` (terminated before ``before``)
    out of the live log into archive files.  Recorded in ``SYSTEM_STREAM`` first,
    so what must outlive those streams stays in the live log: the ids (never to be
    used again) and, per key of theirs, the highest fencing token (so tokens keep
    increasing).  See :mod:`plane.events.archive`."""

    at: float
    before: float
    backend_ids: tuple[str, ...] = ()
    fencing: tuple[KeyFencing, ...] = ()


@attrs.frozen
class WarmBackendRequested:
    """The warm pool ``warm_pool`` wants one more backend, started from its
    template ``spawn_config`` (input; opens the stream).  It holds no key until
    it is claimed (:class:`BackendClaimed`)."""

    at: float
    backend_id: str
    warm_pool: str
    spawn_config: SpawnConfig
    engine: str = "local"


@attrs.frozen
class BackendClaimed:
    """A connect claimed the warm backend: from now on it holds ``key`` with
    ``fencing_token`` and serves ``user``; the connect's token (by its hash,
    with the token's expiry, secret, user and auth as in :class:`TokenIssued`)
    routes to it.  Its idle and lifetime clocks start here."""

    at: float
    key: BackendKey
    fencing_token: int
    token_hash: str
    expires_at: float
    secret_token: str = ""
    user: str | None = None
    auth: str | None = None

    def issued(self) -> TokenIssued:
        """The claim's token, as the token event it stands for."""
        return TokenIssued(
            self.at, self.token_hash, self.expires_at, self.secret_token, self.user, self.auth
        )


SYSTEM_STREAM = "_plane"
"""The stream of the supervisor's own facts; every other stream is a backend."""


# -------------------------------------------------------------------- engines
# Facts about the engines (Plane's drones) backends run on, in ``SYSTEM_STREAM``;
# :mod:`plane.engines.registry` folds them.  Neither inputs of a backend's
# decider nor its decisions.


@attrs.frozen
class EngineRegistered:
    """An engine was configured (again, or with new settings) at plane's start.

    ``url`` never carries credentials; ``max_backends`` None: no limit."""

    at: float
    name: str
    url: str
    publish: str = "127.0.0.1"
    pool: str = ""
    max_backends: int | None = None


@attrs.frozen
class EngineDrained:
    """No new backend goes to the engine; its own keep running until they end."""

    at: float
    name: str


@attrs.frozen
class EngineUndrained:
    """The engine takes new backends again."""

    at: float
    name: str


@attrs.frozen
class EngineLost:
    """The engine did not answer for ``--engine-lost-after``: its live backends
    are terminated as lost, and it takes no new ones until it returns."""

    at: float
    name: str
    message: str = ""


@attrs.frozen
class EngineReturned:
    """A lost engine answers again; what it still runs of lost backends is removed."""

    at: float
    name: str


# ------------------------------------------------------------------ warm pools
# Warm pool definitions, in ``SYSTEM_STREAM``; :mod:`plane.actors.warm_pools`
# folds them.  Neither inputs of a backend's decider nor its decisions.


@attrs.frozen
class WarmPoolDefined:
    """The warm pool ``name`` keeps ``size`` backends of ``spawn_config`` warm
    (defined, or defined again with another template or claim hook)."""

    at: float
    name: str
    spawn_config: SpawnConfig
    size: int
    claim_path: str | None = None


@attrs.frozen
class WarmPoolResized:
    """The warm pool ``name`` now keeps ``size`` backends warm."""

    at: float
    name: str
    size: int


@attrs.frozen
class WarmPoolRemoved:
    """The warm pool ``name`` is gone; its unclaimed backends are terminated."""

    at: float
    name: str


# ------------------------------------------------------------------ decisions


@attrs.frozen
class BackendStarting:
    """Decided: start the backend's container/process."""

    at: float


@attrs.frozen
class BackendReady:
    """Decided: the backend is reachable at ``address``."""

    at: float
    address: str


@attrs.frozen
class BackendWarmed:
    """Decided: a warm pool's backend is ready at ``address``, for nobody yet."""

    at: float
    address: str


@attrs.frozen
class BackendIdle:
    """Decided: the last long-lived connection closed; the idle clock runs."""

    at: float


@attrs.frozen
class BackendActive:
    """Decided: a connection opened on an idle backend; it is ready again."""

    at: float


@attrs.frozen
class BackendTerminating:
    """Decided: stop the backend (soft: signal, grace, kill; hard: kill)."""

    at: float
    reason: TerminationReason
    kind: TerminationKind


@attrs.frozen
class TerminationEscalated:
    """Decided: the soft stop's grace period ran out; kill it now."""

    at: float


@attrs.frozen
class BackendTerminated:
    """Decided: the backend is gone for good.  Absorbing and last."""

    at: float
    reason: TerminationReason
    exit_code: int | None = None
    message: str = ""


InputEvent = (
    BackendRequested
    | ExecutorStarted
    | ReadinessObserved
    | SpawnFailed
    | ExecutorExited
    | ExecutorVanished
    | ConnectionOpened
    | ConnectionClosed
    | HttpActivityRecorded
    | TerminationRequested
    | TokenIssued
    | TokenRevoked
    | OrphanRemoved
    | HistoryArchived
    | WarmBackendRequested
    | BackendClaimed
)
DecisionEvent = (
    BackendStarting
    | BackendReady
    | BackendWarmed
    | BackendIdle
    | BackendActive
    | BackendTerminating
    | TerminationEscalated
    | BackendTerminated
)
EngineEvent = EngineRegistered | EngineDrained | EngineUndrained | EngineLost | EngineReturned
WarmPoolEvent = WarmPoolDefined | WarmPoolResized | WarmPoolRemoved
Event = InputEvent | DecisionEvent | EngineEvent | WarmPoolEvent

INPUT_TYPES: tuple[type, ...] = InputEvent.__args__
DECISION_TYPES: tuple[type, ...] = DecisionEvent.__args__
ENGINE_TYPES: tuple[type, ...] = EngineEvent.__args__
WARM_POOL_TYPES: tuple[type, ...] = WarmPoolEvent.__args__
SYSTEM_TYPES: tuple[type, ...] = (OrphanRemoved, HistoryArchived, *ENGINE_TYPES, *WARM_POOL_TYPES)
"""Events that belong to ``SYSTEM_STREAM`` only, never to a backend's stream."""


def is_input(event: Event) -> bool:
    """True for facts from outside the decider, False for its decisions."""
    return isinstance(event, INPUT_TYPES)
