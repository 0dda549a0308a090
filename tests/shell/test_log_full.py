"""A full log under trio's MockClock: actors keep their pending decisions and retry
them with backoff, queue what arrives meanwhile, refuse what somebody waits for,
and carry on by themselves once the log takes appends again.

The store is the in-memory one behind a switch that makes every append raise
StoreFullError (what the SQLite store raises on SQLITE_FULL or its page guard)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import pytest
import trio
import trio.testing

from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import ConnectRequest
from plane.events.memory import MemoryEventStore
from plane.events.store import RecordedEvent, StoreFullError
from plane.events.types import (
    BackendReady,
    BackendTerminated,
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    ExecutorExited,
    Status,
    TerminationKind,
    TerminationReason,
)
from plane.testing.fake_executor import FakeExecutor
from plane.testing.sim.history import seed_trio_scheduler

from .conftest import Harness, open_harness, request

E = TypeVar("E")


class FillableStore(MemoryEventStore):
    """The memory store, with a disk that can be full: then every append is refused
    (nothing written), as the SQLite store does; reads keep working."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.refused = 0
        self.refusing = trio.Event()  # set at the first refusal

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        if self.full:
            await trio.lowlevel.checkpoint()  # as the memory store's append (one checkpoint)
            self.refused += 1
            self.refusing.set()
            raise StoreFullError("the plane log is full (injected)")
        return await super().append(stream, expected_version, events)


