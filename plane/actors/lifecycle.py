r"""The backend lifecycle decider: pure functions, no I/O, no clock.

This module owns *what a backend is*: its state, which events may happen in
which state, and what to decide when something happens.  It follows the
decider pattern::

    decide(state, command) -> list[Event]     # what should happen now
    evolve(state, event)   -> state           # what the state becomes
    next_deadline(state)   -> float | None    # when time alone matters next
    is_terminal(state)     -> bool            # terminated is absorbing
    effects(event, state)  -> list[Effect]    # what the shell must do

A *command* is an input event (a fact from outside: a request, an executor
observation, a proxy connection event, an API call) or a :class:`Tick` (the
passing of time).  Every command carries its time (``at``, seconds since the
epoch); this module never reads a clock and imports nothing that does I/O.

For an input, ``decide`` returns the input itself first, then the decisions it
implies, so the shell appends exactly what ``decide`` returned.  For a tick it
returns only decisions, for the earliest deadline that is due (the shell ticks
again until nothing is due).  Given the same state and command, ``decide``
always returns the same events; ``plane-replay verify`` relies on that.

The lifecycle::

    requested -> starting -> ready <-> idle -> terminating -> terminated
                         \-> warm -(claimed)-> ready

* A warm pool's backend (:class:`WarmBackendRequested`) holds no key: once
  ready it is ``warm`` (:class:`BackendWarmed`), reachable by nobody, with no
  idle or lifetime clock.  A :class:`BackendClaimed` gives it a key, fencing
  token and token and makes it ``ready`` at once; its idle and lifetime clocks
  run from the claim.  A claimed backend never returns to ``warm``.

* ``requested`` lasts until the first tick: its deadline is the request time,
  so the shell starts the backend at once, and the answer to the request can
  say ``requested``.
* ``ready`` -> ``idle`` when the last long-lived connection closes;
  ``idle`` -> ``ready`` when one opens.  Whenever a ready or idle backend has no
  open connection, the idle clock runs from the later of "connections went to
  zero" (or ready) and the last plain-HTTP activity; after
  ``max_idle_seconds`` of it the backend is terminated (reason ``idle``).
* A start timeout, the lifetime limit, an exit of its own, a spawn failure, a
  vanished container and the API's soft or hard terminate all end in
  ``terminated`` with a reason.  A soft stop is a stop signal, then
  ``stop_grace_seconds`` later a kill (:class:`TerminationEscalated`).

Error handling: :class:`IllegalTransition` ("your fault") when ``evolve`` is
given an event that cannot happen in the state, or ``decide`` a request for a
backend that exists.  ``decide`` never raises for a fact that merely arrives
late (an exit after the decision to kill, a connection closing after
termination): in ``terminated`` it returns ``[]``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from plane.events.spec import BackendKey, SpawnConfig
from plane.events.types import (
    INPUT_TYPES,
    SYSTEM_TYPES,
    BackendActive,
    BackendClaimed,
    BackendIdle,
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    BackendWarmed,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    ExecutorExited,
    ExecutorStarted,
    ExecutorVanished,
    HttpActivityRecorded,
    InputEvent,
    ReadinessObserved,
    SpawnFailed,
    Status,
    TerminationEscalated,
    TerminationKind,
    TerminationReason,
    TerminationRequested,
    TokenIssued,
    TokenRevoked,
    WarmBackendRequested,
)

KILL_CONFIRM_SECONDS = 30.0
"""After a kill, how long to wait for the executor to report the exit before
recording the backend terminated anyway."""


@attrs.frozen
class Tick:
    """The passing of time: the command that fires due deadlines at ``at``."""

    at: float


Command = InputEvent | Tick


class IllegalTransition(ValueError):
    """An event that cannot happen in the backend's current status."""


class Effect(enum.Enum):
    """What the shell must do after an event is recorded."""

    START = "start"  # executor.start
    PROBE = "probe"  # wait for the first HTTP answer, then report readiness
    STOP = "stop"  # polite stop signal
    KILL = "kill"  # kill at once
    REMOVE = "remove"  # clean up what is left


LIVE = frozenset({Status.REQUESTED, Status.STARTING, Status.READY, Status.IDLE})
"""Statuses in which a backend holds its key (a warm pool's backend holds none
until it is claimed: requested, starting and warm without a key)."""
NOT_TERMINAL = LIVE | {Status.WARM, Status.TERMINATING}


