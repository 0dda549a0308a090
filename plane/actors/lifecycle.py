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

What may happen when is one table, :data:`TRANSITIONS`: per event type, the
statuses it may happen in, the status it leads to, what else it changes, and
for an input the decisions it implies.  ``evolve`` and ``decide`` read it;
``python -m plane.actors.diagram`` draws it (``docs/lifecycle.md``).  Only the
timers (``next_deadline``) live outside it, in :func:`_deadlines`.

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
from typing import Any, Generic, TypedDict, TypeVar

import attrs

from plane.events.spec import BackendKey, SpawnConfig
from plane.events.types import (
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


# ------------------------------------------------------------ what changes


class StateChanges(TypedDict, total=False):
    """What an event changes in a state: some of :class:`BackendState`'s fields
    (type-checked, so a misspelt field fails ``mypy``; ``evolve`` refuses one at
    run time too).  ``status``, ``status_at`` and ``version`` are not here: the
    table's target and ``evolve`` set them."""

    backend_id: str
    key: BackendKey | None
    spawn_config: SpawnConfig | None
    fencing_token: int
    static_token: str | None
    requested_at: float
    address: str | None
    handle: str
    started_at: float | None
    ready_at: float | None
    connections: frozenset[str]
    quiet_since: float | None
    last_activity_at: float | None
    termination_reason: TerminationReason | None
    termination_kind: TerminationKind | None
    terminating_at: float | None
    killed_at: float | None
    exit_code: int | None
    message: str
    engine: str
    warm_pool: str | None
    claimed_at: float | None


def _no_change(s: BackendState, e: object) -> StateChanges:
    return {}


def _ev_requested(s: BackendState, e: BackendRequested) -> StateChanges:
    return {
        "backend_id": e.backend_id,
        "key": e.key,
        "spawn_config": e.spawn_config,
        "fencing_token": e.fencing_token,
        "static_token": e.static_token,
        "requested_at": e.at,
        "engine": e.engine,
    }


def _ev_warm_requested(s: BackendState, e: WarmBackendRequested) -> StateChanges:
    return {
        "backend_id": e.backend_id,
        "spawn_config": e.spawn_config,
        "requested_at": e.at,
        "engine": e.engine,
        "warm_pool": e.warm_pool,
    }


def _ev_claimed(s: BackendState, e: BackendClaimed) -> StateChanges:
    return {"key": e.key, "fencing_token": e.fencing_token, "claimed_at": e.at}


def _ev_started(s: BackendState, e: ExecutorStarted) -> StateChanges:
    started = s.started_at if s.started_at is not None else e.at
    return {"address": e.address, "handle": e.handle, "started_at": started}


def _ev_exited(s: BackendState, e: ExecutorExited) -> StateChanges:
    return {"exit_code": e.exit_code}


def _ev_opened(s: BackendState, e: ConnectionOpened) -> StateChanges:
    return {"connections": s.connections | {e.connection_id}, "quiet_since": None}


def _ev_closed(s: BackendState, e: ConnectionClosed) -> StateChanges:
    if e.connection_id not in s.connections:
        return {}
    remaining = s.connections - {e.connection_id}
    return {"connections": remaining, "quiet_since": None if remaining else e.at}


def _ev_activity(s: BackendState, e: HttpActivityRecorded) -> StateChanges:
    quiet = s.quiet_since
    if quiet is not None:
        quiet = max(quiet, e.at)
    return {"last_activity_at": e.at, "quiet_since": quiet}


def _ev_ready(s: BackendState, e: BackendReady) -> StateChanges:
    quiet = None if s.connections else max(e.at, s.last_activity_at or e.at)
    return {"address": e.address, "quiet_since": quiet, "ready_at": e.at}


def _ev_warmed(s: BackendState, e: BackendWarmed) -> StateChanges:
    return {"address": e.address}


def _ev_terminating(s: BackendState, e: BackendTerminating) -> StateChanges:
    return {
        "termination_reason": e.reason,
        "termination_kind": e.kind,
        "terminating_at": e.at,
        "killed_at": e.at if e.kind is TerminationKind.HARD else None,
    }


def _ev_escalated(s: BackendState, e: TerminationEscalated) -> StateChanges:
    return {"killed_at": e.at, "termination_kind": TerminationKind.HARD}


def _ev_terminated(s: BackendState, e: BackendTerminated) -> StateChanges:
    return {
        "termination_reason": e.reason,
        "exit_code": e.exit_code if e.exit_code is not None else s.exit_code,
        "message": e.message,
        "connections": frozenset(),
        "quiet_since": None,
    }


# ------------------------------------------------------ what an input implies


def _nothing(s: BackendState, e: object) -> list[Event]:
    """nothing (the input is only recorded)"""
    return []


def _ending_reason(s: BackendState, otherwise: TerminationReason) -> TerminationReason:
    """A backend already terminating keeps the reason it is terminating for."""
    if s.status is Status.TERMINATING and s.termination_reason is not None:
        return s.termination_reason
    return otherwise


def _after_claim(s: BackendState, e: BackendClaimed) -> list[Event]:
    """BackendReady (a claimed warm backend is ready at once)"""
    assert s.address is not None  # the guard
    return [BackendReady(e.at, s.address)]


def _claimable(s: BackendState, e: BackendClaimed) -> bool:
    """unclaimed, with an address"""
    return s.unclaimed and s.address is not None


def _after_readiness(s: BackendState, e: ReadinessObserved) -> list[Event]:
    """starting with an address: BackendReady (BackendWarmed if unclaimed); else nothing"""
    if s.status is Status.STARTING and s.address is not None:
        if s.unclaimed:
            return [BackendWarmed(e.at, s.address)]
        return [BackendReady(e.at, s.address)]
    return []


def _after_spawn_failed(s: BackendState, e: SpawnFailed) -> list[Event]:
    """BackendTerminated (spawnfailed, or the reason it is terminating for)"""
    reason = _ending_reason(s, TerminationReason.SPAWN_FAILED)
    return [BackendTerminated(e.at, reason, None, e.message)]


def _after_exited(s: BackendState, e: ExecutorExited) -> list[Event]:
    """BackendTerminated (exited with its code, or the reason it is terminating for)"""
    return [BackendTerminated(e.at, _ending_reason(s, TerminationReason.EXITED), e.exit_code)]


def _after_vanished(s: BackendState, e: ExecutorVanished) -> list[Event]:
    """BackendTerminated (lost, or the reason it is terminating for)"""
    return [BackendTerminated(e.at, _ending_reason(s, TerminationReason.LOST), None, e.message)]


def _after_opened(s: BackendState, e: ConnectionOpened) -> list[Event]:
    """idle: BackendActive; else nothing"""
    return [BackendActive(e.at)] if s.status is Status.IDLE else []


def _after_closed(s: BackendState, e: ConnectionClosed) -> list[Event]:
    """ready and its last connection: BackendIdle; else nothing"""
    last = s.status is Status.READY and s.connections == {e.connection_id}
    return [BackendIdle(e.at)] if last else []


def _after_termination_requested(s: BackendState, e: TerminationRequested) -> list[Event]:
    """requested: BackendTerminated (external); terminating: TerminationEscalated if
    hard and not killed yet; else BackendTerminating (external, the kind asked)"""
    if s.status is Status.REQUESTED:
        return [BackendTerminated(e.at, TerminationReason.EXTERNAL)]
    if s.status is Status.TERMINATING:
        hard_now = e.kind is TerminationKind.HARD and s.killed_at is None
        return [TerminationEscalated(e.at)] if hard_now else []
    return [BackendTerminating(e.at, TerminationReason.EXTERNAL, e.kind)]


# ------------------------------------------------------------------- the table

E = TypeVar("E")
AnyStatus = Status | None
"""A status, or None: the initial state (nothing requested yet)."""


@attrs.frozen
class Transition(Generic[E]):
    """One row of :data:`TRANSITIONS`: what an event of type ``event`` does."""

    event: type[E]
    source: frozenset[AnyStatus]
    """The statuses it may happen in; ``evolve`` refuses it in any other."""
    target: Status | None
    """The status it leads to (with ``status_at`` its time); None: the status stays."""
    changes: Callable[[BackendState, E], StateChanges]
    """The other fields it sets."""
    decides: Callable[[BackendState, E], list[Event]] | None = None
    """An input: the decisions it implies (``decide`` returns the input, then
    these).  None: a decision, which ``decide`` refuses as a command."""
    late: frozenset[AnyStatus] = frozenset()
    """An input: the statuses in which it arrives late (``decide`` records nothing)."""
    guard: Callable[[BackendState, E], bool] | None = None
    """An input: when this is false, it is late in a ``source`` status too."""

    @property
    def is_input(self) -> bool:
        return self.decides is not None


def _input(
    event: type[E],
    changes: Callable[[BackendState, E], StateChanges] = _no_change,
    decides: Callable[[BackendState, E], list[Event]] = _nothing,
    *,
    source: frozenset[AnyStatus] = NOT_TERMINAL,
    target: Status | None = None,
    late: frozenset[AnyStatus] = frozenset({Status.TERMINATED}),
    guard: Callable[[BackendState, E], bool] | None = None,
) -> Transition[E]:
    """An input's row: by default it may happen while the backend is not terminal,
    keeps the status, and arrives late once the backend is terminated."""
    return Transition(event, source, target, changes, decides, late, guard)


def _decision(
    event: type[E],
    source: Iterable[AnyStatus],
    target: Status | None,
    changes: Callable[[BackendState, E], StateChanges] = _no_change,
) -> Transition[E]:
    """A decision's row: only ``decide`` (or ``next_deadline``'s timers) yields it."""
    return Transition(event, frozenset(source), target, changes)


_S = Status
_FIRST: frozenset[AnyStatus] = frozenset({None})  # opens the stream
_NEVER: frozenset[AnyStatus] = frozenset()
_NOT_WARM = frozenset(_S) - {_S.WARM}

TRANSITIONS: dict[type[Event], Transition[Any]] = {
    row.event: row
    for row in (
        # inputs: facts from outside ----------------------------------------------
        _input(BackendRequested, _ev_requested, source=_FIRST, target=_S.REQUESTED, late=_NEVER),
        _input(
            WarmBackendRequested,
            _ev_warm_requested,
            source=_FIRST,
            target=_S.REQUESTED,
            late=_NEVER,
        ),
        _input(
            BackendClaimed,
            _ev_claimed,
            _after_claim,
            source=frozenset({_S.WARM}),
            late=_NOT_WARM,
            guard=_claimable,
        ),
        _input(ExecutorStarted, _ev_started),
        _input(ReadinessObserved, decides=_after_readiness),
        _input(SpawnFailed, decides=_after_spawn_failed),
        _input(ExecutorExited, _ev_exited, _after_exited),
        _input(ExecutorVanished, decides=_after_vanished),
        _input(ConnectionOpened, _ev_opened, _after_opened),
        _input(ConnectionClosed, _ev_closed, _after_closed),
        _input(HttpActivityRecorded, _ev_activity),
        _input(TerminationRequested, decides=_after_termination_requested),
        _input(TokenIssued),
        _input(TokenRevoked),
        # decisions: what decide concluded ---------------------------------------
        _decision(BackendStarting, {_S.REQUESTED}, _S.STARTING),
        _decision(BackendWarmed, {_S.STARTING}, _S.WARM, _ev_warmed),
        _decision(BackendReady, {_S.STARTING, _S.WARM}, _S.READY, _ev_ready),
        _decision(BackendIdle, {_S.READY}, _S.IDLE),
        _decision(BackendActive, {_S.IDLE}, _S.READY),
        _decision(
            BackendTerminating,
            {_S.STARTING, _S.READY, _S.IDLE, _S.WARM},
            _S.TERMINATING,
            _ev_terminating,
        ),
        _decision(TerminationEscalated, {_S.TERMINATING}, None, _ev_escalated),
        _decision(BackendTerminated, NOT_TERMINAL, _S.TERMINATED, _ev_terminated),
    )
}
"""The lifecycle in one place: event type -> the statuses it may happen in, the
status it leads to, what else it changes and (an input) what it implies.  The
system stream's events (``SYSTEM_TYPES``) are not here: they never happen in a
backend's stream.  ``python -m plane.actors.diagram`` draws it (docs/lifecycle.md)."""


# -------------------------------------------------------------------- evolve

_FIELDS = frozenset(f.name for f in attrs.fields(BackendState))
_N_FIELDS = len(_FIELDS)


def _illegal(state: BackendState, event: object) -> IllegalTransition:
    name = type(event).__name__
    if isinstance(event, SYSTEM_TYPES):
        return IllegalTransition(f"{name} belongs to the system stream, not a backend's")
    if type(event) not in TRANSITIONS:
        return IllegalTransition(f"{name} is not an event of a backend")
    current = state.status.value if state.status else "nothing"
    return IllegalTransition(f"{name} cannot happen in {current}")


def evolve(state: BackendState, event: Event) -> BackendState:
    """The state after ``event``; :class:`IllegalTransition` if it cannot happen now."""
    row = TRANSITIONS.get(type(event))
    if row is None or state.status not in row.source:
        raise _illegal(state, event)
    # What attrs.evolve(state, **changes) builds, without its per-call cost
    # (replay folds every event of the log: bench/bench_replay.py): a new
    # instance whose fields are the old ones updated in place, in field order,
    # so its __dict__ stays a key-sharing dict like every BackendState's.  A
    # name that is not a field would make it longer: that raises, as
    # BackendState(typo=...) would.
    new = object.__new__(BackendState)
    fields = new.__dict__
    fields.update(state.__dict__)
    fields.update(row.changes(state, event))
    fields["version"] = state.version + 1
    if row.target is not None:
        fields["status"] = row.target
        fields["status_at"] = event.at
    if len(fields) != _N_FIELDS:
        unknown = ", ".join(sorted(fields.keys() - _FIELDS))
        raise TypeError(f"{type(event).__name__} changes what BackendState lacks: {unknown}")
    return new


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


def decide(state: BackendState, command: Command) -> list[Event]:
    """The events that ``command`` implies in ``state`` (inputs first, then decisions)."""
    if isinstance(command, Tick):
        return _decide_tick(state, command.at)
    row = TRANSITIONS.get(type(command))
    if row is None or row.decides is None:
        raise _not_a_command(command)
    status = state.status
    if status in row.late:
        return []
    if status not in row.source:
        name = type(command).__name__
        if status is None:
            raise IllegalTransition(f"{name} for a backend never requested")
        if None in row.source:
            raise IllegalTransition(f"backend {state.backend_id} was already requested")
        raise IllegalTransition(f"{name} cannot happen in {status.value}")
    if row.guard is not None and not row.guard(state, command):
        return []
    return [command, *row.decides(state, command)]


def _not_a_command(command: object) -> IllegalTransition:
    name = type(command).__name__
    if isinstance(command, SYSTEM_TYPES):
        return IllegalTransition(f"{name} belongs to the system stream, not a backend's")
    return IllegalTransition(f"{name} is a decision, not a command")


def _decide_tick(state: BackendState, now: float) -> list[Event]:
    due = [(when, act) for when, act in _deadlines(state) if when <= now]
    if not due:
        return []
    _, act = min(due, key=lambda item: item[0])
    return act(now)


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
