"""A small real backend for the proxy tests: HTTP/1.1 (h11) and WebSocket (wsproto).

Runs in the test's trio loop on a free 127.0.0.1 port and records what it saw.

Endpoints (any path prefix works; the last path segment picks the behaviour):

* default: reads the whole body (streaming, hashing as it goes) and answers
  JSON ``{"method", "target", "http_version", "headers": [[name, value]...],
  "body_len", "body_sha256"}``.
* ``/download?size=N[&chunked=1][&gate=1]``: a body of N pattern bytes in
  64 KiB writes, sized or chunked; with ``gate=1`` it sends the first write,
  then waits for :attr:`TestBackend.gate` before the rest.
* ``/sse?count=N&interval=S``: ``text/event-stream``, N events S apart.
* ``/slow?seconds=S``: answers after S seconds.
* ``/close``: answers with ``Connection: close`` and closes.
* ``/status/NNN``: answers status NNN with an empty body.
* ``/head-length``: answers ``Content-Length: 1234``; to HEAD without a body.
* ``/cors?origin=O``: answers 204 with its own ``Access-Control-Allow-Origin: O``
  (any method, a preflight ``OPTIONS`` too).
* a WebSocket handshake (any path but ``/refuse-upgrade``): echoes every
  message; ``/refuse-upgrade`` answers 403 instead of 101;
  ``/close-after-one`` closes (code 1000) after the first echo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import orjson
import trio
import wsproto
import wsproto.events as ws_events
from wsproto import ConnectionType

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the download pattern."""
    reps = size // len(PATTERN) + 1
    return (PATTERN * reps)[:size]


@attrs.define(eq=False)
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]


