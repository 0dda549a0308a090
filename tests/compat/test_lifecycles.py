"""Every answer of Plane's endpoints, across whole lifecycles, parses with Plane's
strict types (fake executor, trio's MockClock: minutes of timers in no real time).

Each lifecycle is followed through ``/pub/b/{id}/status-stream`` (every event,
its SSE ``id`` and the forward-only order checked) and ``/pub/b/{id}/status``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio
import trio.testing

from plane.testing.fake_executor import FakeExecutor
from tests.api.conftest import Api, open_api, spawn_body
from tests.compat.plane_types import (
    STATUS_ORDER,
    BackendStatus,
    BackendStatusStreamEntry,
    ConnectResponse,
    Health,
    StatusResponse,
    TerminationKind,
    TerminationReason,
    parse,
    parse_error,
)

B, R, K = BackendStatus, TerminationReason, TerminationKind


@attrs.define
class Follower:
    """Reads a backend's status stream to its end, parsing every event strictly."""

    api: Api
    backend_id: str
    entries: list[BackendStatusStreamEntry] = attrs.Factory(list)
    seen: dict[BackendStatus, trio.Event] = attrs.Factory(
        lambda: {status: trio.Event() for status in BackendStatus}
    )

    async def run(self) -> None:
        url = f"/pub/b/{self.backend_id}/status-stream"
        # no read timeout: under MockClock the stream waits minutes of mock time
        async with self.api.client.stream("GET", url, timeout=None) as response:
            assert response.status_code == 200
            event_id: str | None = None
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    entry = parse(BackendStatusStreamEntry, orjson.loads(line[5:]))
                    assert event_id == entry.status.value, "the SSE id is the status"
                    self.entries.append(entry)
                    self.seen[entry.status].set()
                    # the one-shot status agrees with the stream's latest
                    now = await self.api.client.get(f"/pub/b/{self.backend_id}/status")
                    current = parse(BackendStatusStreamEntry, now.json())
                    assert STATUS_ORDER.index(current.status) >= STATUS_ORDER.index(entry.status)

    @property
    def statuses(self) -> list[BackendStatus]:
        return [e.status for e in self.entries]

    def check_forward(self) -> None:
        order = [STATUS_ORDER.index(s) for s in self.statuses]
        assert order == sorted(set(order)), f"statuses must only move forward: {self.statuses}"
        times = [e.time for e in self.entries]
        assert times == sorted(times)
        for entry in self.entries[:-1]:
            assert entry.exit_error is None, "exit_error is only known once terminated"
        assert self.entries[-1].status is B.TERMINATED
        assert self.entries[-1].exit_error is not None


@asynccontextmanager
async def lifecycle(
    api: Api, body: dict[str, Any]
) -> AsyncIterator[tuple[ConnectResponse, Follower]]:
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 200, response.text
    connected = parse(ConnectResponse, response.json())
    assert connected.spawned and connected.status is B.SCHEDULED
    assert connected.drone == "local" and connected.secret_token  # its engine
    follower = Follower(api, connected.backend_id)
    with trio.fail_after(3600):  # mock time
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower.run)
            yield connected, follower
    follower.check_forward()
    final = parse(
        BackendStatusStreamEntry,
        (await api.client.get(f"/pub/b/{connected.backend_id}/status")).json(),
    )
    assert final == follower.entries[-1]


async def _terminate(api: Api, backend_id: str, kind: str) -> None:
    response = await api.client.post(f"/ctrl/b/{backend_id}/{kind}-terminate")
    assert response.status_code == 200 and response.json() is None  # Plane answers null


async def test_spawn_ready_soft_terminate(autojump_clock: trio.testing.MockClock) -> None:
    async with open_api() as api, lifecycle(api, spawn_body("soft")) as (connected, f):
        await f.seen[B.READY].wait()
        again = parse(
            ConnectResponse,
            (await api.client.post("/ctrl/connect", json=spawn_body("soft"))).json(),
        )
        assert not again.spawned and again.drone is None
        assert again.backend_id == connected.backend_id and again.status is B.READY
        await _terminate(api, connected.backend_id, "soft")
    assert f.statuses == [B.SCHEDULED, B.LOADING, B.WAITING, B.READY, B.TERMINATING, B.TERMINATED]
    end = f.entries[-1]
    assert (end.termination_reason, end.termination_kind, end.exit_error) == (
        R.EXTERNAL,
        K.SOFT,
        False,
    )
    assert f.entries[-2].termination_reason is R.EXTERNAL


