"""Example-based tests of the lifecycle decider, one behaviour per test.

Each test drives the pure decider the way the shell does: ``decide`` a command,
append what it returned, ``evolve`` through it.  Times are small round numbers
(seconds) so that a nanosecond before a deadline is representable as a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import attrs
import pytest

from plane.actors import lifecycle as lc
from plane.actors.lifecycle import (
    KILL_CONFIRM_SECONDS,
    BackendState,
    Command,
    Effect,
    IllegalTransition,
    Tick,
    decide,
    effects,
    evolve,
    fold,
    initial,
    is_live,
    is_terminal,
    next_deadline,
)
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    INPUT_TYPES,
    BackendActive,
    BackendClaimed,
    BackendIdle,
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    ExecutorExited,
    ExecutorStarted,
    ExecutorVanished,
    HistoryArchived,
    HttpActivityRecorded,
    OrphanRemoved,
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
    is_input,
)
from tests.unit.lifecycle_steps import ADDRESS, T0, run, step

MAX_IDLE = 60.0
START_TIMEOUT = 120.0
GRACE = 30.0
SOFT = TerminationKind.SOFT
HARD = TerminationKind.HARD
NS = 1e-9


def config(
    *,
    max_idle: float | None = MAX_IDLE,
    lifetime: float | None = None,
    start_timeout: float = START_TIMEOUT,
    grace: float = GRACE,
) -> SpawnConfig:
    return SpawnConfig(
        executable=Executable(image="example/echo:1"),
        max_idle_seconds=max_idle,
        lifetime_limit_seconds=lifetime,
        start_timeout_seconds=start_timeout,
        stop_grace_seconds=grace,
    )


def request(at: float = T0, cfg: SpawnConfig | None = None) -> BackendRequested:
    return BackendRequested(
        at=at,
        backend_id="b-1",
        key=BackendKey(name="doc-1", namespace="team"),
        spawn_config=cfg if cfg is not None else config(),
        fencing_token=3,
    )


def requested(cfg: SpawnConfig | None = None) -> BackendState:
    state, _ = step(initial, request(cfg=cfg))
    return state


def starting(cfg: SpawnConfig | None = None) -> BackendState:
    state, _ = run(initial, request(cfg=cfg), Tick(T0))
    return state


def ready(cfg: SpawnConfig | None = None, at: float = T0 + 5) -> BackendState:
    """Ready at ``at`` with no connection (its idle clock runs from ``at``)."""
    state, _ = run(
        initial,
        request(cfg=cfg),
        Tick(T0),
        ExecutorStarted(at - 1, ADDRESS, "h-1"),
        ReadinessObserved(at),
    )
    assert state.status is Status.READY
    return state


def connected(cfg: SpawnConfig | None = None, at: float = T0 + 10) -> BackendState:
    """Ready with one open connection ``c1`` opened at ``at``."""
    state, _ = step(ready(cfg), ConnectionOpened(at, "c1"))
    return state


def idle(cfg: SpawnConfig | None = None, at: float = T0 + 20) -> BackendState:
    """Idle since ``at``: connection ``c1`` opened and closed again."""
    state, _ = step(connected(cfg), ConnectionClosed(at, "c1"))
    assert state.status is Status.IDLE
    return state


def terminating_soft(at: float = T0 + 30) -> BackendState:
    state, _ = step(ready(), TerminationRequested(at, SOFT))
    assert state.status is Status.TERMINATING
    return state


def terminated() -> BackendState:
    state, _ = step(ready(), ExecutorExited(T0 + 30, 0))
    assert is_terminal(state)
    return state


STATES: dict[str, Callable[[], BackendState]] = {
    "initial": lambda: initial,
    "requested": requested,
    "starting": starting,
    "ready": ready,
    "idle": idle,
    "terminating": terminating_soft,
    "terminated": terminated,
}


# ----------------------------------------------------------------- requested


def test_request_is_recorded_verbatim() -> None:
    command = request()
    assert decide(initial, command) == [command]


def test_request_opens_the_stream_in_requested() -> None:
    state = requested()
    assert state.status is Status.REQUESTED
    assert state.version == 1
    assert state.backend_id == "b-1"
    assert state.key == BackendKey(name="doc-1", namespace="team")
    assert state.fencing_token == 3
    assert state.requested_at == T0
    assert state.status_at == T0
    assert is_live(state)
    assert not is_terminal(state)


def test_requested_deadline_is_the_request_time() -> None:
    assert next_deadline(requested()) == T0


def test_tick_before_the_request_time_does_nothing() -> None:
    assert decide(requested(), Tick(T0 - 1)) == []


def test_tick_at_the_request_time_starts() -> None:
    state, events = step(requested(), Tick(T0))
    assert events == [BackendStarting(T0)]
    assert state.status is Status.STARTING
    assert state.status_at == T0


def test_late_first_tick_starts_at_the_tick_time() -> None:
    assert decide(requested(), Tick(T0 + 7)) == [BackendStarting(T0 + 7)]


def test_tick_on_the_initial_state_does_nothing() -> None:
    assert decide(initial, Tick(T0)) == []
    assert next_deadline(initial) is None


# ------------------------------------------------------------------ starting


def test_executor_started_records_address_and_handle() -> None:
    command = ExecutorStarted(T0 + 1, ADDRESS, "h-1")
    state, events = step(starting(), command)
    assert events == [command]
    assert state.status is Status.STARTING
    assert state.address == ADDRESS
    assert state.handle == "h-1"


def test_readiness_after_executor_started_makes_ready() -> None:
    state, _ = step(starting(), ExecutorStarted(T0 + 1, ADDRESS))
    observed = ReadinessObserved(T0 + 2)
    state, events = step(state, observed)
    assert events == [observed, BackendReady(T0 + 2, ADDRESS)]
    assert state.status is Status.READY
    assert state.address == ADDRESS
    assert state.status_at == T0 + 2


def test_readiness_before_executor_started_decides_nothing() -> None:
    observed = ReadinessObserved(T0 + 2)
    state, events = step(starting(), observed)
    assert events == [observed]
    assert state.status is Status.STARTING


def test_readiness_while_ready_decides_nothing() -> None:
    observed = ReadinessObserved(T0 + 9)
    assert decide(ready(), observed) == [observed]


def test_starting_deadline_is_the_start_timeout_from_the_request() -> None:
    assert next_deadline(starting()) == T0 + START_TIMEOUT


def test_start_timeout_not_a_nanosecond_early() -> None:
    assert decide(starting(), Tick(T0 + START_TIMEOUT - NS)) == []


def test_start_timeout_terminates_hard() -> None:
    deadline = T0 + START_TIMEOUT
    state, events = step(starting(), Tick(deadline))
    assert events == [BackendTerminating(deadline, TerminationReason.START_TIMEOUT, HARD)]
    assert state.status is Status.TERMINATING
    assert state.termination_kind is HARD
    assert state.killed_at == deadline


def test_start_timeout_counts_from_the_start_even_when_starting_late() -> None:
    # A first tick that comes late (e.g. after a restart) starts the backend, which
    # then gets its whole start timeout: it is not killed for plane's own delay.
    late = T0 + START_TIMEOUT + 80
    state, events = step(requested(), Tick(late))
    assert events == [BackendStarting(late)]
    assert decide(state, Tick(late)) == []
    assert next_deadline(state) == late + START_TIMEOUT
    assert decide(state, Tick(late + START_TIMEOUT)) == [
        BackendTerminating(late + START_TIMEOUT, TerminationReason.START_TIMEOUT, HARD)
    ]


def test_a_decision_is_not_a_command() -> None:
    with pytest.raises(IllegalTransition, match="decision"):
        decide(starting(), cast(Command, BackendReady(T0 + 1, "127.0.0.1:1")))


def test_start_timeout_does_not_apply_once_ready() -> None:
    cfg = config(max_idle=None)
    assert decide(ready(cfg), Tick(T0 + START_TIMEOUT + 1)) == []
    assert next_deadline(ready(cfg)) is None


# ---------------------------------------------------------- ready and idle


def test_ready_without_connection_starts_the_idle_clock() -> None:
    state = ready(at=T0 + 5)
    assert state.quiet_since == T0 + 5
    assert next_deadline(state) == T0 + 5 + MAX_IDLE


def test_last_connection_closed_makes_idle() -> None:
    closed = ConnectionClosed(T0 + 20, "c1")
    state, events = step(connected(), closed)
    assert events == [closed, BackendIdle(T0 + 20)]
    assert state.status is Status.IDLE
    assert state.connections == frozenset()
    assert state.quiet_since == T0 + 20


def test_closing_one_of_two_connections_stays_ready() -> None:
    state, _ = step(connected(), ConnectionOpened(T0 + 11, "c2"))
    closed = ConnectionClosed(T0 + 12, "c1")
    state, events = step(state, closed)
    assert events == [closed]
    assert state.status is Status.READY
    assert state.connections == {"c2"}
    assert state.quiet_since is None


def test_closing_an_unknown_connection_changes_nothing_but_the_version() -> None:
    before = connected()
    closed = ConnectionClosed(T0 + 12, "nope")
    after, events = step(before, closed)
    assert events == [closed]
    assert after == attrs.evolve(before, version=before.version + 1)


def test_connection_opened_on_idle_makes_ready_again() -> None:
    opened = ConnectionOpened(T0 + 25, "c2")
    state, events = step(idle(), opened)
    assert events == [opened, BackendActive(T0 + 25)]
    assert state.status is Status.READY
    assert state.connections == {"c2"}
    assert state.quiet_since is None
    assert next_deadline(state) is None


def test_connection_opened_on_ready_decides_nothing() -> None:
    opened = ConnectionOpened(T0 + 10, "c1")
    state, events = step(ready(), opened)
    assert events == [opened]
    assert state.status is Status.READY
    assert state.connections == {"c1"}


def test_idle_reap_not_a_nanosecond_early() -> None:
    state = idle(at=T0 + 20)
    deadline = T0 + 20 + MAX_IDLE
    assert next_deadline(state) == deadline
    assert decide(state, Tick(deadline - NS)) == []
    assert decide(state, Tick(math.nextafter(deadline, 0.0))) == []


def test_idle_reap_exactly_at_the_deadline() -> None:
    deadline = T0 + 20 + MAX_IDLE
    state, events = step(idle(at=T0 + 20), Tick(deadline))
    assert events == [BackendTerminating(deadline, TerminationReason.IDLE, SOFT)]
    assert state.status is Status.TERMINATING
    assert state.termination_reason is TerminationReason.IDLE
    assert state.killed_at is None


def test_idle_reap_on_a_late_tick_is_at_the_tick_time() -> None:
    late = T0 + 20 + MAX_IDLE + 3.5
    events = decide(idle(at=T0 + 20), Tick(late))
    assert events == [BackendTerminating(late, TerminationReason.IDLE, SOFT)]


def test_ready_without_connection_is_reaped_for_idleness_too() -> None:
    deadline = T0 + 5 + MAX_IDLE
    state = ready(at=T0 + 5)
    assert decide(state, Tick(deadline - NS)) == []
    assert decide(state, Tick(deadline)) == [
        BackendTerminating(deadline, TerminationReason.IDLE, SOFT)
    ]


def test_http_activity_pushes_the_idle_deadline() -> None:
    activity = HttpActivityRecorded(T0 + 50, requests=4)
    state, events = step(idle(at=T0 + 20), activity)
    assert events == [activity]
    assert state.status is Status.IDLE
    assert state.last_activity_at == T0 + 50
    assert next_deadline(state) == T0 + 50 + MAX_IDLE
    assert decide(state, Tick(T0 + 20 + MAX_IDLE)) == []
    assert decide(state, Tick(T0 + 50 + MAX_IDLE - NS)) == []
    assert decide(state, Tick(T0 + 50 + MAX_IDLE)) == [
        BackendTerminating(T0 + 50 + MAX_IDLE, TerminationReason.IDLE, SOFT)
    ]


def test_http_activity_on_ready_without_connection_pushes_the_deadline() -> None:
    state, _ = step(ready(at=T0 + 5), HttpActivityRecorded(T0 + 40))
    assert state.status is Status.READY
    assert next_deadline(state) == T0 + 40 + MAX_IDLE


def test_open_connection_means_no_idle_deadline_however_long() -> None:
    state = connected()
    assert next_deadline(state) is None
    for later in (T0 + MAX_IDLE, T0 + 10 + MAX_IDLE, T0 + 10 * 365 * 86400):
        assert decide(state, Tick(later)) == []


def test_http_activity_while_connected_does_not_start_the_idle_clock() -> None:
    state, _ = step(connected(), HttpActivityRecorded(T0 + 30))
    assert state.quiet_since is None
    assert next_deadline(state) is None


def test_idle_clock_runs_from_the_close_after_activity_while_connected() -> None:
    state, _ = run(connected(), HttpActivityRecorded(T0 + 30), ConnectionClosed(T0 + 40, "c1"))
    assert next_deadline(state) == T0 + 40 + MAX_IDLE


def test_activity_before_ready_counts_only_from_ready() -> None:
    state, _ = run(
        starting(),
        ExecutorStarted(T0 + 1, ADDRESS),
        HttpActivityRecorded(T0 + 2),
        ReadinessObserved(T0 + 3),
    )
    assert state.quiet_since == T0 + 3
    assert next_deadline(state) == T0 + 3 + MAX_IDLE


def test_connection_opened_while_starting_means_no_idle_clock_once_ready() -> None:
    state, _ = run(
        starting(),
        ExecutorStarted(T0 + 1, ADDRESS),
        ConnectionOpened(T0 + 2, "c1"),
        ReadinessObserved(T0 + 3),
    )
    assert state.status is Status.READY
    assert state.connections == {"c1"}
    assert next_deadline(state) is None


def test_no_max_idle_means_no_idle_deadline() -> None:
    state = ready(config(max_idle=None))
    assert next_deadline(state) is None
    assert decide(state, Tick(T0 + 10 * 365 * 86400)) == []


def test_zero_max_idle_reaps_on_the_next_tick() -> None:
    state = ready(config(max_idle=0.0), at=T0 + 5)
    assert decide(state, Tick(T0 + 5)) == [BackendTerminating(T0 + 5, TerminationReason.IDLE, SOFT)]


# ------------------------------------------------------------ lifetime limit


def test_lifetime_limit_terminates_softly_from_the_request_time() -> None:
    cfg = config(max_idle=None, lifetime=600.0)
    state = connected(cfg)
    assert next_deadline(state) == T0 + 600
    assert decide(state, Tick(T0 + 600 - NS)) == []
    assert decide(state, Tick(T0 + 600)) == [
        BackendTerminating(T0 + 600, TerminationReason.LIFETIME, SOFT)
    ]


def test_lifetime_limit_applies_while_idle() -> None:
    cfg = config(max_idle=None, lifetime=600.0)
    assert decide(idle(cfg), Tick(T0 + 600)) == [
        BackendTerminating(T0 + 600, TerminationReason.LIFETIME, SOFT)
    ]


def test_lifetime_limit_applies_while_starting() -> None:
    cfg = config(lifetime=50.0)
    assert next_deadline(starting(cfg)) == T0 + 50
    assert decide(starting(cfg), Tick(T0 + 50)) == [
        BackendTerminating(T0 + 50, TerminationReason.LIFETIME, SOFT)
    ]


def test_lifetime_limit_does_not_apply_while_requested() -> None:
    cfg = config(lifetime=0.0)
    assert decide(requested(cfg), Tick(T0)) == [BackendStarting(T0)]


def test_earlier_of_two_due_deadlines_fires_first() -> None:
    # idle deadline T0+5+60=T0+65 before lifetime T0+100; a late tick fires idle only.
    cfg = config(max_idle=MAX_IDLE, lifetime=100.0)
    assert decide(ready(cfg, at=T0 + 5), Tick(T0 + 500)) == [
        BackendTerminating(T0 + 500, TerminationReason.IDLE, SOFT)
    ]
    cfg = config(max_idle=MAX_IDLE, lifetime=30.0)
    assert decide(ready(cfg, at=T0 + 5), Tick(T0 + 500)) == [
        BackendTerminating(T0 + 500, TerminationReason.LIFETIME, SOFT)
    ]


# ----------------------------------------------------------------- terminating


def test_api_soft_terminate_decides_terminating_soft() -> None:
    command = TerminationRequested(T0 + 30, SOFT)
    state, events = step(ready(), command)
    assert events == [command, BackendTerminating(T0 + 30, TerminationReason.EXTERNAL, SOFT)]
    assert state.status is Status.TERMINATING
    assert state.terminating_at == T0 + 30
    assert state.killed_at is None
    assert not is_live(state)


def test_soft_stop_escalates_after_the_grace_period() -> None:
    state = terminating_soft(at=T0 + 30)
    deadline = T0 + 30 + GRACE
    assert next_deadline(state) == deadline
    assert decide(state, Tick(deadline - NS)) == []
    state, events = step(state, Tick(deadline))
    assert events == [TerminationEscalated(deadline)]
    assert state.status is Status.TERMINATING
    assert state.killed_at == deadline
    assert state.termination_kind is HARD
    assert state.termination_reason is TerminationReason.EXTERNAL


def test_soft_stop_full_path_keeps_the_reason_and_records_the_exit_code() -> None:
    reap = T0 + 20 + MAX_IDLE
    escalate = reap + GRACE
    state, log = run(idle(at=T0 + 20), Tick(reap), Tick(escalate))
    assert log == [
        BackendTerminating(reap, TerminationReason.IDLE, SOFT),
        TerminationEscalated(escalate),
    ]
    exited = ExecutorExited(escalate + 1, 137)
    state, events = step(state, exited)
    assert events == [exited, BackendTerminated(escalate + 1, TerminationReason.IDLE, 137)]
    assert state.status is Status.TERMINATED
    assert state.termination_reason is TerminationReason.IDLE
    assert state.exit_code == 137
    assert state.status_at == escalate + 1


def test_exit_during_the_grace_period_terminates_with_the_terminating_reason() -> None:
    exited = ExecutorExited(T0 + 31, 0)
    state, events = step(terminating_soft(at=T0 + 30), exited)
    assert events == [exited, BackendTerminated(T0 + 31, TerminationReason.EXTERNAL, 0)]
    assert state.exit_code == 0


def test_api_hard_terminate_kills_at_once() -> None:
    command = TerminationRequested(T0 + 30, HARD)
    state, events = step(ready(), command)
    assert events == [command, BackendTerminating(T0 + 30, TerminationReason.EXTERNAL, HARD)]
    assert state.killed_at == T0 + 30
    assert next_deadline(state) == T0 + 30 + KILL_CONFIRM_SECONDS


def test_hard_terminate_while_soft_terminating_escalates() -> None:
    command = TerminationRequested(T0 + 35, HARD)
    state, events = step(terminating_soft(at=T0 + 30), command)
    assert events == [command, TerminationEscalated(T0 + 35)]
    assert state.killed_at == T0 + 35
    assert state.termination_reason is TerminationReason.EXTERNAL


def test_soft_terminate_while_terminating_decides_nothing() -> None:
    command = TerminationRequested(T0 + 35, SOFT)
    assert decide(terminating_soft(), command) == [command]


def test_hard_terminate_after_kill_decides_nothing() -> None:
    state, _ = step(ready(), TerminationRequested(T0 + 30, HARD))
    command = TerminationRequested(T0 + 31, HARD)
    assert decide(state, command) == [command]


@pytest.mark.parametrize("kind", [SOFT, HARD])
def test_terminate_while_requested_terminates_at_once(kind: TerminationKind) -> None:
    command = TerminationRequested(T0, kind)
    state, events = step(requested(), command)
    assert events == [command, BackendTerminated(T0, TerminationReason.EXTERNAL)]
    assert is_terminal(state)
    assert state.termination_reason is TerminationReason.EXTERNAL


@pytest.mark.parametrize("kind", [SOFT, HARD])
def test_terminate_while_starting_terminates_with_the_kind(kind: TerminationKind) -> None:
    command = TerminationRequested(T0 + 1, kind)
    assert decide(starting(), command) == [
        command,
        BackendTerminating(T0 + 1, TerminationReason.EXTERNAL, kind),
    ]


def test_kill_confirm_timeout_terminates_without_an_exit() -> None:
    state, _ = step(ready(), TerminationRequested(T0 + 30, HARD))
    deadline = T0 + 30 + KILL_CONFIRM_SECONDS
    assert decide(state, Tick(deadline - NS)) == []
    state, events = step(state, Tick(deadline))
    assert events == [
        BackendTerminated(deadline, TerminationReason.EXTERNAL, None, "no exit observed after kill")
    ]
    assert is_terminal(state)
    assert state.exit_code is None


def test_kill_confirm_timeout_after_escalation_keeps_the_reason() -> None:
    escalate = T0 + 30 + GRACE
    state, _ = run(terminating_soft(at=T0 + 30), Tick(escalate))
    deadline = escalate + KILL_CONFIRM_SECONDS
    assert next_deadline(state) == deadline
    assert decide(state, Tick(deadline)) == [
        BackendTerminated(deadline, TerminationReason.EXTERNAL, None, "no exit observed after kill")
    ]


def test_tick_while_terminating_does_not_fire_lifetime_or_idle() -> None:
    cfg = config(max_idle=1.0, lifetime=40.0)
    state, _ = step(ready(cfg, at=T0 + 5), TerminationRequested(T0 + 6, SOFT))
    assert decide(state, Tick(T0 + 6 + GRACE - NS)) == []


# --------------------------------------------------------- ending on its own


@pytest.mark.parametrize("code", [0, 1, 139, None])
def test_exit_on_its_own_terminates_with_the_code(code: int | None) -> None:
    exited = ExecutorExited(T0 + 30, code)
    state, events = step(ready(), exited)
    assert events == [exited, BackendTerminated(T0 + 30, TerminationReason.EXITED, code)]
    assert state.termination_reason is TerminationReason.EXITED
    assert state.exit_code == code


def test_exit_while_starting_terminates_as_exited() -> None:
    exited = ExecutorExited(T0 + 2, 2)
    assert decide(starting(), exited) == [
        exited,
        BackendTerminated(T0 + 2, TerminationReason.EXITED, 2),
    ]


def test_spawn_failed_terminates_with_the_message() -> None:
    failed = SpawnFailed(T0 + 1, "image not found")
    state, events = step(starting(), failed)
    assert events == [
        failed,
        BackendTerminated(T0 + 1, TerminationReason.SPAWN_FAILED, None, "image not found"),
    ]
    assert state.termination_reason is TerminationReason.SPAWN_FAILED
    assert state.message == "image not found"


def test_spawn_failed_while_terminating_keeps_the_terminating_reason() -> None:
    failed = SpawnFailed(T0 + 31, "boom")
    assert decide(terminating_soft(), failed) == [
        failed,
        BackendTerminated(T0 + 31, TerminationReason.EXTERNAL, None, "boom"),
    ]


def test_vanished_is_lost() -> None:
    vanished = ExecutorVanished(T0 + 30, "container gone")
    state, events = step(ready(), vanished)
    assert events == [
        vanished,
        BackendTerminated(T0 + 30, TerminationReason.LOST, None, "container gone"),
    ]
    assert state.termination_reason is TerminationReason.LOST


def test_terminated_clears_connections_and_idle_clock() -> None:
    state, _ = step(connected(), ExecutorVanished(T0 + 30))
    assert state.connections == frozenset()
    assert state.quiet_since is None
    assert not is_live(state)


# ------------------------------------------------------- terminated absorbs


ANY_INPUT: list[Command] = [
    ExecutorStarted(T0 + 40, ADDRESS),
    ReadinessObserved(T0 + 40),
    SpawnFailed(T0 + 40, "late"),
    ExecutorExited(T0 + 40, 1),
    ExecutorVanished(T0 + 40),
    ConnectionOpened(T0 + 40, "c9"),
    ConnectionClosed(T0 + 40, "c1"),
    HttpActivityRecorded(T0 + 40),
    TerminationRequested(T0 + 40, SOFT),
    TerminationRequested(T0 + 40, HARD),
    TokenIssued(T0 + 40, "hash", T0 + 99),
    TokenRevoked(T0 + 40),
    Tick(T0 + 40),
    Tick(T0 + 10 * 365 * 86400),
]


@pytest.mark.parametrize("command", ANY_INPUT, ids=lambda c: type(c).__name__)
def test_terminated_decides_nothing(command: Command) -> None:
    assert decide(terminated(), command) == []


def test_terminated_has_no_deadline_and_is_terminal() -> None:
    state = terminated()
    assert next_deadline(state) is None
    assert is_terminal(state)
    assert not is_live(state)


DECISIONS_AND_INPUTS: list[Event] = [
    *[c for c in ANY_INPUT if not isinstance(c, Tick)],
    BackendStarting(T0 + 40),
    BackendReady(T0 + 40, ADDRESS),
    BackendIdle(T0 + 40),
    BackendActive(T0 + 40),
    BackendTerminating(T0 + 40, TerminationReason.IDLE, SOFT),
    TerminationEscalated(T0 + 40),
    BackendTerminated(T0 + 40, TerminationReason.LOST),
]


@pytest.mark.parametrize("event", DECISIONS_AND_INPUTS, ids=lambda e: type(e).__name__)
def test_evolve_rejects_anything_after_terminated(event: Event) -> None:
    with pytest.raises(IllegalTransition, match="terminated"):
        evolve(terminated(), event)


# ---------------------------------------------------------------- illegal


def test_evolve_rejects_ready_while_requested() -> None:
    with pytest.raises(IllegalTransition, match="BackendReady cannot happen in requested"):
        evolve(requested(), BackendReady(T0, ADDRESS))


@pytest.mark.parametrize(
    ("state_name", "event"),
    [
        ("requested", BackendIdle(T0)),
        ("requested", BackendTerminating(T0, TerminationReason.IDLE, SOFT)),
        ("starting", BackendStarting(T0)),
        ("starting", BackendActive(T0)),
        ("ready", BackendReady(T0, ADDRESS)),
        ("ready", BackendActive(T0)),
        ("ready", TerminationEscalated(T0)),
        ("idle", BackendIdle(T0)),
        ("terminating", BackendTerminating(T0, TerminationReason.IDLE, SOFT)),
        ("terminating", BackendReady(T0, ADDRESS)),
    ],
)
def test_evolve_rejects_decisions_out_of_place(state_name: str, event: Event) -> None:
    with pytest.raises(IllegalTransition):
        evolve(STATES[state_name](), event)


@pytest.mark.parametrize(
    "event",
    [BackendStarting(T0), ExecutorStarted(T0, ADDRESS), ConnectionOpened(T0, "c1")],
    ids=lambda e: type(e).__name__,
)
def test_evolve_rejects_anything_but_a_request_first(event: Event) -> None:
    with pytest.raises(IllegalTransition, match="nothing"):
        evolve(initial, event)


def test_evolve_rejects_a_second_request() -> None:
    with pytest.raises(IllegalTransition):
        evolve(requested(), request(T0 + 1))


def test_decide_rejects_a_second_request() -> None:
    with pytest.raises(IllegalTransition, match="already requested"):
        decide(requested(), request(T0 + 1))


def test_decide_rejects_a_request_for_a_terminated_backend() -> None:
    with pytest.raises(IllegalTransition):
        decide(terminated(), request(T0 + 100))


def test_decide_rejects_an_input_before_the_request() -> None:
    with pytest.raises(IllegalTransition, match="never requested"):
        decide(initial, ExecutorStarted(T0, ADDRESS))


@pytest.mark.parametrize("state_name", sorted(STATES))
def test_evolve_rejects_orphan_removed_in_any_backend_state(state_name: str) -> None:
    # OrphanRemoved belongs to the supervisor's own stream, never to a backend's.
    with pytest.raises(IllegalTransition, match="OrphanRemoved"):
        evolve(STATES[state_name](), OrphanRemoved(T0 + 40, "b-9", "h-9"))


def _one_of_each_input(at: float) -> list[Command]:
    """An example of every input kind (and ticks before and long after every
    deadline), all at ``at`` or later."""
    examples: dict[type, Command] = {
        BackendRequested: request(at),
        ExecutorStarted: ExecutorStarted(at, ADDRESS, "h-2"),
        ReadinessObserved: ReadinessObserved(at),
        SpawnFailed: SpawnFailed(at, "no such image"),
        ExecutorExited: ExecutorExited(at, 3),
        ExecutorVanished: ExecutorVanished(at, "gone"),
        ConnectionOpened: ConnectionOpened(at, "c9"),
        ConnectionClosed: ConnectionClosed(at, "c1"),
        HttpActivityRecorded: HttpActivityRecorded(at, 2),
        TerminationRequested: TerminationRequested(at, HARD),
        TokenIssued: TokenIssued(at, "f" * 64, at + 60, "s3cret"),
        TokenRevoked: TokenRevoked(at, None),
        OrphanRemoved: OrphanRemoved(at, "b-9", "h-9"),
        HistoryArchived: HistoryArchived(at, at - 1, ("b-8",), ()),
        WarmBackendRequested: WarmBackendRequested(at, "b-w", "pool-1", request(at).spawn_config),
        BackendClaimed: BackendClaimed(at, BackendKey("doc-w"), 7, "e" * 64, at + 60, "s3cret"),
    }
    assert set(examples) == set(INPUT_TYPES), "an input kind has no example here"
    return [
        *examples.values(),
        TerminationRequested(at, SOFT),
        Tick(at),
        Tick(at + 10_000),
        Tick(at + 1_000_000),
    ]


def test_decide_never_returns_what_evolve_rejects() -> None:
    """In every state, for every kind of input, ``decide`` either refuses
    (IllegalTransition) or returns events that ``evolve`` accepts one by one:
    the shell never appends what it cannot fold."""
    states = {**STATES, "connected": connected}
    folded = 0
    for state_name, make in states.items():
        for command in _one_of_each_input(T0 + 50):
            state = make()
            try:
                events = decide(state, command)
            except IllegalTransition:
                continue  # refusing it up front is fine
            try:
                fold(events, state)
            except IllegalTransition as exc:
                pytest.fail(f"{state_name} + {command!r}: decide returned {events!r}: {exc}")
            folded += len(events)
    # Not vacuous: most pairs are decided and folded.
    assert folded >= 60, folded


def test_config_of_the_initial_state_raises() -> None:
    with pytest.raises(IllegalTransition):
        _ = initial.config


# ------------------------------------------------------------------ effects


def test_effect_of_starting_is_start() -> None:
    state, events = step(requested(), Tick(T0))
    assert effects(events[0], state) == [Effect.START]


def test_effect_of_executor_started_while_starting_is_probe() -> None:
    event = ExecutorStarted(T0 + 1, ADDRESS)
    state, _ = step(starting(), event)
    assert effects(event, state) == [Effect.PROBE]


def test_effect_of_executor_started_while_terminating_is_kill() -> None:
    state, _ = step(starting(), TerminationRequested(T0 + 1, SOFT))
    event = ExecutorStarted(T0 + 2, ADDRESS)
    state, _ = step(state, event)
    assert state.status is Status.TERMINATING
    assert effects(event, state) == [Effect.KILL]


def test_effect_of_executor_started_while_ready_is_nothing() -> None:
    event = ExecutorStarted(T0 + 9, ADDRESS)
    state, _ = step(ready(), event)
    assert effects(event, state) == []


def test_effect_of_soft_terminating_is_stop() -> None:
    state, events = step(ready(), TerminationRequested(T0 + 30, SOFT))
    assert effects(events[1], state) == [Effect.STOP]


def test_effect_of_hard_terminating_is_kill() -> None:
    state, events = step(ready(), TerminationRequested(T0 + 30, HARD))
    assert effects(events[1], state) == [Effect.KILL]


def test_effect_of_escalation_is_kill() -> None:
    state, events = step(terminating_soft(at=T0 + 30), Tick(T0 + 30 + GRACE))
    assert effects(events[0], state) == [Effect.KILL]


def test_effect_of_terminated_is_remove() -> None:
    state, events = step(ready(), ExecutorExited(T0 + 30, 0))
    assert effects(events[1], state) == [Effect.REMOVE]


@pytest.mark.parametrize(
    "event",
    [
        ReadinessObserved(T0 + 9),
        BackendReady(T0 + 9, ADDRESS),
        BackendIdle(T0 + 9),
        BackendActive(T0 + 9),
        ConnectionOpened(T0 + 9, "c1"),
        HttpActivityRecorded(T0 + 9),
        TokenIssued(T0 + 9, "h", T0 + 99),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_events_have_no_effect(event: Event) -> None:
    assert effects(event, ready()) == []


# ------------------------------------------------------------- determinism


def test_decide_is_deterministic_on_equal_states_and_commands() -> None:
    # Two equal (not identical) states built independently, equal (not identical) commands.
    first = connected(config(lifetime=900.0))
    second = connected(config(lifetime=900.0))
    assert first == second
    assert first is not second
    for make in (
        lambda: ConnectionClosed(T0 + 20, "c1"),
        lambda: TerminationRequested(T0 + 20, SOFT),
        lambda: ExecutorExited(T0 + 20, 3),
        lambda: Tick(T0 + 900),
    ):
        assert decide(first, make()) == decide(second, make())
        assert decide(first, make()) == decide(first, make())


def test_decide_does_not_change_the_state() -> None:
    state = idle()
    snapshot = attrs.evolve(state)
    decide(state, Tick(T0 + 1000))
    decide(state, ConnectionOpened(T0 + 30, "c2"))
    assert state == snapshot


def test_inputs_come_first_then_decisions() -> None:
    command = ConnectionClosed(T0 + 20, "c1")
    first, *rest = decide(connected(), command)
    assert first is command
    assert is_input(first)
    assert rest and not any(is_input(e) for e in rest)


def test_version_counts_events() -> None:
    state, log = run(initial, request(), Tick(T0), ExecutorStarted(T0 + 1, ADDRESS))
    assert state.version == len(log) == 3
    assert fold(log) == state


def test_module_exports_fold_and_initial() -> None:
    assert lc.initial == BackendState()
    assert lc.fold([]) == lc.initial
