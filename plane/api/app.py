"""The API's public face: :class:`ApiContext` and :func:`serve_api`.

``serve_api`` binds a TCP listener, reports the bound port, and serves the
HTTP API (:mod:`plane.api.routes`) over h11 (:mod:`plane.api.http`), one
task per connection, until cancelled::

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_api, ctx, "127.0.0.1", 0)

Resource handling
-----------------
Every connection task lives in the listener's nursery inside ``serve_api``;
cancelling ``serve_api`` closes the listeners and every connection (streams
and WebSocket feeds end at once).

Error handling
--------------
Binding errors (``OSError``: the port is taken) propagate before
``task_status.started``.  After that nothing a client does can end the
server: protocol errors are answered or end only their connection, handler
failures become 500 ``InternalError``.
"""

from __future__ import annotations

import trio

from plane.api.context import ApiContext
from plane.api.http import ServerConfig, StreamGate, serve_http_connection
from plane.api.routes import build_router

__all__ = ["ApiContext", "serve_api"]


def _peer(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return ""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


async def serve_api(
    ctx: ApiContext,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` (0: any free port) until cancelled.

    Calls ``task_status.started(bound_port)`` once it accepts connections.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    router = build_router(ctx)
    config = ServerConfig(
        streams=StreamGate(ctx.max_streams),
        max_body_bytes=ctx.max_body_bytes,
        header_timeout=ctx.header_timeout_seconds,
    )

    def observe(status: int) -> None:
        ctx.metrics.api_requests.labels("unmatched", str(status)).inc()

    async def handle(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, router, config, observe=observe, peer=_peer(stream))

    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
