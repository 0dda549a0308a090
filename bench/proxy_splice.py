"""A bare trio byte-splice proxy: the reference for the proxy benchmark.

    python bench/proxy_splice.py BACKEND_HOST:PORT

Listens on a free 127.0.0.1 port (printed as ``PORT <n>``); every client
connection gets its own connection to the backend and bytes are copied both
ways with :class:`trio.SocketStream` (no HTTP parsing, no routing).
"""

from __future__ import annotations

import sys

import trio

from plane.addresses import split_host_port


async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(262144):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def main(backend: str) -> None:
    host, port = split_host_port(backend)

    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, upstream)
            nursery.start_soon(pipe, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
