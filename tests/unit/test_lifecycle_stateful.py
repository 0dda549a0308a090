"""A Hypothesis state machine over the lifecycle decider.

The machine plays the shell: it feeds random inputs and ticks to ``decide`` at
non-decreasing times, appends what ``decide`` returned to a log, and ``evolve``s
through it.  Next to the decider it keeps its own small model of the idle clock
(open connections, when they last went to zero or the backend became ready, the
last HTTP activity), so the idleness invariants are checked against an
independent reading of the docstring, not against the decider's own fields.
Once a backend has ended (and a late fact or two was dropped), the run goes on
with a new backend in a new stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from plane.actors.lifecycle import (
    KILL_CONFIRM_SECONDS,
    BackendState,
    Command,
    Tick,
    decide,
    effects,
    evolve,
    fold,
    initial,
    is_terminal,
    next_deadline,
)
from plane.events import wire
from plane.events.spec import BackendKey, Executable, ResourceLimits, SpawnConfig
from plane.events.types import (
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
    is_input,
)

EPOCH = 1_700_000_000.0
CONNECTION_IDS = ("c1", "c2", "c3")

# Mostly small steps so that several things happen within one idle period, with
# the occasional long jump past every deadline.
delays = st.one_of(
    st.sampled_from([0.0, 0.0, 0.001, 0.5, 1.0, 2.0, 5.0]),
    st.sampled_from([0.0, 0.001, 0.5, 1.0, 2.0, 5.0, 29.999, 30.0, 60.0]),
    st.floats(min_value=0.0, max_value=400.0, allow_nan=False, allow_infinity=False),
)
connection_ids = st.sampled_from(CONNECTION_IDS)
spawn_configs = st.builds(
    SpawnConfig,
    executable=st.just(
        Executable(image="example/echo:1", env={"A": "1"}, resource_limits=ResourceLimits(1))
    ),
    max_idle_seconds=st.sampled_from([None, 0.0, 5.0, 30.0, 90.5]),
    lifetime_limit_seconds=st.sampled_from([None, None, 45.0, 300.0]),
    start_timeout_seconds=st.sampled_from([20.0, 120.0]),
    stop_grace_seconds=st.sampled_from([0.0, 5.0, 30.0]),
)


Timer = Callable[[float], list[Event]]
"""What a timer decides when it fires at a given time."""


def summary(event: Event) -> tuple[object, ...]:
    """An event without its free-text message, for comparing with the model."""
    fields = attrs.asdict(event, recurse=False)
    fields.pop("message", None)
    return (type(event), *sorted(fields.items()))


not_terminated = precondition(lambda self: not is_terminal(self.state))
"""Most rules stop once the backend is terminated: ``late_fact`` covers what
arrives after the end, then ``next_backend`` starts a fresh stream, so that a
run's steps are spent on live backends."""

