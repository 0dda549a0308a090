"""Actor timers under trio's MockClock: every deadline fires exactly on time."""

from __future__ import annotations

from typing import TypeVar

import trio
import trio.testing

from plane.events.spec import Executable
from plane.events.types import (
    BackendTerminated,
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    Status,
    TerminationEscalated,
    TerminationKind,
    TerminationReason,
)
from plane.testing.fake_executor import FakeExecutor

from .conftest import open_harness, request

E = TypeVar("E")


def only(events: list[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


async def test_idle_timeout_fires_exactly_max_idle_after_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request(max_idle_seconds=60))
        ready = await h.wait_status(result.backend_id, Status.READY)
        await h.wait_status(result.backend_id, Status.TERMINATED)
        events = await h.events(result.backend_id)
        (terminating,) = only(events, BackendTerminating)
        assert terminating.reason is TerminationReason.IDLE
        assert terminating.at == ready.status_at + 60
        (terminated,) = only(events, BackendTerminated)
        assert terminated.reason is TerminationReason.IDLE
        assert ("stop", result.backend_id) in h.executor.calls


async def test_open_connection_holds_off_idle_then_closing_starts_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request(max_idle_seconds=30))
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        await h.wait_for(bid, lambda s: bool(s.connections))
        await trio.sleep(1000)  # far beyond max_idle: a quiet open connection keeps it
        assert h.supervisor.states[bid].status is Status.READY
        h.supervisor.tell(bid, ConnectionClosed(h.supervisor.clock.now(), "c1"))
        idle = await h.wait_status(bid, Status.IDLE)
        await h.wait_status(bid, Status.TERMINATED)
        (terminating,) = only(await h.events(bid), BackendTerminating)
        assert terminating.reason is TerminationReason.IDLE
        assert terminating.at == idle.status_at + 30


async def test_start_timeout_kills_hard_exactly_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(executor=FakeExecutor(ready_after=None)) as h:
        result = await h.supervisor.connect(request(start_timeout_seconds=45))
        state = await h.wait_status(result.backend_id, Status.TERMINATED)
        events = await h.events(result.backend_id)
        (terminating,) = only(events, BackendTerminating)
        assert terminating.reason is TerminationReason.START_TIMEOUT
        assert terminating.kind is TerminationKind.HARD
        assert terminating.at == state.requested_at + 45
        assert state.termination_reason is TerminationReason.START_TIMEOUT
        assert state.exit_code == 137
        assert ("kill", result.backend_id) in h.executor.calls


async def test_lifetime_limit_ends_even_a_connected_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request(lifetime_limit_seconds=100))
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        state = await h.wait_status(bid, Status.TERMINATED)
        (terminating,) = only(await h.events(bid), BackendTerminating)
        assert terminating.reason is TerminationReason.LIFETIME
        assert terminating.at == state.requested_at + 100


async def test_soft_terminate_escalates_to_kill_after_exactly_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = FakeExecutor(stop_exit_code=None)  # ignores SIGTERM
    async with open_harness(executor=executor) as h:
        result = await h.supervisor.connect(request(stop_grace_seconds=12))
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        await h.supervisor.terminate(bid, TerminationKind.SOFT)
        state = await h.wait_status(bid, Status.TERMINATED)
        events = await h.events(bid)
        (terminating,) = only(events, BackendTerminating)
        (escalated,) = only(events, TerminationEscalated)
        assert terminating.reason is TerminationReason.EXTERNAL
        assert escalated.at == terminating.at + 12
        calls = [c for c, b in executor.calls if b == bid]
        assert calls.index("stop") < calls.index("kill")
        assert state.termination_reason is TerminationReason.EXTERNAL
        assert state.exit_code == 137


async def test_hard_terminate_kills_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request())
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        actor = h.supervisor.actors[bid]
        await h.supervisor.terminate(bid, TerminationKind.HARD)
        state = await h.wait_status(bid, Status.TERMINATED)
        await actor.ended.wait()  # the actor ends once its clean-up effects are done
        assert bid not in h.supervisor.actors
        assert ("kill", bid) in h.executor.calls
        assert ("stop", bid) not in h.executor.calls
        assert state.termination_kind is TerminationKind.HARD
        assert ("remove", bid) in h.executor.calls


async def test_backend_exiting_by_itself_is_terminated_with_its_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request())
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        h.executor.exit(bid, 3)
        state = await h.wait_status(bid, Status.TERMINATED)
        assert state.termination_reason is TerminationReason.EXITED
        assert state.exit_code == 3


async def test_missing_image_ends_in_spawn_failed(autojump_clock: trio.testing.MockClock) -> None:
    executor = FakeExecutor(missing_images=frozenset({"nope:1"}))
    async with open_harness(executor=executor) as h:
        result = await h.supervisor.connect(request(executable=Executable(image="nope:1")))
        state = await h.wait_status(result.backend_id, Status.TERMINATED)
        assert state.termination_reason is TerminationReason.SPAWN_FAILED
        assert "nope:1" in state.message


async def test_a_start_that_lands_after_the_backend_ended_is_killed_and_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the start takes longer than the start timeout plus the kill confirmation
    executor = FakeExecutor(start_delay=100)
    async with open_harness(executor=executor) as h:
        result = await h.supervisor.connect(request(start_timeout_seconds=200))
        bid = result.backend_id
        actor = h.supervisor.actors[bid]
        await h.supervisor.terminate(bid, TerminationKind.HARD)
        state = await h.wait_status(bid, Status.TERMINATED)
        assert state.termination_reason is TerminationReason.EXTERNAL
        await actor.ended.wait()
        assert bid not in executor.running
        assert [c for c, b in executor.calls if b == bid][-2:] == ["kill", "remove"]
