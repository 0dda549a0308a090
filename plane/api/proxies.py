"""The controller's side of out-of-process proxies: ``/ctrl/proxy-feed``.

This module owns the one authenticated WebSocket a proxy process (``plane
proxy``, or a worker of ``plane serve --proxy-workers``) holds to the
controller, and :class:`ProxyRegistry`, what the controller knows of its
proxies (``GET /ctrl/proxies``, Plane's ``ClusterState.proxies``).

The channel (JSON text messages)
--------------------------------
The proxy opens ``GET /ctrl/proxy-feed?after=<seq>&proxy=<name>`` with
``Authorization: Bearer <proxy key>`` (only that key opens it: it carries
token hashes, secret tokens and user data, unredacted).

* controller -> proxy: first the proxy's table, one of two ways:

  - **the current table** (``after`` is 0, or older than the latest
    archiving (:attr:`~plane.api.live_routes.LiveRoutes.horizon`: events
    after it may have left the live log), or more than
    :data:`FULL_TABLE_PAST` events behind, or ahead of the log (another
    history)): ``{"table": N}``, then the routing records of every
    unfinished backend as of seq ``N`` (:class:`~plane.api.live_routes.LiveRoutes`,
    not the log from its start: history does not weigh), then
    ``{"synced": N}``.  The proxy builds a new table from them and swaps it
    in whole at ``synced``, so what it knew and the controller no longer
    routes (revoked, terminated, archived meanwhile) is gone;
  - **what it missed**: every routing event (:data:`~plane.proxy.routes.ROUTING_TYPES`) after
    ``after``, then ``{"synced": <seq>}``.

  Then the live tail, as ``{"seq", "stream", "version", "type", "data"}``.
  Either way a reconnect misses no event (a revocation or termination made
  while the proxy was cut off takes effect as soon as it is back).
* proxy -> controller: batches ``{"events": [[backend_id, type, data], ...]}``
  of connection events (``ConnectionOpened``, ``ConnectionClosed``,
  ``HttpActivityRecorded``: any other type is refused by closing the
  channel), which the controller tells the backends' actors as it does for
  the in-process proxy (``Supervisor.tell``); ``{"stats": {...}}``, the
  proxy's counters, shown by ``GET /ctrl/proxies`` and added to this
  process's Prometheus metrics (:meth:`~plane.metrics.Metrics.absorb_proxy`:
  requests by code, connections, upgrades, open connections, summed over the
  proxies); and ``{"bye": true}`` from a proxy stopping cleanly, after the
  ``ConnectionClosed`` of the connections it still held: it is forgotten
  when its channel closes.

No backend stays busy forever
-----------------------------
The registry keeps, per proxy, the connections it was told were opened and
not closed.  When a proxy's channel drops and it does not come back within
``forget_after`` (or its supervisor says it died: :meth:`ProxyRegistry.forget`),
a ``ConnectionClosed`` is told for each of them.  A proxy that comes back in
time sends the events it queued meanwhile, closes included.

At a controller restart, the connections the log holds open on adopted
backends are sorted by their proxy's name (:func:`~plane.proxy.tracking.proxy_of`):
the previous in-process proxy's are closed by the supervisor; a proxy
process's are handed to the registry (:meth:`ProxyRegistry.adopt_connection`)
as that proxy's, cut off: the proxy may have survived the restart and keeps
them open when it comes back within ``forget_after``, else they are closed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio_websocket

from plane.actors.clock import TrioClock
from plane.api.live_routes import LiveRoutes
from plane.events import wire
from plane.events.store import EventStore, RecordedEvent
from plane.events.types import (
    ConnectionClosed,
    ConnectionOpened,
    Event,
    HistoryArchived,
    HttpActivityRecorded,
    InputEvent,
)
from plane.metrics import Metrics
from plane.proxy.routes import ROUTING_TYPES
from plane.proxy.tracking import proxy_of, valid_proxy_name

__all__ = [
    "ROUTING_TYPES",
    "Batch",
    "ChannelError",
    "ProxyRegistry",
    "parse_batch",
    "serve_channel",
    "valid_proxy_name",
]

log = logging.getLogger("plane.api.proxies")

FULL_TABLE_PAST = 10_000
"""A proxy further behind than this many events is sent the current table
rather than what it missed (cheaper, and a bounded read)."""
CATCH_UP_BATCH = 500

FROM_PROXY: dict[str, type[InputEvent]] = {
    wire.TAGS[ConnectionOpened]: ConnectionOpened,
    wire.TAGS[ConnectionClosed]: ConnectionClosed,
    wire.TAGS[HttpActivityRecorded]: HttpActivityRecorded,
}

FORGET_AFTER = 60.0
"""A proxy cut off this long is taken for gone: its connections are closed."""

Tell = Callable[[str, InputEvent], None]


@attrs.define
class ProxyEntry:
    proxy_id: str
    peer: str
    connected: bool = True
    connected_at: float = 0.0
    last_seen: float = 0.0
    channels: int = 0
    synced: bool = False
    """The channel has sent the proxy the history (it serves)."""
    open: dict[str, str] = attrs.Factory(dict)
    """connection id -> backend id, opened and not closed."""
    stats: dict[str, Any] = attrs.Factory(dict)
    counters: dict[str, Any] = attrs.Factory(dict)
    """The proxy's counters as last reported (its metrics are what it adds)."""
    active: int = 0
    """Its client connections open, as last reported."""
    bye: bool = False
    """It said it stops: forgotten when its channel closes."""
    cut_scope: trio.CancelScope | None = None

    def view(self, now: float) -> dict[str, Any]:
        return {
            "id": self.proxy_id,
            "peer": self.peer,
            "connected": self.connected,
            "synced": self.synced,
            "connected_at": round(self.connected_at * 1000),
            "last_seen_age": max(0, round((now - self.last_seen) * 1000)),
            "open_connections": len(self.open),
            "stats": self.stats,
        }