class TestBackend:
    """See the module docstring."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.port = 0
        self.accepts = 0
        self.requests: list[Seen] = []
        self.first_body = trio.Event()
        self.gate = trio.Event()
        self.ws_messages = 0
        self.ws_closed = trio.Event()
        self._idle: set[trio.SocketStream] = set()
        self.download_sent = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def drop_idle(self) -> int:
        """Close every connection waiting for its next request (like a
        keep-alive timeout); returns how many."""
        idle = list(self._idle)
        for stream in idle:
            await stream.aclose()
        return len(idle)

    # ---------------------------------------------------------------- http

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        try:
            async with stream:
                while True:
                    self._idle.add(stream)
                    try:
                        event = await self._next(conn, stream)
                    finally:
                        self._idle.discard(stream)
                    if not isinstance(event, h11.Request):
                        return
                    if _header(event.headers, b"upgrade") is not None:
                        await self._websocket(stream, conn, event)
                        return
                    await self._respond(stream, conn, event)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return

    async def _next(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Event | type:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(262144)
                conn.receive_data(data)
                continue
            return event

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, event: h11.Event
    ) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _body(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        while True:
            event = await self._next(conn, stream)
            if isinstance(event, h11.Data):
                if size == 0 and event.data:
                    self.first_body.set()
                size += len(event.data)
                digest.update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return size, digest.hexdigest()
            else:
                raise h11.ProtocolError(f"unexpected {event!r}")

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
    ) -> None:
        target = request.target.decode()
        headers = [(n.decode(), v.decode()) for n, v in request.headers]
        self.requests.append(Seen(request.method.decode(), target, headers))
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        last = url.path.rstrip("/").rsplit("/", 1)[-1]
        if conn.they_are_waiting_for_100_continue:
            await self._send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        size, sha = await self._body(conn, stream)
        if last == "download":
            await self._download(stream, conn, int(query.get("size", "0")), query)
        elif last == "sse":
            await self._sse(stream, conn, int(query.get("count", "3")), query)
        elif last == "slow":
            await trio.sleep(float(query.get("seconds", "1")))
            await self._simple(stream, conn, 200, b"slow done")
        elif last == "close":
            await self._simple(stream, conn, 200, b"bye", [(b"connection", b"close")])
        elif url.path.rstrip("/").rsplit("/", 2)[-2:-1] == ["status"]:
            await self._simple(stream, conn, int(last), b"")
        elif last == "cors":
            origin = query.get("origin", "https://app.example").encode()
            await self._simple(stream, conn, 204, b"", [(b"access-control-allow-origin", origin)])
        elif last == "head-length":
            headers_out = [(b"content-length", b"1234")]
            await self._send(conn, stream, h11.Response(status_code=200, headers=headers_out))
            if request.method != b"HEAD":
                await self._send(conn, stream, h11.Data(data=b"x" * 1234))
            await self._send(conn, stream, h11.EndOfMessage())
        else:
            body = orjson.dumps(
                {
                    "method": request.method.decode(),
                    "target": target,
                    "http_version": request.http_version.decode(),
                    "headers": [[n.lower(), v] for n, v in headers],
                    "body_len": size,
                    "body_sha256": sha,
                }
            )
            await self._simple(stream, conn, 200, body, [(b"content-type", b"application/json")])

    async def _simple(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = list(headers or [])
        if status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        await self._send(conn, stream, h11.Response(status_code=status, headers=headers))
        if body:
            await self._send(conn, stream, h11.Data(data=body))
        await self._send(conn, stream, h11.EndOfMessage())

    async def _download(
        self, stream: trio.SocketStream, conn: h11.Connection, size: int, query: dict[str, str]
    ) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if query.get("chunked") != "1":
            headers.append((b"content-length", str(size).encode()))
        await self._send(conn, stream, h11.Response(status_code=200, headers=headers))
        sent = 0
        while sent < size:
            piece = PATTERN[: min(len(PATTERN), size - sent)]
            await self._send(conn, stream, h11.Data(data=piece))
            sent += len(piece)
            self.download_sent = sent
            if sent == len(piece) and query.get("gate") == "1":
                await self.gate.wait()
        await self._send(conn, stream, h11.EndOfMessage())

    async def _sse(
        self, stream: trio.SocketStream, conn: h11.Connection, count: int, query: dict[str, str]
    ) -> None:
        interval = float(query.get("interval", "0.1"))
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await self._send(conn, stream, h11.Response(status_code=200, headers=headers))
        for i in range(count):
            await self._send(conn, stream, h11.Data(data=f"data: {i}\n\n".encode()))
            await trio.sleep(interval)
        await self._send(conn, stream, h11.EndOfMessage())

    # ----------------------------------------------------------- websocket

    async def _websocket(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
    ) -> None:
        target = request.target.decode()
        headers = [(n.decode(), v.decode()) for n, v in request.headers]
        self.requests.append(Seen(request.method.decode(), target, headers))
        if target.rstrip("/").endswith("refuse-upgrade"):
            await self._simple(
                stream, conn, 403, b"no upgrade for you", [(b"connection", b"close")]
            )
            return
        ws = wsproto.WSConnection(ConnectionType.SERVER)
        ws.initiate_upgrade_connection(list(request.headers), request.target)
        tail, _closed = conn.trailing_data
        if tail:
            ws.receive_data(bytes(tail))
        try:
            while True:
                for event in ws.events():
                    if isinstance(event, ws_events.Request):
                        await stream.send_all(ws.send(ws_events.AcceptConnection()))
                    elif isinstance(event, ws_events.Message):
                        self.ws_messages += 1
                        if isinstance(event, ws_events.TextMessage):
                            out = ws.send(
                                ws_events.TextMessage(
                                    data=event.data, message_finished=event.message_finished
                                )
                            )
                        else:
                            out = ws.send(
                                ws_events.BytesMessage(
                                    data=event.data, message_finished=event.message_finished
                                )
                            )
                        await stream.send_all(out)
                        if target.rstrip("/").endswith("close-after-one"):
                            await stream.send_all(ws.send(ws_events.CloseConnection(code=1000)))
                            return
                    elif isinstance(event, ws_events.Ping):
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, ws_events.CloseConnection):
                        await stream.send_all(ws.send(event.response()))
                        return
                data = await stream.receive_some(65536)
                if not data:
                    return
                ws.receive_data(data)
        finally:
            self.ws_closed.set()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None
