"""JumpClock: simulated time as MockClock's autojump gives it, in fewer scheduler passes."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from plane.testing.sim.clock import JumpClock


async def _timeline() -> list[tuple[str, float]]:
    """Sleeps, timeouts, a wake-up by another task and busy work: what happened when."""
    seen: list[tuple[str, float]] = []
    woken = trio.Event()

    async def sleeper(name: str, delays: list[float]) -> None:
        for delay in delays:
            await trio.sleep(delay)
            seen.append((name, trio.current_time()))

    async def waker() -> None:
        await trio.sleep(7.25)
        woken.set()

    async def waiter() -> None:
        await woken.wait()
        seen.append(("woken", trio.current_time()))
        with trio.move_on_after(100.0):
            await trio.sleep_forever()
        seen.append(("timed out", trio.current_time()))

    async def busy() -> None:  # runnable for a while: the clock must not move meanwhile
        start = trio.current_time()
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        seen.append(("busy", trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "a", [1.0, 2.5, 0.0, 30.0])
        nursery.start_soon(sleeper, "b", [3.0, 3.0])
        nursery.start_soon(waker)
        nursery.start_soon(waiter)
        nursery.start_soon(busy)
    return sorted(seen)


def test_jump_clock_gives_the_times_mock_clock_gives() -> None:
    mock = trio.run(_timeline, clock=trio.testing.MockClock(autojump_threshold=0))
    jump = trio.run(_timeline, clock=JumpClock())
    assert jump == mock
    assert ("busy", 0.0) in jump
    assert ("timed out", 107.25) in jump
    assert ("a", 33.5) in jump and ("b", 6.0) in jump


def test_jump_clock_takes_fewer_scheduler_passes() -> None:
    passes = 0

    class Count(trio.abc.Instrument):
        def before_io_wait(self, timeout: float) -> None:
            nonlocal passes
            passes += 1

    async def sleeps() -> None:
        for _ in range(100):
            await trio.sleep(1.0)

    counts = []
    for clock in (trio.testing.MockClock(autojump_threshold=0), JumpClock()):
        passes = 0
        trio.run(sleeps, clock=clock, instruments=[Count()])
        counts.append(passes)
    mock, jump = counts
    assert jump < mock * 0.6, counts


def test_jump_clock_never_goes_back_nor_to_infinity() -> None:
    clock = JumpClock()
    assert clock.deadline_to_sleep_time(5.0) == 0.0
    assert clock.current_time() == 5.0
    assert clock.deadline_to_sleep_time(2.0) == 0.0  # an expired deadline: no jump back
    assert clock.current_time() == 5.0
    assert clock.deadline_to_sleep_time(math.inf) > 0  # nothing will ever wake: wait
    assert clock.current_time() == 5.0


def test_a_deadlock_under_the_jump_clock_is_still_caught_by_a_timeout() -> None:
    async def stuck() -> None:
        with trio.fail_after(50.0):
            await trio.Event().wait()

    with pytest.raises(trio.TooSlowError):
        trio.run(stuck, clock=JumpClock())
