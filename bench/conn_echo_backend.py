"""A minimal asyncio WebSocket echo backend for bench/bench_connections.py.

    PORT=8000 python bench/conn_echo_backend.py [--processes N]

Started by plane's process executor (it listens on ``$PORT``).  Request heads
are parsed by h11 (a plain ``GET`` is answered ``200``: plane's readiness
probe); an upgrade is accepted (``Sec-WebSocket-Accept`` from wsproto), then
frames are echoed: text and binary back as they came (unmasked), a ping
answered, a close answered and the connection closed.  One small protocol
object per connection, no task: tens of thousands of idle connections are
cheap.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys

import h11
from wsproto.utilities import generate_accept_token


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.http: h11.Connection | None = h11.Connection(h11.SERVER)
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.http is not None:
            self._head(data)
            return
        self.buffer += data
        self._frames()

    def _head(self, data: bytes) -> None:
        assert self.transport is not None and self.http is not None
        self.http.receive_data(data)
        try:
            event = self.http.next_event()
        except h11.RemoteProtocolError:
            self.transport.close()
            return
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Request):
            self.transport.close()
            return
        headers = {k.lower(): v for k, v in event.headers}
        key = headers.get(b"sec-websocket-key")
        if key is None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
            )
            self.transport.close()
            return
        tail, _ = self.http.trailing_data
        self.http = None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-accept: " + generate_accept_token(key) + b"\r\n\r\n"
        )
        if tail:
            self.buffer += tail
            self._frames()

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            masked = buf[1] & 0x80
            length = buf[1] & 0x7F
            at = 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,) = struct.unpack_from("!H", buf, 2)
                at = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,) = struct.unpack_from("!Q", buf, 2)
                at = 10
            mask = b""
            if masked:
                mask = bytes(buf[at : at + 4])
                at += 4
            if len(buf) < at + length:
                return
            payload = bytearray(buf[at : at + length])
            del buf[: at + length]
            if mask:
                for i in range(length):
                    payload[i] ^= mask[i & 3]
            if opcode == 8:  # close: answer and close
                self.transport.write(b"\x88\x00")
                self.transport.close()
                return
            reply_opcode = 0xA if opcode == 9 else opcode
            if opcode == 0xA:
                continue
            self.transport.write(frame(reply_opcode, bytes(payload)))


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def main(shared: bool) -> None:
    port = int(os.environ.get("PORT", "8000"))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        Echo, "127.0.0.1", port, backlog=4096, reuse_port=shared or None
    )
    print(f"listening on {port} (pid {os.getpid()})", flush=True)
    async with server:
        await server.serve_forever()


def serve(processes: int) -> None:
    """``processes`` > 1: as many processes, each its own socket on the one port
    (``SO_REUSEPORT``: the kernel spreads the connections), so that none needs
    more file descriptors than one process may hold."""
    for _ in range(processes - 1):
        if os.fork() == 0:
            break
    asyncio.run(main(processes > 1))


if __name__ == "__main__":
    serve(int(sys.argv[sys.argv.index("--processes") + 1]) if "--processes" in sys.argv else 1)
