"""plane.retry: what is retried, how long it waits, when it gives up (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from plane.executors.base import ExecutorError, SpawnError
from plane.retry import Backoff, retrying

TRANSIENT = (ExecutorError, trio.TooSlowError)


def test_delays_double_up_to_the_cap() -> None:
    delays = Backoff(0.1, 0.5).delays()
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


class Flaky:
    """Fails with ``error`` ``failures`` times, then returns the number of calls."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    async def __call__(self) -> int:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise self.error
        return len(self.calls)


async def test_transient_failures_are_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = Flaky(3, ExecutorError("engine down"))
    start = trio.current_time()
    result = await retrying(call, policy=Backoff(1.0, 3.0), what="x", transient=TRANSIENT)
    assert result == 4
    assert [round(t - start, 6) for t in call.calls] == [0.0, 1.0, 3.0, 6.0]


async def test_permanent_and_unlisted_errors_propagate_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spawn = Flaky(5, SpawnError("no such image"))
    with pytest.raises(SpawnError):
        await retrying(
            spawn, policy=Backoff(), what="x", transient=TRANSIENT, permanent=(SpawnError,)
        )
    assert len(spawn.calls) == 1
    bug = Flaky(5, ValueError("a bug"))
    with pytest.raises(ValueError):
        await retrying(bug, policy=Backoff(), what="x", transient=TRANSIENT)
    assert len(bug.calls) == 1


async def test_attempts_and_keep_trying_bound_the_tries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = Flaky(10, ExecutorError("down"))
    with pytest.raises(ExecutorError):
        await retrying(call, policy=Backoff(), what="x", transient=TRANSIENT, attempts=3)
    assert len(call.calls) == 3
    wanted = [False, True]  # popped from the end: keep trying once, then stop
    call = Flaky(10, ExecutorError("down"))
    with pytest.raises(ExecutorError):
        await retrying(
            call, policy=Backoff(), what="x", transient=TRANSIENT, keep_trying=wanted.pop
        )
    assert len(call.calls) == 2


async def test_each_try_is_bounded_and_a_slow_try_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def slow_then_quick() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(100)
        return "done"

    start = trio.current_time()
    assert (
        await retrying(
            slow_then_quick, policy=Backoff(0.5, 1), what="x", transient=TRANSIENT, each_within=2
        )
        == "done"
    )
    assert calls == 2 and trio.current_time() - start == pytest.approx(2.5)


async def test_a_group_of_transient_errors_is_transient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = Flaky(1, ExceptionGroup("watch", [ExecutorError("stream ended")]))
    assert await retrying(call, policy=Backoff(), what="x", transient=TRANSIENT) == 2
    mixed = Flaky(1, ExceptionGroup("watch", [ExecutorError("a"), ValueError("b")]))
    with pytest.raises(ExceptionGroup):
        await retrying(mixed, policy=Backoff(), what="x", transient=TRANSIENT)
    assert len(mixed.calls) == 1
