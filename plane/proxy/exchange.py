"""The upstream exchange of one plain (not upgraded) request.

This module owns what happens between routing a request and its end: the
request head rewritten for the backend (:func:`upstream_head`), sent with its
body on a pooled upstream connection (at once when the body has all arrived:
:func:`exchange_whole`, which replaces a stale kept-alive connection once for
an idempotent request; else streamed by a second task, :func:`pump`, while the
response comes back: :func:`exchange_streaming`), and the response relayed
to the client (:func:`relay_response`), framed as :mod:`plane.proxy.framing`
decides.  The functions take the :class:`~plane.proxy.session.ClientSession`
whose request they serve.

Resource handling: each upstream connection taken is released to the pool
(the exchange ended cleanly and both sides keep alive) or closed, in a
``finally``; a streamed body runs in a nursery scoped to the one request.

Error handling: the backend's faults raise
:class:`~plane.proxy.errors.GatewayFault` (the session answers 502/504 if no
response started, else closes); a client fault in a streamed body aborts the
upstream connection and is raised once the response side has stopped.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httptools
import trio

from plane.proxy import sockio
from plane.proxy.errors import ClientFault, GatewayFault
from plane.proxy.framing import (
    Body,
    Framing,
    interim_forwarded,
    response_framing,
    upstream_reusable,
)
from plane.proxy.headers import CORS_LINES
from plane.proxy.parsing import END, MAX_RESPONSE_HEAD, RequestHead, ResponseHead
from plane.proxy.relay import CRLF, IDEMPOTENT, LAST_CHUNK
from plane.proxy.routes import Route
from plane.proxy.tracking import InFlight
from plane.proxy.upstream import Upstream

if TYPE_CHECKING:
    from plane.proxy.session import ClientSession


class StaleUpstream(Exception):
    """A reused upstream connection failed before the first response byte."""


class PumpState:
    __slots__ = ("body_done", "fault")

    def __init__(self) -> None:
        self.body_done = False
        self.fault: ClientFault | None = None


def upstream_head(
    s: ClientSession, head: RequestHead, route: Route, path: bytes, original: bytes
) -> list[bytes]:
    parts = [head.method, b" ", path, b" HTTP/1.1\r\n"]
    parts += head.lines
    if head.host is None:
        assert route.address is not None
        parts.append(b"host: " + route.address.encode() + CRLF)
    parts.append(route.verified_headers)
    parts.append(b"x-verified-path: ")
    parts.append(original)
    if not s.trusted or (head.xff is None and head.xfp is None):
        parts.append(s.forwarded)  # overwrites what the client said
    else:  # a trusted front proxy: keep its chain and its scheme
        xff = s.peer if head.xff is None else head.xff + b", " + s.peer
        parts.append(b"\r\nx-forwarded-for: " + xff)
        parts.append(b"\r\nx-forwarded-proto: " + (head.xfp or b"http") + CRLF)
    if head.upgrade is not None:
        parts.append(b"connection: upgrade\r\nupgrade: " + head.upgrade + CRLF)
    parts.append(CRLF)
    return parts


async def exchange(
    s: ClientSession, head: RequestHead, route: Route, path: bytes, original: bytes, now: float
) -> bool:
    tracker = s.relay.tracker
    flight = tracker.request(route.backend_id, now)
    try:
        parts = upstream_head(s, head, route, path, original)
        if s.take_body_into(parts, head.chunked):
            return await exchange_whole(s, head, route, b"".join(parts), flight, now)
        return await exchange_streaming(s, head, route, parts, flight, now)
    finally:
        tracker.done(flight)


async def exchange_whole(
    s: ClientSession, head: RequestHead, route: Route, request: bytes, flight: InFlight, now: float
) -> bool:
    """The whole request is here: send it, relay the response.  A reused
    connection that turns out stale is replaced once for an idempotent
    request."""
    pool = s.relay.pool
    assert route.address is not None
    upstream = pool.take(route.address, now, check=head.method not in IDEMPOTENT)
    if upstream is None:
        upstream = await pool.connect(route.address)
    for attempt in range(2):
        reusable = False
        try:
            upstream.sink.pieces.clear()
            try:
                usock = upstream.sock
                try:
                    sent = usock.send(request)
                except BlockingIOError:
                    sent = 0
                if sent < len(request):
                    await sockio.send_all(usock, memoryview(request)[sent:])
            except OSError as exc:
                if upstream.reused:
                    raise StaleUpstream from exc
                raise GatewayFault(
                    502, "BackendUnreachable", f"sending to the backend failed ({exc})"
                ) from None
            keep, reusable = await relay_response(s, upstream, head, route, flight)
            return keep
        except StaleUpstream:
            if attempt or head.method not in IDEMPOTENT:
                raise GatewayFault(
                    502, "BackendClosed", "the backend closed the connection"
                ) from None
        finally:
            if reusable:
                pool.release(upstream)
            else:
                pool.discard(upstream)
        upstream = await pool.connect(route.address)
    raise AssertionError("unreachable")


async def exchange_streaming(
    s: ClientSession,
    head: RequestHead,
    route: Route,
    parts: list[bytes],
    flight: InFlight,
    now: float,
) -> bool:
    """The body is still arriving: stream it while the response comes back."""
    pool = s.relay.pool
    assert route.address is not None
    upstream = await pool.acquire(route.address, now)
    reusable = False
    try:
        upstream.sink.pieces.clear()
        try:
            await sockio.send_parts(upstream.sock, parts)
        except OSError as exc:
            raise GatewayFault(
                502, "BackendUnreachable", f"sending to the backend failed ({exc})"
            ) from None
        state = PumpState()
        failure: Exception | None = None
        keep = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, s, upstream.sock, head.chunked, state, nursery)
            try:
                keep, reusable = await relay_response(s, upstream, head, route, flight)
            except Exception as exc:  # raised again below, not as an ExceptionGroup
                failure = exc
            if not state.body_done:
                nursery.cancel_scope.cancel()
        if state.fault is not None:
            reusable = False
            if s.response_started:
                return False
            raise state.fault
        if isinstance(failure, StaleUpstream):
            raise GatewayFault(502, "BackendClosed", "the backend closed the connection")
        if failure is not None:
            raise failure
        if not state.body_done:
            reusable = False
            return False
        return keep
    finally:
        if reusable:
            pool.release(upstream)
        else:
            pool.discard(upstream)


async def pump(
    s: ClientSession,
    upstream: socket.socket,
    chunked: bool,
    state: PumpState,
    nursery: trio.Nursery,
) -> None:
    """Stream the rest of the request body to the backend."""
    try:
        while True:
            parts: list[bytes] = []
            done = s.take_body_into(parts, chunked)
            if parts:
                try:
                    await sockio.send_parts(upstream, parts)
                except OSError:
                    return  # the backend stopped reading; its response tells the rest
            if done:
                state.body_done = True
                return
            if s.fault is not None:
                raise s.fault
            if s.eof:
                raise ClientFault(400, "IncompleteBody", "the request body ended early")
            try:
                await s.fill()
            except OSError:
                raise ClientFault(
                    400, "IncompleteBody", "the client went away during the body"
                ) from None
    except ClientFault as fault:
        state.fault = fault
        nursery.cancel_scope.cancel()


async def relay_response(
    s: ClientSession,
    upstream: Upstream,
    head: RequestHead,
    route: Route,
    flight: InFlight | None,
    *,
    close: bool = False,
) -> tuple[bool, bool]:
    """Relay one response from ``upstream`` to the client (``close``: then
    close the client connection); the framing is :mod:`plane.proxy.framing`'s.

    Returns ``(keep the client connection, upstream reusable)``."""
    client = s.sock
    view = s.relay.view
    sink = upstream.sink
    pieces = sink.pieces
    tracker = s.relay.tracker
    head_method = head.method == b"HEAD"
    version_10 = head.version_10
    framing: Framing | None = None  # set by the final response head
    chunk_out = False  # frame the body as chunks for the client
    interim = False
    received = False
    upstream_keep = False
    wait_first = True  # the answer cannot be there yet
    head_bytes = 0
    bulk = False  # large body pieces to send
    while True:
        out: list[bytes] = []
        done = False
        for piece in pieces:
            if type(piece) is bytes:
                if len(piece) > 4096:
                    bulk = True
                if chunk_out:
                    out.append(b"%x\r\n" % len(piece))
                    out.append(piece)
                    out.append(CRLF)
                else:
                    out.append(piece)
            elif piece is END:
                if interim:
                    interim = False
                    continue
                if chunk_out:
                    out.append(LAST_CHUNK)
                done = True
                break
            else:
                assert isinstance(piece, ResponseHead)
                status = piece.status
                if status < 200:
                    if status == 101:
                        raise GatewayFault(
                            502, "BadGateway", "the backend switched protocols unasked"
                        )
                    interim = True
                    if interim_forwarded(status, version_10):
                        out.append(b"HTTP/1.1 %d " % status + piece.reason + CRLF)
                        out += piece.lines
                        out.append(CRLF)
                    continue
                s.response_started = True
                upstream_keep = piece.keep_alive
                tracker.response(status)
                if piece.event_stream and flight is not None:
                    tracker.long_lived(flight)
                length = piece.content_length
                framing = response_framing(
                    head_request=head_method,
                    version_10=version_10,
                    keep_alive=head.keep_alive and not close,
                    status=status,
                    has_length=length is not None,
                    chunked=piece.chunked,
                )
                chunk_out = framing.body is Body.CHUNKED
                out.append(b"HTTP/1.1 %d " % status + piece.reason + CRLF)
                out += piece.lines
                out.append(route.backend_header)
                if not piece.cors:
                    out.append(CORS_LINES)
                if framing.send_length:
                    assert length is not None
                    out.append(b"content-length: " + length + CRLF)
                out.append(framing.head_lines)
                out.append(CRLF)
                if framing.body is Body.NONE:
                    done = True
                    break
        pieces.clear()
        if out:
            if bulk:  # body pieces: gathered, not copied
                bulk = False
                await sockio.send_parts(client, out)
            else:
                # Speed: a head and small pieces go in one direct send (no
                # readiness wait, no yield) when the socket takes them at once.
                data = b"".join(out) if len(out) > 1 else out[0]
                try:
                    sent = client.send(data)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    await sockio.send_all(client, memoryview(data)[sent:])
        if done:
            assert framing is not None
            if head_method:
                sink.new_parser()
            return framing.keep_client, upstream_reusable(framing, upstream_keep)
        usock = upstream.sock
        try:
            if wait_first:
                # Speed: the answer cannot be there yet; wait before the
                # first receive rather than fail one.
                wait_first = False
                n = await sockio.wait_recv_into(usock, view)
            else:
                n = await sockio.recv_into(usock, view)
        except OSError:
            n = 0
        if n == 0:
            if framing is not None and framing.until_close:
                if chunk_out:
                    await sockio.send_all(client, LAST_CHUNK)
                return framing.keep_client, False
            if not received and upstream.reused:
                raise StaleUpstream
            if framing is None:
                raise GatewayFault(
                    502, "BackendClosed", "the backend closed the connection before answering"
                )
            return False, False
        received = True
        try:
            sink.parser.feed_data(view[:n])
        except httptools.HttpParserUpgrade:
            if framing is None:
                raise GatewayFault(
                    502, "BadGateway", "the backend switched protocols unasked"
                ) from None
            return False, False
        except httptools.HttpParserError as exc:
            if framing is None:
                raise GatewayFault(
                    502, "BadGateway", f"the backend's response is malformed ({exc})"
                ) from None
            return False, False
        if sink.in_head:  # bytes of a head still incomplete: capped
            head_bytes += n
            if head_bytes > MAX_RESPONSE_HEAD:
                if framing is None:
                    raise GatewayFault(
                        502, "BadGateway", "the backend's response head is too large"
                    )
                return False, False
        else:
            head_bytes = 0