@attrs.frozen(slots=False)
class BackendState:
    """Everything the decider knows about one backend; a fold of its stream."""

    version: int = 0
    status: Status | None = None  # None: nothing requested yet (the initial state)
    backend_id: str = ""
    key: BackendKey | None = None
    spawn_config: SpawnConfig | None = None
    fencing_token: int = 0
    static_token: str | None = attrs.field(default=None, repr=False)
    """Plane's static token of a ``use_static_token`` backend (a secret: never in a view)."""
    requested_at: float = 0.0
    status_at: float = 0.0
    address: str | None = None
    handle: str = ""
    started_at: float | None = None  # when the executor first reported it running
    ready_at: float | None = None  # when it last became ready (not idle -> ready)
    connections: frozenset[str] = frozenset()
    quiet_since: float | None = None
    last_activity_at: float | None = None
    termination_reason: TerminationReason | None = None
    termination_kind: TerminationKind | None = None
    terminating_at: float | None = None
    killed_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    engine: str = "local"
    """The engine (Plane's drone) the backend is placed on."""
    warm_pool: str | None = None
    """The warm pool that started it (None: requested for a key)."""
    claimed_at: float | None = None
    """When a connect claimed it from its warm pool (its timers run from here)."""

    @property
    def unclaimed(self) -> bool:
        """A warm pool's backend nobody has claimed (it holds no key)."""
        return self.warm_pool is not None and self.key is None

    @property
    def config(self) -> SpawnConfig:
        if self.spawn_config is None:
            raise IllegalTransition("backend has not been requested")
        return self.spawn_config


initial = BackendState()


def is_terminal(state: BackendState) -> bool:
    return state.status is Status.TERMINATED


def is_live(state: BackendState) -> bool:
    """True while the backend holds its key (requested, starting, ready, idle)."""
    return state.status in LIVE and state.key is not None


def is_warm_member(state: BackendState) -> bool:
    """True while an unclaimed warm pool's backend counts towards its pool
    (requested, starting or warm; not once it terminates)."""
    return state.unclaimed and state.status in LIVE | {Status.WARM}


# -------------------------------------------------------------------- evolve

_ALLOWED: dict[type[Event], frozenset[Status | None]] = {
    BackendRequested: frozenset({None}),
    WarmBackendRequested: frozenset({None}),
    BackendClaimed: frozenset({Status.WARM}),
    BackendStarting: frozenset({Status.REQUESTED}),
    BackendWarmed: frozenset({Status.STARTING}),
    BackendReady: frozenset({Status.STARTING, Status.WARM}),
    BackendIdle: frozenset({Status.READY}),
    BackendActive: frozenset({Status.IDLE}),
    BackendTerminating: frozenset({Status.STARTING, Status.READY, Status.IDLE, Status.WARM}),
    TerminationEscalated: frozenset({Status.TERMINATING}),
    BackendTerminated: frozenset(NOT_TERMINAL),
    **{cls: frozenset() for cls in SYSTEM_TYPES},  # only in SYSTEM_STREAM, never in a backend's
}
_INPUT_ALLOWED: frozenset[Status | None] = frozenset(NOT_TERMINAL)


Changes = dict[str, Any]
"""What an event changes in a state: field name -> new value."""


def _status(state: BackendState, status: Status, at: float, **changes: Any) -> Changes:
    changes["status"] = status
    changes["status_at"] = at
    return changes


def _ev_requested(s: BackendState, e: BackendRequested) -> Changes:
    return dict(
        status=Status.REQUESTED,
        status_at=e.at,
        backend_id=e.backend_id,
        key=e.key,
        spawn_config=e.spawn_config,
        fencing_token=e.fencing_token,
        static_token=e.static_token,
        requested_at=e.at,
        engine=e.engine,
    )


def _ev_warm_requested(s: BackendState, e: WarmBackendRequested) -> Changes:
    return dict(
        status=Status.REQUESTED,
        status_at=e.at,
        backend_id=e.backend_id,
        spawn_config=e.spawn_config,
        requested_at=e.at,
        engine=e.engine,
        warm_pool=e.warm_pool,
    )


def _ev_claimed(s: BackendState, e: BackendClaimed) -> Changes:
    return {"key": e.key, "fencing_token": e.fencing_token, "claimed_at": e.at}


