"""The HTTP/1.1 server loop: h11 over trio streams, one task per connection.

This module owns the bytes on the wire and nothing above them: it reads
requests with h11 (keep-alive, ``Content-Length`` and chunked request bodies,
``Expect: 100-continue``), hands each one as a :class:`Request` to a handler,
and writes back the :class:`Response` the handler returns: a fixed body (with
``Content-Length``), a streamed body (chunked, or close-delimited for an
HTTP/1.0 client) or a WebSocket session.  It knows no routes and no JSON
beyond the few error bodies it must produce itself.

WebSocket upgrades are handed to trio-websocket: h11 has already read the
upgrade request, so the request head is serialized again (from h11's parsed
``Request``, with the bytes h11 had buffered after it) and replayed in front
of the socket (:class:`_ReplayStream`); ``trio_websocket.wrap_server_stream``
then performs the handshake with wsproto as if it had read the request
itself.

Resource handling
-----------------
:func:`serve_http_connection` owns its stream and closes it when it returns.
A streamed response runs in a nursery next to a watcher that reads the
socket: when the client goes away the stream is cancelled at once, without
waiting for the next write.  After an error answer sent while the client may
still be sending (413, 408, 400), the connection lingers briefly (half-close,
drain at most :data:`LINGER_BYTES` for :data:`LINGER_SECONDS`) so the client
reads the answer instead of a reset.

Error handling
--------------
The peer's faults are answered, never raised: malformed HTTP -> 400
``BadRequest`` (431 ``HeadersTooLarge`` for an oversized head), conflicting
framing (``Content-Length`` with ``Transfer-Encoding``, or two different
``Content-Length`` values) -> 400 ``BadRequest`` and the connection closes
without serving a pipelined request after it (RFC 9112 §6.1), a head or body
that does not arrive within ``header_timeout`` -> 408 ``RequestTimeout``, a
body over ``max_body_bytes`` -> 413 ``PayloadTooLarge``; each closes the
connection.  A broken socket ends the connection quietly.  The handler is
expected not to raise (the router turns exceptions into 500s); if it does,
or a streamed body fails half-way, the error is logged and the connection
closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio
import trio_websocket

from plane.api.errors import error_json

log = logging.getLogger("plane.api.http")

RECEIVE_SIZE = 65536
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
MAX_PIPELINED_BYTES = 65536
"""While a response streams, at most this much of a next request is buffered."""

Send = Callable[[bytes], Awaitable[None]]
BodyWriter = Callable[[Send], Awaitable[None]]
"""A streamed body: called with ``send(chunk)``, returns when the body is complete."""
WebSocketHandler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]
AnswerObserver = Callable[[int], None]
"""Told the status of every answer this layer produces itself (400, 408, 413, 431)."""


class StreamGate:
    """The cap on concurrent streamed responses and WebSocket sessions (SSE,
    logs, the event feed), shared by every connection of one server: past
    ``limit`` a stream is answered ``503 TooManyStreams`` instead.  O(1)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be at least 1, not {limit}")
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


@attrs.frozen
class ServerConfig:
    streams: StreamGate | None = None
    """The stream cap (None: none)."""
    max_body_bytes: int = 65536
    header_timeout: float = 10.0
    """Seconds to wait for a request's head (also the keep-alive idle limit) and,
    again, for its body."""
    write_timeout: float = 30.0
    """Seconds one chunk of a streamed response may take to be written."""
    max_header_bytes: int = 16384


@attrs.frozen
class Request:
    """One parsed request.  Header names are lower-case; values are latin-1 text."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def is_websocket(self) -> bool:
        """A WebSocket upgrade: ``Upgrade: websocket`` and an ``upgrade`` token in
        ``Connection`` (any of its comma-separated tokens, as Firefox sends
        ``keep-alive, Upgrade``)."""
        upgrade = (self.header("upgrade") or "").strip().lower()
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return self.method == "GET" and upgrade == "websocket" and "upgrade" in tokens


@attrs.frozen
class Response:
    """What a handler answers: exactly one of ``body``, ``stream`` or ``websocket``."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    stream: BodyWriter | None = None
    websocket: WebSocketHandler | None = None


Handler = Callable[[Request], Awaitable[Response]]


