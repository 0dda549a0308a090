"""The proxy's public face: :class:`ProxyContext` and :func:`serve_proxy`.

This module owns the listening socket, the accept loop and the connection cap,
and wires the parts together: the routing table and its feed
(:mod:`~plane.proxy.routes`, :mod:`~plane.proxy.table_feed`), the upstream
pool (:mod:`~plane.proxy.upstream`), the tracker that emits connection events
(:mod:`~plane.proxy.tracking`) and one :class:`~plane.proxy.session.ClientSession`
per client connection.

Connection cap: past ``settings.max_connections`` concurrent client
connections, a new connection is still accepted and its request head read
(for at most a second): ``GET /ready`` is answered as usual, so health checks
keep working at the cap, anything else ``503 ProxyOverloaded``; then it is
closed.  At most :data:`MAX_REJECTING` such connections are read at once; past
that a 503 is sent without reading and the connection closed.  The kernel's
accept queue therefore never fills up behind a full proxy.

Cost per connection: one task and one :class:`ClientSession` (an upgraded one
adds the two splice tasks); nothing the proxy does on a connection's open or
close, or on a timer, visits the other connections (the timeouts are filed by
time in :mod:`plane.proxy.deadlines`).

Start-up: the listener is bound and accepting at once; the table's feed
reads the log's history meanwhile.  Until it has, ``GET /ready`` answers 503
and other requests wait for it; :func:`serve_proxy` reports started (the
bound port) once it has.

Resource handling
-----------------
:func:`serve_proxy` runs until cancelled; cancelling it closes the listener,
every client connection and every pooled upstream connection, and emits
``ConnectionClosed`` for every long-lived connection still open.  The feed
outlives them (shielded) until it has handed those over
(:meth:`~plane.proxy.table_feed.RouteFeed.drain`: a proxy process sends them
to its controller, bounded), then is cancelled.

Error handling
--------------
A failure to bind raises ``OSError`` before ``task_status.started``.  Running
out of file descriptors while accepting pauses accepting for 100 ms (logged)
rather than spinning.  A bug that escapes a client session is logged and ends
that session only.

Timeouts (header, keep-alive) are enforced by one watchdog task that collects,
each :data:`~plane.proxy.relay.WATCHDOG_TICK`, the sessions whose deadline has
passed (:mod:`plane.proxy.deadlines`) and cancels them.  Store errors in the
table feed end the proxy (a stale table would route revoked tokens).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence

import attrs
import trio

from plane.actors.clock import TrioClock
from plane.events.store import EventStore, RecordedEvent
from plane.metrics import Metrics
from plane.proxy import sockio
from plane.proxy.errors import render_overloaded
from plane.proxy.relay import Relay, watchdog_tick
from plane.proxy.routes import RouteTable
from plane.proxy.session import ClientSession
from plane.proxy.settings import ProxySettings
from plane.proxy.table_feed import RouteFeed, TableFeed
from plane.proxy.tracking import Emit, Tracker
from plane.proxy.upstream import UpstreamPool

log = logging.getLogger("plane.proxy")

MAX_REJECTING = 64
"""Over-cap connections read at once (to answer ``/ready``, or 503); past this
they are sent a 503 unread and closed.  Counted in the fd budget
(:mod:`plane.limits`)."""

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@attrs.define
class ProxyContext:
    """What the proxy needs from the rest of plane."""

    store: EventStore | None
    """The log the table is read from (None: ``make_feed`` feeds it)."""
    emit: Emit
    """Where connection events go: ``emit(backend_id, event)``, must not block
    (in ``plane serve``: ``Supervisor.tell``)."""
    clock: TrioClock
    metrics: Metrics | None = None
    settings: ProxySettings = attrs.field(factory=ProxySettings)
    seed: tuple[Sequence[RecordedEvent], int] | None = None
    """The route table's start (:class:`~plane.proxy.table_feed.TableFeed`):
    the startup fold's route records and the seq they cover; None: the log."""
    make_feed: Callable[[RouteTable], RouteFeed] | None = None
    """What feeds the table instead of the store (``plane proxy``:
    :class:`~plane.proxy.remote.RemoteFeed`)."""
    proxy_id: str | None = None
    """This proxy's name, the prefix of its connection ids (None: random)."""
    sock: socket.socket | None = None
    """A listening socket to serve on instead of binding (``--proxy-workers``)."""


