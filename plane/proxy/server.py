"""The proxy's public face: :class:`ProxyContext` and :func:`serve_proxy`.

This module owns the listening socket, the accept loop and the connection cap,
and wires the parts together: the routing table and its feed
(:mod:`~plane.proxy.routes`, :mod:`~plane.proxy.table_feed`), the upstream
pool (:mod:`~plane.proxy.upstream`), the tracker that emits connection events
(:mod:`~plane.proxy.tracking`) and one :class:`~plane.proxy.relay.ClientSession`
per client connection.

Connection cap: past ``settings.max_connections`` concurrent client
connections, a new connection is still accepted, answered ``503
ProxyOverloaded`` and closed (after reading what the client had sent, for at
most a second, so that the answer is not lost to a reset).  The kernel's
accept queue therefore never fills up behind a full proxy.

Start-up: the listener is bound and accepting at once; the table's feed
reads the log's history meanwhile.  Until it has, ``GET /ready`` answers 503
and other requests wait for it; :func:`serve_proxy` reports started (the
bound port) once it has.

Resource handling
-----------------
:func:`serve_proxy` runs until cancelled; cancelling it closes the listener,
every client connection and every pooled upstream connection, and emits
``ConnectionClosed`` for every long-lived connection still open.

Error handling
--------------
A failure to bind raises ``OSError`` before ``task_status.started``.  Running
out of file descriptors while accepting pauses accepting for 100 ms (logged)
rather than spinning.  A bug that escapes a client session is logged and ends
that session only.

Timeouts (header, keep-alive) are enforced by one watchdog task that looks at
every session's deadline each :data:`WATCHDOG_TICK` and cancels the sessions
past theirs.  Store errors in the table feed end the proxy (a stale
table would route revoked tokens).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence

import attrs
import trio

from plane.actors.clock import TrioClock
from plane.events.store import EventStore, RecordedEvent
from plane.metrics import Metrics
from plane.proxy import sockio
from plane.proxy.errors import render_overloaded
from plane.proxy.relay import ClientSession, Relay
from plane.proxy.routes import RouteTable
from plane.proxy.settings import ProxySettings
from plane.proxy.table_feed import TableFeed
from plane.proxy.tracking import Emit, Tracker
from plane.proxy.upstream import UpstreamPool

log = logging.getLogger("plane.proxy")

WATCHDOG_TICK = 0.1
"""How often the timeouts are checked (seconds)."""

MAX_REJECTING = 64
"""Over-cap connections being answered 503 at once; past this they are just closed."""

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@attrs.define
class ProxyContext:
    """What the proxy needs from the rest of plane."""

    store: EventStore
    emit: Emit
    """Where connection events go: ``emit(backend_id, event)``, must not block
    (in ``plane serve``: ``Supervisor.tell``)."""
    clock: TrioClock
    metrics: Metrics | None = None
    settings: ProxySettings = attrs.field(factory=ProxySettings)
    seed: tuple[Sequence[RecordedEvent], int] | None = None
    """The route table's start (:class:`~plane.proxy.table_feed.TableFeed`):
    the startup fold's route records and the seq they cover; None: the log."""


class ProxyServer:
    """One running proxy; :func:`serve_proxy` is the usual way to run it.
    Tests may build one to look at its table, pool and tracker."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.table = RouteTable()
        self.feed = TableFeed(ctx.store, self.table, ctx.clock, ctx.seed)
        ctx.seed = None  # the feed has it; nothing else keeps it
        self.pool = UpstreamPool(settings)
        self.tracker = Tracker(ctx.emit, ctx.clock, ctx.metrics, settings)
        self.relay = Relay(self.table, self.feed, self.pool, self.tracker, settings, ctx.clock)
        self.active = 0
        self.sessions: set[ClientSession] = set()
        self._rejecting = 0
        self.port = 0
        self.listening = trio.Event()
        """Set once bound (and :attr:`port` known), before the table is synced."""

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await _listen(host, port, self.ctx.settings.max_connections)
        try:
            async with trio.open_nursery() as nursery:
                self.port = listener.getsockname()[1]
                nursery.start_soon(self.tracker.run)
                nursery.start_soon(self.pool.run)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._accept, listener, nursery)
                self.listening.set()
                await nursery.start(self.feed.run)
                task_status.started(self.port)
        finally:
            sockio.close(listener)

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        limit = self.ctx.settings.max_connections
        metrics = self.ctx.metrics
        streak = 0
        while True:
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                streak = 0
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    log.warning("accept failed (%s); pausing for 100 ms", exc)
                    await trio.sleep(0.1)
                continue
            streak += 1
            if streak % 16 == 0:
                await trio.lowlevel.checkpoint()
            if metrics is not None:
                metrics.proxy_connections.inc()
            if self.active >= limit:
                if self._rejecting < MAX_REJECTING:
                    self._rejecting += 1
                    nursery.start_soon(self._reject, sock)
                else:
                    sock.close()
                continue
            try:
                sockio.configure(sock)
            except OSError:
                sock.close()
                continue
            self.active += 1
            if metrics is not None:
                metrics.proxy_open.inc()
            nursery.start_soon(self._session, sock, str(address[0]))

    async def _session(self, sock: socket.socket, peer: str) -> None:
        session = ClientSession(self.relay, sock, peer)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:
            log.exception("client session from %s failed", peer)
        finally:
            self.sessions.discard(session)
            self.active -= 1
            if self.ctx.metrics is not None:
                self.ctx.metrics.proxy_open.dec()

    async def _watchdog(self) -> None:
        """Enforce the header and keep-alive timeouts: a session whose deadline
        has passed is cancelled (one timer for all, rather than a cancel scope
        per request on the hot path; precision: one tick)."""
        settings = self.ctx.settings
        tick = min(WATCHDOG_TICK, settings.header_timeout / 5, settings.keepalive_timeout / 5)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for session in list(self.sessions):
                if session.deadline <= now:
                    session.expire(now)

    async def _reject(self, sock: socket.socket) -> None:
        """Answer 503 and close, reading (and dropping) what the client sends
        meanwhile so that the close does not reset the answer away."""
        try:
            sock.setblocking(False)
            self.tracker.response(503)
            with trio.move_on_after(1.0):
                await sockio.send_all(sock, render_overloaded())
                sock.shutdown(socket.SHUT_WR)
                while await sockio.recv(sock, 65536):
                    pass
        except OSError:
            pass
        finally:
            self._rejecting -= 1
            sockio.close(sock)


async def serve_proxy(
    ctx: ProxyContext,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the proxy on ``host:port`` until cancelled.

    Binds, starts the routing table's feed, reports the bound port through
    ``task_status.started`` once the log's history is in the table (``port`` 0
    picks a free one), and serves.
    """
    await ProxyServer(ctx).serve(host, port, task_status=task_status)


async def _listen(host: str, port: int, backlog: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, address = infos[0]
    listener = socket.socket(family, type_, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(min(max(backlog, 128), socket.SOMAXCONN))
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener
