"""How a response is framed for the client: pure decisions, no I/O.

This module owns the HTTP/1.1 framing rules the relay applies to a response,
in the manner of h11's writers: given what the request asked (method HEAD,
HTTP/1.0, keep-alive) and the response head (status, ``Content-Length``,
``Transfer-Encoding: chunked``), :func:`response_framing` says

* whether the response has a body at all (HEAD, 204, 304: none, whatever the
  head says; a 304 and a HEAD answer keep their ``Content-Length``, a 204
  never has one);
* how the body goes to the client: as it is with its length (``LENGTH``),
  re-chunked (``CHUNKED``: a backend's chunked or close-delimited body to an
  HTTP/1.1 client) or close-delimited (``CLOSE``: an unsized body to an
  HTTP/1.0 client, which knows no chunks);
* whether the backend's body ends only when it closes (``until_close``: no
  length and not chunked; that upstream connection cannot be reused);
* whether the client connection can be kept, and the ``Connection`` line
  that says so (``close``; ``keep-alive`` to an HTTP/1.0 client that asked
  for it).

:func:`interim_forwarded` says whether a 1xx interim response is passed on
(never to an HTTP/1.0 client; a 101 is not interim: it is an upgrade).

Speed: the relay asks once per response; the inputs form a small finite set
(the status matters only as 204/304/other), so the answers are memoised
(:func:`functools.lru_cache`) and each is one shared frozen object.
"""

from __future__ import annotations

import enum
import functools

import attrs


class Body(enum.Enum):
    NONE = "none"
    """No body follows the head (HEAD, 204, 304)."""
    LENGTH = "length"
    """The body is sent as it comes, with the backend's ``Content-Length``."""
    CHUNKED = "chunked"
    """The body is re-framed as chunks for the client."""
    CLOSE = "close"
    """The body is sent as it comes and ends when the client connection closes."""


@attrs.frozen
class Framing:
    body: Body
    send_length: bool
    """Pass the backend's ``Content-Length`` on."""
    until_close: bool
    """The backend's body ends when the backend closes (not reusable)."""
    keep_client: bool
    """The client connection can serve another request after this response."""
    connection_line: bytes
    """The ``Connection`` header line to add (maybe empty)."""

    @property
    def head_lines(self) -> bytes:
        """The framing lines the relay adds after the backend's own (the
        length itself, when sent, is added by the caller)."""
        chunked = b"transfer-encoding: chunked\r\n" if self.body is Body.CHUNKED else b""
        return chunked + self.connection_line


CONNECTION_CLOSE = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"


def response_framing(
    *,
    head_request: bool,
    version_10: bool,
    keep_alive: bool,
    status: int,
    has_length: bool,
    chunked: bool,
) -> Framing:
    """The framing of a final (>= 200) response; see the module docstring.

    ``keep_alive``: the client asked to keep the connection (httptools'
    ``should_keep_alive``: HTTP/1.1 unless ``close``, HTTP/1.0 only with
    ``keep-alive``) and the proxy is willing to."""
    kind = status if status in (204, 304) else 200
    return _framing(head_request, version_10, keep_alive, kind, has_length, chunked)


@functools.lru_cache(maxsize=64)
def _framing(
    head_request: bool,
    version_10: bool,
    keep_alive: bool,
    kind: int,
    has_length: bool,
    chunked: bool,
) -> Framing:
    keep = keep_alive
    until_close = False
    if head_request or kind in (204, 304):
        body = Body.NONE
        send_length = has_length and kind != 204
    elif has_length:
        body = Body.LENGTH
        send_length = True
    else:
        send_length = False
        until_close = not chunked
        if version_10:
            body = Body.CLOSE
            keep = False
        else:
            body = Body.CHUNKED
    if not keep:
        line = CONNECTION_CLOSE
    elif version_10:
        line = CONNECTION_KEEP_ALIVE
    else:
        line = b""
    return Framing(body, send_length, until_close, keep, line)


def interim_forwarded(status: int, version_10: bool) -> bool:
    """True if a 1xx interim response (not 101) goes on to the client."""
    return 100 <= status < 200 and status != 101 and not version_10


def upstream_reusable(framing: Framing, upstream_keep_alive: bool) -> bool:
    """True if the backend connection can be pooled once the response ended."""
    return upstream_keep_alive and not framing.until_close
