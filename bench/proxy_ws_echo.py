"""A WebSocket echo server for the proxy benchmark (trio-websocket).

    python bench/proxy_ws_echo.py

Listens on a free 127.0.0.1 port, printed as ``PORT <n>``; echoes every message.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
        print(f"PORT {server.port}", flush=True)


if __name__ == "__main__":
    trio.run(main)
