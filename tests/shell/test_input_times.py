"""Every input carries the time its sender observed it, and a new backend's first
events go through its actor's decide/append loop like every other input."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from plane import tokens
from plane.actors.supervisor import ConnectRefused
from plane.engines.config import EngineSpec
from plane.events.memory import MemoryEventStore, open_memory_store
from plane.events.store import RecordedEvent
from plane.events.types import (
    SYSTEM_STREAM,
    BackendRequested,
    BackendStarting,
    ConnectionClosed,
    ConnectionOpened,
    EngineLost,
    Event,
    ExecutorStarted,
    ExecutorVanished,
    Status,
    TerminationKind,
    TokenIssued,
)
from plane.testing.fake_executor import FakeExecutor

from .conftest import EPOCH, open_harness, request


class CountingStore(MemoryEventStore):
    """The memory store, keeping every append's events (one list per append)."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[tuple[str, list[Event]]] = []

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        recorded = await super().append(stream, expected_version, events)
        self.appends.append((stream, list(events)))
        return recorded


def of(events: list[Event], cls: type) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


async def test_recovery_inputs_carry_the_time_recovery_observed_them(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Vanished, started and connection closed, as recovery observes them: at the
    time it listed the engine (the mock clock does not move unless jumped)."""
    executor = FakeExecutor()
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=executor) as h:
            gone = await h.supervisor.connect(request("gone"))
            connected = await h.supervisor.connect(request("connected"))
            for r in (gone, connected):
                await h.wait_status(r.backend_id, Status.READY)
            h.supervisor.tell(connected.backend_id, ConnectionOpened(EPOCH, "c1"))
            await h.wait_for(connected.backend_id, lambda s: bool(s.connections))
            executor.start_delay = 1000.0  # this one's start is in flight when plane dies
            starting = await h.supervisor.connect(request("starting"))
            await h.wait_status(starting.backend_id, Status.STARTING)
            mock_clock.jump(100)
        del executor.running[gone.backend_id]  # it ended while plane was down
        executor.adopt(starting.backend_id, "127.0.0.1:1")  # its start went through
        mock_clock.jump(100)
        recovered_at = EPOCH + 200
        async with open_harness(store=store, executor=executor) as h:
            lost = await h.wait_status(gone.backend_id, Status.TERMINATED)
            assert lost.status_at == recovered_at
            vanished = of(await h.events(gone.backend_id), ExecutorVanished)
            assert [e.at for e in vanished] == [recovered_at]
            closed = of(await h.events(connected.backend_id), ConnectionClosed)
            assert [e.at for e in closed] == [recovered_at]
            assert h.supervisor.held_states[connected.backend_id].status is Status.IDLE
            await h.wait_for(starting.backend_id, lambda s: s.address == "127.0.0.1:1")
            started = of(await h.events(starting.backend_id), ExecutorStarted)
            assert [e.at for e in started] == [recovered_at]


async def test_a_lost_engines_backends_vanish_at_the_time_it_was_found_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = FakeExecutor()
    async with open_harness(
        executor=a,
        engines={"a": a},
        engine_specs=(EngineSpec("a", "unix:///a"),),
        engine_lost_after=10.0,
        ping_interval=1.0,
    ) as h:
        result = await h.supervisor.connect(request("room"))
        await h.wait_status(result.backend_id, Status.READY)
        await trio.sleep(7)
        a.go_down()
        await h.wait_status(result.backend_id, Status.TERMINATED)
        system = [r.event for r in await h.store.read_stream(SYSTEM_STREAM)]
        (lost,) = of(system, EngineLost)
        (vanished,) = of(await h.events(result.backend_id), ExecutorVanished)
        assert vanished.at == lost.at > EPOCH + 7  # found lost after it went down


async def test_an_input_keeps_its_senders_time_and_never_goes_before_the_stream(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        result = await h.supervisor.connect(request("room"))
        bid = result.backend_id
        await h.wait_status(bid, Status.READY)
        last = (await h.events(bid))[-1].at
        # a proxy whose clock is ahead: its time is recorded, not the actor's
        h.supervisor.tell(bid, ConnectionOpened(last + 2.5, "c1"))
        await h.wait_for(bid, lambda s: bool(s.connections))
        # observed before the stream's last event (it was in flight): decided at that time
        h.supervisor.tell(bid, ConnectionClosed(last + 1.0, "c1"))
        await h.wait_status(bid, Status.IDLE)
        events = await h.events(bid)
        assert [e.at for e in of(events, ConnectionOpened)] == [last + 2.5]
        assert [e.at for e in of(events, ConnectionClosed)] == [last + 2.5]
        times = [e.at for e in events]
        assert times == sorted(times)


async def test_a_new_backends_request_and_token_are_one_append_by_its_actor() -> None:
    store = CountingStore()
    async with open_harness(store=store) as h:
        result = await h.supervisor.connect(request("room"))
        assert result.spawned and result.status is Status.REQUESTED
        assert result.state.version == 2
        stream, first = store.appends[0]
        assert stream == result.backend_id
        requested, issued = first
        assert isinstance(requested, BackendRequested) and isinstance(issued, TokenIssued)
        assert issued.token_hash == tokens.digest(result.token)
        assert result.backend_id in h.supervisor.actors
        await h.wait_status(result.backend_id, Status.READY)
        events = await h.events(result.backend_id)
        assert isinstance(events[2], BackendStarting)  # decided by the same actor, after


async def test_an_id_whose_stream_exists_is_taken_and_leaves_no_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A random id that hits a terminated backend's stream (no longer in memory):
    the log refuses the append (a concurrency conflict), the connect is 409."""
    async with open_harness() as h:
        old = await h.supervisor.connect(request("old"))
        await h.wait_status(old.backend_id, Status.READY)
        actor = h.supervisor.actors[old.backend_id]
        await h.supervisor.terminate(old.backend_id, TerminationKind.HARD)
        await actor.ended.wait()
        await trio.testing.wait_all_tasks_blocked()  # memory drops it once its actor ended
        assert old.backend_id not in h.supervisor.held_states
        before = await h.events(old.backend_id)
        monkeypatch.setattr(tokens, "new_backend_id", lambda: old.backend_id)
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(request("new"))
        assert (info.value.code, info.value.http_status) == ("BackendIdTaken", 409)
        assert old.backend_id not in h.supervisor.actors
        assert old.backend_id not in h.supervisor.held_states
        assert await h.events(old.backend_id) == before
        assert h.supervisor.live_count() == 0


async def test_held_states_is_a_read_only_live_projection() -> None:
    async with open_harness() as h:
        held = h.supervisor.held_states
        result = await h.supervisor.connect(request("room"))
        assert result.backend_id in held
        await h.wait_status(result.backend_id, Status.READY)
        assert held[result.backend_id].status is Status.READY
        with pytest.raises(TypeError):
            held[result.backend_id] = result.state  # type: ignore[index]
