"""The status stream (SSE), the global event log (SSE and WebSocket)."""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio_websocket

from plane.events.types import ConnectionClosed, ConnectionOpened, Status
from plane.testing.fake_executor import FakeExecutor
from tests.api.conftest import API_KEY, Api, lines_of, open_api, sse_events
from tests.rawsocket import raw_exchange


async def _status_events(
    api: Api, backend_id: str, *, last_event_id: int | str | None = None, count: int | None = None
) -> list[dict[str, Any]]:
    headers = {"last-event-id": str(last_event_id)} if last_event_id is not None else {}
    url = f"/pub/b/{backend_id}/status-stream"
    async with api.client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        async with lines_of(response) as lines:
            return await sse_events(lines, count)


async def test_status_stream_replays_history_then_follows_until_terminated() -> None:
    executor = FakeExecutor(ready_after=None)
    async with open_api(executor=executor) as api:
        backend_id = (await api.connect())["backend_id"]
        await api.wait_status(backend_id, Status.STARTING)
        received: list[dict[str, Any]] = []

        async def read() -> None:
            received.extend(await _status_events(api, backend_id))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await api.wait_for(backend_id, lambda s: s.address is not None)
                executor.make_ready(backend_id)
                await api.wait_status(backend_id, Status.READY)
                await api.client.post(f"/ctrl/b/{backend_id}/soft-terminate")
            # the stream ended by itself after terminated
        statuses = [e["data"]["status"] for e in received]
        assert statuses == ["scheduled", "loading", "waiting", "ready", "terminating", "terminated"]
        # Plane's SSE id is the status itself
        assert [e["id"] for e in received] == statuses
        assert received[-1]["data"]["termination_reason"] == "external"
        assert received[-1]["data"]["termination_kind"] == "soft"
        times = [e["data"]["time"] for e in received]
        assert times == sorted(times)


async def test_ready_and_idle_are_one_plane_status() -> None:
    async with open_api() as api:
        backend_id = (await api.connect())["backend_id"]
        await api.wait_status(backend_id, Status.READY)
        api.supervisor.tell(backend_id, ConnectionOpened(api.supervisor.clock.now(), "c1"))
        api.supervisor.tell(backend_id, ConnectionClosed(api.supervisor.clock.now(), "c1"))
        await api.wait_status(backend_id, Status.IDLE)
        api.supervisor.tell(backend_id, ConnectionOpened(api.supervisor.clock.now(), "c2"))
        await api.wait_status(backend_id, Status.READY)
        await api.client.post(f"/ctrl/b/{backend_id}/hard-terminate")
        await api.wait_status(backend_id, Status.TERMINATED)
        with trio.fail_after(5):
            events = await _status_events(api, backend_id)
        statuses = [e["data"]["status"] for e in events]
        assert statuses.count("ready") == 1
        assert statuses[-2:] == ["hard-terminating", "terminated"]


async def test_reconnecting_with_last_event_id_loses_and_repeats_nothing() -> None:
    executor = FakeExecutor(ready_after=None)
    async with open_api(executor=executor) as api:
        backend_id = (await api.connect())["backend_id"]
        await api.wait_for(backend_id, lambda s: s.address is not None)
        # first connection: history so far (scheduled, loading, waiting), then it drops
        first = await _status_events(api, backend_id, count=2)
        assert [e["data"]["status"] for e in first] == ["scheduled", "loading"]
        # while disconnected: ready
        executor.make_ready(backend_id)
        await api.wait_status(backend_id, Status.READY)
        second: list[dict[str, Any]] = []

        async def resume() -> None:
            second.extend(await _status_events(api, backend_id, last_event_id=first[-1]["id"]))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume)
                await trio.sleep(0.05)  # the resumed stream is now following live
                await api.client.post(f"/ctrl/b/{backend_id}/hard-terminate")
        assert [e["data"]["status"] for e in second] == [
            "waiting",
            "ready",
            "hard-terminating",
            "terminated",
        ]
        whole = await _status_events(api, backend_id)
        assert first + second == whole
        # resuming after the last event of a terminated backend: 204, stop reconnecting
        response = await api.client.get(
            f"/pub/b/{backend_id}/status-stream", headers={"last-event-id": "terminated"}
        )
        assert response.status_code == 204
        # resuming from any status in the middle gives exactly the rest
        for i, event in enumerate(whole[:-1]):
            rest = await _status_events(api, backend_id, last_event_id=event["id"])
            assert rest == whole[i + 1 :]
        # a status this backend never had still skips everything up to it, as Plane does
        rest = await _status_events(api, backend_id, last_event_id="starting")
        assert [e["data"]["status"] for e in rest] == [
            "waiting",
            "ready",
            "hard-terminating",
            "terminated",
        ]


async def test_numeric_last_event_id_is_a_stream_version() -> None:
    async with open_api() as api:
        backend_id = (await api.connect())["backend_id"]
        await api.client.post(f"/ctrl/b/{backend_id}/hard-terminate")
        await api.wait_status(backend_id, Status.TERMINATED)
        whole = await _status_events(api, backend_id)
        records = await api.store.read_stream(backend_id)
        # after version 1 (the request): everything but "scheduled"
        rest = await _status_events(api, backend_id, last_event_id=1)
        assert rest == whole[1:]
        last = records[-1].version
        response = await api.client.get(
            f"/pub/b/{backend_id}/status-stream", headers={"last-event-id": str(last)}
        )
        assert response.status_code == 204


