"""The proxy's tunables, in one frozen value.

This module owns :class:`ProxySettings`: every limit and timeout of the proxy,
with the defaults plane serves with, and what it is told about its place in
the deployment (the cluster host, the front proxies it trusts, the root
redirect).  Times are in seconds, sizes in bytes; every number must be
positive, every CIDR and URL valid (``ValueError`` naming the field otherwise).

How long a request waits for a backend still starting is not a setting: it is
that backend's own ``spawn_config.start_timeout_seconds``.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import attrs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


def _host_or_none(value: str | None) -> str | None:
    if value is None:
        return None
    host = value.strip().lower().rstrip(".")
    if not host or (any(c in host for c in "/:@ \t\r\n") and not host.startswith("[")):
        raise ValueError(f"cluster_host must be a host name without port, not {value!r}")
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"cluster_host: {value!r} is not a valid host name") from None


def _networks(values: Any) -> tuple[Network, ...]:
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(
                f"trust_forwarded_from: {value!r} is not a CIDR (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _optional_url(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or any(c in value for c in "\r\n\x00 ")
    ):
        raise ValueError(f"{attribute.name} must be an http(s) URL, not {value!r}")


@attrs.frozen
class ProxySettings:
    """Limits and timeouts of :func:`plane.proxy.server.serve_proxy`."""

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

    cluster_host: str | None = attrs.field(default=None, converter=_host_or_none)
    """The host of Plane's cluster name (``--cluster``, default the proxy's
    public host), lowercase, without port.  A backend with a subdomain is
    reached only with ``Host: <subdomain>.<cluster_host>[:port]``.  None: no
    host is known, so a backend with a subdomain refuses every request."""

    trust_forwarded_from: tuple[Network, ...] = attrs.field(default=(), converter=_networks)
    """Front proxies (CIDRs, given as strings or networks): a peer inside one
    keeps its ``X-Forwarded-For`` (the peer appended) and ``X-Forwarded-Proto``;
    from anyone else they are overwritten."""

    root_redirect: str | None = attrs.field(default=None, validator=_optional_url)
    """Where ``GET /`` on the proxy redirects (302); None: ``/`` is 400."""

    def trusts(self, peer: str) -> bool:
        """True if ``peer`` (an IP address) is inside a trusted front proxy CIDR."""
        if not self.trust_forwarded_from:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trust_forwarded_from)
