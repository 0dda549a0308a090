"""A full disk is survived: a real ``plane serve --executor process`` whose data
directory is on a real 2 MB tmpfs, driven into a full disk (a filler file) and
back (the filler deleted), without a restart.

While full: a new connect, a connect to an existing key and a terminate answer
503 ``LogUnavailable``; reads and status answer; the proxy relays an
established WebSocket, opens a new one and serves HTTP on a route it knows;
an idle timeout fires but is neither recorded nor acted on.  Once space is
freed plane carries on by itself within a few seconds: the idle backend is
terminated (recorded with the time its timer fired), the connection events and
activity seen while full are in the log exactly once, the writes refused before
succeed now.  After a clean stop (exit 0) the log passes ``PRAGMA
integrity_check`` and ``plane-replay verify``.

The backends are the notepad example with their output sent to /dev/null (a
backend's own logging on a full disk is not what is tested here).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from plane.events.sqlite import read_log
from plane.events.types import (
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    HttpActivityRecorded,
    TerminationReason,
)
from plane.testing.serve_process import PlaneServe
from replay.verify import verify_log

from ..sqlite_files import integrity_ok
from ..tmpfs import fill, mounted_tmpfs
from .test_crash_recovery import labelled_pids

pytestmark = pytest.mark.slow

NOTEPAD = Path(__file__).resolve().parents[2] / "examples" / "notepad" / "app.py"
IDLE_SECONDS = 4
FEW_SECONDS = 10.0
"""How long plane may take to carry on once space is freed (it retries each
second at most; the rest is slack for a loaded machine)."""


def notepad(name: str, **spawn: Any) -> dict[str, Any]:
    command = ["/bin/sh", "-c", 'exec "$0" "$@" >/dev/null 2>&1', sys.executable, str(NOTEPAD)]
    executable = {"command": command, "env": {"HOST": "127.0.0.1"}}
    config = {"executable": executable, "max_idle_seconds": 600, **spawn}
    return {"key": {"name": name}, "spawn_config": config}


def ws_url(url: str) -> str:
    assert url.startswith("http://") and url.endswith("/"), url
    return "ws://" + url.removeprefix("http://") + "ws"


def assert_log_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["kind"] == "LogUnavailable" and body["id"], body
    assert "full" in body["message"], body


async def status_of(api: httpx.AsyncClient, backend_id: str) -> str:
    response = await api.get(f"/pub/b/{backend_id}/status")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def wait_status(
    api: httpx.AsyncClient, backend_id: str, wanted: str, limit: float = 30.0
) -> float:
    """Wait until the backend's Plane status is ``wanted``; returns how long it took."""
    began = time.monotonic()
    status = ""
    with trio.move_on_after(limit):
        while True:
            status = await status_of(api, backend_id)
            if status == wanted:
                return time.monotonic() - began
            await trio.sleep(0.1)
    pytest.fail(f"{backend_id} is {status}, not {wanted}, after {limit} s")


