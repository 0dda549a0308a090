"""Parsing requests and responses with httptools (llhttp), into queued pieces.

This module owns the parser callbacks.  llhttp cannot be paused from Python,
so each :class:`RequestSink`/:class:`ResponseSink` turns the callbacks of one
``feed_data`` call into a queue of pieces, consumed afterwards by the relay
in order: a head (:class:`RequestHead`/:class:`ResponseHead`), body chunks
(``bytes``, already de-chunked) and :data:`END` per message.  A feed never
holds more than one receive buffer's worth, so the queue is small.

While a header arrives the sink applies :mod:`plane.proxy.headers`' rules:
hop-by-hop, ``x-verified-*`` (normalized), ``Forwarded`` and
``X-Forwarded-*`` headers never enter the forwarded lines, and the facts the
relay needs (framing, ``Connection``, ``Upgrade``, ``Host``, the client's
``X-Forwarded-For``/``-Proto``, ``Content-Type``, whether a response has CORS
headers) are noted on the way.  Trailers are dropped.

Why httptools here and h11 in the API (:mod:`plane.api.http`, and the
readiness probe): the proxy parses every byte of every proxied message, and
llhttp in C is what keeps it near a bare byte-splice (``bench/bench_proxy.py``);
h11 in pure Python would cost it most of its throughput.  The API parses a few
small requests a second and needs h11's whole protocol state machine
(keep-alive, ``Expect: 100-continue``, the connection's states), which llhttp's
callbacks would have us write by hand.  Two parsers, each where it is the right
one; neither module hand-parses HTTP.

Error handling
--------------
llhttp rejects what is malformed (bad request line, bad chunk, both
``Content-Length`` and ``Transfer-Encoding``, duplicate ``Content-Length``...)
with :class:`httptools.HttpParserError`.  The request sink adds the size caps:
past ``max_bytes`` of request line and headers, or ``max_count`` header
fields, a callback raises :class:`HeadTooLarge`, which llhttp reports as
:class:`httptools.HttpParserCallbackError` with the cause as its
``__context__`` (see :func:`head_too_large`); a second ``Host`` raises
:class:`BadHead` the same way (400, see :func:`bad_head`).  (Bytes of a head still
arriving are also counted by the relay, which caps a backend's head at
:data:`MAX_RESPONSE_HEAD`.)
"""

from __future__ import annotations

from collections.abc import Iterable

import httptools

from plane.proxy.headers import (
    BACKEND_ID_HEADER,
    CONNECTION_OPTIONS,
    CORS_PREFIX,
    REQUEST_DROPPED,
    connection_tokens,
    is_verified_name,
)


class HeadTooLarge(Exception):
    """The head passed a size or count cap (the peer's fault: 431 or 502)."""


class BadHead(Exception):
    """The head is well-formed HTTP but not acceptable (the peer's fault: 400)."""


def head_too_large(error: BaseException) -> bool:
    """True if a parser error was caused by :class:`HeadTooLarge`."""
    return isinstance(error.__context__, HeadTooLarge)


def bad_head(error: BaseException) -> BadHead | None:
    """The :class:`BadHead` that caused a parser error, if one did."""
    context = error.__context__
    return context if isinstance(context, BadHead) else None


class EndOfMessage:
    """The marker queued when a message is complete (use :data:`END`)."""

    __slots__ = ()


END = EndOfMessage()


class RequestHead:
    """A request's head, with the forwardable header lines already rendered."""

    __slots__ = (
        "chunked",
        "has_body",
        "host",
        "keep_alive",
        "lines",
        "method",
        "upgrade",
        "url",
        "version_10",
        "xff",
        "xfp",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        lines: list[bytes],
        version_10: bool,
        keep_alive: bool,
        upgrade: bytes | None,
        chunked: bool,
        has_body: bool,
        host: bytes | None,
        xff: bytes | None,
        xfp: bytes | None,
    ) -> None:
        self.method = method
        self.url = url
        self.lines = lines
        self.version_10 = version_10
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = chunked
        self.has_body = has_body
        self.host = host
        self.xff = xff
        self.xfp = xfp


class ResponseHead:
    """A response's head, with the forwardable header lines already rendered."""

    __slots__ = (
        "chunked",
        "content_length",
        "cors",
        "event_stream",
        "keep_alive",
        "lines",
        "reason",
        "status",
        "upgrade",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        lines: list[bytes],
        content_length: bytes | None,
        chunked: bool,
        event_stream: bool,
        upgrade: bytes | None,
        keep_alive: bool,
        cors: bool,
    ) -> None:
        self.status = status
        self.cors = cors
        self.keep_alive = keep_alive
        self.reason = reason
        self.lines = lines
        self.content_length = content_length
        self.chunked = chunked
        self.event_stream = event_stream
        self.upgrade = upgrade


RequestPiece = RequestHead | bytes | EndOfMessage
ResponsePiece = ResponseHead | bytes | EndOfMessage

# What the request sink does with a header, by lowercase name.
_KEEP, _DROP, _CONNECTION, _UPGRADE, _TE, _CL, _XFF, _XFP, _HOST, _CTYPE = range(10)
_REQUEST_SPECIAL: dict[bytes, int] = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _UPGRADE,
    b"transfer-encoding": _TE,
    b"content-length": _CL,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"host": _HOST,
    **{name: _DROP for name in REQUEST_DROPPED},
}


def _drop_named(lines: list[bytes], connection_values: list[bytes]) -> list[bytes]:
    """Remove the headers that ``Connection`` names (other than its options)."""
    named = {
        t
        for value in connection_values
        for t in connection_tokens(value)
        if t not in CONNECTION_OPTIONS
    }
    if not named:
        return lines
    return [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() not in named]


def _first_letters(names: Iterable[bytes]) -> frozenset[int]:
    """The first bytes of (lowercase) ``names``: a header whose first byte,
    lowercased, is not among them needs no closer look."""
    return frozenset(name[0] for name in names)


_REQUEST_FIRST = _first_letters(_REQUEST_SPECIAL) | {ord("x"), ord("p")}