def _ev_started(s: BackendState, e: ExecutorStarted) -> Changes:
    started = s.started_at if s.started_at is not None else e.at
    return {"address": e.address, "handle": e.handle, "started_at": started}


def _ev_opened(s: BackendState, e: ConnectionOpened) -> Changes:
    return {"connections": s.connections | {e.connection_id}, "quiet_since": None}


def _ev_closed(s: BackendState, e: ConnectionClosed) -> Changes:
    if e.connection_id not in s.connections:
        return {}
    remaining = s.connections - {e.connection_id}
    return {"connections": remaining, "quiet_since": None if remaining else e.at}


def _ev_activity(s: BackendState, e: HttpActivityRecorded) -> Changes:
    quiet = s.quiet_since
    if quiet is not None:
        quiet = max(quiet, e.at)
    return {"last_activity_at": e.at, "quiet_since": quiet}


def _ev_exited(s: BackendState, e: ExecutorExited) -> Changes:
    return {"exit_code": e.exit_code}


def _ev_ready(s: BackendState, e: BackendReady) -> Changes:
    quiet = None if s.connections else max(e.at, s.last_activity_at or e.at)
    return _status(s, Status.READY, e.at, address=e.address, quiet_since=quiet, ready_at=e.at)


def _ev_warmed(s: BackendState, e: BackendWarmed) -> Changes:
    return _status(s, Status.WARM, e.at, address=e.address)


def _ev_terminating(s: BackendState, e: BackendTerminating) -> Changes:
    killed = e.at if e.kind is TerminationKind.HARD else None
    return _status(
        s,
        Status.TERMINATING,
        e.at,
        termination_reason=e.reason,
        termination_kind=e.kind,
        terminating_at=e.at,
        killed_at=killed,
    )


def _ev_escalated(s: BackendState, e: TerminationEscalated) -> Changes:
    return {"killed_at": e.at, "termination_kind": TerminationKind.HARD}


def _ev_terminated(s: BackendState, e: BackendTerminated) -> Changes:
    exit_code = e.exit_code if e.exit_code is not None else s.exit_code
    return _status(
        s,
        Status.TERMINATED,
        e.at,
        termination_reason=e.reason,
        exit_code=exit_code,
        message=e.message,
        connections=frozenset(),
        quiet_since=None,
    )


def _unchanged(s: BackendState, e: Event) -> Changes:
    return {}


_EVOLVERS: dict[type[Event], Callable[[BackendState, Event], Changes]] = {
    BackendRequested: _ev_requested,  # type: ignore[dict-item]
    WarmBackendRequested: _ev_warm_requested,  # type: ignore[dict-item]
    BackendClaimed: _ev_claimed,  # type: ignore[dict-item]
    ExecutorStarted: _ev_started,  # type: ignore[dict-item]
    ReadinessObserved: _unchanged,
    SpawnFailed: _unchanged,
    ExecutorExited: _ev_exited,  # type: ignore[dict-item]
    ExecutorVanished: _unchanged,
    ConnectionOpened: _ev_opened,  # type: ignore[dict-item]
    ConnectionClosed: _ev_closed,  # type: ignore[dict-item]
    HttpActivityRecorded: _ev_activity,  # type: ignore[dict-item]
    TerminationRequested: _unchanged,
    TokenIssued: _unchanged,
    TokenRevoked: _unchanged,
    **{cls: _unchanged for cls in SYSTEM_TYPES},
    BackendStarting: lambda s, e: _status(s, Status.STARTING, e.at),
    BackendReady: _ev_ready,  # type: ignore[dict-item]
    BackendWarmed: _ev_warmed,  # type: ignore[dict-item]
    BackendIdle: lambda s, e: _status(s, Status.IDLE, e.at),
    BackendActive: lambda s, e: _status(s, Status.READY, e.at),
    BackendTerminating: _ev_terminating,  # type: ignore[dict-item]
    TerminationEscalated: _ev_escalated,  # type: ignore[dict-item]
    BackendTerminated: _ev_terminated,  # type: ignore[dict-item]
}


def evolve(state: BackendState, event: Event) -> BackendState:
    """The state after ``event``; :class:`IllegalTransition` if it cannot happen now."""
    allowed, evolver = _TABLE[type(event)]
    if state.status not in allowed:
        current = state.status.value if state.status else "nothing"
        raise IllegalTransition(f"{type(event).__name__} cannot happen in {current}")
    changes = evolver(state, event)
    changes["version"] = state.version + 1
    # attrs.evolve without its per-call introspection (replay folds many events)
    new = object.__new__(BackendState)
    fields = new.__dict__
    fields.update(state.__dict__)
    fields.update(changes)
    return new


