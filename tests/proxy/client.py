"""Test clients for the proxy: a keep-alive HTTP/1.1 client (h11) and raw sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import h11
import orjson
import trio


@attrs.define
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return values[-1] if values else None

    def json(self) -> Any:
        return orjson.loads(self.body)

    def kind(self) -> str:
        """The ``kind`` of an error answer of the proxy's own (Plane's
        ``ApiError``: ``{"id", "kind", "message"}``, ``Server: plane/...``)."""
        error = self.json()
        assert set(error) == {"id", "kind", "message"}, error
        assert error["id"] and error["message"], error
        assert (self.header("server") or "").startswith("plane/"), self.headers
        kind: str = error["kind"]
        return kind


def _decode_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode().lower(), v.decode()) for n, v in headers]


class HttpClient:
    """One client connection; requests go one after the other on it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)

    @classmethod
    async def connect(cls, port: int) -> HttpClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(262144))
                continue
            return event

    async def start(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        length: int | None = None,
        chunked: bool = False,
    ) -> None:
        """Send a request head; the body follows with :meth:`send` and :meth:`end`."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        given = list(headers)
        has_host = any(name.lower() == "host" for name, _ in given)
        all_headers = given if has_host else [("host", "proxy.test"), *given]
        if length is not None:
            all_headers.append(("content-length", str(length)))
        elif chunked:
            all_headers.append(("transfer-encoding", "chunked"))
        await self._send(h11.Request(method=method, target=target, headers=all_headers))

    async def send(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def head(self) -> Response:
        """The response head (1xx skipped)."""
        while True:
            event = await self._next()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return Response(
                    event.status_code,
                    _decode_headers(event.headers),
                    http_version=event.http_version.decode(),
                )
            raise AssertionError(f"expected a response, got {event!r}")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives."""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def finish(self, response: Response) -> Response:
        response.body = b"".join([c async for c in self.chunks()])
        return response

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Response:
        await self.start(method, target, headers, length=None if body is None else len(body))
        if body:
            await self.send(body)
        await self.end()
        return await self.finish(await self.head())

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


async def get(port: int, target: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    async with await HttpClient.connect(port) as client:
        return await client.request("GET", target, headers)


def parse_responses(raw: bytes) -> list[Response]:
    """The responses in ``raw`` (bytes a server sent), parsed with h11."""
    responses: list[Response] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    while True:
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        response: Response | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return responses  # the server closed after its last response
            if isinstance(event, h11.Response):
                response = Response(event.status_code, _decode_headers(event.headers))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                response.body = bytes(body)
                responses.append(response)
                break
            elif (
                event is h11.PAUSED
                or event is h11.NEED_DATA
                or isinstance(event, h11.ConnectionClosed)
            ):
                return responses
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return responses
        conn.start_next_cycle()
