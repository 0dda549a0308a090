"""History that does not weigh: the supervisor holds live backends only; terminated
ones are read from the log (and its archives) when asked, and the backend list
pages over every backend through the backends index."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from plane.events.archive import archive_before, archive_paths
from plane.events.backend_index import index_path
from plane.events.sqlite import open_sqlite_store
from plane.events.store import EventStore
from plane.events.types import Status
from plane.testing.fake_executor import FakeExecutor
from tests.api.conftest import Api, api_error, open_api, spawn_body


async def _spawn_and_end(api: Api, names: list[str], ending: list[str]) -> dict[str, str]:
    ids = {name: (await api.connect(name))["backend_id"] for name in names}
    for name in ending:
        response = await api.client.post(f"/ctrl/b/{ids[name]}/hard-terminate")
        assert response.status_code == 200
    for name in ending:
        await api.wait_status(ids[name], Status.TERMINATED)
    return ids


async def _all_pages(api: Api, query: str = "", limit: int = 2) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = await api.client.get(f"/ctrl/backends?limit={limit}{query}{cursor}")
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["backends"]) <= limit
        seen += page["backends"]
        if page["next"] is None:
            return seen
        cursor = f"&cursor={page['next']}"


async def _check_history(api: Api, ids: dict[str, str], ended: list[str]) -> None:
    supervisor = api.supervisor
    gone = {ids[n] for n in ended}
    for _ in range(100):  # each actor ends right after its terminated event
        if not gone & (set(supervisor.states) | set(supervisor.actors)):
            break
        await trio.sleep(0.01)
    assert not gone & set(supervisor.states)
    assert not gone & set(supervisor.actors)
    assert not supervisor._locks
    assert not gone & set(api.metrics._statuses)
    live = [ids[n] for n in ids if n not in ended]
    assert set(supervisor.states) == set(live)
    for name in ended:
        bid = ids[name]
        detail = await api.client.get(f"/ctrl/b/{bid}")
        assert detail.status_code == 200 and detail.json()["state"] == "terminated"
        status = await api.client.get(f"/pub/b/{bid}/status")
        assert status.status_code == 200 and status.json()["status"] == "terminated"
        events = await api.client.get(f"/ctrl/b/{bid}/events")
        assert events.json()["events"][-1]["type"] == "backend.terminated.v1"
        stream = await api.client.get(f"/pub/b/{bid}/status-stream")
        assert stream.status_code == 200 and b"terminated" in stream.content
    # the list pages over every backend, in request order, each once
    listed = await _all_pages(api)
    assert [b["backend_id"] for b in listed] == [ids[n] for n in ids]
    assert [b["backend_id"] for b in await _all_pages(api, "&live=1")] == live
    ended_ids = [b["backend_id"] for b in await _all_pages(api, "&state=terminated", limit=1)]
    assert ended_ids == [ids[n] for n in ended]
    by_key = await _all_pages(api, f"&key={ended[0]}")
    assert [b["backend_id"] for b in by_key] == [ids[ended[0]]]
    assert await _all_pages(api, "&state=ready&key=" + ended[0]) == []
    info = (await api.client.get("/ctrl/info")).json()
    assert info["backends"] == len(ids) and info["live_backends"] == len(live)
    # an id a terminated backend used stays taken
    body = spawn_body("fresh")
    body["spawn_config"]["id"] = ids[ended[0]]
    taken = await api.client.post("/ctrl/connect", json=body)
    assert taken.status_code == 409 and api_error(taken)["kind"] == "BackendIdTaken"
    assert (await api.client.get("/ctrl/b/nosuchbackend")).status_code == 404
    assert (await api.client.get("/ctrl/b/_plane/events")).status_code == 404


NAMES = ["a", "b", "c", "d", "e", "f"]
ENDED = ["a", "c", "d", "f"]


async def test_terminated_backends_leave_memory_and_are_read_from_the_log() -> None:
    async with open_api() as api:
        ids = await _spawn_and_end(api, NAMES, ENDED)
        await _check_history(api, ids, ENDED)


async def test_sqlite_history_archives_index_and_restart(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    executor = FakeExecutor()  # kept across the restart: its backends keep running
    async with open_sqlite_store(log) as store:
        store_: EventStore = store
        async with open_api(store=store_, executor=executor) as api:
            ids = await _spawn_and_end(api, NAMES, ENDED[:2])
            assert len((await api.client.get("/ctrl/backends")).json()["backends"]) == 6
            assert index_path(log).exists()
            for name in ENDED[2:]:
                await api.client.post(f"/ctrl/b/{ids[name]}/hard-terminate")
            for name in ENDED[2:]:
                await api.wait_status(ids[name], Status.TERMINATED)
            # retention moves out two streams the index saw end and two it did not:
            # the list still holds every backend
            now = time.time()
            assert await archive_before(store, now + 1, now=now) == len(ENDED)
            assert archive_paths(log)
            await _check_history(api, ids, ENDED)
    # a rebuild from log + archives lists the same (the index is derived data)
    index_path(log).unlink()
    async with open_sqlite_store(log) as store, open_api(store=store, executor=executor) as api:
        assert set(api.supervisor.states) == {ids[n] for n in NAMES if n not in ENDED}
        assert api.supervisor.terminated_count == len(ENDED)
        await _check_history(api, ids, ENDED)
        # the key of an archived backend gets the next fencing token
        again = await api.connect("a")
        state = await api.supervisor.lookup(again["backend_id"])
        assert state.fencing_token == 2
    # an index of another log is rebuilt, not trusted
    other = tmp_path / "other" / "events.db"
    other.parent.mkdir()
    index_path(log).rename(index_path(other))
    async with open_sqlite_store(other) as store, open_api(store=store, executor=executor) as api:
        assert (await api.client.get("/ctrl/backends")).json()["backends"] == []