_TABLE: dict[type[Event], tuple[frozenset[Status | None], Callable[[BackendState, Event], Changes]]]
_TABLE = {cls: (_ALLOWED.get(cls, _INPUT_ALLOWED), fn) for cls, fn in _EVOLVERS.items()}
"""The transition table: event type -> (statuses it may happen in, what it changes)."""


def fold(events: Iterable[Event], state: BackendState = initial) -> BackendState:
    """Evolve ``state`` through ``events`` in order."""
    for event in events:
        state = evolve(state, event)
    return state


# ----------------------------------------------------------------- deadlines


def _deadlines(s: BackendState) -> list[tuple[float, Callable[[float], list[Event]]]]:
    """Each pending timer as (when, decisions at that time)."""
    if s.status is None or s.status is Status.TERMINATED:
        return []
    cfg = s.config
    timers: list[tuple[float, Callable[[float], list[Event]]]] = []
    if s.status is Status.TERMINATING:
        reason = s.termination_reason or TerminationReason.EXTERNAL
        if s.killed_at is None:
            assert s.terminating_at is not None
            timers.append(
                (s.terminating_at + cfg.stop_grace_seconds, lambda at: [TerminationEscalated(at)])
            )
        else:
            message = "no exit observed after kill"
            timers.append(
                (
                    s.killed_at + KILL_CONFIRM_SECONDS,
                    lambda at: [BackendTerminated(at, reason, None, message)],
                )
            )
        return timers
    if s.status is Status.REQUESTED:
        timers.append((s.requested_at, lambda at: [BackendStarting(at)]))
    if s.status is Status.STARTING:
        timers.append(
            (
                s.status_at + cfg.start_timeout_seconds,  # from the start, not the request
                lambda at: [
                    BackendTerminating(at, TerminationReason.START_TIMEOUT, TerminationKind.HARD)
                ],
            )
        )
    if (
        cfg.lifetime_limit_seconds is not None
        and s.status is not Status.REQUESTED
        and not s.unclaimed  # a warm backend's lifetime starts at its claim
    ):
        began = s.claimed_at if s.claimed_at is not None else s.requested_at
        timers.append(
            (
                began + cfg.lifetime_limit_seconds,
                lambda at: [
                    BackendTerminating(at, TerminationReason.LIFETIME, TerminationKind.SOFT)
                ],
            )
        )
    if (
        s.status in (Status.READY, Status.IDLE)
        and cfg.max_idle_seconds is not None
        and s.quiet_since is not None
    ):
        timers.append(
            (
                s.quiet_since + cfg.max_idle_seconds,
                lambda at: [BackendTerminating(at, TerminationReason.IDLE, TerminationKind.SOFT)],
            )
        )
    return timers


def next_deadline(state: BackendState) -> float | None:
    """When the next timer fires (seconds since the epoch), or None if none is set."""
    timers = _deadlines(state)
    return min(when for when, _ in timers) if timers else None


# -------------------------------------------------------------------- decide


_PLAIN_INPUTS = frozenset(INPUT_TYPES) - {
    BackendRequested,
    WarmBackendRequested,
    BackendClaimed,
    *SYSTEM_TYPES,
}


def decide(state: BackendState, command: Command) -> list[Event]:
    """The events that ``command`` implies in ``state`` (inputs first, then decisions)."""
    kind = type(command)
    if kind is Tick:
        return _decide_tick(state, command.at)
    if kind not in _PLAIN_INPUTS:
        return _decide_unusual(state, command)
    status = state.status
    if status is Status.TERMINATED:
        return []
    if status is None:
        raise IllegalTransition(f"{kind.__name__} for a backend never requested")
    rule = _RULES.get(kind)
    if rule is None:
        return [command]  # type: ignore[list-item]
    return [command, *rule(state, command)]  # type: ignore[list-item]