async def connect(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post("/ctrl/connect", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def state_where(ws: WebSocketConnection, check: Callable[[dict[str, Any]], bool]) -> None:
    with trio.fail_after(10):
        while not check(orjson.loads(await ws.get_message())):
            pass


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


@pytest.fixture
def plane(small_disk: Path, tmp_path: Path) -> Iterator[PlaneServe]:
    data = small_disk / "data"
    serve = PlaneServe(data, "process", log_path=tmp_path / "serve.log")
    try:
        yield serve
    finally:
        serve.stop()
        for pid in labelled_pids(str((data / "logs").resolve())).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 9)


async def test_plane_serve_survives_a_full_disk_and_resumes_by_itself(
    plane: PlaneServe, small_disk: Path
) -> None:
    async with httpx.AsyncClient(base_url=plane.urls["api"], timeout=30) as api:
        held = await connect(api, notepad("held"))
        ending = await connect(api, notepad("ending"))
        for backend in (held, ending):
            await wait_status(api, backend["backend_id"], "ready")
        async with open_websocket_url(ws_url(held["url"])) as established:
            await state_where(established, lambda m: m["type"] == "state")
            idle = await connect(api, notepad("idle", max_idle_seconds=IDLE_SECONDS))
            await wait_status(api, idle["backend_id"], "ready")
            filler = fill(small_disk)

            # ---- full: what needs a write is refused, nothing else is
            assert_log_unavailable(await api.post("/ctrl/connect", json=notepad("new")))
            assert_log_unavailable(await api.post("/ctrl/connect", json=notepad("held")))
            terminate = f"/ctrl/b/{ending['backend_id']}/soft-terminate"
            assert_log_unavailable(await api.post(terminate))
            for path in ("/ctrl/backends", "/ctrl/status", f"/ctrl/b/{held['backend_id']}"):
                assert (await api.get(path)).status_code == 200, path
            # the proxy relays the established connection, opens a new one, serves HTTP
            await established.send_message(
                orjson.dumps({"type": "set", "text": "while full"}).decode()
            )
            await state_where(established, lambda m: m["text"] == "while full")
            async with open_websocket_url(ws_url(held["url"])) as opened_while_full:
                await state_where(opened_while_full, lambda m: m["text"] == "while full")
            async with httpx.AsyncClient(timeout=10) as http:
                page = await http.get(held["url"] + "state")
                assert page.status_code == 200 and page.json()["text"] == "while full"
            # the idle timeout fires while full: not recorded, so not acted on
            await trio.sleep(IDLE_SECONDS + 2)
            assert await status_of(api, idle["backend_id"]) == "ready"
            assert await status_of(api, ending["backend_id"]) == "ready"
            assert plane.process.poll() is None, "plane serve exited"

            # ---- space freed: plane carries on by itself
            filler.unlink()
            took = await wait_status(api, idle["backend_id"], "terminated", limit=FEW_SECONDS)
            assert took < FEW_SECONDS
            fresh = await connect(api, notepad("new"))
            again = await connect(api, notepad("held"))
            assert again["backend_id"] == held["backend_id"] and not again["spawned"]
            assert (await api.post(terminate)).status_code == 200
            await wait_status(api, ending["backend_id"], "terminated")
            await wait_status(api, fresh["backend_id"], "ready")
            await established.send_message(orjson.dumps({"type": "set", "text": "after"}).decode())
            await state_where(established, lambda m: m["text"] == "after")
        # the established connection's close is recorded too
        await trio.sleep(1)
    assert plane.stop() == 0, plane.log_path.read_text()

    log = plane.data_dir / "events.db"
    assert integrity_ok(log)
    report = verify_log(log, jobs=1)
    assert report.ok, report.violations[:3]
    records = list(read_log(log))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    streams: dict[str, list[Any]] = {}
    for record in records:
        streams.setdefault(record.stream, []).append(record.event)
    held_events = streams[held["backend_id"]]
    opened = [e.connection_id for e in held_events if isinstance(e, ConnectionOpened)]
    closed = [e.connection_id for e in held_events if isinstance(e, ConnectionClosed)]
    assert len(opened) == len(set(opened)) == 2, opened  # each once, none lost
    assert sorted(closed) == sorted(opened), (opened, closed)
    assert any(isinstance(e, HttpActivityRecorded) for e in held_events)
    times = [e.at for e in held_events]
    assert times == sorted(times)
    (terminating,) = [e for e in streams[idle["backend_id"]] if isinstance(e, BackendTerminating)]
    assert terminating.reason is TerminationReason.IDLE
    ready_at = max(e.at for e in streams[idle["backend_id"]] if type(e).__name__ == "BackendReady")
    assert terminating.at == pytest.approx(ready_at + IDLE_SECONDS, abs=1.0), (
        "recorded with the time the timer fired, not when space came back"
    )
    assert "new" in {
        e.key.name for e in streams[fresh["backend_id"]] if type(e).__name__ == "BackendRequested"
    }
