"""plane.client.AsyncClient against a real ``plane serve --executor process``,
each test under trio and under asyncio."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from plane.client import (
    AsyncClient,
    BackendStatus,
    BackendTerminated,
    KeyUnheldNoSpawnConfig,
    NotFound,
    Status,
    TerminationReason,
)
from plane.testing.serve_process import PlaneServe
from tests.client.conftest import API_KEY, COMMAND
from tests.client.relay import Relay

FORWARD = list(Status)


@pytest.fixture(params=["trio", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Runs an async test body under the parametrized event loop."""

    def runner(body: Callable[[], Awaitable[None]]) -> None:
        anyio.run(body, backend=request.param)

    return runner


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_every_method(plane: PlaneServe, run: Callable[..., None]) -> None:
    async def body() -> None:
        key = unique("room")
        async with AsyncClient(plane.urls["api"], API_KEY) as api:
            conn = await api.connect(key, command=COMMAND, env={"GREETING": "hey"}, wait=True)
            assert conn.spawned and conn.status is Status.READY
            async with httpx.AsyncClient(timeout=10) as browser:
                assert (await browser.get(conn.url)).json()["env"]["GREETING"] == "hey"
            again = await api.connect(key)
            assert again.backend_id == conn.backend_id and not again.spawned
            assert (await api.wait_ready(conn.backend_id, timeout=30)).status is Status.READY
            assert (await api.status(conn.backend_id)).status is Status.READY
            detail = await api.backend(conn.backend_id)
            assert detail.key is not None and detail.key.name == key
            listed = [b.backend_id async for b in api.backends(live=True, key=key, page_size=1)]
            assert listed == [conn.backend_id]
            assert any([line async for line in api.logs(conn.backend_id)])
            events = [e async for e in api.events()]
            assert any(e.stream == conn.backend_id for e in events)
            later = [e.seq async for e in api.events(after=events[-2].seq)]
            assert later == [events[-1].seq]
            await api.revoke(conn.backend_id)
            await api.soft_terminate(conn.backend_id)
            seen = [s.status async for s in api.status_stream(conn.backend_id)]
            assert seen[-1] is Status.TERMINATED and len(set(seen)) == len(seen)
            final = await api.status(conn.backend_id)
            assert final.termination_reason is TerminationReason.EXTERNAL
            other = await api.connect(unique("hard"), command=COMMAND, wait=True)
            await api.hard_terminate(other.backend_id)
            async with contextlib.aclosing(api.status_stream(other.backend_id)) as stream:
                assert [s.status async for s in stream][-1] is Status.TERMINATED
            with pytest.raises(NotFound):
                await api.status("no-such-backend")
            with pytest.raises(KeyUnheldNoSpawnConfig):
                await api.connect(unique("nobody"))

    run(body)


def test_the_status_stream_survives_a_dropped_connection(
    plane: PlaneServe, run: Callable[..., None]
) -> None:
    api_address = urlsplit(plane.urls["api"])
    relay = Relay((api_address.hostname or "127.0.0.1", api_address.port or 80))

    async def body() -> None:
        async with (
            AsyncClient(plane.urls["api"], API_KEY) as direct,
            AsyncClient(relay.url, API_KEY, backoff=0.05) as through,
        ):
            conn = await direct.connect(unique("drop"), command=COMMAND)
            seen: list[Status] = []
            async with contextlib.aclosing(through.status_stream(conn.backend_id)) as stream:
                entry: BackendStatus
                async for entry in stream:
                    seen.append(entry.status)
                    if entry.status is Status.READY:
                        relay.cut()
                        await direct.hard_terminate(conn.backend_id)
            assert relay.accepted >= 2, "the stream was reopened"
            assert seen[-1] is Status.TERMINATED and Status.READY in seen
            assert seen == sorted(seen, key=FORWARD.index) and len(set(seen)) == len(seen)

    try:
        run(body)
    finally:
        relay.close()


def test_a_failed_start_raises_with_the_reason_and_timeouts_are_exact(
    plane: PlaneServe, run: Callable[..., None]
) -> None:
    async def body() -> None:
        async with AsyncClient(plane.urls["api"], API_KEY) as api:
            with pytest.raises(BackendTerminated) as caught:
                await api.connect(unique("doomed"), command=[*COMMAND, "--exit", "3"], wait=True)
            assert caught.value.exit_error and caught.value.detail is not None
            assert caught.value.detail.reason == "exited"
            never = [sys.executable, "-c", "import time; time.sleep(60)"]
            conn = await api.connect(unique("slow"), command=never)
            with pytest.raises(TimeoutError):
                await api.wait_ready(conn.backend_id, timeout=0.5)
            await api.hard_terminate(conn.backend_id)

    run(body)