class ProxyRegistry:
    """What the controller knows of its proxies; see the module docstring.

    ``routes``: the current table sent to a proxy that needs it (None: the
    log is read from the proxy's ``after``, tests); ``metrics``: where the
    proxies' counters are added."""

    def __init__(
        self,
        tell: Tell,
        clock: TrioClock,
        forget_after: float = FORGET_AFTER,
        *,
        routes: LiveRoutes | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._tell = tell
        self.clock = clock
        self.forget_after = forget_after
        self.routes = routes
        self.metrics = metrics
        self.proxies: dict[str, ProxyEntry] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the timers that forget proxies cut off for good (until cancelled)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for entry in list(self.proxies.values()):  # adopted before this ran
                if not entry.connected and entry.cut_scope is None:
                    self._start_forget_timer(entry)
            task_status.started()
            await trio.sleep_forever()

    def attached(self, proxy_id: str, peer: str) -> ProxyEntry:
        now = self.clock.now()
        entry = self.proxies.get(proxy_id)
        if entry is None:
            entry = self.proxies[proxy_id] = ProxyEntry(proxy_id, peer)
        if entry.cut_scope is not None:
            entry.cut_scope.cancel()
            entry.cut_scope = None
        entry.peer = peer
        entry.connected = True
        entry.connected_at = entry.last_seen = now
        entry.channels += 1
        entry.synced = False
        entry.bye = False
        return entry

    def detached(self, entry: ProxyEntry) -> None:
        entry.channels -= 1
        if entry.channels > 0 or self.proxies.get(entry.proxy_id) is not entry:
            return
        entry.connected = False
        if entry.bye:
            self.forget(entry.proxy_id)
            return
        self._start_forget_timer(entry)

    def _start_forget_timer(self, entry: ProxyEntry) -> None:
        if self._nursery is not None and math.isfinite(self.forget_after):
            scope = entry.cut_scope = trio.CancelScope()
            self._nursery.start_soon(self._forget_later, entry, scope)

    async def _forget_later(self, entry: ProxyEntry, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.forget_after)
            log.warning(
                "proxy %s cut off for %gs: taken for gone", entry.proxy_id, self.forget_after
            )
            self.forget(entry.proxy_id)

    def forget(self, proxy_id: str) -> int:
        """The proxy is gone: close every connection it had open; returns how many."""
        entry = self.proxies.pop(proxy_id, None)
        if entry is None:
            return 0
        if entry.cut_scope is not None:
            entry.cut_scope.cancel()
        if self.metrics is not None and entry.active:
            self.metrics.proxy_open.dec(entry.active)
        now = self.clock.now()
        for connection_id, backend_id in entry.open.items():
            self._safe_tell(backend_id, ConnectionClosed(now, connection_id))
        count = len(entry.open)
        entry.open.clear()
        return count

    def adopt_connection(self, backend_id: str, connection_id: str) -> bool:
        """At a controller restart: a connection the log holds open.  A proxy
        process's is kept as that proxy's, cut off (closed if it does not come
        back within ``forget_after``); returns False for any other (the
        supervisor closes it)."""
        proxy_id = proxy_of(connection_id)
        if proxy_id is None or not math.isfinite(self.forget_after):
            return False
        entry = self.proxies.get(proxy_id)
        if entry is None:
            entry = self.proxies[proxy_id] = ProxyEntry(proxy_id, "", connected=False)
            entry.last_seen = self.clock.now()
            self._start_forget_timer(entry)  # or at run()
        entry.open[connection_id] = backend_id
        return True

    def received(self, entry: ProxyEntry, backend_id: str, event: InputEvent) -> None:
        if isinstance(event, ConnectionOpened):
            entry.open[event.connection_id] = backend_id
        elif isinstance(event, ConnectionClosed):
            entry.open.pop(event.connection_id, None)
        self._safe_tell(backend_id, event)

    def reported(self, entry: ProxyEntry, stats: dict[str, Any]) -> None:
        """The proxy's stats: kept for the view, its counters added to the metrics."""
        entry.stats = stats
        counters = stats.get("counters")
        if isinstance(counters, dict):
            if self.metrics is not None:
                self.metrics.absorb_proxy(entry.counters, counters)
            entry.counters = counters
        active = stats.get("active")
        if isinstance(active, int) and active >= 0:
            if self.metrics is not None:
                self.metrics.proxy_open.inc(active - entry.active)
            entry.active = active

    def _safe_tell(self, backend_id: str, event: InputEvent) -> None:
        try:
            self._tell(backend_id, event)
        except Exception:
            log.exception("telling %s to backend %s failed", type(event).__name__, backend_id)

    def views(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [entry.view(now) for entry in self.proxies.values()]


def routing_json(seq: int, stream: str, version: int, event: Event) -> str:
    return json.dumps(
        {
            "seq": seq,
            "stream": stream,
            "version": version,
            "type": wire.tag_of(event),
            "data": wire.unstructure(event),
        },
        separators=(",", ":"),
    )


class ChannelError(Exception):
    """The proxy sent something the channel does not carry."""


@attrs.frozen
class Batch:
    """One message from a proxy."""

    events: list[tuple[str, InputEvent]]
    stats: dict[str, Any] | None = None
    bye: bool = False


def parse_batch(text: str | bytes) -> Batch:
    """One message from a proxy; :class:`ChannelError` if it is not what a
    proxy sends."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ChannelError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ChannelError("a message is a JSON object")
    events: list[tuple[str, InputEvent]] = []
    for item in message.get("events", ()):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise ChannelError("an event is [backend_id, type, data]")
        backend_id, tag, data = item
        if tag not in FROM_PROXY:
            raise ChannelError(f"a proxy does not send {tag!r}")
        try:
            event = wire.structure(tag, data)
        except wire.WireError as exc:
            raise ChannelError(str(exc)) from None
        assert isinstance(event, FROM_PROXY[tag])
        events.append((backend_id, event))
    stats = message.get("stats")
    if stats is not None and not isinstance(stats, dict):
        raise ChannelError("stats is a JSON object")
    bye = message.get("bye", False)
    if not isinstance(bye, bool):
        raise ChannelError("bye is true or false")
    return Batch(events, stats, bye)


async def serve_channel(
    ws: trio_websocket.WebSocketConnection,
    store: EventStore,
    registry: ProxyRegistry,
    proxy_id: str,
    peer: str,
    after: int,
) -> None:
    """One proxy's channel, until either side closes it."""
    entry = registry.attached(proxy_id, peer)
    log.info("proxy %s attached from %s (after seq %d)", proxy_id, peer, after)
    try:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                try:
                    while True:
                        text = await ws.get_message()
                        entry.last_seen = registry.clock.now()
                        try:
                            batch = parse_batch(text)
                        except ChannelError as exc:
                            log.warning("proxy %s: %s; closing its channel", proxy_id, exc)
                            await ws.aclose(1008, str(exc)[:100])
                            break
                        for backend_id, event in batch.events:
                            registry.received(entry, backend_id, event)
                        if batch.stats is not None:
                            registry.reported(entry, batch.stats)
                        if batch.bye:
                            entry.bye = True
                            log.info("proxy %s stops", proxy_id)
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            await _send_routes(ws, store, after, entry, registry.routes)
            nursery.cancel_scope.cancel()
    except* trio_websocket.ConnectionClosed:
        pass  # the proxy went away
    finally:
        registry.detached(entry)
        log.info("proxy %s detached", proxy_id)


async def _send_routes(
    ws: trio_websocket.WebSocketConnection,
    store: EventStore,
    after: int,
    entry: ProxyEntry | None = None,
    routes: LiveRoutes | None = None,
) -> None:
    """The proxy's table (the current one or what it missed), ``synced``, then
    the live tail; see the module docstring."""
    seq: int | None = None
    if routes is not None and not await _can_resume(store, after, routes):
        seq = await _send_table(ws, routes)
    else:
        seq = await _send_missed(ws, store, after, routes)
        if seq is None:  # an archiving ran meanwhile: what it missed may be gone
            assert routes is not None
            seq = await _send_table(ws, routes)
    await ws.send_message(json.dumps({"synced": seq}))
    if entry is not None:
        entry.synced = True
    async for record in store.tail(after_seq=seq):
        if isinstance(record.event, ROUTING_TYPES):
            await ws.send_message(routing_json(*record))


async def _can_resume(store: EventStore, after: int, routes: LiveRoutes) -> bool:
    """Whether the log still holds every event after ``after`` (and few enough)."""
    if after <= 0 or after < routes.horizon:
        return False
    last = await store.last_seq()
    return after <= last and last - after <= FULL_TABLE_PAST


async def _send_table(ws: trio_websocket.WebSocketConnection, routes: LiveRoutes) -> int:
    seq, records = routes.seq, routes.records()  # together: the table at seq
    await ws.send_message(json.dumps({"table": seq}))
    for record in records:
        if isinstance(record.event, ROUTING_TYPES):
            await ws.send_message(routing_json(*record))
    return seq


async def _send_missed(
    ws: trio_websocket.WebSocketConnection,
    store: EventStore,
    after: int,
    routes: LiveRoutes | None,
) -> int | None:
    """The routing events after ``after`` present now; returns the seq they
    reach, or None if an archiving is among them (with ``routes``: the
    current table is sent instead)."""
    seq, last = after, await store.last_seq()
    while seq < last:
        records: list[RecordedEvent] = await store.read_all(seq, CATCH_UP_BATCH)
        if not records:
            break
        for record in records:
            if isinstance(record.event, HistoryArchived) and routes is not None:
                return None
            if isinstance(record.event, ROUTING_TYPES):
                await ws.send_message(routing_json(*record))
            seq = record.seq
    return max(seq, after)