async def test_spawn_ready_hard_terminate(autojump_clock: trio.testing.MockClock) -> None:
    async with open_api() as api, lifecycle(api, spawn_body("hard")) as (connected, f):
        await f.seen[B.READY].wait()
        await _terminate(api, connected.backend_id, "hard")
    assert f.statuses[-2:] == [B.HARD_TERMINATING, B.TERMINATED]
    end = f.entries[-1]
    assert (end.termination_reason, end.termination_kind) == (R.EXTERNAL, K.HARD)
    assert end.exit_error is True  # the kill's 137, as Plane reports it


async def test_soft_stop_ignored_escalates_to_hard(autojump_clock: trio.testing.MockClock) -> None:
    executor = FakeExecutor(stop_exit_code=None)
    body = spawn_body("stubborn", stop_grace_seconds=30)
    async with open_api(executor=executor) as api, lifecycle(api, body) as (connected, f):
        await f.seen[B.READY].wait()
        await _terminate(api, connected.backend_id, "soft")
    assert f.statuses[-3:] == [B.TERMINATING, B.HARD_TERMINATING, B.TERMINATED]
    assert f.entries[-1].termination_kind is K.HARD


async def test_idle_sweep(autojump_clock: trio.testing.MockClock) -> None:
    async with open_api() as api, lifecycle(api, spawn_body("idle", max_idle_seconds=60)) as (_, f):
        pass
    end = f.entries[-1]
    assert (end.termination_reason, end.termination_kind, end.exit_error) == (
        R.SWEPT,
        K.SOFT,
        False,
    )
    ready, terminated = f.entries[f.statuses.index(B.READY)], f.entries[-1]
    assert terminated.time - ready.time >= 60_000


async def test_lifetime_limit(autojump_clock: trio.testing.MockClock) -> None:
    body = spawn_body("life", lifetime_limit_seconds=120)
    async with open_api() as api, lifecycle(api, body) as (_, f):
        pass
    assert f.entries[-1].termination_reason is R.SWEPT
    assert f.entries[-1].time - f.entries[0].time >= 120_000


async def test_backend_exits_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    for code, error in ((0, False), (3, True)):
        async with open_api() as api, lifecycle(api, spawn_body(f"exit{code}")) as (connected, f):
            await f.seen[B.READY].wait()
            api.executor.exit(connected.backend_id, code)
        end = f.entries[-1]
        assert f.statuses[-2:] == [B.READY, B.TERMINATED]
        assert end.termination_reason is None and end.termination_kind is None
        assert end.exit_error is error


async def test_image_missing(autojump_clock: trio.testing.MockClock) -> None:
    executor = FakeExecutor(missing_images=frozenset({"gone:1"}))
    body = spawn_body("gone", executable={"image": "gone:1"})
    async with open_api(executor=executor) as api, lifecycle(api, body) as (_, f):
        pass
    assert f.statuses == [B.SCHEDULED, B.LOADING, B.TERMINATED]
    end = f.entries[-1]
    assert end.termination_reason is None and end.exit_error is True


async def test_start_timeout(autojump_clock: trio.testing.MockClock) -> None:
    executor = FakeExecutor(ready_after=None)  # never answers
    body = spawn_body("slow", start_timeout_seconds=30)
    async with open_api(executor=executor) as api, lifecycle(api, body) as (_, f):
        pass
    assert B.READY not in f.statuses
    assert f.statuses[-2:] == [B.HARD_TERMINATING, B.TERMINATED]
    end = f.entries[-1]
    assert (end.termination_reason, end.termination_kind) == (R.STARTUP_TIMEOUT, K.HARD)


async def test_refusals_status_and_health_parse(autojump_clock: trio.testing.MockClock) -> None:
    async with open_api() as api:
        await api.connect("held", tag="a")
        held = await api.client.post("/ctrl/connect", json=spawn_body("held", tag="b"))
        assert held.status_code == 409 and parse_error(held).kind == "KeyHeld"
        unheld = await api.client.post("/ctrl/connect", json={"key": {"name": "nobody"}})
        assert unheld.status_code == 409 and parse_error(unheld).kind == "KeyUnheldNoSpawnConfig"
        for method, path in (
            ("GET", "/pub/b/nope/status"),
            ("GET", "/pub/b/nope/status-stream"),
            ("POST", "/ctrl/b/nope/soft-terminate"),
            ("POST", "/ctrl/b/nope/hard-terminate"),
        ):
            missing = await api.client.request(method, path)
            assert missing.status_code == 404 and parse_error(missing).kind == "NotFound"
        bad = await api.client.post("/ctrl/connect", json={"key": {"name": 5}})
        error = parse_error(bad)
        assert bad.status_code == 400 and "key.name" in error.message
        ids = {parse_error(await api.client.get("/pub/b/nope/status")).id for _ in range(3)}
        assert len(ids) == 3, "every error has its own id"
        status = parse(StatusResponse, (await api.client.get("/ctrl/status")).json())
        assert status.version and status.hash
        parse(Health, (await api.client.get("/pub/health")).json())
