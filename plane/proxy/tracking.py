"""What the proxy tells the rest of plane: connection events, activity, metrics.

This module owns :class:`Tracker`, which turns what the relay sees into input
events for the backends' actors (through the injected ``emit``, in ``plane
serve`` :meth:`Supervisor.tell <plane.actors.supervisor.Supervisor.tell>`) and
into Prometheus metrics.

The rules
---------
* **Long-lived connections** emit ``ConnectionOpened`` and, when they end,
  ``ConnectionClosed`` with the same id (``<proxy name>-<n>``, unique
  across proxies and restarts; an in-process proxy's name starts with
  :data:`IN_PROCESS`).  Long-lived means: a WebSocket or any other
  upgrade (opened right after the 101); a response of type
  ``text/event-stream`` (opened when its head arrives); or any proxied request
  still in flight, waiting for or streaming its response,
  ``settings.long_request_after`` (1 s) after it was forwarded (opened by a
  watcher that looks four times per ``long_request_after``, so at 1 to 1.25 s;
  it visits only the requests old enough: the ones in flight are kept in the
  order they were forwarded, and a request leaves that queue once opened).
* **Plain requests** are counted per backend and reported as
  ``HttpActivityRecorded(requests=n)``, at most one per backend per
  ``settings.activity_interval`` (see :mod:`plane.proxy.activity`).
* **Metrics** are tallied in plain dicts on the hot path and copied into the
  Prometheus registry once a second (so a scrape may lag by up to a second).

Cost: every call here is O(1) (no scan of the open connections); the memory
is one entry per request in flight and per long-lived connection open, plus
one tally per status code.

Resource handling
-----------------
:meth:`Tracker.run` (the activity flusher, the long-request watcher and the
metrics flush) runs until cancelled.  A connection's ``ConnectionClosed`` is
emitted from the relay's ``finally``, so it is sent even when the proxy is
being cancelled.

Error handling
--------------
``emit`` must not block; an exception from it is logged and swallowed, never
allowed to break a client's connection.  A full event log changes nothing
here: the actor queues what it is told and records it once the log takes
appends again (:mod:`plane.actors.backend`), so connection events and activity
emitted meanwhile are not lost, and relaying never waits for the log.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable

import trio
from prometheus_client import Counter

from plane.actors.clock import TrioClock
from plane.events.types import (
    ConnectionClosed,
    ConnectionOpened,
    HttpActivityRecorded,
    InputEvent,
)
from plane.metrics import Metrics
from plane.proxy.activity import ActivityCoalescer
from plane.proxy.settings import ProxySettings

log = logging.getLogger("plane.proxy")

Emit = Callable[[str, InputEvent], None]


IN_PROCESS = "local."
"""The name prefix of a proxy inside ``plane serve``: a ``.``, which no proxy
process's name has (``/ctrl/proxy-feed`` refuses it), so the controller tells
its own proxy's connections (dead with it at a restart) from those of proxy
processes (which may outlive it): :func:`proxy_of`."""


def proxy_of(connection_id: str) -> str | None:
    """The name of the proxy process that opened ``connection_id``
    (``<name>-<n>``); None for an in-process proxy's (or no proxy's) id."""
    name, sep, number = connection_id.rpartition("-")
    if not (sep and number.isdigit() and valid_proxy_name(name)):
        return None
    return name


def valid_proxy_name(name: str) -> bool:
    """A proxy process's name: 1 to 64 letters, digits and ``-``."""
    return 0 < len(name) <= 64 and name.replace("-", "").isalnum() and name.isascii()


class InFlight:
    """One proxied request between forwarding and its end."""

    __slots__ = ("backend_id", "connection_id", "started")

    def __init__(self, backend_id: str, started: float) -> None:
        self.backend_id = backend_id
        self.started = started
        self.connection_id: str | None = None


