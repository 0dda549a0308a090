"""The simulated executor: backends that fail, hang, exit and vanish as a seed says.

This module owns :class:`SimExecutor`, the :class:`~plane.testing.fake_executor.FakeExecutor`
with faults drawn from the simulator's one ``random.Random``:

* a start fails (``SpawnError``), fails transiently (``ExecutorError``), hangs
  before creating anything, or creates the backend and then hangs (both past
  any start timeout), or succeeds after a short delay;
* readiness comes after a delay, or never;
* a stop is honoured after a delay or ignored; a kill takes effect at once,
  slowly (longer than the decider's kill confirmation), or never;
* :meth:`exit` (any code, any moment), :meth:`vanish` (gone without an exit
  being seen) and :meth:`outage` (the engine unreachable for a while: every
  call, its health ping too, raises ``ExecutorError`` and the exit watch
  breaks; exits in the gap are not seen).  An outage longer than the
  supervisor's ``engine_lost_after`` makes the engine *lost* (its backends end
  as lost) and, when it answers again, *returned*.

The simulated backends are processes of the *world*, not of plane: their
timers run in the world's nursery, so they outlive a crash of plane, and an
exit reported while no plane watches is lost, as it would be.
``running`` holds what runs; ``exited`` what has ended but was not removed;
both are resources a terminated backend must not keep.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import attrs
import trio

from plane.executors.base import (
    Executor,
    ExecutorError,
    ExitObserved,
    Running,
    SpawnError,
    Started,
    StartSpec,
)
from plane.testing.fake_executor import FakeExecutor

HANG = 1e7
"""Seconds a hanging call sleeps: past every timeout of a history."""


class SimExecutor(FakeExecutor):
    """See the module docstring.  ``world`` is the nursery the backends live in."""

    name = "sim"

    def __init__(self, rng: random.Random, world: trio.Nursery, port_base: int = 20000) -> None:
        super().__init__()
        self.rng = rng
        self.world = world
        self._next_port = port_base
        self.down_until = -math.inf
        self.exited: dict[str, int | None] = {}
        self.ready_in: dict[str, float | None] = {}
        self._down = trio.Event()

    # --------------------------------------------------------------- faults

    def reachable(self) -> bool:
        return trio.current_time() >= self.down_until

    def outage(self, seconds: float) -> None:
        """The engine does not answer for ``seconds``; the exit watch breaks."""
        self.down_until = max(self.down_until, trio.current_time() + seconds)
        self._down.set()
        self._down = trio.Event()

    def heal(self) -> None:
        self.down_until = -math.inf

    def _engine(self) -> None:
        if not self.reachable():
            raise ExecutorError("simulated: the engine does not answer")

    def exit(self, backend_id: str, exit_code: int | None) -> None:
        """The backend ends by itself; the exit is reported if someone watches."""
        if self.running.pop(backend_id, None) is None:
            return
        self.exited[backend_id] = exit_code
        if self._exits is not None and self.reachable():
            # if the plane that watched has crashed, nobody hears it
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._exits.send_nowait(ExitObserved(backend_id, exit_code))

    def vanish(self, backend_id: str) -> None:
        if self.running.pop(backend_id, None) is not None:
            self.exited.pop(backend_id, None)

    def exit_later(self, backend_id: str, delay: float, exit_code: int | None) -> None:
        async def later() -> None:
            await trio.sleep(delay)
            self.exit(backend_id, exit_code)

        self.world.start_soon(later)

    def resources(self) -> dict[str, str]:
        """Backends that still hold something: running, or exited and not removed
        (the latter only once executors report leftovers: :data:`LIST_ALL`)."""
        held = dict.fromkeys(self.exited if LIST_ALL else (), "exited, not removed")
        held.update(dict.fromkeys(self.running, "running"))
        return held

    # ------------------------------------------------------------ protocol

    async def ping(self) -> None:
        """Answered at once, without a checkpoint: the supervisor's sleep between
        pings is one, and a round of the scheduler per ping is most of a history's
        cost (every engine is pinged every ``ping_interval`` of simulated time)."""
        self._engine()

    async def start(self, spec: StartSpec) -> Started:
        self.calls.append(("start", spec.backend_id))
        self.starts += 1
        await trio.lowlevel.checkpoint()
        self._engine()
        backend_id = spec.backend_id
        if backend_id in self.running:  # starts are idempotent per backend id
            return self.running[backend_id]
        rng = self.rng
        fate = rng.random()
        if fate < 0.04:
            raise SpawnError("simulated: image cannot be pulled")
        if fate < 0.09:
            await trio.sleep(rng.uniform(0, 1))
            raise ExecutorError("simulated: start refused, try again")
        if fate < 0.12:
            await trio.sleep(HANG)  # hangs before anything exists
        created = fate < 0.15
        if not created:
            await trio.sleep(rng.uniform(0, 2))
            self._engine()
        self._next_port += 1
        started = Started(backend_id, f"127.0.0.1:{self._next_port}", f"sim-{backend_id}")
        self.running[backend_id] = started
        self.exited.pop(backend_id, None)
        self.specs[backend_id] = spec
        self.ready_in[backend_id] = None if rng.random() < 0.08 else rng.uniform(0, 4)
        if created:
            await trio.sleep(HANG)  # created, then the call hangs
        return started

    async def probe(self, address: str, *, interval: float = 0.01) -> None:
        backend_id = next((b for b, s in self.running.items() if s.address == address), None)
        delay = self.ready_in.get(backend_id or "")
        if backend_id is None or delay is None:
            await trio.sleep_forever()
        assert delay is not None and backend_id is not None
        await trio.sleep(delay)
        while backend_id not in self.running:  # a dead backend never answers
            await trio.sleep_forever()

    async def stop(self, backend_id: str) -> None:
        self.calls.append(("stop", backend_id))
        await trio.lowlevel.checkpoint()
        self._engine()
        if backend_id in self.running and self.rng.random() < 0.7:
            self.exit_later(backend_id, self.rng.uniform(0, 3), self.rng.choice([0, 143]))

    async def kill(self, backend_id: str) -> None:
        self.calls.append(("kill", backend_id))
        await trio.lowlevel.checkpoint()
        self._engine()
        if backend_id not in self.running:
            return
        fate = self.rng.random()
        if fate < 0.85:
            self.exit_later(backend_id, self.rng.uniform(0, 1), 137)
        elif fate < 0.95:
            self.exit_later(backend_id, self.rng.uniform(31, 60), 137)  # slower than confirm
        # else: it never dies of the kill (only remove, forcibly, ends it)

    async def remove(self, backend_id: str) -> None:
        self.calls.append(("remove", backend_id))
        await trio.lowlevel.checkpoint()
        self._engine()
        self.running.pop(backend_id, None)  # forcibly, as docker rm -f
        self.exited.pop(backend_id, None)

    async def list_running(self) -> list[Running]:
        await trio.lowlevel.checkpoint()
        self._engine()
        return [Running(b, s.address, s.handle, b) for b, s in sorted(self.running.items())]

    async def list_all(self) -> list[Running]:
        """Running backends and what is left of exited ones (``running=False``
        where :class:`Running` has that field: the executors' ``list_all``)."""
        await trio.lowlevel.checkpoint()
        self._engine()
        left = [_leftover(b, f"sim-{b}") for b in sorted(self.exited) if b not in self.running]
        return [*await self.list_running(), *left]

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._engine()
        self._exits = send
        self.watches += 1
        try:
            task_status.started()
            await self._down.wait()
            raise ExecutorError("simulated: the engine's event stream broke")
        finally:
            if self._exits is send:
                self._exits = None


def _leftover(backend_id: str, handle: str) -> Running:
    fields: dict[str, Any] = {"running": False} if LIST_ALL else {}
    return Running(backend_id, None, handle, backend_id, **fields)


LIST_ALL = "list_all" in dir(Executor) and "running" in attrs.fields_dict(Running)
"""Whether executors report what is left of exited backends (``list_all``), so
recovery can remove it.  Until they do, the simulator's no-leak invariant checks
running backends only."""


class SimEngines:
    """The simulated engines of a history (one or two ``SimExecutor`` s, each with
    its own faults); backend ids are unique across them."""

    def __init__(self, rng: random.Random, world: trio.Nursery, names: list[str]) -> None:
        self.engines = {
            name: SimExecutor(rng, world, port_base=20000 + 10000 * i)
            for i, name in enumerate(names)
        }

    def running(self) -> list[tuple[str, SimExecutor]]:
        """Every running backend with its engine, in a fixed order."""
        return sorted(
            ((b, e) for e in self.engines.values() for b in e.running), key=lambda x: x[0]
        )

    async def probe(self, address: str, *, interval: float = 0.01) -> None:
        """The readiness probe: the engine that runs ``address`` answers it."""
        for engine in self.engines.values():
            if any(s.address == address for s in engine.running.values()):
                await engine.probe(address, interval=interval)
                return
        await trio.sleep_forever()  # nothing runs there: never answers

    def heal(self) -> None:
        for engine in self.engines.values():
            engine.heal()

    def resources(self) -> dict[str, str]:
        held: dict[str, str] = {}
        for name, engine in self.engines.items():
            held.update({b: f"{how} on {name}" for b, how in engine.resources().items()})
        return held
