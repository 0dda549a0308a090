"""Fixtures for shell tests: a supervisor over an in-memory store and the fake executor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from plane.actors.backend import ExecutorPolicy
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import ConnectRequest, Supervisor, UnknownBackend
from plane.events.memory import open_memory_store
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.store import EventStore
from plane.events.types import Event, Status
from plane.testing.fake_executor import FakeExecutor

EPOCH = 1_700_000_000.0


@attrs.define
class Harness:
    supervisor: Supervisor
    executor: FakeExecutor
    store: EventStore

    async def events(self, backend_id: str) -> list[Event]:
        return [r.event for r in await self.store.read_stream(backend_id)]

    async def wait_for(
        self, backend_id: str, check: Callable[[BackendState], bool], limit: float = 10_000
    ) -> BackendState:
        """Wait (without polling) until the backend's state satisfies ``check``."""
        changed = trio.Event()

        def observe(state: BackendState, events: list[Event]) -> None:
            changed.set()

        self.supervisor.observers.append(observe)
        try:
            with trio.fail_after(limit):
                while True:
                    try:  # from memory while held, else from the log (terminated, dropped)
                        state: BackendState | None = await self.supervisor.lookup(backend_id)
                    except UnknownBackend:
                        state = None
                    if state is not None and check(state):
                        return state
                    await changed.wait()
                    changed = trio.Event()
        finally:
            self.supervisor.observers.remove(observe)

    async def wait_status(self, backend_id: str, status: Status) -> BackendState:
        return await self.wait_for(backend_id, lambda s: s.status is status)


def spawn(**changes: Any) -> SpawnConfig:
    return attrs.evolve(SpawnConfig(Executable(image="app:1")), **changes)


def request(name: str = "room", tag: str = "", **changes: Any) -> ConnectRequest:
    return ConnectRequest(key=BackendKey(name=name, tag=tag), spawn_config=spawn(**changes))


@asynccontextmanager
async def open_harness(
    store: EventStore | None = None,
    executor: FakeExecutor | None = None,
    **supervisor_args: Any,
) -> AsyncIterator[Harness]:
    executor = executor or FakeExecutor()
    async with open_memory_store() as memory:
        store = store or memory
        supervisor = Supervisor(
            store,
            executor,
            clock=TrioClock(offset=EPOCH),
            **{"policy": ExecutorPolicy(probe=executor.probe), **supervisor_args},
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.serve)
            yield Harness(supervisor, executor, store)
            nursery.cancel_scope.cancel()
