"""One client connection, from its first byte to its close: :class:`ClientSession`.

This module owns the session loop (read a request head, route it, answer or
hand it on, repeat while the connection is kept), the client side's input
(receives parsed by httptools into queued pieces, the header and keep-alive
deadlines armed for the server's watchdog), the routing decision (see
:mod:`plane.proxy.relay` for the rules) and the proxy's own answers
(``/ready``, ``/``, errors).  A routed plain request goes to
:func:`plane.proxy.exchange.exchange`, an upgrade to
:func:`plane.proxy.upgrade.upgrade`.

Resource handling: the session owns its client socket and closes it when it
ends, however it ends.

Error handling: the client's faults (:class:`~plane.proxy.errors.ClientFault`)
are answered 400/408/431 and the connection closed; a backend's fault
(:class:`~plane.proxy.errors.GatewayFault`) is answered 502/504 if no
response started, else the connection is closed; a client that goes away
ends the session quietly.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable

import httptools
import trio

from plane import tokens
from plane.proxy import sockio
from plane.proxy.errors import (
    OVERLOADED_MESSAGE,
    ClientFault,
    GatewayFault,
    ProxyFault,
    render_answer,
    render_error,
    render_redirect,
)
from plane.proxy.exchange import exchange
from plane.proxy.headers import subdomain_of
from plane.proxy.parsing import (
    END,
    RequestHead,
    RequestSink,
    bad_head,
    head_too_large,
)
from plane.proxy.relay import (
    BUFFER_SIZE,
    CRLF,
    LAST_CHUNK,
    OVERLOADED_HEAD_TIMEOUT,
    Relay,
    original_form,
    split_target,
)
from plane.proxy.routes import Refusal, Route
from plane.proxy.upgrade import upgrade

_NOT_SERVING = (
    "the proxy has no current routing table (not synced with the controller yet, "
    "or cut off from it for too long)"
)


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

    async def fill(self, wait_first: bool = False) -> int:
        """Receive from the client and parse; returns the count, 0 at end of stream.

        ``wait_first`` when nothing is likely to have arrived yet (saves a
        failed receive)."""
        sock = self.sock
        view = self.relay.view
        if wait_first:
            n = await sockio.wait_recv_into(sock, view)
        else:
            n = await sockio.recv_into(sock, view)
        if n == 0:
            self.eof = True
            return 0
        if self.fault is not None or self.upgraded:
            return n  # the parser is done; nothing more is read as HTTP
        sink = self.sink
        try:
            sink.parser.feed_data(view[:n])
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.client_tail = bytes(view[exc.args[0] : n])
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
            await self.fill(wait_first)
            wait_first = False
            if not timing_head and sink.in_head:
                timing_head = True
                self._arm(trio.current_time() + self.header_timeout)

    def take_body_into(self, parts: list[bytes], chunked: bool) -> bool:
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
                    parts.append(LAST_CHUNK)
                done = self.request_done = True
                break
            if type(piece) is bytes:
                if chunked:
                    parts.append(b"%x\r\n" % len(piece))
                    parts.append(piece)
                    parts.append(CRLF)
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

    def skip_body(self) -> bool:
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
        feed = relay.feed
        if not feed.serving():
            if not feed.wait_for_sync:
                return await self._reply_error(head, 503, "ProxyNotReady", _NOT_SERVING)
            await feed.synced.wait()
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
            return await upgrade(self, head, route, path, original)
        return await exchange(self, head, route, path, original, now)

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
        if not self.relay.feed.serving():
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
            and self.skip_body()
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
