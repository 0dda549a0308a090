"""The HTTP/1.1 relay: what every client session shares, and the relay's steps.

This module owns :class:`Relay` (the routing table, its feed, the upstream
pool, the tracker, the settings and the one receive buffer of the server
that owns it), the request target's split into token and upstream path, and
the constants of the hot path.  A client connection is served, request by
request (keep-alive and pipelining included), by
:class:`~plane.proxy.session.ClientSession` (:mod:`plane.proxy.session`: the
loop, reading, routing, the proxy's own answers), whose plain requests go
through :mod:`plane.proxy.exchange` (framed by :mod:`plane.proxy.framing`)
and upgrades through :mod:`plane.proxy.upgrade`:

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
for the socket).  All receives of one server go into its one buffer
(:attr:`Relay.buffer`; speed: no allocation per receive): httptools copies
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

from typing import TYPE_CHECKING

import attrs

from plane.actors.clock import TrioClock
from plane.proxy.deadlines import Deadlines
from plane.proxy.routes import RouteTable
from plane.proxy.settings import ProxySettings
from plane.proxy.table_feed import RouteFeed
from plane.proxy.tracking import Tracker
from plane.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from plane.proxy.session import ClientSession

BUFFER_SIZE = 262144
"""The server's receive buffer (a whole small exchange in one receive)."""

SPLICE_CHUNK = 65536

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


@attrs.define
class Relay:
    """What every session of one server shares."""

    table: RouteTable
    feed: RouteFeed
    pool: UpstreamPool
    tracker: Tracker
    settings: ProxySettings
    clock: TrioClock
    cluster_host: bytes | None = attrs.field(init=False)
    deadlines: Deadlines[ClientSession] = attrs.field(init=False)
    """The sessions' header and keep-alive deadlines, for the server's watchdog."""
    buffer: bytearray = attrs.field(init=False)
    """The one receive buffer of the server's sessions (see the module docstring)."""
    view: memoryview = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        host = settings.cluster_host
        self.cluster_host = None if host is None else host.encode("ascii")
        self.deadlines = Deadlines(watchdog_tick(settings))
        self.buffer = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buffer)


WATCHDOG_TICK = 0.1
"""How often the timeouts are checked at most (seconds)."""

OVERLOADED_HEAD_TIMEOUT = 1.0
"""An over-cap connection's request head must arrive within this long."""


def watchdog_tick(settings: ProxySettings) -> float:
    """The precision of the header and keep-alive timeouts."""
    return min(WATCHDOG_TICK, settings.header_timeout / 5, settings.keepalive_timeout / 5)


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
