"""Warm pools in the supervisor (fake executor, MockClock time): fill, claim,
refill, cold spawn when empty, replacement, drain, capacity, restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import ConnectRefused, ConnectRequest, Supervisor
from plane.events.memory import open_memory_store
from plane.events.spec import BackendKey
from plane.events.types import (
    BackendClaimed,
    BackendReady,
    Event,
    Status,
    TerminationKind,
    TerminationReason,
)
from plane.testing.fake_executor import FakeExecutor

from .conftest import Harness, open_harness, spawn


def claim(name: str, pool: str = "web", user: str | None = None) -> ConnectRequest:
    return ConnectRequest(key=BackendKey(name), warm_pool=pool, user=user)


async def wait_until(h: Harness, check: Callable[[], bool], limit: float = 10_000) -> None:
    """Wait (without polling) until ``check()`` holds after some backend changes."""
    changed = trio.Event()

    def observe(state: BackendState, events: list[Event]) -> None:
        changed.set()

    h.supervisor.observers.append(observe)
    try:
        with trio.fail_after(limit):
            while not check():
                await changed.wait()
                changed = trio.Event()
    finally:
        h.supervisor.observers.remove(observe)


def warm(s: Supervisor, pool: str = "web") -> list[BackendState]:
    return [m for m in s.warm_members(pool) if m.status is Status.WARM]


async def test_a_pool_fills_claims_answer_ready_at_once_and_it_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(executor=FakeExecutor(start_delay=0.05)) as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(max_idle_seconds=30.0), 3, None)
        await wait_until(h, lambda: len(warm(s)) == 3)
        assert s.live_count() == 3
        results = [await s.connect(claim(f"room-{i}", user="ann")) for i in range(3)]
        for result in results:
            assert result.spawned
            assert result.status is Status.READY
            assert result.state.key is not None
            assert result.state.claimed_at is not None
            assert result.engine == "local"
        assert all(r.state.warm_pool == "web" for r in results)  # none started cold
        first = await h.events(results[0].backend_id)
        claims = [e for e in first if isinstance(e, BackendClaimed)]
        assert len(claims) == 1
        assert claims[0].key == BackendKey("room-0")
        assert claims[0].user == "ann"
        assert isinstance(first[-1], BackendReady)
        await wait_until(h, lambda: len(warm(s)) == 3)  # refilled
        assert s.live_count() == 6
        again = await s.connect(claim("room-0"))
        assert again.backend_id == results[0].backend_id and not again.spawned


async def test_the_connect_that_finds_the_pool_empty_spawns_cold_from_the_template(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(executor=FakeExecutor(start_delay=1.0)) as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(), 1, None)
        await wait_until(h, lambda: len(warm(s)) == 1)
        claimed = await s.connect(claim("a"))
        cold = await s.connect(claim("b"))  # the refill is still starting
        assert claimed.status is Status.READY
        assert cold.spawned and cold.status is Status.REQUESTED
        assert cold.state.warm_pool is None
        assert cold.state.spawn_config == spawn()
        assert (await h.wait_status(cold.backend_id, Status.READY)).key == BackendKey("b")


async def test_timers_start_at_the_claim_not_at_the_warm_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        s = h.supervisor
        await s.define_warm_pool(
            "web", spawn(max_idle_seconds=10.0, lifetime_limit_seconds=100.0), 1, None
        )
        await wait_until(h, lambda: len(warm(s)) == 1)
        await trio.sleep(500)  # far past both limits: warm backends keep no clock
        (member,) = warm(s)
        claimed = await s.connect(claim("a"))
        assert claimed.backend_id == member.backend_id
        before = s.clock.now()
        ended = await h.wait_status(claimed.backend_id, Status.TERMINATING)
        assert ended.termination_reason is TerminationReason.IDLE
        assert ended.status_at - before == pytest.approx(10.0, abs=0.5)


async def test_a_warm_backend_that_exits_is_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(), 2, None)
        await wait_until(h, lambda: len(warm(s)) == 2)
        gone = warm(s)[0].backend_id
        h.executor.exit(gone, 1)
        await h.wait_status(gone, Status.TERMINATED)
        await wait_until(h, lambda: len(warm(s)) == 2)
        assert gone not in {m.backend_id for m in warm(s)}


async def test_max_backends_counts_warm_backends(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(max_backends=2) as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(), 2, None)
        await wait_until(h, lambda: len(warm(s)) == 2)
        with pytest.raises(ConnectRefused) as info:
            await s.connect(ConnectRequest(key=BackendKey("x"), spawn_config=spawn()))
        assert info.value.code == "CapacityExceeded"
        await s.connect(claim("a"))  # a claim starts nothing new: allowed
        await trio.sleep(5)
        assert len(s.warm_members("web")) == 1  # no refill past the limit
        assert s.live_count() == 2


async def test_draining_the_engine_ends_its_warm_backends_and_nothing_is_claimed_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(), 2, None)
        await wait_until(h, lambda: len(warm(s)) == 2)
        ids = [m.backend_id for m in warm(s)]
        await s.drain("local")
        for backend_id in ids:
            state = await h.wait_status(backend_id, Status.TERMINATED)
            assert state.termination_reason is TerminationReason.EXTERNAL
        assert s.warm_members("web") == []
        with pytest.raises(ConnectRefused) as info:  # cold spawn: no engine either
            await s.connect(claim("a"))
        assert info.value.code == "NoDroneAvailable"
        await s.drain("local", draining=False)
        await wait_until(h, lambda: len(warm(s)) == 2)


async def test_resize_and_remove(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness() as h:
        s = h.supervisor
        await s.define_warm_pool("web", spawn(), 3, None)
        await wait_until(h, lambda: len(warm(s)) == 3)
        await s.resize_warm_pool("web", 1)
        await wait_until(h, lambda: len(s.warm_members("web")) == 1)
        await s.remove_warm_pool("web")
        await wait_until(h, lambda: s.warm_members("web") == [])
        with pytest.raises(ConnectRefused) as info:
            await s.connect(claim("a"))
        assert info.value.http_status == 400


async def test_templates_that_cannot_be_warm_are_refused_by_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness() as h:
        s = h.supervisor
        bad_env = spawn()
        bad_env.executable.env["SESSION_BACKEND_KEY"] = "x"
        for template, field in (
            (bad_env, "SESSION_BACKEND_KEY"),
            (spawn(use_static_token=True), "use_static_token"),
            (spawn(subdomain="abc"), "subdomain"),
        ):
            with pytest.raises(ConnectRefused) as info:
                await s.define_warm_pool("web", template, 1, None)
            assert info.value.http_status == 400
            assert field in str(info.value)
        assert s.warm_pools.pools == {}


async def test_a_restart_restores_pools_adopts_warm_and_claimed_backends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = FakeExecutor()
    async with open_memory_store() as store:
        async with open_harness(store=store, executor=executor) as h:
            s = h.supervisor
            await s.define_warm_pool("web", spawn(), 2, None)
            await wait_until(h, lambda: len(warm(s)) == 2)
            claimed = await s.connect(claim("kept"))
            await wait_until(h, lambda: len(warm(s)) == 2)
            warm_ids = {m.backend_id for m in warm(s)}
        async with open_harness(store=store, executor=executor) as h:
            s = h.supervisor
            assert set(s.warm_pools.pools) == {"web"}
            assert {m.backend_id for m in warm(s)} == warm_ids
            assert set(s.recovery_report["adopted"]) == warm_ids | {claimed.backend_id}
            again = await s.connect(ConnectRequest(key=BackendKey("kept")))
            assert again.backend_id == claimed.backend_id and not again.spawned
            assert s.state_of(claimed.backend_id).key == BackendKey("kept")


# ------------------------------------------------------------------ property

race_plans = st.lists(
    st.tuples(
        st.sampled_from(["claims", "cold", "exit", "terminate", "wait"]),
        st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=4),
        st.integers(min_value=0, max_value=50),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(race_plans)
def test_no_key_has_two_live_holders_with_claims_and_cold_spawns_racing(
    plan: list[tuple[str, list[int], int]],
) -> None:
    """Concurrent claims and cold spawns for a few keys, with exits and
    terminations in between: at every change the supervisor records, no key is
    held by two backends that are not terminated, no warm backend holds a key,
    and no claimed backend is warm again."""

    async def main() -> None:
        async with open_harness(executor=FakeExecutor(start_delay=0.2)) as h:
            s = h.supervisor
            claimed: set[str] = set()
            problems: list[str] = []

            def check(state: BackendState, events: list[Event]) -> None:
                if state.key is not None:
                    claimed.add(state.backend_id)
                holders: dict[tuple[str, str], set[str]] = {}
                for other in s.states.values():
                    if other.key is not None and other.status is not Status.TERMINATED:
                        holders.setdefault(other.key.slot(), set()).add(other.backend_id)
                    if other.status is Status.WARM and other.key is not None:
                        problems.append(f"warm {other.backend_id} holds a key")
                    if other.backend_id in claimed and other.status is Status.WARM:
                        problems.append(f"claimed {other.backend_id} is warm again")
                for slot, ids in holders.items():
                    if len(ids) > 1:
                        problems.append(f"key {slot} held by {sorted(ids)}")

            s.observers.append(check)
            await s.define_warm_pool("web", spawn(stop_grace_seconds=1.0), 2, None)
            await trio.sleep(1)

            async def one(kind: str, key: int) -> None:
                name = f"k{key}"
                try:
                    if kind == "claims":
                        await s.connect(claim(name))
                    else:
                        await s.connect(ConnectRequest(key=BackendKey(name), spawn_config=spawn()))
                except ConnectRefused:
                    pass

            for kind, keys, pick in plan:
                live = sorted(b for b, st_ in s.states.items() if st_.status is not None)
                if kind in ("claims", "cold"):
                    async with trio.open_nursery() as nursery:
                        for key in keys:
                            nursery.start_soon(one, kind if key % 2 == 0 else "claims", key)
                            nursery.start_soon(one, "cold", key)
                elif kind == "exit" and live:
                    h.executor.exit(live[pick % len(live)], 0)
                elif kind == "terminate" and live:
                    await s.terminate(live[pick % len(live)], TerminationKind.SOFT)
                else:
                    await trio.sleep(pick / 10)
                assert not problems, problems
            await trio.sleep(30)
            assert not problems, problems

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
