"""The proxy's tunables, in one frozen value.

This module owns :class:`ProxySettings`: every limit and timeout of the proxy,
with the defaults plane serves with.  Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ProxySettings:
    """Limits and timeouts of :func:`plane.proxy.server.serve_proxy`."""

    ready_wait_timeout: float = 30.0
    """How long a request for a backend that is still requested/starting waits
    for it to become ready before the client gets 504."""

    header_timeout: float = 10.0
    """A request's head must arrive within this long of its first byte (of the
    accept, for a connection's first request); else the connection is closed
    (408 if part of a head had arrived)."""

    keepalive_timeout: float = 75.0
    """An idle client connection (between requests) is closed after this long."""

    max_header_bytes: int = 16384
    """Request line plus headers larger than this: 431."""

    max_headers: int = 100
    """More header fields than this: 431."""

    max_connections: int = 1024
    """Concurrent client connections.  Past the cap a new connection is
    accepted, answered 503 and closed at once (so clients get an answer, and
    the accept queue never backs up)."""

    upstream_pool_size: int = 32
    """Idle upstream connections kept per backend for reuse.  Busy connections
    are not capped: every in-flight request holds one."""

    upstream_idle_timeout: float = 30.0
    """An idle pooled upstream connection is closed after this long (keep it
    below the backends' own keep-alive timeout)."""

    connect_timeout: float = 5.0
    """Opening a connection to a backend: past this, 502."""

    long_request_after: float = 1.0
    """A proxied request still in flight (waiting for or streaming its
    response) this long after it was forwarded counts as an open connection
    (ConnectionOpened, then ConnectionClosed when it ends)."""

    activity_interval: float = 1.0
    """HttpActivityRecorded is emitted at most once per backend per interval."""

    half_close_timeout: float = 30.0
    """After the client has closed its side of an upgraded (WebSocket)
    connection, how long the backend may keep sending before both are closed.
    (The backend closing ends the connection at once.)"""
