"""The supervisor: one backend per key, admission, fencing, recovery after a crash."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from plane.actors.supervisor import ConnectRefused, ConnectRequest, UnknownBackend
from plane.events.memory import open_memory_store
from plane.events.spec import BackendKey, Executable
from plane.events.types import (
    SYSTEM_STREAM,
    BackendTerminated,
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    OrphanRemoved,
    Status,
    TerminationKind,
    TerminationReason,
    TokenIssued,
)
from plane.testing.fake_executor import FakeExecutor
from plane.tokens import digest

from .conftest import open_harness, request


async def test_200_concurrent_connects_for_one_key_make_one_backend_and_one_start() -> None:
    async with open_harness(executor=FakeExecutor(start_delay=0.01)) as h:
        results = []

        async def one() -> None:
            results.append(await h.supervisor.connect(request("shared-room")))

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(one)
        assert len(results) == 200
        assert len({r.backend_id for r in results}) == 1
        assert sum(r.spawned for r in results) == 1
        assert len({r.token for r in results}) == 200
        await h.wait_status(results[0].backend_id, Status.READY)
        assert h.executor.starts == 1
        issued = [e for e in await h.events(results[0].backend_id) if isinstance(e, TokenIssued)]
        assert {e.token_hash for e in issued} == {digest(r.token) for r in results}


async def test_tag_mismatch_on_a_live_key_is_refused() -> None:
    async with open_harness() as h:
        await h.supervisor.connect(request("room", tag="v1"))
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(request("room", tag="v2"))
        assert info.value.http_status == 409
        assert info.value.code == "KeyHeld"


async def test_connect_without_spawn_config_to_an_unheld_key_is_refused() -> None:
    async with open_harness() as h:
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(ConnectRequest(key=BackendKey("nobody")))
        assert info.value.code == "KeyUnheldNoSpawnConfig"
        assert h.executor.starts == 0


async def test_existing_backend_is_returned_with_a_fresh_token() -> None:
    async with open_harness() as h:
        first = await h.supervisor.connect(request("room"))
        second = await h.supervisor.connect(ConnectRequest(key=BackendKey("room")))
        assert second.backend_id == first.backend_id
        assert not second.spawned
        assert second.token != first.token


async def test_admission_refuses_past_max_backends_and_starts_nothing() -> None:
    async with open_harness(max_backends=2) as h:
        await h.supervisor.connect(request("a"))
        await h.supervisor.connect(request("b"))
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(request("c"))
        assert info.value.http_status == 503
        await trio.testing.wait_all_tasks_blocked()
        assert h.executor.starts == 2
        assert "c" not in {s.key.name for s in h.supervisor.states.values() if s.key}


async def test_fencing_token_increases_per_key_across_backends() -> None:
    async with open_harness() as h:
        first = await h.supervisor.connect(request("room"))
        await h.wait_status(first.backend_id, Status.READY)
        await h.supervisor.terminate(first.backend_id, TerminationKind.HARD)
        await h.wait_status(first.backend_id, Status.TERMINATED)
        second = await h.supervisor.connect(request("room"))
        assert second.backend_id != first.backend_id
        assert second.state.fencing_token == first.state.fencing_token + 1
        await h.wait_status(second.backend_id, Status.READY)
        assert h.executor.specs[second.backend_id].fencing_token == second.state.fencing_token


async def test_terminate_unknown_backend_raises_unknown() -> None:
    async with open_harness() as h:
        with pytest.raises(UnknownBackend):
            await h.supervisor.terminate("nope", TerminationKind.SOFT)


async def test_recovery_adopts_running_records_lost_and_removes_orphans(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = FakeExecutor()
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=executor) as h:
            alive = await h.supervisor.connect(request("alive", max_idle_seconds=50))
            gone = await h.supervisor.connect(request("gone"))
            connected = await h.supervisor.connect(request("connected", max_idle_seconds=50))
            for r in (alive, gone, connected):
                await h.wait_status(r.backend_id, Status.READY)
            opened = ConnectionOpened(h.supervisor.clock.now(), "c1")
            h.supervisor.tell(connected.backend_id, opened)
            await h.wait_for(connected.backend_id, lambda s: bool(s.connections))
            ready_at = h.supervisor.states[alive.backend_id].status_at
            address = h.supervisor.states[alive.backend_id].address
            await trio.sleep(20)
        # "crash": the supervisor is gone, the backends are not.  One vanished meanwhile,
        # and a container the log never knew is running.
        del executor.running[gone.backend_id]
        executor.adopt("stranger", "127.0.0.1:1")
        async with open_harness(store=store, executor=executor) as h:
            report = h.supervisor.recovery_report
            assert set(report["adopted"]) == {alive.backend_id, connected.backend_id}
            assert report["lost"] == [gone.backend_id]
            assert report["orphans"] == ["stranger"]
            lost = await h.wait_status(gone.backend_id, Status.TERMINATED)
            assert lost.termination_reason is TerminationReason.LOST
            assert ("kill", "stranger") in executor.calls
            system = [r.event for r in await store.read_stream(SYSTEM_STREAM)]
            assert system == [OrphanRemoved(system[0].at, "stranger", "fake-stranger")]
            # the adopted backend keeps its address and its idle clock
            assert h.supervisor.states[alive.backend_id].address == address
            await h.wait_status(alive.backend_id, Status.TERMINATED)
            terminating = [
                e for e in await h.events(alive.backend_id) if isinstance(e, BackendTerminating)
            ]
            assert terminating[0].at == ready_at + 50
            # its connection died with the previous plane's proxy: recorded closed, so
            # the connected one is idle now and its idle clock runs
            assert h.supervisor.states[connected.backend_id].status is Status.IDLE
            assert ConnectionClosed(0.0, "c1") in [
                attrs.evolve(e, at=0.0)
                for e in await h.events(connected.backend_id)
                if isinstance(e, ConnectionClosed)
            ]
            assert executor.starts == 3
            ended = [e for e in await h.events(gone.backend_id) if isinstance(e, BackendTerminated)]
            assert len(ended) == 1


async def test_recovery_removes_leftovers_that_no_longer_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the log does not hold live is removed whether it runs or not: a terminated
    backend whose removal a stop interrupted, and remains the log never knew."""
    executor = FakeExecutor()
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=executor) as h:
            done = await h.supervisor.connect(request("done"))
            alive = await h.supervisor.connect(request("alive", max_idle_seconds=500))
            for r in (done, alive):
                await h.wait_status(r.backend_id, Status.READY)
            await h.supervisor.terminate(done.backend_id, TerminationKind.SOFT)
            await h.wait_status(done.backend_id, Status.TERMINATED)
        # plane stopped before the removal: the exited container is still there
        executor.leave(done.backend_id)
        executor.leave("stranger")  # an exited container no log knows
        executor.calls.clear()
        async with open_harness(store=store, executor=executor) as h:
            report = h.supervisor.recovery_report
            assert sorted(report["orphans"]) == sorted([done.backend_id, "stranger"])
            assert report["adopted"] == [alive.backend_id]
            assert {("remove", done.backend_id), ("remove", "stranger")} <= set(executor.calls)
            assert ("kill", "stranger") not in executor.calls  # nothing runs there
            assert {r.backend_id for r in await executor.list_all()} == {alive.backend_id}
            system = [r.event for r in await store.read_stream(SYSTEM_STREAM)]
            assert sorted(e.backend_id for e in system if isinstance(e, OrphanRemoved)) == sorted(
                [done.backend_id, "stranger"]
            )