class _ReplayStream(trio.abc.Stream):
    """A stream that first yields ``prefix``, then reads from ``inner``."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _head_bytes(request: h11.Request) -> bytes:
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    lines += [name + b": " + value for name, value in request.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


class _Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        config: ServerConfig,
        observe: AnswerObserver | None,
        peer: str,
    ) -> None:
        self.stream = stream
        self.config = config
        self.observe = observe
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.peer_gone = False

    # ------------------------------------------------------------- plumbing

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self, *, want_body: bool = False) -> object:
        """The next h11 event (or the ``PAUSED`` sentinel), reading as needed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if want_body and self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.conn.receive_data(bytes(data))

    async def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """Send an error of this layer's own (if a response may still be sent), linger, close."""
        if self.observe is not None:
            self.observe(status)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_json(code, message, status)
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            try:
                await self._send(
                    h11.Response(status_code=status, headers=headers, reason=_reason(status))
                )
                await self._send(h11.Data(data=body))
                await self._send(h11.EndOfMessage())
            except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                return
        await self._linger()

    async def _linger(self) -> None:
        with trio.move_on_after(LINGER_SECONDS):
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # ---------------------------------------------------------- the cycle

    async def serve(self, handler: Handler) -> None:
        while True:
            head = await self._read_head()
            if head is None:
                return
            body = await self._read_body(head)
            if body is None:
                return
            try:
                split = urlsplit(head.target.decode("latin-1"))
            except ValueError:  # e.g. "http://[bad/": an invalid authority
                await self._answer_and_close(400, "BadRequest", "malformed request target")
                return
            request = Request(
                method=head.method.decode("ascii", "replace"),
                target=head.target.decode("latin-1"),
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
                body=body,
                peer=self.peer,
            )
            response = await handler(request)
            gate = self.config.streams
            if gate is not None and (response.stream or response.websocket) is not None:
                if not gate.take():
                    await self._answer_and_close(
                        503,
                        "TooManyStreams",
                        f"the API is at its limit of {gate.limit} concurrent streams "
                        "(--api-max-streams); try again later",
                    )
                    return
                try:
                    if response.websocket is not None:
                        await self._websocket(head, response.websocket)
                        return
                    await self._respond(response)
                finally:
                    gate.give_back()
            elif response.websocket is not None:
                await self._websocket(head, response.websocket)
                return
            else:
                await self._respond(response)
            if self.peer_gone or self.conn.our_state is not h11.DONE:
                return
            if self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _read_head(self) -> h11.Request | None:
        with trio.move_on_after(self.config.header_timeout):
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    await self._answer_and_close(431, "HeadersTooLarge", "request head too large")
                else:
                    await self._answer_and_close(status, "BadRequest", f"malformed HTTP: {exc}")
                return None
            if isinstance(event, h11.Request):
                # h11 bounds only an *incomplete* head; a complete one that arrived
                # in one read is measured here
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.config.max_header_bytes:
                    await self._answer_and_close(431, "HeadersTooLarge", "request head too large")
                    return None
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    # h11 would frame by Transfer-Encoding alone; RFC 9112 §6.1 lets us
                    # refuse, and says to close either way (a request-smuggling vector)
                    await self._answer_and_close(
                        400,
                        "BadRequest",
                        "conflicting framing: both Content-Length and Transfer-Encoding",
                    )
                    return None
                return event
            return None  # ConnectionClosed
        # timed out: quietly close an idle keep-alive connection; 408 a half-sent head
        pending, _ = self.conn.trailing_data
        if self.conn.their_state is h11.IDLE and pending:
            await self._answer_and_close(408, "RequestTimeout", "request head not received in time")
        return None

    async def _read_body(self, head: h11.Request) -> bytes | None:
        limit = self.config.max_body_bytes
        declared = _content_length(head)
        if declared is not None and declared > limit:
            await self._answer_and_close(
                413, "PayloadTooLarge", f"request body over the limit of {limit} bytes"
            )
            return None
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.config.header_timeout):
            try:
                while True:
                    event = await self._next_event(want_body=True)
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > limit:
                            await self._answer_and_close(
                                413,
                                "PayloadTooLarge",
                                f"request body over the limit of {limit} bytes",
                            )
                            return None
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
                    else:  # ConnectionClosed mid-body
                        return None
            except h11.RemoteProtocolError as exc:
                await self._answer_and_close(400, "BadRequest", f"malformed HTTP: {exc}")
                return None
        await self._answer_and_close(408, "RequestTimeout", "request body not received in time")
        return None

    async def _respond(self, response: Response) -> None:
        headers = list(response.headers)
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
            await self._send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=_reason(response.status)
                )
            )
            if response.body:
                await self._send(h11.Data(data=response.body))
            await self._send(h11.EndOfMessage())
            return
        await self._send(
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            )
        )
        writer = response.stream

        async def send(chunk: bytes) -> None:
            if chunk:
                with trio.fail_after(self.config.write_timeout):
                    await self._send(h11.Data(data=chunk))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, nursery.cancel_scope)
            try:
                await writer(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                self.peer_gone = True
            nursery.cancel_scope.cancel()
        if not self.peer_gone:
            await self._send(h11.EndOfMessage())

    async def _watch_peer(self, scope: trio.CancelScope) -> None:
        """While a response streams: notice the client leaving; buffer a pipelined request."""
        buffered = 0
        while buffered < MAX_PIPELINED_BYTES:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.peer_gone = True
                scope.cancel()
                return
            buffered += len(data)
            self.conn.receive_data(bytes(data))
        await trio.sleep_forever()

    async def _websocket(self, head: h11.Request, handler: WebSocketHandler) -> None:
        pending, _ = self.conn.trailing_data
        replay = _ReplayStream(self.stream, _head_bytes(head) + bytes(pending))
        async with trio.open_nursery() as nursery:
            ws_request = await trio_websocket.wrap_server_stream(nursery, replay)
            ws = await ws_request.accept()
            try:
                await handler(ws)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                with trio.move_on_after(LINGER_SECONDS) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def serve_http_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    config: ServerConfig,
    *,
    observe: AnswerObserver | None = None,
    peer: str = "",
) -> None:
    """Serve HTTP/1.1 on ``stream`` until the client leaves or the connection must close.

    Never raises for anything the peer does; closes ``stream`` on return.
    """
    connection = _Connection(stream, config, observe, peer)
    try:
        await connection.serve(handler)
    except Exception as exc:
        if _peer_fault(exc):
            log.debug("connection from %s ended: %r", peer, exc)
        else:
            log.exception("connection from %s failed", peer)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


_PEER_FAULTS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.ProtocolError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
)


def _peer_fault(exc: BaseException) -> bool:
    """True when ``exc`` (every leaf of it, for a group) is the peer leaving or misbehaving."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_peer_fault(inner) for inner in exc.exceptions)
    return isinstance(exc, _PEER_FAULTS)
