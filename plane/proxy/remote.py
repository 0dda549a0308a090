"""A proxy fed by a controller over the network (``plane proxy``).

This module owns :class:`RemoteFeed`, the writer of an out-of-process proxy's
:class:`~plane.proxy.routes.RouteTable`, and the channel it holds to the
controller (:mod:`plane.api.proxies` is the other end): one authenticated
WebSocket (``/ctrl/proxy-feed``, ``Authorization: Bearer <proxy key>``) that
brings the routing events of the log, resumed after the last ``seq`` applied
(so a reconnect misses nothing), or the controller's current table
(``{"table": N}``, its records, ``{"synced": N}``: on a first connect, or
when the controller no longer holds what the proxy missed), which is built
apart and swapped in whole at ``synced`` (:meth:`RouteTable.replace`), so
routes revoked or ended meanwhile are gone.  It takes back the proxy's
connection events in batches (:class:`Outbox`: ``Tracker``'s ``emit``;
never blocks; queued while cut off and sent once back) and its counters.
Tokens that expired long ago are pruned from the table once an hour.

A clean stop (:meth:`RemoteFeed.drain`, once the proxy's client connections
are closed, so their ``ConnectionClosed`` are queued): the queue is sent
with ``"bye"`` and the channel closed, at most :data:`DRAIN_TIMEOUT` long;
the controller then closes nothing itself (else it would after 60 s).

Losing the controller
---------------------
The proxy keeps serving the routes it knows (a backend already ready stays
reachable) and reconnects with backoff (0.1 s doubling to 5 s).  It stops
serving once it has been cut off longer than ``stale_after`` (and before its
first sync): ``GET /ready`` answers 503 and every other request 503
``ProxyNotReady``, rather than route tokens that may have been revoked
meanwhile.  Once back, the events it missed are applied before it serves
again (a revocation takes effect then).

Resource handling: :meth:`RemoteFeed.run` runs until cancelled; it holds one
WebSocket at a time.

Error handling: a refused channel (401/403: a wrong proxy key) is logged and
retried like any other failure (the key file may be fixed); an event the
proxy cannot read ends the channel (it is retried from the same ``seq``); an
untrusted certificate (``wss://`` without the right ``--ca-file``) is logged
with the TLS error and retried the same way; opening the channel is bounded by
:data:`CONNECT_TIMEOUT`.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
import trio_websocket

from plane.actors.clock import TrioClock
from plane.events import wire
from plane.events.store import RecordedEvent
from plane.events.types import InputEvent
from plane.proxy.routes import RouteTable
from plane.proxy.table_feed import PRUNE_AFTER, PRUNE_EVERY

log = logging.getLogger("plane.proxy.remote")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
BATCH_EVERY = 0.05
"""Connection events are sent at most this long after they happen."""
STATS_EVERY = 1.0
DRAIN_TIMEOUT = 3.0
"""How long a clean stop waits to hand the controller its last events."""
OUTBOX_MAX = 1_000_000
"""Events queued while cut off; past it the oldest activity is dropped."""
CONNECT_TIMEOUT = 10.0
"""How long opening the channel (TCP, TLS, the WebSocket handshake) may take."""


def feed_url(controller: str, after: int, proxy_id: str) -> str:
    """The channel's URL from the controller's API base URL (http -> ws, https -> wss)."""
    parts = urlsplit(controller.rstrip("/"))
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"--controller: {controller!r} is not an http(s) URL")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path + "/ctrl/proxy-feed"
    return urlunsplit((scheme, parts.netloc, path, f"after={after}&proxy={proxy_id}", ""))


class Outbox:
    """The connection events waiting to go to the controller (``emit`` never blocks)."""

    def __init__(self) -> None:
        self.items: list[list[Any]] = []
        self._wake = trio.Event()

    def emit(self, backend_id: str, event: InputEvent) -> None:
        tag, data = wire.tag_of(event), wire.unstructure(event)
        self.items.append([backend_id, tag, data])
        if len(self.items) > OUTBOX_MAX:
            del self.items[: len(self.items) - OUTBOX_MAX]
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self) -> None:
        if not self.items:
            self._wake = trio.Event()
            await self._wake.wait()

    def take(self) -> list[list[Any]]:
        items, self.items = self.items, []
        return items

    def put_back(self, items: list[list[Any]]) -> None:
        self.items[:0] = items


class RemoteFeed:
    """Feeds ``table`` from the controller; see the module docstring."""

    wait_for_sync = False
    """Requests before the first sync are refused (503), not held."""

    def __init__(
        self,
        controller: str,
        key: str,
        table: RouteTable,
        clock: TrioClock,
        *,
        proxy_id: str,
        outbox: Outbox,
        stale_after: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        feed_url(controller, 0, proxy_id)  # refuses a bad URL now
        self.controller = controller
        self.key = key
        self.table = table
        self.clock = clock
        self.proxy_id = proxy_id
        self.outbox = outbox
        self.stale_after = stale_after
        self.ssl_context = ssl_context
        self.stats = stats
        self._changed = trio.Event()
        self._synced = trio.Event()
        self.connected = False
        self.cut_since = 0.0
        """trio time the channel was lost (meaningful while not connected)."""
        self.channels = 0
        """Channels opened so far (a resync is the second and later)."""
        self.last_sync = ""
        """How the last sync was made: ``"table"`` (the controller's current
        table) or ``"missed"`` (the events missed since :attr:`table`'s seq)."""
        self._staging: RouteTable | None = None
        """The controller's current table being received (swapped in at ``synced``)."""
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._closing = False
        self._sending = False

    @property
    def synced(self) -> trio.Event:
        return self._synced

    @property
    def changed(self) -> trio.Event:
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def serving(self) -> bool:
        if not self._synced.is_set():
            return False
        return self.connected or trio.current_time() - self.cut_since < self.stale_after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the channel until cancelled; reports started at once (the
        proxy listens and answers ``/ready`` 503 until the first sync)."""
        task_status.started()
        self.cut_since = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prune)
            await self._hold()
            nursery.cancel_scope.cancel()

    async def _hold(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._channel()
                backoff = BACKOFF_FIRST
            except _LOST as exc:
                if self._closing:
                    return
                log.warning("controller channel: %s; retrying in %.1fs", _describe(exc), backoff)
            if self.connected:
                self.connected = False
                self.cut_since = trio.current_time()
            if self._closing:
                return
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _prune(self) -> None:
        while True:
            await trio.sleep(PRUNE_EVERY)
            self.table.forget_before(self.clock.now() - PRUNE_AFTER)

    async def drain(self) -> None:
        """A clean stop: send what is queued (with ``"bye"``) and close the
        channel, within :data:`DRAIN_TIMEOUT`; nothing if cut off."""
        self._closing = True
        self.outbox.wake()  # the sender sees _closing and leaves the rest to us
        ws = self._ws
        if ws is None:
            return
        with trio.move_on_after(DRAIN_TIMEOUT):
            while self._sending:  # noqa: ASYNC110 - the sender's one send in flight
                await trio.sleep(0.01)
            items = self.outbox.take()
            message = {"events": items, "bye": True}
            try:
                await ws.send_message(json.dumps(message, separators=(",", ":")))
                await ws.aclose()
            except (trio_websocket.ConnectionClosed, OSError) as exc:
                log.warning("the last connection events were not sent: %s", exc)
                return
            log.info("sent the controller %d last connection event(s)", len(items))
            return
        log.warning("the controller did not take the last connection events in time")

    async def _channel(self) -> None:
        try:
            await self._hold_channel()
        except BaseExceptionGroup as group:  # from the nurseries: the first lost cause
            lost, rest = group.split(_LOST)
            if rest is not None or lost is None:
                raise
            raise _first(lost) from None

    async def _hold_channel(self) -> None:
        url = feed_url(self.controller, self.table.seq, self.proxy_id)
        headers = [(b"authorization", f"Bearer {self.key}".encode())]
        if self.ssl_context is not None:
            with trio.fail_after(CONNECT_TIMEOUT):
                await check_certificate(url, self.ssl_context)
        async with trio_websocket.open_websocket_url(
            url,
            ssl_context=self.ssl_context,
            extra_headers=headers,
            message_queue_size=0,
            connect_timeout=CONNECT_TIMEOUT,
        ) as ws:
            self.channels += 1
            self._staging = None
            self._ws = ws
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_events, ws)
                    try:
                        while True:
                            message = await ws.get_message()
                            self._apply(message)
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                self._ws = None

    def _apply(self, message: str | bytes) -> None:
        try:
            item = json.loads(message)
            if "table" in item:
                self._staging = RouteTable()
                self._staging.seq = int(item["table"])
                return
            if "synced" in item:
                self._synced_at(int(item["synced"]))
                return
            event = wire.structure(item["type"], item["data"])
            recorded = RecordedEvent(item["seq"], item["stream"], item["version"], event)
        except (ValueError, KeyError, TypeError) as exc:
            raise _Unreadable(f"an event from the controller cannot be read ({exc})") from None
        if self._staging is not None:
            self._staging.apply(recorded)
            return
        self.table.apply(recorded)
        if self.connected:
            self._notify()

    def _synced_at(self, seq: int) -> None:
        how = "missed"
        if self._staging is not None:
            self.table.replace(self._staging)
            self._staging = None
            how = "table"
        self.last_sync = how
        self.table.seq = max(self.table.seq, seq)
        first = not self._synced.is_set()
        self.connected = True
        self._synced.set()
        self._notify()
        log.log(
            logging.INFO if first else logging.DEBUG,
            "routing table synced at seq %d (from %s)",
            self.table.seq,
            how,
        )

    async def _send_events(self, ws: trio_websocket.WebSocketConnection) -> None:
        outbox = self.outbox
        next_stats = trio.current_time()
        while True:
            with trio.move_on_at(next_stats):
                await outbox.wait()
                await trio.sleep(BATCH_EVERY)  # gather a batch
            if self._closing:
                return  # drain sends the rest
            message: dict[str, Any] = {}
            items = outbox.take()
            if items:
                message["events"] = items
            if trio.current_time() >= next_stats:
                next_stats = trio.current_time() + STATS_EVERY
                if self.stats is not None:
                    message["stats"] = self.stats()
            if not message:
                continue
            self._sending = True
            try:
                await ws.send_message(json.dumps(message, separators=(",", ":")))
            except BaseException:
                outbox.put_back(items)  # sent again once back
                raise
            finally:
                self._sending = False


class _Unreadable(Exception):
    pass


_LOST = (
    OSError,  # ssl.SSLError too: an untrusted certificate
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    _Unreadable,
)
"""What ends a channel (retried), as opposed to a bug."""


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"refused with HTTP {exc.status_code} (is the proxy key right?)"
    return f"{type(exc).__name__}: {exc}"


async def check_certificate(url: str, ssl_context: ssl.SSLContext) -> None:
    """Complete a TLS handshake with the controller, then close it.

    trio-websocket waits forever when the server's certificate is refused
    (python-trio/trio-websocket#199), so the refusal is found here first and
    raised as the :class:`ssl.SSLError` it is (logged, retried with backoff)."""
    parts = urlsplit(url)
    stream = await trio.open_ssl_over_tcp_stream(
        parts.hostname or "", parts.port or 443, ssl_context=ssl_context
    )
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, ssl.SSLError):
            raise exc.__cause__ from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates verified against the system's CAs, or ``ca_file`` (``--ca-file``)."""
    return ssl.create_default_context(cafile=ca_file)