class ProxyServer:
    """One running proxy; :func:`serve_proxy` is the usual way to run it.
    Tests may build one to look at its table, pool and tracker."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.table = RouteTable()
        self.feed: RouteFeed
        if ctx.make_feed is not None:
            self.feed = ctx.make_feed(self.table)
        else:
            assert ctx.store is not None, "a proxy needs a store or make_feed"
            self.feed = TableFeed(ctx.store, self.table, ctx.clock, ctx.seed)
        ctx.seed = None  # the feed has it; nothing else keeps it
        self.pool = UpstreamPool(settings)
        self.tracker = Tracker(ctx.emit, ctx.clock, ctx.metrics, settings, prefix=ctx.proxy_id)
        self.relay = Relay(self.table, self.feed, self.pool, self.tracker, settings, ctx.clock)
        self.active = 0
        """Client connections open, below the cap."""
        self._rejecting = 0
        self.port = 0
        self.listening = trio.Event()
        """Set once bound (and :attr:`port` known), before the table is synced."""

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self.ctx.sock is not None:
            listener = self.ctx.sock
            listener.setblocking(False)
        else:
            listener = await listen_socket(host, port, self.ctx.settings.max_connections)
        feed_scope = trio.CancelScope(shield=True)

        async def run_feed(*, task_status: trio.TaskStatus[None]) -> None:
            with feed_scope:  # ends after the sessions, once drained (below)
                await self.feed.run(task_status=task_status)

        async with trio.open_nursery() as feeds:
            try:
                async with trio.open_nursery() as nursery:
                    self.port = listener.getsockname()[1]
                    nursery.start_soon(self.tracker.run)
                    nursery.start_soon(self.pool.run)
                    nursery.start_soon(self._watchdog)
                    nursery.start_soon(self._accept, listener, nursery)
                    self.listening.set()
                    await feeds.start(run_feed)
                    task_status.started(self.port)
            finally:
                sockio.close(listener)
                with trio.CancelScope(shield=True):
                    await self.feed.drain()
                feed_scope.cancel()

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        limit = self.ctx.settings.max_connections
        metrics = self.ctx.metrics
        shared = self.ctx.sock is not None
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
            # Speed: accept up to 16 pending connections per wake-up; on a socket
            # shared with other worker processes, one: then the connection just
            # accepted is served first, and the other workers (woken too) take
            # the next ones, rather than one worker taking a whole burst.
            if shared or streak % 16 == 0:
                await trio.lowlevel.checkpoint()
            if metrics is not None:
                metrics.proxy_connections.inc()
            over = self.active >= limit
            if over and self._rejecting >= MAX_REJECTING:
                self._refuse(sock)
                continue
            try:
                sockio.configure(sock)
            except OSError:
                sock.close()
                continue
            if over:
                self._rejecting += 1
                nursery.start_soon(self._overloaded, sock, str(address[0]))
                continue
            self.active += 1
            if metrics is not None:
                metrics.proxy_open.inc()
            nursery.start_soon(self._session, sock, str(address[0]))

    async def _session(self, sock: socket.socket, peer: str) -> None:
        try:
            await ClientSession(self.relay, sock, peer).run()
        except Exception:
            log.exception("client session from %s failed", peer)
        finally:
            self.active -= 1
            if self.ctx.metrics is not None:
                self.ctx.metrics.proxy_open.dec()

    async def _overloaded(self, sock: socket.socket, peer: str) -> None:
        """A connection past the cap: one answer (``/ready``, else 503), then closed."""
        try:
            await ClientSession(self.relay, sock, peer, overloaded=True).run()
        except Exception:
            log.exception("over-cap session from %s failed", peer)
        finally:
            self._rejecting -= 1

    def _refuse(self, sock: socket.socket) -> None:
        """Past the cap and past :data:`MAX_REJECTING`: a 503 without reading
        the request (sent if the socket takes it at once), then close."""
        self.tracker.response(503)
        try:
            sock.setblocking(False)
            sock.send(render_overloaded())
        except OSError:
            pass
        finally:
            sockio.close(sock)

    async def _watchdog(self) -> None:
        """Enforce the header and keep-alive timeouts: the sessions whose
        deadline has passed are cancelled (one timer for all, rather than a
        cancel scope per request on the hot path; precision: one tick).  Only
        the expired sessions are visited."""
        deadlines = self.relay.deadlines
        tick = watchdog_tick(self.ctx.settings)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for session in deadlines.expired(now):
                session.expire(now)


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


async def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
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