async def test_status_stream_sends_keep_alive_comments() -> None:
    async with open_api(executor=FakeExecutor(ready_after=None), keepalive_seconds=0.05) as api:
        backend_id = (await api.connect())["backend_id"]
        url = f"/pub/b/{backend_id}/status-stream"
        keepalives = 0
        with trio.fail_after(5):
            async with api.client.stream("GET", url) as response, lines_of(response) as lines:
                async for line in lines:
                    if line == ": keep-alive":
                        keepalives += 1
                        if keepalives == 3:
                            break
        assert keepalives == 3


async def test_status_stream_client_leaving_ends_the_server_side() -> None:
    async with open_api(executor=FakeExecutor(ready_after=None)) as api:
        backend_id = (await api.connect())["backend_id"]
        await _status_events(api, backend_id, count=1)
        await trio.sleep(0.05)
        before = trio.lowlevel.current_statistics().tasks_living
        for _ in range(20):
            await _status_events(api, backend_id, count=1)
        # nothing leaks: each stream's tasks end once its client is gone
        await trio.sleep(0.05)
        assert trio.lowlevel.current_statistics().tasks_living <= before


async def test_bad_last_event_id_is_400(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    response = await api.client.get(
        f"/pub/b/{backend_id}/status-stream", headers={"last-event-id": "abc"}
    )
    assert response.status_code == 400


# ---------------------------------------------------------- global log


async def _global_sse(
    api: Api, query: str, count: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    async with api.client.stream("GET", f"/ctrl/events{query}", headers=headers) as response:
        assert response.status_code == 200
        async with lines_of(response) as lines:
            return await sse_events(lines, count)


async def test_global_events_sse_from_a_seq_following_live(api: Api) -> None:
    a = (await api.connect("a"))["backend_id"]
    await api.wait_status(a, Status.READY)
    last = await api.store.last_seq()
    received: list[dict[str, Any]] = []

    async def read() -> None:
        received.extend(await _global_sse(api, "?after=2", last - 2 + 2))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(0.05)
            await api.connect("b")  # two more events: requested, token issued
    assert [e["id"] for e in received] == list(range(3, last + 3))
    assert all(e["id"] == e["data"]["seq"] for e in received)
    assert received[-2]["data"]["type"] == "backend.requested.v1"
    assert received[-2]["data"]["data"]["key"]["name"] == "b"


async def test_global_events_resume_with_last_event_id(api: Api) -> None:
    await api.connect("a")
    events = await _global_sse(api, "?after=0", 2, headers={"last-event-id": "1"})
    assert [e["id"] for e in events] == [2, 3]


async def test_global_events_without_follow_end(api: Api) -> None:
    backend_id = (await api.connect("a"))["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    last = await api.store.last_seq()
    events = await _global_sse(api, "?after=1&follow=0", 1000)
    assert [e["id"] for e in events] == list(range(2, last + 1))


async def test_global_events_keep_alive() -> None:
    """An idle global event stream is kept alive with comments, and stays open."""
    async with open_api(keepalive_seconds=0.05) as api:
        lines: list[str] = []
        with trio.fail_after(5):
            async with api.client.stream("GET", "/ctrl/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async with lines_of(response) as received:
                    async for line in received:
                        lines.append(line)
                        if lines.count(": keep-alive") == 3:
                            break
    # The loop ended because three keep-alives came, not because the stream ended.
    assert lines.count(": keep-alive") == 3, lines


async def test_websocket_feed_from_a_seq_following_live(api: Api) -> None:
    backend_id = (await api.connect("a"))["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    last = await api.store.last_seq()
    url = f"ws://127.0.0.1:{api.port}/ctrl/events?after=1"
    auth = [(b"authorization", f"Bearer {API_KEY}".encode())]
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url, extra_headers=auth) as ws:
            history = [orjson.loads(await ws.get_message()) for _ in range(last - 1)]
            assert [m["seq"] for m in history] == list(range(2, last + 1))
            assert {"seq", "stream", "version", "type", "data"} <= set(history[0])
            await api.client.post(f"/ctrl/b/{backend_id}/hard-terminate")
            live = orjson.loads(await ws.get_message())
            assert live["seq"] == last + 1
            assert live["type"] == "api.termination_requested.v1"


async def test_websocket_feed_needs_the_key(api: Api) -> None:
    url = f"ws://127.0.0.1:{api.port}/ctrl/events"
    try:
        async with trio_websocket.open_websocket_url(url):
            raise AssertionError("connected without a key")
    except trio_websocket.ConnectionRejected as rejected:
        assert rejected.status_code == 401
        assert orjson.loads(rejected.body or b"")["kind"] == "Unauthorized"


async def test_websocket_feed_client_closing_ends_the_session(api: Api) -> None:
    url = f"ws://127.0.0.1:{api.port}/ctrl/events?after=0"
    auth = [(b"authorization", f"Bearer {API_KEY}".encode())]
    for _ in range(5):
        async with trio_websocket.open_websocket_url(url, extra_headers=auth) as ws:
            await ws.send_message("hello")  # ignored
    # the API still works; no connection task is stuck
    assert (await api.client.get("/pub/health")).status_code == 200


async def test_malformed_websocket_upgrade_is_refused(api: Api) -> None:
    request = (
        b"GET /ctrl/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n\r\n"
    )  # no Sec-WebSocket-Key: wsproto refuses the handshake
    with trio.fail_after(5):
        data = await raw_exchange(api.port, request)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert (await api.client.get("/pub/health")).status_code == 200