late_facts = st.one_of(
    st.builds(ExecutorStarted, st.just(0.0), st.just("127.0.0.1:40009")),
    st.builds(ReadinessObserved, st.just(0.0)),
    st.builds(SpawnFailed, st.just(0.0), st.just("late")),
    st.builds(ExecutorExited, st.just(0.0), st.one_of(st.none(), st.integers(0, 255))),
    st.builds(ExecutorVanished, st.just(0.0)),
    st.builds(ConnectionOpened, st.just(0.0), connection_ids),
    st.builds(ConnectionClosed, st.just(0.0), connection_ids),
    st.builds(HttpActivityRecorded, st.just(0.0)),
    st.builds(TerminationRequested, st.just(0.0), st.sampled_from(TerminationKind)),
    st.builds(TokenRevoked, st.just(0.0)),
    st.builds(Tick, st.just(0.0)),
)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = EPOCH
        self.backends = 0
        self.new_stream()

    def new_stream(self) -> None:
        """Forget the previous backend: a new stream, log and model."""
        self.state: BackendState = initial
        self.log: list[Event] = []
        self.late_facts = 0  # inputs fed after termination
        self.checked = 0  # events already round-tripped through the wire format
        # The model of the idle clock, kept from the inputs alone.
        self.open: set[str] = set()
        self.ready_at: float | None = None
        self.zero_at: float | None = None  # when open connections last went to zero
        self.last_http: float | None = None
        # When the stop began and when the kill was sent, from the decisions.
        self.terminating_at: float | None = None
        self.killed_at: float | None = None
        self.reason: TerminationReason | None = None

    # ------------------------------------------------------------- driving

    @property
    def cfg(self) -> SpawnConfig:
        return self.state.config

    def model_idle_deadline(self, state: BackendState) -> float | None:
        """When the model says the idle reap is due in ``state`` (None: not running).

        Call it before updating the model with the command being checked.
        """
        if state.status not in (Status.READY, Status.IDLE) or self.open:
            return None
        if self.cfg.max_idle_seconds is None:
            return None
        assert self.ready_at is not None
        anchor = max(self.ready_at, self.zero_at or self.ready_at, self.last_http or self.ready_at)
        return anchor + self.cfg.max_idle_seconds

    def model_lifetime_deadline(self) -> float | None:
        if self.cfg.lifetime_limit_seconds is None:
            return None
        return self.state.requested_at + self.cfg.lifetime_limit_seconds

    def model_timers(self, s: BackendState) -> list[tuple[float, Timer]]:
        """The timers the docstring describes for ``s``, in the decider's tie order.

        Call it before updating the model with the command being checked.
        """
        if s.status is None or is_terminal(s):
            return []
        cfg = self.cfg
        soft, hard = TerminationKind.SOFT, TerminationKind.HARD
        reasons = TerminationReason
        if s.status is Status.REQUESTED:
            return [(s.requested_at, lambda at: [BackendStarting(at)])]
        if s.status is Status.TERMINATING:
            assert self.terminating_at is not None and self.reason is not None
            reason = self.reason
            if self.killed_at is None:
                grace = self.terminating_at + cfg.stop_grace_seconds
                return [(grace, lambda at: [TerminationEscalated(at)])]
            confirm = self.killed_at + KILL_CONFIRM_SECONDS
            return [(confirm, lambda at: [BackendTerminated(at, reason, None)])]
        timers: list[tuple[float | None, Timer]]
        lifetime = self.model_lifetime_deadline()
        life: Timer = lambda at: [BackendTerminating(at, reasons.LIFETIME, soft)]  # noqa: E731
        if s.status is Status.STARTING:
            timers = [
                (
                    s.status_at + cfg.start_timeout_seconds,
                    lambda at: [BackendTerminating(at, reasons.START_TIMEOUT, hard)],
                ),
                (lifetime, life),
            ]
        else:
            timers = [
                (lifetime, life),
                (
                    self.model_idle_deadline(s),
                    lambda at: [BackendTerminating(at, reasons.IDLE, soft)],
                ),
            ]
        return [(when, fire) for when, fire in timers if when is not None]

    def apply(self, command: Command) -> list[Event]:
        before = self.state
        events = decide(before, command)
        assert decide(before, command) == events, "decide is not deterministic"
        assert self.state == before, "decide changed its state"
        for event in events:
            self.state = evolve(self.state, event)
            effects(event, self.state)  # must not raise for anything decide emits
            self.log.append(event)
        self.check_decision_shape(before, command, events)
        self.check_idle_decisions(before, command, events)
        if isinstance(command, Tick):
            self.check_tick(before, command.at, events)
        self.update_model(before, command, events)
        return events

    def feed(self, make: Callable[..., InputEvent], delay: float, *args: Any) -> list[Event]:
        self.now += delay
        command = make(self.now, *args)
        return self.apply(command)

    def tick(self, at: float) -> list[Event]:
        assert at >= self.now
        self.now = at
        return self.apply(Tick(at))

    def update_model(self, before: BackendState, command: Command, events: list[Event]) -> None:
        if not events:
            return  # dropped (late fact after termination) or nothing due
        match command:
            case ConnectionOpened(connection_id=cid):
                self.open.add(cid)
            case ConnectionClosed(at=at, connection_id=cid) if cid in self.open:
                self.open.discard(cid)
                if not self.open:
                    self.zero_at = at
            case HttpActivityRecorded(at=at):
                self.last_http = at
        for event in events:
            if isinstance(event, BackendReady):
                self.ready_at = event.at
            if isinstance(event, BackendTerminating):
                self.terminating_at = event.at
                self.reason = event.reason
                if event.kind is TerminationKind.HARD:
                    self.killed_at = event.at
            if isinstance(event, TerminationEscalated):
                self.killed_at = event.at
            if isinstance(event, BackendTerminated):
                self.open.clear()

    # ------------------------------------------------------ per-step checks

    def check_decision_shape(
        self, before: BackendState, command: Command, events: list[Event]
    ) -> None:
        if isinstance(command, Tick):
            assert not any(is_input(e) for e in events), events
            # Only decisions for one deadline per tick.
            assert len(events) <= 1, events
            return
        if is_terminal(before):
            assert events == []
            return
        assert events, "an input is always recorded while the backend is not terminated"
        assert events[0] is command
        assert is_input(events[0])
        assert not any(is_input(e) for e in events[1:]), events

    def check_idle_decisions(
        self, before: BackendState, command: Command, events: list[Event]
    ) -> None:
        for event in events:
            if isinstance(event, BackendTerminating) and event.reason is TerminationReason.IDLE:
                assert not self.open, f"idle termination with open connections {self.open}"
                assert before.connections == frozenset()
                assert isinstance(command, Tick), "idleness is decided only by the clock"
                deadline = self.model_idle_deadline(before)
                assert deadline is not None
                assert deadline <= command.at, "idle termination before max_idle_seconds"
                assert event.at == command.at
                assert event.kind is TerminationKind.SOFT

    def check_tick(self, before: BackendState, at: float, events: list[Event]) -> None:
        due = next_deadline(before)
        if due is None or at < due:
            assert events == [], f"tick at {at} before the deadline {due}: {events}"
        else:
            assert events, f"tick at {at} at/after the deadline {due} decided nothing"
            assert all(e.at == at for e in events)
        # The earliest due timer of the model fires (the first listed on a tie).
        timers = [(when, n, fire) for n, (when, fire) in enumerate(self.model_timers(before))]
        fired = [timer for timer in timers if timer[0] <= at]
        if not fired:
            assert events == []
            return
        _, _, fire = min(fired, key=lambda timer: (timer[0], timer[1]))
        assert [summary(e) for e in events] == [summary(e) for e in fire(at)]

    # --------------------------------------------------------------- rules

    @initialize(
        cfg=spawn_configs,
        delay=delays,
        steps=st.sampled_from([0, 1, 2, 3, 3, 3, 3, 3]),
        early_connection=st.booleans(),
    )
    def request(self, cfg: SpawnConfig, delay: float, steps: int, early_connection: bool) -> None:
        self.now += delay
        self.backends += 1
        backend_id = f"b-{self.backends}"
        command = BackendRequested(self.now, backend_id, BackendKey("room", "ns"), cfg, 1)
        assert self.apply(command) == [command]
        for n in range(steps):  # most runs begin ready, to spend their steps there
            if n == 2 and early_connection:  # a connection that opens before ready
                self.feed(ConnectionOpened, 0.25, "c1")
            self.bring_up(0.5)

    @not_terminated
    @rule(delay=st.sampled_from([0.0, 0.5, 1.0]))
    def bring_up(self, delay: float) -> None:
        """The happy path's next step: first tick, executor started, readiness."""
        if self.state.status is Status.REQUESTED:
            self.tick(max(self.now, self.state.requested_at))
            after = self.state
            assert after.status is Status.STARTING
        elif self.state.status is Status.STARTING and self.state.address is None:
            self.feed(ExecutorStarted, delay, "127.0.0.1:40000", "h-0")
        elif self.state.status is Status.STARTING:
            address = self.state.address
            assert address is not None
            events = self.feed(ReadinessObserved, delay)
            assert events[1:] == [BackendReady(self.now, address)]

    @not_terminated
    @rule(delay=delays, handle=st.sampled_from(["", "h-1"]), port=st.integers(40000, 40003))
    def executor_started(self, delay: float, handle: str, port: int) -> None:
        self.feed(ExecutorStarted, delay, f"127.0.0.1:{port}", handle)

    @not_terminated
    @rule(delay=delays)
    def readiness_observed(self, delay: float) -> None:
        self.feed(ReadinessObserved, delay)

    @not_terminated
    @rule(
        delay=delays,
        how=st.sampled_from(["exited", "vanished", "spawn_failed"]),
        code=st.one_of(st.none(), st.integers(-15, 255)),
    )
    def executor_ended(self, delay: float, how: str, code: int | None) -> None:
        before = self.state
        if how == "exited":
            events = self.feed(ExecutorExited, delay, code)
        elif how == "vanished":
            events = self.feed(ExecutorVanished, delay, "gone")
        else:
            events = self.feed(SpawnFailed, delay, "no such image")
        if is_terminal(before):
            return
        assert isinstance(events[-1], BackendTerminated)
        if before.status is Status.TERMINATING:
            assert events[-1].reason is before.termination_reason
        if how == "exited":
            assert self.state.exit_code == code

    @not_terminated
    @rule(delay=delays, cid=connection_ids)
    def connection_opened(self, delay: float, cid: str) -> None:
        self.feed(ConnectionOpened, delay, cid)

    @not_terminated
    @rule(delay=delays, cid=connection_ids)
    def connection_closed(self, delay: float, cid: str) -> None:
        self.feed(ConnectionClosed, delay, cid)

    @not_terminated
    @precondition(lambda self: len(self.open) < len(CONNECTION_IDS))
    @rule(delay=delays)
    def connection_opened_new(self, delay: float) -> None:
        cid = next(c for c in CONNECTION_IDS if c not in self.open)
        self.feed(ConnectionOpened, delay, cid)
        assert cid in self.state.connections

    @not_terminated
    @precondition(lambda self: bool(self.open))
    @rule(delay=delays, pick=st.integers(0, len(CONNECTION_IDS) - 1))
    def connection_closed_open(self, delay: float, pick: int) -> None:
        cid = sorted(self.open)[pick % len(self.open)]
        last = len(self.open) == 1
        was_ready = self.state.status is Status.READY
        events = self.feed(ConnectionClosed, delay, cid)
        assert cid not in self.state.connections
        if last and was_ready:
            assert self.state.status is Status.IDLE
            assert events[1:] == [BackendIdle(self.now)]

    @not_terminated
    @rule(delay=delays, requests=st.integers(1, 50))
    def http_activity(self, delay: float, requests: int) -> None:
        self.feed(HttpActivityRecorded, delay, requests)

    @not_terminated
    @rule(delay=delays, kind=st.sampled_from(TerminationKind))
    def terminate(self, delay: float, kind: TerminationKind) -> None:
        self.feed(TerminationRequested, delay, kind)

    @not_terminated
    @rule(delay=delays, user=st.sampled_from([None, "u-1"]))
    def token_issued(self, delay: float, user: str | None) -> None:
        self.feed(TokenIssued, delay, "ab" * 32, self.now + delay + 3600, "", user)

    @not_terminated
    @rule(delay=delays, token_hash=st.sampled_from([None, "ab" * 32]))
    def token_revoked(self, delay: float, token_hash: str | None) -> None:
        self.feed(TokenRevoked, delay, token_hash)

    @not_terminated
    @rule(delay=delays)
    def tick_after(self, delay: float) -> None:
        self.tick(self.now + delay)

    @precondition(lambda self: next_deadline(self.state) is not None)
    @rule()
    def tick_at_deadline(self) -> None:
        due = next_deadline(self.state)
        assert due is not None
        self.tick(max(self.now, due))

    @precondition(lambda self: next_deadline(self.state) is not None)
    @rule()
    def tick_just_before_deadline(self) -> None:
        due = next_deadline(self.state)
        assert due is not None
        just_before = math.nextafter(due, -math.inf)
        if just_before < self.now:
            return
        assert self.tick(just_before) == []

    @precondition(lambda self: next_deadline(self.state) is not None)
    @rule(extra=st.floats(min_value=0.0, max_value=100.0))
    def tick_past_deadline(self, extra: float) -> None:
        due = next_deadline(self.state)
        assert due is not None
        self.tick(max(self.now, due + extra))

    @precondition(lambda self: is_terminal(self.state))
    @rule(fact=late_facts, delay=delays)
    def late_fact(self, fact: Command, delay: float) -> None:
        """Anything arriving after the end is dropped: decide returns []."""
        self.now += delay
        fact = attrs.evolve(fact, at=self.now)
        before = self.state
        assert self.apply(fact) == []
        assert self.state == before
        self.late_facts += 1

    @precondition(lambda self: is_terminal(self.state) and self.late_facts > 0)
    @rule(
        cfg=spawn_configs,
        delay=delays,
        steps=st.sampled_from([0, 1, 2, 3, 3, 3, 3, 3]),
        early_connection=st.booleans(),
    )
    def next_backend(
        self, cfg: SpawnConfig, delay: float, steps: int, early_connection: bool
    ) -> None:
        """A new backend for the key after the old one ended: a fresh stream, so
        that the rest of the run is spent on a live backend again."""
        self.new_stream()
        self.request(cfg, delay, steps, early_connection)

    # ---------------------------------------------------------- invariants

    @invariant()
    def fold_of_the_log_is_the_state(self) -> None:
        assert fold(self.log, initial) == self.state
        assert self.state.version == len(self.log)

    @invariant()
    def every_event_round_trips_through_the_wire(self) -> None:
        for event in self.log[self.checked :]:
            tag = wire.tag_of(event)
            assert wire.loads(tag, wire.dumps(event)) == event
            assert wire.structure(tag, wire.unstructure(event)) == event
        self.checked = len(self.log)

    @invariant()
    def terminated_is_once_and_last(self) -> None:
        ends = [i for i, e in enumerate(self.log) if isinstance(e, BackendTerminated)]
        assert len(ends) <= 1
        if ends:
            assert ends[0] == len(self.log) - 1
            assert is_terminal(self.state)
            assert next_deadline(self.state) is None
        else:
            assert not is_terminal(self.state)

    @invariant()
    def deadline_matches_the_model(self) -> None:
        """next_deadline is the earliest of the timers the docstring describes."""
        whens = [when for when, _ in self.model_timers(self.state)]
        assert next_deadline(self.state) == min(whens, default=None)

    @invariant()
    def ready_or_idle_has_an_address(self) -> None:
        if self.state.status in (Status.READY, Status.IDLE):
            assert self.state.address is not None

    @invariant()
    def connections_match_the_model(self) -> None:
        assert self.state.connections == self.open

    @invariant()
    def idle_means_no_connection(self) -> None:
        if self.state.status is Status.IDLE:
            assert not self.open

    @invariant()
    def times_never_go_backwards(self) -> None:
        times = [e.at for e in self.log]
        assert times == sorted(times)
        assert all(t <= self.now for t in times)


LifecycleMachine.TestCase.settings = settings(
    max_examples=max(250, settings().max_examples),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycle = LifecycleMachine.TestCase
