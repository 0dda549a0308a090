"""Connections to the backends: opened on demand, kept alive, reused.

This module owns :class:`UpstreamPool`.  A request takes an idle connection
to its backend's address if one is pooled (the most recently used first, so
a busy backend keeps few warm connections), else opens a new one; when the
response has been relayed and both sides agree to keep the connection alive,
the relay gives it back.  At most ``upstream_pool_size`` idle connections are
kept per address; busy ones are not capped (each in-flight request holds one).

Before an idle connection is reused it is checked without blocking
(``MSG_PEEK``): one the backend closed, or that holds bytes nobody asked for,
is dropped.  For an idempotent request the check is skipped on a connection
idle for less than :data:`TRUST_IDLE_FOR` (a syscall saved on the hot path):
the relay retries such a request once on a fresh connection if a reused one
fails before the first response byte (which also covers a backend closing a
keep-alive connection just as a request goes out).

Resource handling
-----------------
:meth:`UpstreamPool.run` closes connections idle longer than
``upstream_idle_timeout`` and, when cancelled, every pooled connection.  A
connection taken out of the pool belongs to the relay until it calls
:meth:`~UpstreamPool.release` or :meth:`~UpstreamPool.discard`.

Error handling
--------------
:meth:`UpstreamPool.acquire` raises :class:`~plane.proxy.errors.GatewayFault`
(502 ``BackendUnreachable``) when the backend refuses or does not accept the
connection within ``connect_timeout``.
"""

from __future__ import annotations

import socket

import trio

from plane.addresses import split_host_port
from plane.proxy import sockio
from plane.proxy.errors import GatewayFault
from plane.proxy.parsing import ResponseSink
from plane.proxy.settings import ProxySettings

TRUST_IDLE_FOR = 1.0
"""Seconds an idle connection is trusted without a liveness check (for
idempotent requests, which are retried once if it fails anyway)."""


class Upstream:
    """One connection to a backend, with its response parser."""

    __slots__ = ("address", "idle_since", "reused", "sink", "sock")

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.sink = ResponseSink()
        self.reused = False
        self.idle_since = 0.0


class UpstreamPool:
    """Idle upstream connections by address; see the module docstring."""

    def __init__(self, settings: ProxySettings) -> None:
        self._size = settings.upstream_pool_size
        self._idle_timeout = settings.upstream_idle_timeout
        self._connect_timeout = settings.connect_timeout
        self._idle: dict[str, list[Upstream]] = {}
        self._hosts: dict[str, tuple[str, int]] = {}
        self.opened = 0
        """Connections opened so far (a measure of reuse)."""

    def take(self, address: str, now: float, *, check: bool = True) -> Upstream | None:
        """A pooled connection to ``address`` that still looks alive, or None.

        A pooled connection idle for less than :data:`TRUST_IDLE_FOR` is
        trusted without a check unless ``check`` (the relay checks for requests
        it could not replay).  ``now`` is the trio time."""
        idle = self._idle.get(address)
        if idle:
            recent = now - TRUST_IDLE_FOR
            while idle:
                upstream = idle.pop()
                if (not check and upstream.idle_since >= recent) or sockio.is_idle_alive(
                    upstream.sock
                ):
                    upstream.reused = True
                    return upstream
                sockio.close(upstream.sock)
        return None

    async def acquire(self, address: str, now: float, *, check: bool = True) -> Upstream:
        """A pooled connection (see :meth:`take`), else a new one."""
        upstream = self.take(address, now, check=check)
        if upstream is None:
            upstream = await self.connect(address)
        return upstream

    async def connect(self, address: str) -> Upstream:
        """A new connection to ``address``."""
        target = self._hosts.get(address)
        if target is None:
            try:
                target = split_host_port(address)
            except ValueError as exc:
                raise GatewayFault(502, "BackendUnreachable", str(exc)) from None
            if len(self._hosts) > 4096:
                self._hosts.clear()
            self._hosts[address] = target
        host, port = target
        try:
            with trio.fail_after(self._connect_timeout):
                sock = await sockio.connect(host, port)
        except trio.TooSlowError:
            raise GatewayFault(
                502,
                "BackendUnreachable",
                f"the backend did not accept within {self._connect_timeout}s",
            ) from None
        except OSError as exc:
            raise GatewayFault(
                502, "BackendUnreachable", f"the backend refused the connection ({exc.strerror})"
            ) from None
        self.opened += 1
        return Upstream(sock, address)

    def release(self, upstream: Upstream) -> None:
        """Give back a connection whose exchange ended cleanly and may be reused."""
        idle = self._idle.get(upstream.address)
        if idle is None:
            idle = self._idle[upstream.address] = []
        if len(idle) >= self._size:
            sockio.close(upstream.sock)
            return
        upstream.idle_since = trio.current_time()
        idle.append(upstream)

    def discard(self, upstream: Upstream) -> None:
        """Close a connection that must not be reused."""
        sockio.close(upstream.sock)

    def idle_count(self, address: str | None = None) -> int:
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(v) for v in self._idle.values())

    async def run(self) -> None:
        """Close connections idle too long; on cancellation, close them all."""
        try:
            while True:
                await trio.sleep(max(self._idle_timeout / 2, 0.05))
                self._reap(trio.current_time() - self._idle_timeout)
        finally:
            self._reap(float("inf"))

    def _reap(self, idle_before: float) -> None:
        for address in list(self._idle):
            idle = self._idle[address]
            keep = []
            for upstream in idle:
                if upstream.idle_since <= idle_before:
                    sockio.close(upstream.sock)
                else:
                    keep.append(upstream)
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
