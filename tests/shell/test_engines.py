"""Two fake engines under trio's MockClock: placement, drain, loss and return."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from plane.actors.backend import ExecutorPolicy
from plane.actors.supervisor import ConnectRefused
from plane.engines.config import EngineSpec
from plane.events.memory import open_memory_store
from plane.events.types import (
    SYSTEM_STREAM,
    ConnectionOpened,
    EngineDrained,
    EngineLost,
    EngineRegistered,
    EngineReturned,
    OrphanRemoved,
    Status,
    TerminationReason,
)
from plane.executors.base import ExecutorError, Running
from plane.testing.fake_executor import FakeExecutor
from tests.shell.conftest import open_harness, request

SPECS = (EngineSpec("a", "unix:///a"), EngineSpec("b", "unix:///b", "127.0.0.2", max_backends=8))


async def system_events(store: object) -> list[object]:
    return [r.event for r in await store.read_stream(SYSTEM_STREAM)]  # type: ignore[attr-defined]


def probe_either(*engines: FakeExecutor) -> Callable[..., Awaitable[None]]:
    """A readiness probe that asks every engine (a backend answers on its own)."""

    async def probe(address: str, *, interval: float = 0.01) -> None:
        async with trio.open_nursery() as nursery:

            async def one(engine: FakeExecutor) -> None:
                await engine.probe(address, interval=interval)
                nursery.cancel_scope.cancel()

            for engine in engines:
                nursery.start_soon(one, engine)

    return probe


async def test_backends_spread_drain_and_loss(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeExecutor(), FakeExecutor()
    async with open_harness(
        executor=a,
        policy=ExecutorPolicy(probe=probe_either(a, b)),
        engines={"a": a, "b": b},
        engine_specs=SPECS,
        engine_lost_after=10.0,
        ping_interval=1.0,
        rng=random.Random(1),
    ) as h:
        sup = h.supervisor
        results = [await sup.connect(request(f"k{i}")) for i in range(10)]
        placed = Counter(r.engine for r in results)
        assert placed == {"a": 5, "b": 5}
        for r in results:
            await h.wait_status(r.backend_id, Status.READY)
        assert {r.backend_id for r in results if r.engine == "b"} == set(b.running)
        view = {e["name"]: e for e in sup.engines_view()}
        assert view["b"]["live_backends"] == 5 and view["b"]["state"] == "healthy"

        # drain b: new backends go to a; b's keep running
        assert await sup.drain("b") is True
        assert await sup.drain("b") is False
        more = [await sup.connect(request(f"m{i}")) for i in range(3)]
        assert {r.engine for r in more} == {"a"}
        assert len(b.running) == 5
        await sup.drain("b", draining=False)

        # b goes silent: a blip changes nothing
        b.go_down()
        await trio.sleep(5)
        assert not any(isinstance(e, EngineLost) for e in await system_events(h.store))
        b.come_back()
        await trio.sleep(3)
        assert all(
            sup.states[r.backend_id].status is Status.READY for r in results if r.engine == "b"
        )
        # a long silence: lost, and its backends end as lost, keys free again
        b.go_down()
        await trio.sleep(12)
        on_b = [r for r in results if r.engine == "b"]
        for r in on_b:
            state = await h.wait_status(r.backend_id, Status.TERMINATED)
            assert state.termination_reason is TerminationReason.LOST
        again = await sup.connect(request(on_b[0].state.key.name))  # type: ignore[union-attr]
        assert again.spawned and again.engine == "a"
        assert {e["name"]: e["state"] for e in sup.engines_view()}["b"] == "lost"

        # it answers again: returned, and what it still runs of lost backends is removed
        b.come_back()
        await trio.sleep(3)
        assert b.running == {}  # mock time ran well past a ping and the cleanup
        removed = {
            e.backend_id for e in await system_events(h.store) if isinstance(e, OrphanRemoved)
        }
        assert removed == {r.backend_id for r in on_b}
        kinds = [type(e) for e in await system_events(h.store)]
        assert kinds[:2] == [EngineRegistered, EngineRegistered]
        assert EngineDrained in kinds and EngineLost in kinds and EngineReturned in kinds


async def test_no_engine_of_the_pool_is_no_drone_available(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = FakeExecutor()
    async with open_harness(executor=a, engines={"a": a}, engine_specs=SPECS[:1]) as h:
        for req in (request("x", pool="gpu"),):
            try:
                await h.supervisor.connect(req)
            except ConnectRefused as refused:
                assert (refused.code, refused.http_status) == ("NoDroneAvailable", 503)
                assert "'gpu'" in str(refused)
            else:
                raise AssertionError("a pool no engine serves was accepted")
        await h.supervisor.drain("a")
        try:
            await h.supervisor.connect(request("y"))
        except ConnectRefused as refused:
            assert refused.code == "NoDroneAvailable" and "a: draining" in str(refused)
        else:
            raise AssertionError("a drained engine took a backend")


class ListingFails(FakeExecutor):
    """A fake engine whose next ``failures`` listings fail though it answers pings."""

    failures = 0

    async def list_all(self) -> list[Running]:
        if self.failures:
            self.failures -= 1
            raise ExecutorError("listing failed (injected)")
        return await super().list_all()


async def test_a_deferred_engine_is_recovered_once_it_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An engine down at start defers its recovery; its adopted backends' dead
    connections are closed (they go idle), and the recovery (leftovers removed)
    runs once the engine answers, even if the first listing then fails."""
    engine = ListingFails()
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=engine) as first:
            result = await first.supervisor.connect(request("room", max_idle_seconds=30))
            await first.wait_status(result.backend_id, Status.READY)
            opened = ConnectionOpened(first.supervisor.clock.now(), "c1")
            first.supervisor.tell(result.backend_id, opened)
            await first.wait_for(result.backend_id, lambda s: s.connections == {"c1"})
        # plane dies (its proxy with it); an earlier plane's exited container is left
        engine.leave("stray")
        engine.go_down()
        async with open_harness(store=store, executor=engine) as second:
            sup = second.supervisor
            assert sup.states[result.backend_id].status is Status.READY  # adopted, deferred
            state = await second.wait_for(result.backend_id, lambda s: not s.connections)
            assert state.status is Status.IDLE
            engine.failures = 1
            engine.come_back()
            await trio.sleep(10)  # a few pings: the first recovery's listing fails
            removed = [e for e in await system_events(store) if isinstance(e, OrphanRemoved)]
            assert [e.backend_id for e in removed] == ["stray"]
            assert "stray" not in engine.leftovers
            assert engine.failures == 0
            ended = await second.wait_status(result.backend_id, Status.TERMINATED)
            assert ended.termination_reason is TerminationReason.IDLE


async def test_a_start_in_flight_at_a_crash_is_redone_on_a_deferred_engine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A backend whose start was in flight when plane died is started again (starts
    are idempotent per backend id) even if its engine does not answer at start:
    it is ready once the engine answers, not failed at its start timeout."""
    engine = FakeExecutor(start_delay=1000)
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=engine) as first:
            result = await first.supervisor.connect(request("room", start_timeout_seconds=60))
            await trio.sleep(5)
            assert first.supervisor.states[result.backend_id].status is Status.STARTING
        engine.go_down()
        engine.start_delay = 1
        async with open_harness(store=store, executor=engine) as second:
            await trio.sleep(10)
            engine.come_back()
            ready = await second.wait_status(result.backend_id, Status.READY)
            assert ready.address == engine.running[result.backend_id].address