def _decide_unusual(state: BackendState, command: Command) -> list[Event]:
    if isinstance(command, (BackendRequested, WarmBackendRequested)):
        if state.status is not None:
            raise IllegalTransition(f"backend {state.backend_id} was already requested")
        return [command]
    if isinstance(command, BackendClaimed):
        return _decide_claim(state, command)
    if isinstance(command, SYSTEM_TYPES):
        name = type(command).__name__
        raise IllegalTransition(f"{name} belongs to the system stream, not a backend's")
    raise IllegalTransition(f"{type(command).__name__} is a decision, not a command")


def _decide_claim(state: BackendState, claim: BackendClaimed) -> list[Event]:
    """A claim of a warm backend: it takes the key and is ready at once.  A claim
    that finds the backend no longer warm (it exited, a drain ended it) decides
    nothing and records nothing: the claimer takes another one."""
    if state.status is None:
        raise IllegalTransition("BackendClaimed for a backend never requested")
    if state.status is not Status.WARM or not state.unclaimed or state.address is None:
        return []
    return [claim, BackendReady(claim.at, state.address)]


def _decide_tick(state: BackendState, now: float) -> list[Event]:
    due = [(when, act) for when, act in _deadlines(state) if when <= now]
    if not due:
        return []
    _, act = min(due, key=lambda item: item[0])
    return act(now)


def _ending_reason(s: BackendState, otherwise: TerminationReason) -> TerminationReason:
    """A backend already terminating keeps the reason it is terminating for."""
    if s.status is Status.TERMINATING and s.termination_reason is not None:
        return s.termination_reason
    return otherwise


def _after_readiness(s: BackendState, e: ReadinessObserved) -> list[Event]:
    if s.status is Status.STARTING and s.address is not None:
        if s.unclaimed:
            return [BackendWarmed(e.at, s.address)]
        return [BackendReady(e.at, s.address)]
    return []


def _after_spawn_failed(s: BackendState, e: SpawnFailed) -> list[Event]:
    reason = _ending_reason(s, TerminationReason.SPAWN_FAILED)
    return [BackendTerminated(e.at, reason, None, e.message)]


def _after_exited(s: BackendState, e: ExecutorExited) -> list[Event]:
    return [BackendTerminated(e.at, _ending_reason(s, TerminationReason.EXITED), e.exit_code)]


def _after_vanished(s: BackendState, e: ExecutorVanished) -> list[Event]:
    return [BackendTerminated(e.at, _ending_reason(s, TerminationReason.LOST), None, e.message)]


def _after_opened(s: BackendState, e: ConnectionOpened) -> list[Event]:
    return [BackendActive(e.at)] if s.status is Status.IDLE else []


def _after_closed(s: BackendState, e: ConnectionClosed) -> list[Event]:
    last = s.status is Status.READY and s.connections == {e.connection_id}
    return [BackendIdle(e.at)] if last else []


def _after_termination_requested(s: BackendState, e: TerminationRequested) -> list[Event]:
    if s.status is Status.REQUESTED:
        return [BackendTerminated(e.at, TerminationReason.EXTERNAL)]
    if s.status is Status.TERMINATING:
        hard_now = e.kind is TerminationKind.HARD and s.killed_at is None
        return [TerminationEscalated(e.at)] if hard_now else []
    return [BackendTerminating(e.at, TerminationReason.EXTERNAL, e.kind)]


_RULES: dict[type, Callable[[BackendState, Any], list[Event]]] = {
    ReadinessObserved: _after_readiness,
    SpawnFailed: _after_spawn_failed,
    ExecutorExited: _after_exited,
    ExecutorVanished: _after_vanished,
    ConnectionOpened: _after_opened,
    ConnectionClosed: _after_closed,
    TerminationRequested: _after_termination_requested,
}
"""The decision table: input type -> what it implies in a state.  An input that is
not here (tokens, HTTP activity, the executor's start) is recorded and decides
nothing by itself."""


# ------------------------------------------------------------------- effects


def effects(event: Event, state: BackendState) -> list[Effect]:
    """What the shell must do once ``event`` is recorded (``state`` is after it)."""
    match event:
        case BackendStarting():
            return [Effect.START]
        case ExecutorStarted():
            if state.status is Status.STARTING:
                return [Effect.PROBE]
            if state.status is Status.TERMINATING:
                return [Effect.KILL]
        case BackendTerminating(kind=TerminationKind.SOFT):
            return [Effect.STOP]
        case BackendTerminating() | TerminationEscalated():
            return [Effect.KILL]
        case BackendTerminated():
            return [Effect.REMOVE]
    return []
