"""What the proxy emits: connection events for long-lived exchanges, coalesced activity."""

from __future__ import annotations

import trio

from plane.events.types import ConnectionClosed, ConnectionOpened, HttpActivityRecorded
from plane.metrics import Metrics

from .client import HttpClient, get
from .conftest import Harness, eventually


async def test_plain_requests_emit_at_most_one_activity_event_per_second(
    proxied: Harness,
) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    other_id, other_token = await h.add_backend()
    start = trio.current_time()
    async with await HttpClient.connect(h.port) as client:
        for i in range(30):
            assert (await client.request("GET", f"/{token}/r{i}")).status == 200
        assert (await client.request("GET", f"/{other_token}/x")).status == 200
    assert trio.current_time() - start < 0.9, "too slow a machine for this test"
    events = [e for b, e in h.events_of(HttpActivityRecorded) if b == backend_id]
    assert [e.requests for e in events] == [1]  # the leading edge, at once
    await eventually(lambda: len(h.events_of(HttpActivityRecorded)) >= 3, 3)
    events = [e for b, e in h.events_of(HttpActivityRecorded) if b == backend_id]
    assert [e.requests for e in events] == [1, 29]  # the rest, a second later
    assert events[1].at - events[0].at >= 1.0
    assert [e.requests for b, e in h.events_of(HttpActivityRecorded) if b == other_id] == [1]
    await trio.sleep(1.2)
    assert len(h.events_of(HttpActivityRecorded)) == 3  # nothing more without requests
    assert not h.events_of(ConnectionOpened)


async def test_a_quick_request_opens_no_connection(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    assert (await get(h.port, f"/{token}/quick")).status == 200
    await trio.sleep(1.5)
    assert not h.events_of(ConnectionOpened)


async def test_an_event_stream_is_a_connection(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        await client.start("GET", f"/{token}/sse?count=5&interval=0.05")
        await client.end()
        head = await client.head()
        assert head.header("content-type") == "text/event-stream"
        assert head.header("transfer-encoding") == "chunked"
        chunks = [c async for c in client.chunks()]
        opened = h.events_of(ConnectionOpened)
        assert len(opened) == 1 and opened[0][0] == backend_id
    assert b"".join(chunks) == b"".join(f"data: {i}\n\n".encode() for i in range(5))
    await eventually(lambda: h.events_of(ConnectionClosed))
    (closed,) = h.events_of(ConnectionClosed)
    assert closed[1].connection_id == opened[0][1].connection_id


async def test_a_response_still_running_after_a_second_is_a_connection(
    proxied: Harness,
) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    result = []

    async def slow() -> None:
        result.append(await get(h.port, f"/{token}/slow?seconds=1.8"))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await eventually(lambda: h.events_of(ConnectionOpened), 3)
        opened_after = trio.current_time() - start
        assert not h.events_of(ConnectionClosed)
    assert 0.9 <= opened_after <= 1.6
    assert result[0].status == 200
    await eventually(lambda: h.events_of(ConnectionClosed))
    assert h.events_of(ConnectionClosed)[0][0] == backend_id


async def test_metrics_count_requests_by_code(harness: Harness) -> None:
    h = harness
    metrics = Metrics()
    await h.start_proxy(metrics=metrics)
    _, token = await h.add_backend()
    for _ in range(3):
        assert (await get(h.port, f"/{token}/")).status == 200
    assert (await get(h.port, "/unknown/")).status == 410
    await trio.sleep(1.2)
    text = metrics.render().decode()
    assert 'plane_proxy_requests_total{code="200"} 3.0' in text
    assert 'plane_proxy_requests_total{code="410"} 1.0' in text
    assert "plane_proxy_connections_total 4.0" in text
