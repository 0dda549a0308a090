"""The HTTP/1.1 relay: one client connection, from its first byte to its close.

This module owns :class:`ClientSession`, which serves the requests of one
client connection in order (keep-alive and pipelining included):

1. read a request head (within ``header_timeout`` of its first byte; an idle
   connection is closed after ``keepalive_timeout``), parsed by httptools;
2. route it: ``/<token>/<path>?<query>`` -> the token's backend, from the
   routing table (:mod:`plane.proxy.routes`) alone, as ``/<path>?<query>``
   (a static token's path is forwarded whole, token included); a backend
   still starting is waited for (its own start timeout, then 504).  The
   proxy answers itself ``GET /ready`` (200 once the table has the log's
   history, else 503), ``/`` (400, or the configured root redirect), an
   HTTP/1.1 request without ``Host`` (400) and a ``Host`` that does not fit
   the backend (403).  The Host rule: a backend with a subdomain is reached
   only at ``<subdomain>.<cluster host>[:port]``; a backend without one at
   any host that is not a subdomain of the cluster host (the cluster host
   itself, but also ``localhost``, an IP address or another name: a
   deployment behind a name the proxy was not told of keeps working);
3. forward the head, rewritten (:mod:`plane.proxy.headers`), on a pooled
   upstream connection (:mod:`plane.proxy.upstream`), then the body: at once
   if it has all arrived already, else streamed by a second task while the
   response comes back (the backend may answer before the body ends);
4. relay the response, re-framed for the client (sized bodies as they are,
   others chunked to an HTTP/1.1 client, close-delimited to an HTTP/1.0
   one), then give the upstream connection back to the pool;
5. an upgrade (WebSocket or other) gets the backend's 101 relayed, then the
   bytes are spliced both ways until the backend closes, or the client closes
   and the backend has finished.

Bodies are never held whole: at most one receive buffer's worth of a body is
in the proxy at a time, and a slow reader slows the writer (each send waits
for the socket).  All receives go into one shared buffer: httptools copies
out what it keeps, and nothing awaits between a receive and its parse.

The hot path uses :mod:`plane.proxy.sockio` and, for the common small
exchange, calls the socket directly (a send that completes at once, a receive
right after a readiness wait); such calls do not yield, but every request
waits twice (for its head and for its answer), so each task still yields
regularly.

Resource handling
-----------------
The session owns its client socket and closes it when it ends, however it
ends.  Each upstream connection it takes is released to the pool (the
exchange ended cleanly, both sides keep-alive) or closed, in a ``finally``.
A streamed body and an upgrade's two directions run in nurseries scoped to
the one request.

Error handling
--------------
The client's faults (:class:`~plane.proxy.errors.ClientFault`: malformed or
oversized heads, a bad chunk, a slow head) are answered 400/408/431 and the
connection is closed; nothing of such a request reaches a backend unless its
head was complete and already forwarded (a bad chunk later in a streamed body
aborts the upstream connection).  The backend's faults
(:class:`~plane.proxy.errors.GatewayFault`) are answered 502/504 if no
response has started, else the client connection is closed mid-response.  A
client that goes away (``OSError`` on its socket) ends the session quietly.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable

import attrs
import httptools
import trio

from plane import tokens
from plane.actors.clock import TrioClock
from plane.proxy import sockio
from plane.proxy.deadlines import Deadlines
from plane.proxy.errors import (
    OVERLOADED_MESSAGE,
    ClientFault,
    GatewayFault,
    ProxyFault,
    render_answer,
    render_error,
    render_redirect,
)
from plane.proxy.headers import CORS_LINES, subdomain_of
from plane.proxy.parsing import (
    END,
    MAX_RESPONSE_HEAD,
    RequestHead,
    RequestSink,
    ResponseHead,
    bad_head,
    head_too_large,
)
from plane.proxy.routes import Refusal, Route, RouteTable
from plane.proxy.settings import ProxySettings
from plane.proxy.table_feed import TableFeed
from plane.proxy.tracking import InFlight, Tracker
from plane.proxy.upstream import Upstream, UpstreamPool

BUFFER_SIZE = 262144
_buffer = bytearray(BUFFER_SIZE)
_view = memoryview(_buffer)

SPLICE_CHUNK = 65536


IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


@attrs.define
class Relay:
    """What every session shares."""

    table: RouteTable
    feed: TableFeed
    pool: UpstreamPool
    tracker: Tracker
    settings: ProxySettings
    clock: TrioClock
    cluster_host: bytes | None = attrs.field(init=False)
    deadlines: Deadlines[ClientSession] = attrs.field(init=False)
    """The sessions' header and keep-alive deadlines, for the server's watchdog."""

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        host = settings.cluster_host
        self.cluster_host = None if host is None else host.encode("ascii")
        self.deadlines = Deadlines(watchdog_tick(settings))


WATCHDOG_TICK = 0.1
"""How often the timeouts are checked at most (seconds)."""

OVERLOADED_HEAD_TIMEOUT = 1.0
"""An over-cap connection's request head must arrive within this long."""