class Tracker:
    """See the module docstring."""

    def __init__(
        self,
        emit: Emit,
        clock: TrioClock,
        metrics: Metrics | None,
        settings: ProxySettings,
        *,
        prefix: str | None = None,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._metrics = metrics
        self._long_after = settings.long_request_after
        self._activity = ActivityCoalescer(settings.activity_interval)
        self._prefix = prefix or IN_PROCESS + secrets.token_hex(4)
        """Connection ids are <prefix>-<n>: the proxy's name (unique per process)."""
        self.requests = 0
        """Plain requests forwarded (the proxy's own counter, sent to the controller)."""
        self._ids = itertools.count(1)
        self._inflight: OrderedDict[InFlight, None] = OrderedDict()
        """Requests in flight not yet opened as long-lived, oldest first."""
        self._wake_flusher: trio.Event | None = None
        self._wake_watcher: trio.Event | None = None
        self.codes: dict[int, int] = {}
        """Responses by status code since the last metrics flush."""
        self.upgrades = 0
        """Upgraded (WebSocket) connections since the last metrics flush."""
        self.open_connections: dict[str, str] = {}
        """connection id -> backend id, for every connection opened and not closed."""

    # ------------------------------------------------------------ the relay

    def request(self, backend_id: str, at: float) -> InFlight:
        """A plain request was forwarded at ``at`` (trio time): count it, watch
        it until :meth:`done`."""
        now = at + self._clock.offset
        self.requests += 1
        count = self._activity.record(backend_id, now)
        if count:
            self.emit(backend_id, HttpActivityRecorded(now, count))
        elif self._wake_flusher is not None:
            self._wake_flusher.set()
        flight = InFlight(backend_id, at)
        self._inflight[flight] = None
        if self._wake_watcher is not None:
            self._wake_watcher.set()
        return flight

    def long_lived(self, flight: InFlight) -> None:
        """The request turned out long-lived (an event stream): open it now."""
        if flight.connection_id is None:
            self._inflight.pop(flight, None)
            flight.connection_id = self.open(flight.backend_id)

    def done(self, flight: InFlight) -> None:
        """The request ended (answered, failed or cancelled)."""
        self._inflight.pop(flight, None)
        if flight.connection_id is not None:
            self.close(flight.backend_id, flight.connection_id)
            flight.connection_id = None

    def open(self, backend_id: str) -> str:
        """Emit ``ConnectionOpened`` for a new long-lived connection; returns its id."""
        connection_id = f"{self._prefix}-{next(self._ids)}"
        self.open_connections[connection_id] = backend_id
        self.emit(backend_id, ConnectionOpened(self._clock.now(), connection_id))
        return connection_id

    def close(self, backend_id: str, connection_id: str) -> None:
        """Emit ``ConnectionClosed`` for a connection :meth:`open` returned."""
        if self.open_connections.pop(connection_id, None) is not None:
            self.emit(backend_id, ConnectionClosed(self._clock.now(), connection_id))

    def response(self, status: int) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1

    def emit(self, backend_id: str, event: InputEvent) -> None:
        try:
            self._emit(backend_id, event)
        except Exception:
            log.exception("emitting %s for backend %s failed", type(event).__name__, backend_id)

    # ---------------------------------------------------------------- tasks

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_activity)
            nursery.start_soon(self._watch_long_requests)
            nursery.start_soon(self._flush_metrics)

    async def _flush_activity(self) -> None:
        activity = self._activity
        while True:
            due = activity.next_due()
            if due is None:
                self._wake_flusher = trio.Event()
                await self._wake_flusher.wait()
                self._wake_flusher = None
                continue
            await self._clock.sleep_until(due)
            now = self._clock.now()
            for backend_id, count in activity.due(now):
                self.emit(backend_id, HttpActivityRecorded(now, count))

    async def _watch_long_requests(self) -> None:
        step = self._long_after / 4
        while True:
            if not self._inflight:
                self._wake_watcher = trio.Event()
                await self._wake_watcher.wait()
                self._wake_watcher = None
            await trio.sleep(step)
            horizon = trio.current_time() - self._long_after
            inflight = self._inflight
            while inflight:
                flight = next(iter(inflight))
                if flight.started > horizon:
                    break
                del inflight[flight]
                if flight.connection_id is None:
                    flight.connection_id = self.open(flight.backend_id)

    async def _flush_metrics(self) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        children: dict[int, Counter] = {}
        while True:
            await trio.sleep(1.0)
            codes, self.codes = self.codes, {}
            upgrades, self.upgrades = self.upgrades, 0
            if upgrades:
                metrics.proxy_upgrades.inc(upgrades)
            for code, count in codes.items():
                child = children.get(code)
                if child is None:
                    child = children[code] = metrics.proxy_requests.labels(str(code))
                child.inc(count)
