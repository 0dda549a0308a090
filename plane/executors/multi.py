"""The multi-engine executor: one executor per engine, routed by backend.

This module owns :class:`MultiExecutor`, the :class:`~plane.executors.base.Executor`
the actors and the API use when plane drives several engines (Plane's drones).
A start goes to ``StartSpec.engine``; every other call about a backend goes to
the engine the backend was placed on, which ``locate`` (the supervisor) knows
from the log.  Listing and watching fan out to every engine, and each
:class:`Running` is tagged with its engine.

A **lost** engine (``is_lost``) is not called: a start there fails at once
(transient, so the actor retries until its backend ends), and stop, kill and
remove succeed without doing anything, so a lost backend's actor can end; what
the engine still runs when it returns is removed by the supervisor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing

import attrs
import trio

from plane.events.spec import Executable
from plane.executors.base import (
    Executor,
    ExecutorError,
    ExitObserved,
    Running,
    Started,
    StartSpec,
)


class MultiExecutor:
    """Routes each call to one engine's executor; see the module docstring."""

    def __init__(
        self,
        engines: Mapping[str, Executor],
        *,
        locate: Callable[[str], str | None] = lambda _backend_id: None,
        is_lost: Callable[[str], bool] = lambda _engine: False,
    ) -> None:
        if not engines:
            raise ValueError("MultiExecutor needs at least one engine")
        self.engines = dict(engines)
        self.name = next(iter(self.engines.values())).name
        self.locate = locate
        self.is_lost = is_lost

    def engine(self, name: str) -> Executor:
        return self.engines[name]

    def _of(self, backend_id: str) -> Executor | None:
        """The executor of the backend's engine; None when that engine is lost or unknown."""
        name = self.locate(backend_id)
        if name is None or name not in self.engines or self.is_lost(name):
            return None
        return self.engines[name]

    def check(self, executable: Executable) -> None:
        for executor in self.engines.values():
            executor.check(executable)

    async def ping(self) -> None:
        for executor in self.engines.values():
            await executor.ping()

    async def start(self, spec: StartSpec) -> Started:
        executor = self.engines.get(spec.engine)
        if executor is None:
            raise ExecutorError(f"engine {spec.engine!r} is not configured")
        if self.is_lost(spec.engine):
            raise ExecutorError(f"engine {spec.engine!r} is lost")
        return await executor.start(spec)

    async def stop(self, backend_id: str) -> None:
        executor = self._of(backend_id)
        if executor is not None:
            await executor.stop(backend_id)

    async def kill(self, backend_id: str) -> None:
        executor = self._of(backend_id)
        if executor is not None:
            await executor.kill(backend_id)

    async def remove(self, backend_id: str) -> None:
        executor = self._of(backend_id)
        if executor is not None:
            await executor.remove(backend_id)

    async def list_engine(self, name: str, *, everything: bool = False) -> list[Running]:
        """What one engine runs (with ``everything``, all it holds of ours, running
        or not), each tagged with the engine."""
        executor = self.engines[name]
        found = await (executor.list_all() if everything else executor.list_running())
        return [attrs.evolve(r, engine=name) for r in found]

    async def list_running(self) -> list[Running]:
        found: list[Running] = []
        for name in self.engines:
            if not self.is_lost(name):
                found += await self.list_engine(name)
        return found

    async def list_all(self) -> list[Running]:
        found: list[Running] = []
        for name in self.engines:
            if not self.is_lost(name):
                found += await self.list_engine(name, everything=True)
        return found

    async def forget(self, backend_id: str) -> None:
        name = self.locate(backend_id)
        executor = self.engines.get(name) if name is not None else None
        if executor is not None:
            await executor.forget(backend_id)

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for executor in self.engines.values():
                await nursery.start(executor.serve_exits, send)
            task_status.started()

    async def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        name = self.locate(backend_id)
        executor = self.engines.get(name) if name is not None else None
        if executor is None:
            return
        async with aclosing(executor.logs(backend_id, follow=follow)) as chunks:
            async for chunk in chunks:
                yield chunk