def only(events: list[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


async def ready_backend(h: Harness, connect: ConnectRequest) -> BackendState:
    result = await h.supervisor.connect(connect)
    return await h.wait_status(result.backend_id, Status.READY)


async def wait_until_pending(h: Harness, store: FillableStore, backend_id: str) -> None:
    with trio.fail_after(60):
        await store.refusing.wait()
    await trio.sleep(0.01)  # the actor takes the refusal in
    assert h.supervisor.actors[backend_id].waiting_for_space


def assert_times_never_go_back(events: list[Event]) -> None:
    times = [e.at for e in events]
    assert times == sorted(times), times


async def test_idle_timeout_firing_on_a_full_log_is_kept_and_recorded_once_freed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FillableStore()
    async with open_harness(store=store) as h:
        ready = await ready_backend(h, request(max_idle_seconds=60))
        bid = ready.backend_id
        await trio.sleep(10)
        store.full = True
        await trio.sleep(100)  # the idle deadline (ready + 60) passed while full
        assert h.supervisor.actors[bid].waiting_for_space
        assert h.supervisor.states[bid].status is Status.READY, "acted before recording"
        assert ("stop", bid) not in h.executor.calls
        assert not only(await h.events(bid), BackendTerminating)
        # retried with a capped backoff (0.1 s doubling up to 1 s), not in a tight loop
        assert 10 <= store.refused <= 60, store.refused
        freed_at = trio.current_time()
        store.full = False
        await h.wait_status(bid, Status.TERMINATED)
        assert trio.current_time() - freed_at <= 2.0, "resumed within the retry cap"
        events = await h.events(bid)
        (terminating,) = only(events, BackendTerminating)
        assert terminating.reason is TerminationReason.IDLE
        assert terminating.at == ready.status_at + 60, "recorded with the time it fired"
        assert len(only(events, BackendTerminated)) == 1
        assert ("stop", bid) in h.executor.calls
        assert not h.supervisor.actors.get(bid) or not h.supervisor.actors[bid].waiting_for_space
        assert_times_never_go_back(events)


async def test_inputs_arriving_while_full_are_queued_in_order_with_their_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FillableStore()
    async with open_harness(store=store) as h:
        ready = await ready_backend(h, request(max_idle_seconds=600))
        bid = ready.backend_id
        t0 = h.supervisor.clock.now()
        store.full = True
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        await wait_until_pending(h, store, bid)
        await trio.sleep(20)
        h.supervisor.tell(bid, ConnectionClosed(h.supervisor.clock.now(), "c1"))
        await trio.sleep(20)
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c2"))
        await trio.sleep(20)
        assert only(await h.events(bid), ConnectionOpened) == []
        assert h.supervisor.states[bid].connections == frozenset()
        store.full = False
        await h.wait_for(bid, lambda s: s.connections == frozenset({"c2"}))
        events = await h.events(bid)
        opened = only(events, ConnectionOpened)
        closed = only(events, ConnectionClosed)
        assert [e.connection_id for e in opened] == ["c1", "c2"]
        assert [e.connection_id for e in closed] == ["c1"]
        assert [e.at - t0 for e in opened] == [0.0, pytest.approx(40, abs=0.01)]
        assert [e.at - t0 for e in closed] == [pytest.approx(20, abs=0.01)]
        assert_times_never_go_back(events)
        assert h.supervisor.states[bid].status is Status.READY


async def test_what_somebody_waits_for_is_refused_at_once_and_never_done_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FillableStore()
    async with open_harness(store=store) as h:
        ready = await ready_backend(h, request("held", max_idle_seconds=600))
        bid = ready.backend_id
        store.full = True
        # a connect for a new key, one for the held key, terminate, revoke: all refused
        with trio.fail_after(1), pytest.raises(StoreFullError):
            await h.supervisor.connect(request("new"))
        assert set(h.supervisor.actors) == {bid}, "the refused backend's actor ended"
        assert set(h.supervisor.held_states) == {bid}
        with trio.fail_after(1), pytest.raises(StoreFullError):
            await h.supervisor.connect(request("held"))
        with trio.fail_after(1), pytest.raises(StoreFullError):
            await h.supervisor.terminate(bid, TerminationKind.SOFT)
        # an actor already waiting on a pending decision refuses without waiting
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        await wait_until_pending(h, store, bid)
        before = trio.current_time()
        with trio.fail_after(1), pytest.raises(StoreFullError):
            await h.supervisor.terminate(bid, TerminationKind.SOFT)
        with trio.fail_after(1), pytest.raises(StoreFullError):
            await h.supervisor.revoke(bid)
        assert trio.current_time() - before < 0.01, "refused at once, not after the retry"
        assert h.supervisor.live_count() == 1
        store.full = False
        await h.wait_for(bid, lambda s: s.connections == frozenset({"c1"}))
        await trio.sleep(100)
        events = await h.events(bid)
        assert not only(events, BackendTerminating), "a refused terminate was done later"
        assert h.supervisor.states[bid].status is Status.READY
        # writes work again, without a restart
        again = await h.supervisor.connect(request("held"))
        assert again.backend_id == bid and not again.spawned
        fresh = await h.supervisor.connect(request("new"))
        assert fresh.spawned
        await h.supervisor.terminate(bid, TerminationKind.SOFT)
        await h.wait_status(bid, Status.TERMINATED)


async def test_an_exit_and_a_start_in_flight_while_full_are_recorded_once_freed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FillableStore()
    executor = FakeExecutor(start_delay=5)
    async with open_harness(store=store, executor=executor) as h:
        running = await ready_backend(h, request("running", max_idle_seconds=600))
        starting = await h.supervisor.connect(request("starting", max_idle_seconds=600))
        await h.wait_status(starting.backend_id, Status.STARTING)
        store.full = True
        executor.exit(running.backend_id, 3)
        await trio.sleep(30)  # the start returned meanwhile: ExecutorStarted is pending
        assert h.supervisor.states[running.backend_id].status is Status.READY
        assert h.supervisor.states[starting.backend_id].address is None
        assert h.supervisor.actors[starting.backend_id].waiting_for_space
        store.full = False
        gone = await h.wait_status(running.backend_id, Status.TERMINATED)
        assert gone.exit_code == 3
        await h.wait_status(starting.backend_id, Status.READY)
        exited = only(await h.events(running.backend_id), ExecutorExited)
        assert len(exited) == 1
        assert len(only(await h.events(starting.backend_id), BackendReady)) == 1
        assert executor.starts == 2, "the start was not redone"


async def test_a_caller_after_space_is_freed_is_not_refused_for_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FillableStore()
    async with open_harness(store=store) as h:
        ready = await ready_backend(h, request("held", max_idle_seconds=600))
        bid = ready.backend_id
        store.full = True
        h.supervisor.tell(bid, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        await wait_until_pending(h, store, bid)
        await trio.sleep(30)  # the retry is at its cap now
        store.full = False
        before = trio.current_time()
        with trio.fail_after(1):
            again = await h.supervisor.connect(request("held"))  # prompts the retry
        assert trio.current_time() - before < 0.01, "waited out the backoff"
        assert again.backend_id == bid
        state = h.supervisor.states[bid]
        assert state.connections == frozenset({"c1"}), "the pending input went first"
        assert not h.supervisor.actors[bid].waiting_for_space


async def test_a_start_and_an_exit_decided_back_to_back_leave_no_probe_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Queued while the log is full, ExecutorStarted and the backend's exit are
    decided back to back once it is freed: the probe the first asks for may first
    run after the second ended the backend; it must not start then (nothing would
    cancel it, and the actor would never end).  Whether it runs before or after
    is trio's scheduling: each of a few seeds of trio's scheduler is tried."""
    try:
        for seed in range(8):
            await _start_and_exit_back_to_back(seed)
    finally:
        seed_trio_scheduler(random.SystemRandom().getrandbits(64))  # unseeded again


async def _start_and_exit_back_to_back(seed: int) -> None:
    seed_trio_scheduler(seed)
    store = FillableStore()
    executor = FakeExecutor(start_delay=5, ready_after=None)
    async with open_harness(store=store, executor=executor) as h:
        result = await h.supervisor.connect(request("room", max_idle_seconds=600))
        await h.wait_status(result.backend_id, Status.STARTING)
        store.full = True
        await trio.sleep(10)  # the start returned: ExecutorStarted is pending
        executor.exit(result.backend_id, 1)
        await trio.sleep(1)
        store.full = False
        await h.wait_status(result.backend_id, Status.TERMINATED)
        await trio.sleep(1)
        assert result.backend_id not in h.supervisor.actors, f"trio seed {seed}"
