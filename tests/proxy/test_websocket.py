"""WebSocket (and any upgrade) through the proxy: the 101 relayed, bytes spliced."""

from __future__ import annotations

import pytest
import trio
import wsproto.events as ws_events
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import HandshakeError, open_websocket_url
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection

from plane.events.types import ConnectionClosed, ConnectionOpened
from tests.rawsocket import raw_exchange

from .client import parse_responses
from .conftest import Harness, eventually

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def test_websocket_echo_through_the_proxy(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(user="ann")
    url = f"ws://127.0.0.1:{h.port}/{token}/socket?room=1"
    async with open_websocket_url(url) as ws:
        for i in range(20):
            await ws.send_message(f"hello {i}")
            assert await ws.get_message() == f"hello {i}"
        await ws.send_message(b"\x00\x01binary" * 1000)
        assert await ws.get_message() == b"\x00\x01binary" * 1000
        headers = {k.decode().lower(): v.decode() for k, v in ws.handshake_headers}
        assert headers["x-plane-backend-id"] == backend_id
    seen = h.backend.requests[-1]
    assert seen.target == "/socket?room=1"
    names = {n.lower(): v for n, v in seen.headers}
    assert names["x-verified-username"] == "ann"
    assert names["x-verified-path"] == f"/{token}/socket"
    assert names["upgrade"].lower() == "websocket"
    assert h.backend.ws_messages == 21


async def test_firefox_connection_header_is_an_upgrade(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    async with stream:
        await stream.send_all(
            (
                f"GET /{token}/ff HTTP/1.1\r\nHost: proxy.test\r\n"
                "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
            ).encode()
        )
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert b"x-plane-backend-id" in head.lower()
        ws = WsConnection(ConnectionType.CLIENT)
        if rest:
            ws.receive_data(rest)
        await stream.send_all(ws.send(ws_events.TextMessage(data="from firefox")))
        with trio.fail_after(5):
            while True:
                events = list(ws.events())
                if events:
                    break
                ws.receive_data(await stream.receive_some(4096))
        assert isinstance(events[0], ws_events.TextMessage)
        assert events[0].data == "from firefox"


async def test_websocket_emits_opened_then_closed(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    async with open_websocket_url(f"ws://127.0.0.1:{h.port}/{token}/ws") as ws:
        await ws.send_message("x")
        await ws.get_message()
        opened = h.events_of(ConnectionOpened)
        assert len(opened) == 1 and opened[0][0] == backend_id
        assert not h.events_of(ConnectionClosed)
    await eventually(lambda: h.events_of(ConnectionClosed))
    (closed,) = h.events_of(ConnectionClosed)
    assert closed[0] == backend_id
    assert closed[1].connection_id == opened[0][1].connection_id
    kinds = [type(e) for b, e in h.emitted if b == backend_id]
    assert kinds.index(ConnectionOpened) < kinds.index(ConnectionClosed)


async def test_each_websocket_gets_its_own_connection_id(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    url = f"ws://127.0.0.1:{h.port}/{token}/ws"
    async with open_websocket_url(url) as a, open_websocket_url(url) as b:
        await a.send_message("a")
        await b.send_message("b")
        assert (await a.get_message(), await b.get_message()) == ("a", "b")
    await eventually(lambda: len(h.events_of(ConnectionClosed)) >= 2)
    ids = {e.connection_id for _, e in h.events_of(ConnectionOpened)}
    assert len(ids) == 2
    assert ids == {e.connection_id for _, e in h.events_of(ConnectionClosed)}


async def test_backend_closing_the_websocket_closes_the_client(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with open_websocket_url(f"ws://127.0.0.1:{h.port}/{token}/close-after-one") as ws:
        await ws.send_message("x")
        assert await ws.get_message() == "x"
        with trio.fail_after(5), pytest.raises(WsClosed) as info:
            await ws.get_message()
        assert info.value.reason is not None and info.value.reason.code == 1000
    await eventually(lambda: h.events_of(ConnectionClosed))


async def test_a_refused_upgrade_is_relayed_and_the_connection_closed(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = await raw_exchange(
        h.port,
        (
            f"GET /{token}/refuse-upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ).encode(),
    )
    (r,) = parse_responses(raw)
    assert r.status == 403 and r.body == b"no upgrade for you"
    assert r.header("connection") == "close"
    assert not h.events_of(ConnectionOpened)


async def test_an_upgrade_with_an_unknown_token_is_410(proxied: Harness) -> None:
    h = proxied
    try:
        async with open_websocket_url(f"ws://127.0.0.1:{h.port}/nope/ws"):
            raise AssertionError("the handshake should fail")
    except HandshakeError as exc:
        assert getattr(exc, "status_code", 410) == 410


async def test_client_disconnect_ends_the_splice(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    await stream.send_all(
        (
            f"GET /{token}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ).encode()
    )
    with trio.fail_after(5):
        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 101")
    await stream.aclose()  # no closing handshake: just gone
    with trio.fail_after(5):
        await h.backend.ws_closed.wait()
    await eventually(lambda: h.events_of(ConnectionClosed))
