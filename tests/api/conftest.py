"""Fixtures for API tests: the API on a real socket over a supervisor, the in-memory
store and the fake executor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import httpx
import orjson
import pytest
import trio

from plane.actors.backend import ExecutorPolicy
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import Supervisor, UnknownBackend
from plane.api.app import ApiContext, serve_api
from plane.api.keys import ApiKeys
from plane.client._transport import close_stream
from plane.events.memory import open_memory_store
from plane.events.store import EventStore
from plane.events.types import Status
from plane.metrics import Metrics
from plane.testing.fake_executor import FakeExecutor

PROXY_URL = "http://proxy.test:9090"
API_URL = "http://api.test:8080"
API_KEY = "test-key-0123456789"


def api_error(body: bytes | httpx.Response) -> dict[str, str]:
    """Plane's ApiError body, checked for its exact shape: {"id", "kind", "message"}."""
    data = orjson.loads(body if isinstance(body, bytes) else body.content)
    assert set(data) == {"id", "kind", "message"}, data
    assert isinstance(data["id"], str) and data["id"], data
    assert isinstance(data["kind"], str) and isinstance(data["message"], str), data
    error: dict[str, str] = data
    return error


def spawn_body(name: str = "room", tag: str = "", **spawn: Any) -> dict[str, Any]:
    """A Plane connect body for ``name`` with a spawn config."""
    executable = {"image": "app:1", "env": {"SECRET": "hunter2"}}
    executable.update(spawn.pop("executable", {}))
    return {
        "key": {"name": name, "namespace": "", "tag": tag},
        "spawn_config": {"executable": executable, **spawn},
    }


@attrs.define
class Api:
    supervisor: Supervisor
    executor: FakeExecutor
    store: EventStore
    metrics: Metrics
    ctx: ApiContext
    port: int
    client: httpx.AsyncClient

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self, name: str = "room", **spawn: Any) -> dict[str, Any]:
        response = await self.client.post("/ctrl/connect", json=spawn_body(name, **spawn))
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def wait_for(
        self, backend_id: str, check: Callable[[BackendState], bool], limit: float = 5.0
    ) -> BackendState:
        with trio.fail_after(limit):
            while True:
                try:  # from memory while held, else from the log (terminated, dropped)
                    state = await self.supervisor.lookup(backend_id)
                except UnknownBackend:
                    state = None
                if state is not None and check(state):
                    return state
                await trio.sleep(0.002)

    async def wait_status(self, backend_id: str, status: Status) -> BackendState:
        return await self.wait_for(backend_id, lambda s: s.status is status)


@asynccontextmanager
async def open_api(
    *,
    executor: FakeExecutor | None = None,
    api_key: str | None = API_KEY,
    keepalive_seconds: float = 15.0,
    max_body_bytes: int = 65536,
    header_timeout_seconds: float = 10.0,
    store: EventStore | None = None,
    **supervisor_args: Any,
) -> AsyncIterator[Api]:
    executor = executor or FakeExecutor()
    async with open_memory_store() as memory:
        store = store or memory
        metrics = Metrics()
        supervisor = Supervisor(
            store,
            executor,
            clock=TrioClock(),
            policy=ExecutorPolicy(probe=executor.probe),
            **supervisor_args,
        )
        supervisor.observers.append(metrics.observe_backend)
        ctx = ApiContext(
            supervisor=supervisor,
            store=store,
            executor=executor,
            metrics=metrics,
            public_proxy_url=PROXY_URL,
            public_api_url=API_URL + "/",
            keys=ApiKeys(full=api_key),
            max_body_bytes=max_body_bytes,
            keepalive_seconds=keepalive_seconds,
            header_timeout_seconds=header_timeout_seconds,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.serve)
            port = await nursery.start(serve_api, ctx, "127.0.0.1", 0)
            headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10.0
            ) as client:
                yield Api(supervisor, executor, store, metrics, ctx, port, client)
            nursery.cancel_scope.cancel()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api() as harness:
        yield harness


# ------------------------------------------------------------- raw HTTP


class RawClient:
    """An h11 client on one connection, for keep-alive and framing tests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def response(self) -> tuple[h11.Response, bytes]:
        head: h11.Response | None = None
        body: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, b"".join(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("connection closed before the response ended")

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> tuple[h11.Response, bytes]:
        all_headers = [("host", "127.0.0.1"), *(headers or [])]
        if body:
            all_headers.append(("content-length", str(len(body))))
        await self.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        result = await self.response()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return result


@asynccontextmanager
async def open_raw(port: int) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield RawClient(stream)


@asynccontextmanager
async def lines_of(response: httpx.Response) -> AsyncIterator[AsyncIterator[str]]:
    """``response.aiter_lines()``, closed with the response on leaving (read to
    its end or not: plane.client's ``close_stream``)."""
    lines = response.aiter_lines()
    try:
        yield lines
    finally:
        await close_stream(response, lines)


async def sse_events(lines: AsyncIterator[str], count: int | None = None) -> list[dict[str, Any]]:
    """Parse SSE lines into events ``{"id", "data", "comments"}`` until ``count`` events
    (or the end of the stream); a numeric id becomes an int."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if "data" in current:
                events.append(current)
                current = {}
                if count is not None and len(events) >= count:
                    break
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            current["data"] = orjson.loads(value)
        elif field == "id":
            current["id"] = int(value) if value.isdigit() else value
        else:
            current[field] = value
    return events
