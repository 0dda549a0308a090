"""Upgrades (WebSocket and others): the backend's 101, then a byte splice.

This module owns an upgrade request's life once routed: the head sent to the
backend (:func:`upgrade`), the backend's final answer awaited
(:func:`await_switch`: a 101 is passed on with whatever the backend sent
after it; anything else is relayed as a plain response and the connection
closed), then the bytes copied both ways (:func:`splice`, :func:`pipe`)
until the backend closes, or the client closes and the backend has finished
within ``half_close_timeout``.  The connection is reported long-lived
(``ConnectionOpened``/``ConnectionClosed``) for as long as it is spliced.

Resource handling: the upstream connection is never pooled (closed in a
``finally``); the two directions run in a nursery scoped to the connection.

Error handling: before the 101, the backend's faults raise
:class:`~plane.proxy.errors.GatewayFault`; during the splice, an error on
either side ends it at once.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import httptools
import trio

from plane.proxy import sockio
from plane.proxy.errors import GatewayFault
from plane.proxy.exchange import relay_response, upstream_head
from plane.proxy.parsing import MAX_RESPONSE_HEAD, RequestHead, ResponseHead
from plane.proxy.relay import CRLF, SPLICE_CHUNK
from plane.proxy.routes import Route
from plane.proxy.upstream import Upstream

if TYPE_CHECKING:
    from plane.proxy.session import ClientSession


async def upgrade(
    s: ClientSession, head: RequestHead, route: Route, path: bytes, original: bytes
) -> bool:
    """Relay an upgrade request; on 101 splice the two connections."""
    relay = s.relay
    pool = relay.pool
    assert route.address is not None
    s.skip_body()
    upstream = await pool.connect(route.address)
    try:
        upstream.sink.pieces.clear()
        try:
            await sockio.send_parts(upstream.sock, upstream_head(s, head, route, path, original))
        except OSError as exc:
            raise GatewayFault(
                502, "BackendUnreachable", f"sending to the backend failed ({exc})"
            ) from None
        switched = await await_switch(s, upstream, route)
        if switched is None:
            # Refused: relay the answer as a plain response, then close.
            await relay_response(s, upstream, head, route, None, close=True)
            return False
        relay.tracker.upgrades += 1
        await splice(s, upstream.sock, route)
        return False
    finally:
        pool.discard(upstream)


async def await_switch(s: ClientSession, upstream: Upstream, route: Route) -> bytes | None:
    """Wait for the backend's final answer to an upgrade request.  On 101,
    send it on to the client and return the bytes the backend sent after
    it; else None, with the answer left queued for
    :func:`~plane.proxy.exchange.relay_response`."""
    view = s.relay.view
    sink = upstream.sink
    pieces = sink.pieces
    tail: bytes | None = None
    head_bytes = 0
    while True:
        for index, piece in enumerate(pieces):
            if not isinstance(piece, ResponseHead) or (
                100 <= piece.status < 200 and piece.status != 101
            ):
                continue
            if piece.status != 101:
                del pieces[:index]
                return None
            if tail is None:
                break  # the parser has not handed over yet
            parts = [b"HTTP/1.1 101 " + piece.reason + CRLF]
            parts += piece.lines
            parts.append(route.backend_header)
            parts.append(b"connection: upgrade\r\nupgrade: " + (piece.upgrade or b"") + CRLF)
            parts.append(CRLF)
            if tail:
                parts.append(tail)
            pieces.clear()
            s.relay.tracker.response(101)
            s.response_started = True
            await sockio.send_parts(s.sock, parts)
            return tail
        try:
            n = await sockio.recv_into(upstream.sock, view)
        except OSError:
            n = 0
        if n == 0:
            raise GatewayFault(
                502, "BackendClosed", "the backend closed the connection before answering"
            )
        try:
            sink.parser.feed_data(view[:n])
        except httptools.HttpParserUpgrade as exc:
            tail = bytes(view[exc.args[0] : n])
        except httptools.HttpParserError as exc:
            raise GatewayFault(
                502, "BadGateway", f"the backend's response is malformed ({exc})"
            ) from None
        if sink.in_head:
            head_bytes += n
            if head_bytes > MAX_RESPONSE_HEAD:
                raise GatewayFault(502, "BadGateway", "the backend's response head is too large")


async def splice(s: ClientSession, upstream: socket.socket, route: Route) -> None:
    """Copy bytes both ways until the connection ends.

    The backend closing ends it (what it sent is delivered first; whatever
    the client might still send could not be), like nginx.  The client
    closing its side is passed on (``shutdown``) and the backend gets
    ``half_close_timeout`` to finish (a WebSocket close reply, say).  An
    error on either side ends it at once."""
    tracker = s.relay.tracker
    connection_id = tracker.open(route.backend_id)
    try:
        if s.client_tail:
            await sockio.send_all(upstream, s.client_tail)
            s.client_tail = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, s, s.sock, upstream, nursery, False)
            nursery.start_soon(pipe, s, upstream, s.sock, nursery, True)
    finally:
        tracker.close(route.backend_id, connection_id)


async def pipe(
    s: ClientSession, src: socket.socket, dst: socket.socket, nursery: trio.Nursery, ends: bool
) -> None:
    scope = nursery.cancel_scope
    drained = False
    try:
        while True:
            if drained:  # the last read took all there was: wait, don't try
                data = await sockio.wait_recv(src, SPLICE_CHUNK)
            else:
                data = await sockio.recv(src, SPLICE_CHUNK)
            if not data:
                break
            drained = len(data) < SPLICE_CHUNK
            await sockio.send_all(dst, data)
    except OSError:
        scope.cancel()
        return
    if ends:
        scope.cancel()
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    scope.deadline = min(scope.deadline, trio.current_time() + s.relay.settings.half_close_timeout)