class RequestSink:
    """Callbacks of one client connection's :class:`httptools.HttpRequestParser`.

    Headers whose first letter cannot start a special name are rendered at
    once (the fast path); the others are looked at by :meth:`_special`."""

    __slots__ = (
        "chunked",
        "connection",
        "count",
        "has_body",
        "host",
        "in_head",
        "lines",
        "max_bytes",
        "max_count",
        "parser",
        "pieces",
        "size",
        "upgrade",
        "url",
        "xff",
        "xfp",
    )

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.pieces: list[RequestPiece] = []
        self.in_head = False
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_begin()
        self.in_head = False

    def on_message_begin(self) -> None:
        self.in_head = True
        self.url = b""
        self.lines: list[bytes] = []
        self.count = 0
        self.size = 0
        self.connection: list[bytes] | None = None
        self.upgrade: bytes | None = None
        self.chunked = self.has_body = False
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.xfp: bytes | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)
        if self.size > self.max_bytes:
            raise HeadTooLarge("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer
        self.count += 1
        self.size += len(name) + len(value) + 4
        if self.size > self.max_bytes or self.count > self.max_count:
            raise HeadTooLarge("too many header bytes or fields")
        if name[0] | 0x20 in _REQUEST_FIRST:
            self._special(name, value)
        else:
            self.lines.append(b"%s: %s\r\n" % (name, value))

    def _special(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        kind = _REQUEST_SPECIAL.get(lname, _KEEP)
        if kind == _KEEP:
            if not (is_verified_name(lname) or lname.startswith(b"proxy-")):
                self.lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _HOST:
            if self.host is not None:
                raise BadHead("more than one Host header")
            self.host = value
            self.lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _CL:
            self.has_body = True
            self.lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _TE:
            self.chunked = self.has_body = True  # llhttp refuses a request TE not ending in chunked
            self.lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _CONNECTION:
            # Only a value naming other headers needs a closer look later.
            if value.strip().lower() not in CONNECTION_OPTIONS:
                if self.connection is None:
                    self.connection = [value]
                else:
                    self.connection.append(value)
        elif kind == _UPGRADE:
            self.upgrade = value
        elif kind == _XFF:
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif kind == _XFP:
            self.xfp = value

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        lines = self.lines
        if self.connection is not None:
            lines = _drop_named(lines, self.connection)
        self.pieces.append(
            RequestHead(
                parser.get_method(),
                self.url,
                lines,
                parser.get_http_version() == "1.0",
                parser.should_keep_alive(),
                self.upgrade if parser.should_upgrade() else None,
                self.chunked,
                self.has_body,
                self.host,
                self.xff,
                self.xfp,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.pieces.append(END)


_RESPONSE_SPECIAL: dict[bytes, int] = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _UPGRADE,
    b"transfer-encoding": _TE,
    b"content-length": _CL,
    BACKEND_ID_HEADER: _DROP,
    b"content-type": _CTYPE,
}

_RESPONSE_FIRST = _first_letters(_RESPONSE_SPECIAL) | {ord("p"), CORS_PREFIX[0]}

MAX_RESPONSE_HEAD = 65536
"""A backend's response head larger than this (counted in received bytes): 502."""


class ResponseSink:
    """Callbacks of one upstream connection's :class:`httptools.HttpResponseParser`.

    The backend's head is not capped per header here (the relay counts the
    bytes it feeds while a head is incomplete, against
    :data:`MAX_RESPONSE_HEAD`)."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "cors",
        "event_stream",
        "in_head",
        "lines",
        "parser",
        "pieces",
        "reason",
        "upgrade",
    )

    def __init__(self) -> None:
        self.pieces: list[ResponsePiece] = []
        self.parser = httptools.HttpResponseParser(self)
        self.on_message_begin()
        self.in_head = False

    def new_parser(self) -> None:
        """Start over (after a response to HEAD, whose body llhttp would wait for)."""
        self.parser = httptools.HttpResponseParser(self)
        self.in_head = False
        self.pieces.clear()

    def on_message_begin(self) -> None:
        self.in_head = True
        self.reason = b""
        self.lines: list[bytes] = []
        self.connection: list[bytes] | None = None
        self.content_length: bytes | None = None
        self.chunked = self.event_stream = self.cors = False
        self.upgrade: bytes | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer
        if name[0] | 0x20 in _RESPONSE_FIRST:
            self._special(name, value)
        else:
            self.lines.append(b"%s: %s\r\n" % (name, value))

    def _special(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        kind = _RESPONSE_SPECIAL.get(lname, _KEEP)
        if kind == _KEEP:
            if not lname.startswith(b"proxy-"):
                self.lines.append(b"%s: %s\r\n" % (name, value))
                if lname.startswith(CORS_PREFIX):
                    self.cors = True
        elif kind == _CTYPE:
            self.event_stream = value.lstrip().lower().startswith(b"text/event-stream")
            self.lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _CL:
            self.content_length = value.strip()
        elif kind == _TE:
            self.chunked = connection_tokens(value)[-1:] == [b"chunked"]
        elif kind == _CONNECTION:
            # Only a value naming other headers needs a closer look later.
            if value.strip().lower() not in CONNECTION_OPTIONS:
                if self.connection is None:
                    self.connection = [value]
                else:
                    self.connection.append(value)
        elif kind == _UPGRADE:
            self.upgrade = value

    def on_headers_complete(self) -> None:
        self.in_head = False
        lines = self.lines
        if self.connection is not None:
            lines = _drop_named(lines, self.connection)
        parser = self.parser
        self.pieces.append(
            ResponseHead(
                parser.get_status_code(),
                self.reason,
                lines,
                self.content_length,
                self.chunked,
                self.event_stream,
                self.upgrade,
                parser.should_keep_alive(),
                self.cors,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.pieces.append(END)