async def test_a_broken_exit_watch_is_restarted_and_missed_exits_reconciled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        first = await h.supervisor.connect(request("a"))
        second = await h.supervisor.connect(request("b"))
        for r in (first, second):
            await h.wait_status(r.backend_id, Status.READY)
        h.executor.vanish(first.backend_id)  # exits unseen...
        h.executor.break_exit_watch()  # ...because the event stream broke
        state = await h.wait_status(first.backend_id, Status.TERMINATED)
        assert state.termination_reason is TerminationReason.LOST
        assert h.executor.watches == 2
        assert h.supervisor.states[second.backend_id].status is Status.READY
        h.executor.exit(second.backend_id, 5)  # the new watch reports exits again
        state = await h.wait_status(second.backend_id, Status.TERMINATED)
        assert state.exit_code == 5


async def test_what_the_executor_cannot_run_is_refused_at_once() -> None:
    executor = FakeExecutor(needs_image=True)
    async with open_harness(executor=executor) as h:
        no_image = request("x", executable=Executable(command=("app",)))
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(no_image)
        assert info.value.http_status == 400 and "image" in str(info.value)
        assert h.supervisor.states == {} and executor.starts == 0


async def test_a_spawn_in_flight_at_a_crash_is_started_again_on_recovery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = FakeExecutor(start_delay=50)
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=executor) as h:
            result = await h.supervisor.connect(request("in-flight"))
            await h.wait_status(result.backend_id, Status.STARTING)
            await trio.sleep(10)  # the start is still in flight when plane dies
        assert result.backend_id not in executor.running
        executor.start_delay = 0
        async with open_harness(store=store, executor=executor) as h:
            state = await h.wait_status(result.backend_id, Status.READY)
            assert state.address is not None
            assert executor.starts == 2
