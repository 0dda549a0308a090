"""Raw bytes over loopback TCP, for tests that must send what no client library would."""

from __future__ import annotations

import contextlib

import trio


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    received = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


async def raw_exchange(port: int, data: bytes, *, limit: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection to 127.0.0.1:``port``; return everything
    received until the server closes (a server that closes early may cut the send)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(limit):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            return await read_until_closed(stream)
