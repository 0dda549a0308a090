"""The proxy's connection cap: nothing below it refused; past it ``503
ProxyOverloaded`` with Plane's error body; ``GET /ready`` still answered; the
timeouts still enforced for the connections held (filed by time, not scanned)."""

from __future__ import annotations

import contextlib

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from plane.events.types import ConnectionClosed, ConnectionOpened
from plane.proxy.server import MAX_REJECTING
from tests.rawsocket import raw_exchange

from .client import HttpClient, get, parse_responses
from .conftest import Harness, eventually

CAP = 6


async def test_past_the_cap_503_and_ready_still_answers(harness: Harness) -> None:
    h = harness
    await h.start_proxy(max_connections=CAP)
    backend_id, token = await h.add_backend()
    assert h.proxy is not None
    url = f"ws://127.0.0.1:{h.port}/{token}/ws"
    async with contextlib.AsyncExitStack() as stack:
        # Up to the cap: every connection is served (WebSockets and keep-alive HTTP).
        sockets: list[WebSocketConnection] = []
        for _ in range(CAP - 1):
            sockets.append(await stack.enter_async_context(open_websocket_url(url)))
        keep = await stack.enter_async_context(await HttpClient.connect(h.port))
        assert (await keep.request("GET", f"/{token}/held")).status == 200
        for n, ws in enumerate(sockets):
            await ws.send_message(f"m{n}")
            assert await ws.get_message() == f"m{n}"
        assert h.proxy.active == CAP
        await eventually(lambda: len(h.events_of(ConnectionOpened)) == CAP - 1)

        # Past it: a request, an upgrade and a request on a kept connection's
        # neighbour are all 503 ProxyOverloaded, with Plane's ApiError body.
        for line in (
            f"GET /{token}/over HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /{token}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ):
            (over,) = parse_responses(await raw_exchange(h.port, line.encode()))
            assert over.status == 503
            assert over.kind() == "ProxyOverloaded"
            assert over.header("connection") == "close"
        # /ready is answered at the cap, over a fresh connection.
        ready = await get(h.port, "/ready")
        assert (ready.status, ready.body) == (200, b"ready\n")
        # The held connections still work; nothing past the cap reached the backend.
        assert (await keep.request("GET", f"/{token}/held-again")).status == 200
        await sockets[0].send_message("still")
        assert await sockets[0].get_message() == "still"
        assert "/over" not in [s.target for s in h.backend.requests]
        assert h.proxy.active == CAP

        # A slot freed is a slot taken.
        await sockets.pop().aclose()
        await eventually(lambda: h.proxy is not None and h.proxy.active == CAP - 1)
        async with open_websocket_url(url) as again:
            await again.send_message("in")
            assert await again.get_message() == "in"
    await eventually(lambda: h.proxy is not None and h.proxy.active == 0)
    opened = {e.connection_id for b, e in h.events_of(ConnectionOpened) if b == backend_id}
    closed = {e.connection_id for b, e in h.events_of(ConnectionClosed) if b == backend_id}
    assert opened == closed and len(opened) == CAP


async def test_over_cap_connections_that_send_nothing_are_bounded(harness: Harness) -> None:
    """Silent over-cap connections are dropped after a second; past
    MAX_REJECTING of them a 503 is sent unread; /ready keeps answering."""
    h = harness
    await h.start_proxy(max_connections=1, header_timeout=60.0)
    _, token = await h.add_backend()
    assert h.proxy is not None
    async with await HttpClient.connect(h.port) as held:
        assert (await held.request("GET", f"/{token}/held")).status == 200
        silent = [await trio.open_tcp_stream("127.0.0.1", h.port) for _ in range(MAX_REJECTING)]
        try:
            # Past MAX_REJECTING silent ones: answered 503 without being read
            # (sent nothing here, so that the close is not a reset).
            (unread,) = parse_responses(await raw_exchange(h.port, b""))
            assert unread.status == 503 and unread.kind() == "ProxyOverloaded"
            # The silent ones are closed within about a second (not the 60 s header timeout).
            with trio.fail_after(20):
                for stream in silent:
                    while await stream.receive_some(65536):
                        pass
            ready = await get(h.port, "/ready")
            assert ready.status == 200
        finally:
            for stream in silent:
                await stream.aclose()
        assert (await held.request("GET", f"/{token}/held-again")).status == 200


async def test_idle_timeouts_fire_among_many_upgraded_connections(harness: Harness) -> None:
    """Idle keep-alive connections are closed on time while upgraded ones
    (which have no deadline) stay open."""
    h = harness
    await h.start_proxy(keepalive_timeout=0.5)
    _, token = await h.add_backend()
    url = f"ws://127.0.0.1:{h.port}/{token}/ws"
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(open_websocket_url(url)) for _ in range(20)]
        idle = [await stack.enter_async_context(await HttpClient.connect(h.port)) for _ in range(5)]
        for client in idle:
            assert (await client.request("GET", f"/{token}/once")).status == 200
        with trio.fail_after(5):
            for client in idle:
                assert await client.stream.receive_some(1024) == b""
        await trio.sleep(0.6)  # past the keep-alive timeout: the WebSockets stay
        for n, ws in enumerate(sockets):
            await ws.send_message(f"w{n}")
            assert await ws.get_message() == f"w{n}"
