"""The proxy's tunables, in one frozen value.

This module owns :class:`ProxySettings`: every limit and timeout of the proxy,
with the defaults plane serves with.  Times are in seconds, sizes in bytes;
every value must be positive (``ValueError`` otherwise).
"""

from __future__ import annotations

from typing import Any

import attrs


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


@attrs.frozen
class ProxySettings:
    """Limits and timeouts of :func:`plane.proxy.server.serve_proxy`."""

    ready_wait_timeout: float = attrs.field(default=30.0, validator=_positive)
    """How long a request for a backend that is still requested/starting waits
    for it to become ready before the client gets 504."""

    header_timeout: float = attrs.field(default=10.0, validator=_positive)
    """A request's head must arrive within this long of its first byte (of the
    accept, for a connection's first request); else the connection is closed
    (408 if part of a head had arrived)."""

    keepalive_timeout: float = attrs.field(default=75.0, validator=_positive)
    """An idle client connection (between requests) is closed after this long."""

    max_header_bytes: int = attrs.field(default=16384, validator=_positive)
    """Request line plus headers larger than this: 431."""

    max_headers: int = attrs.field(default=100, validator=_positive)
    """More header fields than this: 431."""

    max_connections: int = attrs.field(default=1024, validator=_positive)
    """Concurrent client connections.  Past the cap a new connection is
    accepted, answered 503 and closed at once (so clients get an answer, and
    the accept queue never backs up)."""

    upstream_pool_size: int = attrs.field(default=64, validator=_positive)
    """Idle upstream connections kept per backend for reuse.  Busy connections
    are not capped: every in-flight request holds one."""

    upstream_idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    """An idle pooled upstream connection is closed after this long (keep it
    below the backends' own keep-alive timeout)."""

    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Opening a connection to a backend: past this, 502."""

    long_request_after: float = attrs.field(default=1.0, validator=_positive)
    """A proxied request still in flight (waiting for or streaming its
    response) this long after it was forwarded counts as an open connection
    (ConnectionOpened, then ConnectionClosed when it ends)."""

    activity_interval: float = attrs.field(default=1.0, validator=_positive)
    """HttpActivityRecorded is emitted at most once per backend per interval."""

    half_close_timeout: float = attrs.field(default=30.0, validator=_positive)
    """After the client has closed its side of an upgraded (WebSocket)
    connection, how long the backend may keep sending before both are closed.
    (The backend closing ends the connection at once.)"""
