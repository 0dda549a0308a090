"""The proxy with a real Supervisor (in-memory store, fake executor pointing at the
test backend, real clock): routing from the API's tokens, and idle termination
driven by real connections through the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from trio_websocket import open_websocket_url

from plane.actors.backend import ExecutorPolicy
from plane.actors.clock import TrioClock
from plane.actors.supervisor import ConnectRequest, Supervisor
from plane.events.memory import MemoryEventStore, open_memory_store
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    BackendTerminated,
    ConnectionClosed,
    ConnectionOpened,
    Status,
    TerminationReason,
)
from plane.executors.base import Started, StartSpec
from plane.proxy import ProxyContext, ProxySettings, serve_proxy
from plane.testing.fake_executor import FakeExecutor

from .backend import TestBackend
from .client import HttpClient, get
from .conftest import eventually


class BackendAtAddress(FakeExecutor):
    """The fake executor, but every backend it 'starts' is the test backend."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    async def start(self, spec: StartSpec) -> Started:
        started = await super().start(spec)
        started = Started(spec.backend_id, self.address, started.handle)
        self.running[spec.backend_id] = started
        return started


@attrs.define
class World:
    supervisor: Supervisor
    store: MemoryEventStore
    backend: TestBackend
    port: int

    async def status_becomes(self, backend_id: str, status: Status, limit: float) -> float:
        """Wait for ``status``; returns when (trio time) it was seen."""
        seen: dict[str, Status | None] = {}
        self.supervisor.observers.append(lambda s, _: seen.update({s.backend_id: s.status}))
        states = self.supervisor.states
        await eventually(
            lambda: (
                (seen[backend_id] if backend_id in seen else states[backend_id].status) is status
            ),
            limit,
        )
        return trio.current_time()


@asynccontextmanager
async def open_world() -> AsyncIterator[World]:
    async with open_memory_store() as store, trio.open_nursery() as nursery:
        backend = TestBackend()
        await nursery.start(backend.serve)
        executor = BackendAtAddress(backend.address)
        clock = TrioClock()
        supervisor = Supervisor(
            store, executor, clock=clock, policy=ExecutorPolicy(probe=executor.probe)
        )
        await nursery.start(supervisor.serve)
        ctx = ProxyContext(store, supervisor.tell, clock, None, ProxySettings())
        port = await nursery.start(serve_proxy, ctx, "127.0.0.1", 0)
        yield World(supervisor, store, backend, port)
        nursery.cancel_scope.cancel()


def connect_request(name: str, max_idle: float | None = None) -> ConnectRequest:
    config = SpawnConfig(Executable(image="app:1"), max_idle_seconds=max_idle)
    return ConnectRequest(
        key=BackendKey(name), spawn_config=config, user="ann", auth='{"plan":"pro"}'
    )


async def test_a_token_from_connect_routes_through_the_proxy() -> None:
    async with open_world() as w:
        result = await w.supervisor.connect(connect_request("room-1"))
        # Sent at once: the request waits for the backend to become ready.
        r = await get(w.port, f"/{result.token}/hello")
        assert r.status == 200
        assert r.header("x-plane-backend-id") == result.backend_id
        headers = dict(map(tuple, r.json()["headers"]))
        assert headers["x-verified-username"] == "ann"
        assert headers["x-verified-user-data"] == '{"plan":"pro"}'
        assert headers["x-verified-secret"] == result.secret_token
        await w.supervisor.revoke(result.backend_id)
        with trio.fail_after(2):
            while True:
                if (await get(w.port, f"/{result.token}/")).status == 410:
                    break
                await trio.sleep(0.01)


async def test_an_open_websocket_keeps_the_backend_alive_then_idle_ends_it() -> None:
    async with open_world() as w:
        result = await w.supervisor.connect(connect_request("room-ws", max_idle=1.0))
        backend_id = result.backend_id
        await w.status_becomes(backend_id, Status.READY, limit=5)
        url = f"ws://127.0.0.1:{w.port}/{result.token}/ws"
        async with open_websocket_url(url) as ws:
            for _ in range(5):  # 2.5 s, well past max_idle, with the socket open
                await ws.send_message("ping")
                assert await ws.get_message() == "ping"
                await trio.sleep(0.5)
            state = w.supervisor.states[backend_id]
            assert state.status is Status.READY
            assert len(state.connections) == 1
        closed_at = await w.status_becomes(backend_id, Status.IDLE, limit=3)
        ended_at = await w.status_becomes(backend_id, Status.TERMINATED, limit=5)
        assert 0.8 <= ended_at - closed_at <= 2.5
        events = [r.event for r in await w.store.read_stream(backend_id)]
        kinds = [type(e) for e in events]
        assert kinds.index(ConnectionOpened) < kinds.index(ConnectionClosed)
        terminated = events[-1]
        assert isinstance(terminated, BackendTerminated)
        assert terminated.reason is TerminationReason.IDLE
        # And the proxy refuses its token from then on.
        r = await get(w.port, f"/{result.token}/")
        assert r.status == 410 and r.kind() == "BackendTerminated"


async def test_plain_requests_keep_the_backend_alive() -> None:
    async with open_world() as w:
        result = await w.supervisor.connect(connect_request("room-http", max_idle=1.5))
        backend_id = result.backend_id
        await w.status_becomes(backend_id, Status.READY, limit=5)
        async with await HttpClient.connect(w.port) as client:
            for i in range(8):  # 2.8 s of activity every 0.35 s
                assert (await client.request("GET", f"/{result.token}/{i}")).status == 200
                await trio.sleep(0.35)
        assert w.supervisor.states[backend_id].status is Status.READY
        await w.status_becomes(backend_id, Status.TERMINATED, limit=6)
