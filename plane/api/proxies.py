"""The controller's side of out-of-process proxies: ``/ctrl/proxy-feed``.

This module owns the one authenticated WebSocket a proxy process (``plane
proxy``, or a worker of ``plane serve --proxy-workers``) holds to the
controller, and :class:`ProxyRegistry`, what the controller knows of its
proxies (``GET /ctrl/proxies``, Plane's ``ClusterState.proxies``).

The channel (JSON text messages)
--------------------------------
The proxy opens ``GET /ctrl/proxy-feed?after=<seq>&proxy=<id>`` with
``Authorization: Bearer <proxy key>`` (only that key opens it: it carries
token hashes, secret tokens and user data, unredacted).

* controller -> proxy: every routing event of the log after ``after``
  (:data:`ROUTING_TYPES`), as ``{"seq", "stream", "version", "type",
  "data"}``; then ``{"synced": <seq>}`` once the history present at the start
  is sent; then the live tail.  A proxy resumes after the last ``seq`` it
  applied, so a reconnect misses no event (a revocation that happened while
  it was cut off arrives as soon as it is back).
* proxy -> controller: batches ``{"events": [[backend_id, type, data], ...]}``
  of connection events (``ConnectionOpened``, ``ConnectionClosed``,
  ``HttpActivityRecorded``: any other type is refused by closing the
  channel), which the controller tells the backends' actors as it does for
  the in-process proxy (``Supervisor.tell``); and ``{"stats": {...}}``, the
  proxy's counters, shown by ``GET /ctrl/proxies``.

No backend stays busy forever
-----------------------------
The registry keeps, per proxy, the connections it was told were opened and
not closed.  When a proxy's channel drops and it does not come back within
``forget_after`` (or its supervisor says it died: :meth:`ProxyRegistry.forget`),
a ``ConnectionClosed`` is told for each of them.  A proxy that comes back in
time sends the events it queued meanwhile, closes included.
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
from plane.events import wire
from plane.events.store import EventStore
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    HttpActivityRecorded,
    InputEvent,
    TokenIssued,
    TokenRevoked,
)

log = logging.getLogger("plane.api.proxies")

ROUTING_TYPES: tuple[type[Event], ...] = (
    BackendRequested,
    BackendStarting,
    BackendReady,
    BackendTerminating,
    BackendTerminated,
    TokenIssued,
    TokenRevoked,
)
"""The events the proxy's route table folds (:mod:`plane.proxy.routes`)."""

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
    """What the controller knows of its proxies; see the module docstring."""

    def __init__(self, tell: Tell, clock: TrioClock, forget_after: float = FORGET_AFTER) -> None:
        self._tell = tell
        self.clock = clock
        self.forget_after = forget_after
        self.proxies: dict[str, ProxyEntry] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the timers that forget proxies cut off for good (until cancelled)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
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
        return entry

    def detached(self, entry: ProxyEntry) -> None:
        entry.channels -= 1
        if entry.channels > 0 or self.proxies.get(entry.proxy_id) is not entry:
            return
        entry.connected = False
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
        now = self.clock.now()
        for connection_id, backend_id in entry.open.items():
            self._safe_tell(backend_id, ConnectionClosed(now, connection_id))
        count = len(entry.open)
        entry.open.clear()
        return count

    def received(self, entry: ProxyEntry, backend_id: str, event: InputEvent) -> None:
        if isinstance(event, ConnectionOpened):
            entry.open[event.connection_id] = backend_id
        elif isinstance(event, ConnectionClosed):
            entry.open.pop(event.connection_id, None)
        self._safe_tell(backend_id, event)

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


def parse_batch(text: str | bytes) -> tuple[list[tuple[str, InputEvent]], dict[str, Any] | None]:
    """The events and stats of one message from a proxy; :class:`ChannelError`
    if it is not what a proxy sends."""
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
    return events, stats


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
                            events, stats = parse_batch(text)
                        except ChannelError as exc:
                            log.warning("proxy %s: %s; closing its channel", proxy_id, exc)
                            await ws.aclose(1008, str(exc)[:100])
                            break
                        for backend_id, event in events:
                            registry.received(entry, backend_id, event)
                        if stats is not None:
                            entry.stats = stats
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            await _send_routes(ws, store, after, entry)
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
) -> None:
    seq = after
    for record in await store.read_all(after_seq=after):
        seq = record.seq
        if isinstance(record.event, ROUTING_TYPES):
            await ws.send_message(routing_json(*record))
    await ws.send_message(json.dumps({"synced": seq}))
    if entry is not None:
        entry.synced = True
    async for record in store.tail(after_seq=seq):
        if isinstance(record.event, ROUTING_TYPES):
            await ws.send_message(routing_json(*record))
