"""The fake executor's probe: found by address, and only while ``running`` says so."""

from __future__ import annotations

import trio
import trio.testing

from plane.events.spec import BackendKey, Executable
from plane.executors.base import StartSpec
from plane.testing.fake_executor import FakeExecutor


def spec(backend_id: str) -> StartSpec:
    return StartSpec(backend_id, BackendKey(backend_id), 1, Executable(image="app:1"))


async def answered(fake: FakeExecutor, address: str) -> bool:
    """Whether a probe of ``address`` returns once every task is blocked."""
    done = False

    async def probe() -> None:
        nonlocal done
        await fake.probe(address)
        done = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return done


async def test_the_probe_answers_for_the_backend_at_its_address_only_while_it_runs() -> None:
    fake = FakeExecutor(ready_after=None)  # only make_ready makes one answer
    started = [await fake.start(spec(f"b{n}")) for n in range(3)]
    fake.make_ready("b1")
    assert [await answered(fake, s.address) for s in started] == [False, True, False]
    fake.exit("b1", 0)
    assert not await answered(fake, started[1].address), "exited: nothing answers there"
    fake.make_ready("b2")
    del fake.running["b2"]  # a test removing it by hand: the address index is not trusted
    assert not await answered(fake, started[2].address)


async def test_an_adopted_backend_answers_at_its_shared_address() -> None:
    fake = FakeExecutor()
    fake.adopt("old1", "127.0.0.1:9")
    fake.adopt("old2", "127.0.0.1:9")
    assert await answered(fake, "127.0.0.1:9")
    assert not await answered(fake, "127.0.0.1:10")