def watchdog_tick(settings: ProxySettings) -> float:
    """The precision of the header and keep-alive timeouts."""
    return min(WATCHDOG_TICK, settings.header_timeout / 5, settings.keepalive_timeout / 5)


class _StaleUpstream(Exception):
    """A reused upstream connection failed before the first response byte."""


class _PumpState:
    __slots__ = ("body_done", "fault")

    def __init__(self) -> None:
        self.body_done = False
        self.fault: ClientFault | None = None


def split_target(url: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(token, upstream target, original path)`` of a request target, or None
    if it is not a path (``*``, authority-form).  ``/<token>`` maps to ``/``;
    the query goes to the backend; the original path is without it."""
    if url[:1] != b"/":
        scheme_end = url.find(b"://")
        if scheme_end <= 0:
            return None
        slash = url.find(b"/", scheme_end + 3)
        url = url[slash:] if slash >= 0 else b"/"
    query_at = url.find(b"?")
    if query_at < 0:
        path, query = url, b""
    else:
        path, query = url[:query_at], url[query_at:]
    slash = path.find(b"/", 1)
    if slash < 0:
        return path[1:], b"/" + query, path
    return path[1:slash], path[slash:] + query, path


def original_form(url: bytes) -> bytes:
    """The request target as the backend gets it when nothing is stripped
    (a static token): the path and query, even of an absolute-form target."""
    if url[:1] == b"/":
        return url
    slash = url.find(b"/", url.find(b"://") + 3)
    return url[slash:] if slash >= 0 else b"/"


class ClientSession:
    """Serves one client connection; see the module docstring.

    ``overloaded``: the connection came past the proxy's connection cap.  It
    gets one answer and is closed: ``GET /ready`` as usual (so a load
    balancer's health check still works at the cap), anything else ``503
    ProxyOverloaded``; its head must arrive within
    :data:`OVERLOADED_HEAD_TIMEOUT`."""

    def __init__(
        self, relay: Relay, sock: socket.socket, peer: str, *, overloaded: bool = False
    ) -> None:
        settings = relay.settings
        self.relay = relay
        self.overloaded = overloaded
        self.header_timeout = (
            min(settings.header_timeout, OVERLOADED_HEAD_TIMEOUT)
            if overloaded
            else settings.header_timeout
        )
        self.sock = sock
        self.peer = peer.encode("ascii", "replace")
        self.forwarded = b"\r\nx-forwarded-for: " + self.peer + b"\r\nx-forwarded-proto: http\r\n"
        self.trusted = settings.trusts(peer)
        # the last Host value seen and its subdomain under the cluster host
        self.host: bytes | None = None
        self.subdomain: bytes | None = None
        self.sink = RequestSink(settings.max_header_bytes, settings.max_headers)
        self.pos = 0
        self.fault: ClientFault | None = None
        self.eof = False
        self.upgraded = False
        self.client_tail = b""
        self.head_raw = 0
        self.head_raw_limit = settings.max_header_bytes + BUFFER_SIZE
        self.token = b""
        self.token_hash = ""
        # per request
        self.request_done = False
        self.response_started = False
        self.backend_header = b""
        # timeouts: the watchdog cancels ``scope`` once ``deadline`` (trio time)
        # passes; ``bucket`` is where relay.deadlines files the session
        self.scope = trio.CancelScope()
        self.deadline = math.inf
        self.bucket: int | None = None

    # ------------------------------------------------------------------- run

    async def run(self) -> None:
        try:
            fault: ClientFault | None = None
            with self.scope:
                try:
                    first = True
                    while await self._serve_one(first):
                        first = False
                except ClientFault as exc:
                    fault = exc
            if self.scope.cancelled_caught and self.sink.in_head:
                fault = ClientFault(
                    408, "RequestTimeout", "the request head did not arrive in time"
                )
            if fault is not None:
                await self._last_words(fault)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self.relay.deadlines.disarm(self)
            sockio.close(self.sock)

    def expire(self, now: float) -> None:
        """Called by the server's watchdog for a session its deadlines gave up:
        end the session if its deadline passed (else file it again)."""
        if self.deadline <= now:
            self.deadline = math.inf
            self.scope.cancel()
        else:
            self.relay.deadlines.arm(self, self.deadline)

    def _arm(self, deadline: float) -> None:
        self.deadline = deadline
        self.relay.deadlines.arm(self, deadline)

    async def _last_words(self, fault: ProxyFault) -> None:
        """Answer a fault on a connection about to close, if the client listens."""
        if self.response_started:
            return
        self.relay.tracker.response(fault.status)
        data = render_error(
            fault.status, fault.kind, fault.message, close=True, extra_headers=self.backend_header
        )
        with trio.move_on_after(1.0), contextlib.suppress(OSError):
            await sockio.send_all(self.sock, data)

    async def _serve_one(self, first: bool) -> bool:
        """Serve one request; True to keep the connection for the next."""
        self.request_done = False
        self.response_started = False
        self.backend_header = b""
        head = await self._read_head(first)
        if head is None:
            return False
        try:
            return await self._handle(head)
        except GatewayFault as fault:
            if self.response_started:
                return False
            return await self._reply_error(head, fault.status, fault.kind, fault.message)

    # ---------------------------------------------------------- client input

    async def _fill(self, wait_first: bool = False) -> int:
        """Receive from the client and parse; returns the count, 0 at end of stream.

        ``wait_first`` when nothing is likely to have arrived yet (saves a
        failed receive)."""
        sock = self.sock
        if wait_first:
            n = await sockio.wait_recv_into(sock, _view)
        else:
            n = await sockio.recv_into(sock, _view)
        if n == 0:
            self.eof = True
            return 0
        if self.fault is not None or self.upgraded:
            return n  # the parser is done; nothing more is read as HTTP
        sink = self.sink
        try:
            sink.parser.feed_data(_view[:n])
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.client_tail = bytes(_view[exc.args[0] : n])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if sink.in_head:
                self.head_raw += n
                if self.head_raw > self.head_raw_limit:
                    self._parse_failed(None)
            else:
                self.head_raw = 0
        return n

    def _parse_failed(self, exc: httptools.HttpParserError | None) -> None:
        """Record the client's fault (``exc`` None: the head outgrew the raw guard)."""
        bad = None if exc is None else bad_head(exc)
        if exc is None or head_too_large(exc):
            self.fault = ClientFault(
                431, "RequestHeaderFieldsTooLarge", "the request head is too large"
            )
        elif bad is not None:
            self.fault = ClientFault(400, "BadRequest", str(bad))
        else:
            self.fault = ClientFault(400, "BadRequest", f"malformed request: {exc}")
        # Drop what was queued of the failing message; earlier complete ones stay.
        pieces = self.sink.pieces
        cut = len(pieces)
        while cut > self.pos and pieces[cut - 1] is not END:
            cut -= 1
        del pieces[cut:]

    async def _read_head(self, first: bool) -> RequestHead | None:
        """The next request head; None when the client is done.  While waiting,
        ``self.deadline`` is armed for the server's watchdog: the keep-alive
        timeout while idle, the header timeout from a head's first byte (from
        the accept for a connection's first request)."""
        settings = self.relay.settings
        sink = self.sink
        timing_head = first
        wait_first = not first
        while True:
            pieces = sink.pieces
            pos = self.pos
            if pos < len(pieces):
                piece = pieces[pos]
                self.pos = pos + 1
                if type(piece) is RequestHead:
                    if self.bucket is not None:
                        self.relay.deadlines.disarm(self)
                    self.deadline = math.inf
                    return piece
                continue  # cannot happen: bodies are consumed with their request
            if pos:
                pieces.clear()
                self.pos = 0
            if self.fault is not None:
                raise self.fault
            if self.eof or self.upgraded:
                return None
            if self.deadline == math.inf:
                self._arm(
                    trio.current_time()
                    + (self.header_timeout if first else settings.keepalive_timeout)
                )
            await self._fill(wait_first)
            wait_first = False
            if not timing_head and sink.in_head:
                timing_head = True
                self._arm(trio.current_time() + self.header_timeout)

    def _take_body_into(self, parts: list[bytes], chunked: bool) -> bool:
        """Move the queued body pieces of the current request into ``parts``,
        framed; True once its end has been taken."""
        pieces = self.sink.pieces
        pos = self.pos
        count = len(pieces)
        done = False
        while pos < count:
            piece = pieces[pos]
            if piece is END:
                pos += 1
                if chunked:
                    parts.append(_LAST_CHUNK)
                done = self.request_done = True
                break
            if type(piece) is bytes:
                if chunked:
                    parts.append(b"%x\r\n" % len(piece))
                    parts.append(piece)
                    parts.append(_CRLF)
                else:
                    parts.append(piece)
                pos += 1
            else:
                break
        if pos >= count:
            pieces.clear()
            pos = 0
        self.pos = pos
        return done

    def _skip_body(self) -> bool:
        """Drop the rest of the current request if it has all arrived."""
        if self.request_done:
            return True
        pieces = self.sink.pieces
        for index in range(self.pos, len(pieces)):
            if pieces[index] is END:
                self.pos = index + 1
                self.request_done = True
                return True
        return False

    # --------------------------------------------------------------- routing

    async def _handle(self, head: RequestHead) -> bool:
        if head.method == b"CONNECT":
            return await self._reply_error(
                head, 405, "MethodNotAllowed", "CONNECT is not supported"
            )
        host = head.host
        if host is None and not head.version_10:
            raise ClientFault(400, "BadRequest", "an HTTP/1.1 request needs a Host header")
        target = split_target(head.url)
        if target is None:
            return await self._reply_error(
                head, 400, "BadRequest", "the request target is not a path"
            )
        token, path, original = target
        if not token:
            return await self._reply_root(head, original)
        if token == b"ready" and original == b"/ready":
            return await self._reply_ready(head)
        if self.overloaded:
            return await self._answer(
                head,
                503,
                lambda close, head_only: render_error(
                    503,
                    "ProxyOverloaded",
                    OVERLOADED_MESSAGE,
                    close=close,
                    head_only=head_only,
                    logged=False,
                ),
            )
        relay = self.relay
        synced = relay.feed.synced
        if not synced.is_set():
            await synced.wait()
        now = trio.current_time()
        found = self._lookup(token, now)
        if type(found) is not Route:
            assert isinstance(found, Refusal)
            return await self._reply_error(head, found.status, found.kind, found.message)
        route: Route = found
        self.backend_header = route.backend_header
        if host != self.host:
            self.host = host
            self.subdomain = subdomain_of(host, relay.cluster_host)
        if route.subdomain != self.subdomain:
            return await self._reply_error(head, 403, "HostMismatch", self._host_refusal(route))
        if route.static:
            path = original_form(head.url)
        if route.address is None:
            waited = await self._wait_ready(route)
            if isinstance(waited, Refusal):
                return await self._reply_error(head, waited.status, waited.kind, waited.message)
            route = waited
            now = trio.current_time()
        if head.upgrade is not None:
            return await self._upgrade(head, route, path, original)
        return await self._exchange(head, route, path, original, now)

    def _lookup(self, token: bytes, now: float) -> Route | Refusal:
        if token != self.token:
            self.token = token
            self.token_hash = tokens.digest(token.decode("utf-8", "surrogateescape"))
        relay = self.relay
        return relay.table.lookup(self.token_hash, now + relay.clock.offset)

    def _host_refusal(self, route: Route) -> str:
        cluster = self.relay.cluster_host
        if route.subdomain is None:
            return "this backend has no subdomain: use the cluster host"
        if cluster is None:
            return "this backend has a subdomain, but the proxy knows no cluster host"
        expected = (route.subdomain + b"." + cluster).decode("ascii", "replace")
        return f"this backend is reached at the host {expected}"

    async def _reply_ready(self, head: RequestHead) -> bool:
        """``GET /ready``: 200 once the table has the log's history, else 503."""
        if not self.relay.feed.synced.is_set():
            return await self._reply_error(
                head, 503, "ProxyNotReady", "the proxy has not loaded its routing table yet"
            )
        return await self._answer(
            head,
            200,
            lambda close, head_only: render_answer(
                200, b"ready\n", content_type=b"text/plain", close=close, head_only=head_only
            ),
        )

    async def _reply_root(self, head: RequestHead, original: bytes) -> bool:
        """No token in the path: ``/`` redirects when configured, else 400."""
        redirect = self.relay.settings.root_redirect
        if original != b"/" or redirect is None:
            return await self._reply_error(
                head, 400, "BadRequest", "no token in the path: use /<token>/..."
            )
        return await self._answer(
            head,
            302,
            lambda close, head_only: render_redirect(redirect, close=close, head_only=head_only),
        )

    async def _wait_ready(self, route: Route) -> Route | Refusal:
        relay = self.relay
        timeout = route.start_timeout
        deadline = trio.current_time() + timeout
        while True:
            changed = relay.feed.changed
            found = relay.table.lookup(self.token_hash, relay.clock.now())
            if isinstance(found, Refusal) or found.address is not None:
                return found
            with trio.move_on_at(deadline):
                await changed.wait()
            if trio.current_time() >= deadline:
                raise GatewayFault(
                    504,
                    "BackendNotReady",
                    f"the backend did not become ready within its start timeout ({timeout:g}s)",
                )

    def _keepable(self, head: RequestHead) -> bool:
        """True if the connection can go on after an answer of our own."""
        return (
            head.keep_alive
            and not self.overloaded
            and head.upgrade is None
            and self.fault is None
            and not self.upgraded
            and self._skip_body()
        )

    async def _answer(
        self, head: RequestHead, status: int, render: Callable[[bool, bool], bytes]
    ) -> bool:
        """Send an answer of our own, ``render(close, head_only)``; True to keep
        the connection."""
        keep = self._keepable(head)
        self.relay.tracker.response(status)
        await sockio.send_all(self.sock, render(not keep, head.method == b"HEAD"))
        self.response_started = True
        return keep

    async def _reply_error(self, head: RequestHead, status: int, kind: str, message: str) -> bool:
        extra = self.backend_header
        return await self._answer(
            head,
            status,
            lambda close, head_only: render_error(
                status, kind, message, close=close, extra_headers=extra, head_only=head_only
            ),
        )

    # -------------------------------------------------------- the exchange

    def _upstream_head(
        self, head: RequestHead, route: Route, path: bytes, original: bytes
    ) -> list[bytes]:
        parts = [head.method, b" ", path, b" HTTP/1.1\r\n"]
        parts += head.lines
        if head.host is None:
            assert route.address is not None
            parts.append(b"host: " + route.address.encode() + _CRLF)
        parts.append(route.verified_headers)
        parts.append(b"x-verified-path: ")
        parts.append(original)
        if not self.trusted or (head.xff is None and head.xfp is None):
            parts.append(self.forwarded)  # overwrites what the client said
        else:  # a trusted front proxy: keep its chain and its scheme
            xff = self.peer if head.xff is None else head.xff + b", " + self.peer
            parts.append(b"\r\nx-forwarded-for: " + xff)
            parts.append(b"\r\nx-forwarded-proto: " + (head.xfp or b"http") + _CRLF)
        if head.upgrade is not None:
            parts.append(b"connection: upgrade\r\nupgrade: " + head.upgrade + _CRLF)
        parts.append(_CRLF)
        return parts

    async def _exchange(
        self, head: RequestHead, route: Route, path: bytes, original: bytes, now: float
    ) -> bool:
        tracker = self.relay.tracker
        flight = tracker.request(route.backend_id, now)
        try:
            parts = self._upstream_head(head, route, path, original)
            if self._take_body_into(parts, head.chunked):
                return await self._exchange_whole(head, route, b"".join(parts), flight, now)
            return await self._exchange_streaming(head, route, parts, flight, now)
        finally:
            tracker.done(flight)

    async def _exchange_whole(
        self, head: RequestHead, route: Route, request: bytes, flight: InFlight, now: float
    ) -> bool:
        """The whole request is here: send it, relay the response.  A reused
        connection that turns out stale is replaced once for an idempotent
        request."""
        pool = self.relay.pool
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
                        raise _StaleUpstream from exc
                    raise GatewayFault(
                        502, "BackendUnreachable", f"sending to the backend failed ({exc})"
                    ) from None
                keep, reusable = await self._relay_response(upstream, head, route, flight)
                return keep
            except _StaleUpstream:
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

    async def _exchange_streaming(
        self, head: RequestHead, route: Route, parts: list[bytes], flight: InFlight, now: float
    ) -> bool:
        """The body is still arriving: stream it while the response comes back."""
        pool = self.relay.pool
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
            state = _PumpState()
            failure: Exception | None = None
            keep = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, upstream.sock, head.chunked, state, nursery)
                try:
                    keep, reusable = await self._relay_response(upstream, head, route, flight)
                except Exception as exc:  # raised again below, not as an ExceptionGroup
                    failure = exc
                if not state.body_done:
                    nursery.cancel_scope.cancel()
            if state.fault is not None:
                reusable = False
                if self.response_started:
                    return False
                raise state.fault
            if isinstance(failure, _StaleUpstream):
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

    async def _pump(
        self, upstream: socket.socket, chunked: bool, state: _PumpState, nursery: trio.Nursery
    ) -> None:
        """Stream the rest of the request body to the backend."""
        try:
            while True:
                parts: list[bytes] = []
                done = self._take_body_into(parts, chunked)
                if parts:
                    try:
                        await sockio.send_parts(upstream, parts)
                    except OSError:
                        return  # the backend stopped reading; its response tells the rest
                if done:
                    state.body_done = True
                    return
                if self.fault is not None:
                    raise self.fault
                if self.eof:
                    raise ClientFault(400, "IncompleteBody", "the request body ended early")
                try:
                    await self._fill()
                except OSError:
                    raise ClientFault(
                        400, "IncompleteBody", "the client went away during the body"
                    ) from None
        except ClientFault as fault:
            state.fault = fault
            nursery.cancel_scope.cancel()

    async def _relay_response(
        self,
        upstream: Upstream,
        head: RequestHead,
        route: Route,
        flight: InFlight | None,
        *,
        close: bool = False,
    ) -> tuple[bool, bool]:
        """Relay one response from ``upstream`` to the client (``close``: then
        close the client connection).

        Returns ``(keep the client connection, upstream reusable)``."""
        client = self.sock
        sink = upstream.sink
        pieces = sink.pieces
        tracker = self.relay.tracker
        head_method = head.method == b"HEAD"
        client_keep = head.keep_alive and not close
        chunk_out = False  # frame the body as chunks for the client
        until_close = False  # the backend's body ends when it closes
        interim = False
        started = False
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
                        out.append(_CRLF)
                    else:
                        out.append(piece)
                elif piece is END:
                    if interim:
                        interim = False
                        continue
                    if chunk_out:
                        out.append(_LAST_CHUNK)
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
                        if not head.version_10:
                            out.append(b"HTTP/1.1 %d " % status + piece.reason + _CRLF)
                            out += piece.lines
                            out.append(_CRLF)
                        continue
                    started = self.response_started = True
                    upstream_keep = piece.keep_alive
                    tracker.response(status)
                    if piece.event_stream and flight is not None:
                        tracker.long_lived(flight)
                    out.append(b"HTTP/1.1 %d " % status + piece.reason + _CRLF)
                    out += piece.lines
                    out.append(route.backend_header)
                    if not piece.cors:
                        out.append(CORS_LINES)
                    length = piece.content_length
                    if head_method or status == 204 or status == 304:
                        if length is not None and status != 204:
                            out.append(b"content-length: " + length + _CRLF)
                        done = True
                    elif length is not None:
                        out.append(b"content-length: " + length + _CRLF)
                    else:
                        until_close = not piece.chunked
                        if head.version_10:
                            client_keep = False
                        else:
                            chunk_out = True
                            out.append(b"transfer-encoding: chunked\r\n")
                    if not client_keep:
                        out.append(b"connection: close\r\n")
                    elif head.version_10:
                        out.append(b"connection: keep-alive\r\n")
                    out.append(_CRLF)
                    if done:
                        break
            pieces.clear()
            if out:
                if bulk:  # body pieces: gathered, not copied
                    bulk = False
                    await sockio.send_parts(client, out)
                else:  # a head and small pieces: one write
                    data = b"".join(out) if len(out) > 1 else out[0]
                    try:
                        sent = client.send(data)
                    except BlockingIOError:
                        sent = 0
                    if sent < len(data):
                        await sockio.send_all(client, memoryview(data)[sent:])
            if done:
                if head_method:
                    sink.new_parser()
                return client_keep, upstream_keep and not until_close
            usock = upstream.sock
            try:
                if wait_first:
                    wait_first = False
                    n = await sockio.wait_recv_into(usock, _view)
                else:
                    n = await sockio.recv_into(usock, _view)
            except OSError:
                n = 0
            if n == 0:
                if started and until_close:
                    if chunk_out:
                        await sockio.send_all(client, _LAST_CHUNK)
                    return client_keep, False
                if not received and upstream.reused:
                    raise _StaleUpstream
                if not started:
                    raise GatewayFault(
                        502, "BackendClosed", "the backend closed the connection before answering"
                    )
                return False, False
            received = True
            try:
                sink.parser.feed_data(_view[:n])
            except httptools.HttpParserUpgrade:
                if not started:
                    raise GatewayFault(
                        502, "BadGateway", "the backend switched protocols unasked"
                    ) from None
                return False, False
            except httptools.HttpParserError as exc:
                if not started:
                    raise GatewayFault(
                        502, "BadGateway", f"the backend's response is malformed ({exc})"
                    ) from None
                return False, False
            if sink.in_head:  # bytes of a head still incomplete: capped
                head_bytes += n
                if head_bytes > MAX_RESPONSE_HEAD:
                    if not started:
                        raise GatewayFault(
                            502, "BadGateway", "the backend's response head is too large"
                        )
                    return False, False
            else:
                head_bytes = 0

    # -------------------------------------------------------------- upgrades

    async def _upgrade(self, head: RequestHead, route: Route, path: bytes, original: bytes) -> bool:
        """Relay an upgrade request; on 101 splice the two connections."""
        relay = self.relay
        pool = relay.pool
        assert route.address is not None
        self._skip_body()
        upstream = await pool.connect(route.address)
        try:
            upstream.sink.pieces.clear()
            try:
                await sockio.send_parts(
                    upstream.sock, self._upstream_head(head, route, path, original)
                )
            except OSError as exc:
                raise GatewayFault(
                    502, "BackendUnreachable", f"sending to the backend failed ({exc})"
                ) from None
            switched = await self._await_switch(upstream, route)
            if switched is None:
                # Refused: relay the answer as a plain response, then close.
                await self._relay_response(upstream, head, route, None, close=True)
                return False
            relay.tracker.upgrades += 1
            await self._splice(upstream.sock, route)
            return False
        finally:
            pool.discard(upstream)

    async def _await_switch(self, upstream: Upstream, route: Route) -> bytes | None:
        """Wait for the backend's final answer to an upgrade request.  On 101,
        send it on to the client and return the bytes the backend sent after
        it; else None, with the answer left queued for :meth:`_relay_response`."""
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
                parts = [b"HTTP/1.1 101 " + piece.reason + _CRLF]
                parts += piece.lines
                parts.append(route.backend_header)
                parts.append(b"connection: upgrade\r\nupgrade: " + (piece.upgrade or b"") + _CRLF)
                parts.append(_CRLF)
                if tail:
                    parts.append(tail)
                pieces.clear()
                self.relay.tracker.response(101)
                self.response_started = True
                await sockio.send_parts(self.sock, parts)
                return tail
            try:
                n = await sockio.recv_into(upstream.sock, _view)
            except OSError:
                n = 0
            if n == 0:
                raise GatewayFault(
                    502, "BackendClosed", "the backend closed the connection before answering"
                )
            try:
                sink.parser.feed_data(_view[:n])
            except httptools.HttpParserUpgrade as exc:
                tail = bytes(_view[exc.args[0] : n])
            except httptools.HttpParserError as exc:
                raise GatewayFault(
                    502, "BadGateway", f"the backend's response is malformed ({exc})"
                ) from None
            if sink.in_head:
                head_bytes += n
                if head_bytes > MAX_RESPONSE_HEAD:
                    raise GatewayFault(
                        502, "BadGateway", "the backend's response head is too large"
                    )

    async def _splice(self, upstream: socket.socket, route: Route) -> None:
        """Copy bytes both ways until the connection ends.

        The backend closing ends it (what it sent is delivered first; whatever
        the client might still send could not be), like nginx.  The client
        closing its side is passed on (``shutdown``) and the backend gets
        ``half_close_timeout`` to finish (a WebSocket close reply, say).  An
        error on either side ends it at once."""
        tracker = self.relay.tracker
        connection_id = tracker.open(route.backend_id)
        try:
            if self.client_tail:
                await sockio.send_all(upstream, self.client_tail)
                self.client_tail = b""
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, self.sock, upstream, nursery, False)
                nursery.start_soon(self._pipe, upstream, self.sock, nursery, True)
        finally:
            tracker.close(route.backend_id, connection_id)

    async def _pipe(
        self, src: socket.socket, dst: socket.socket, nursery: trio.Nursery, ends: bool
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
        scope.deadline = min(
            scope.deadline, trio.current_time() + self.relay.settings.half_close_timeout
        )
