"""Prometheus metrics of one plane process (prometheus-client).

This module owns the metric names.  :class:`Metrics` holds its own registry
(so tests and several planes in one process never collide) and is fed by:

* the supervisor's observer (:meth:`Metrics.observe_backend`): backends by
  status, spawn latency (requested -> ready); it remembers the status of live
  backends only (a terminated one is counted, then forgotten);
* the proxy: proxied connections and requests; a proxy process sends its
  own (:meth:`Metrics.proxy_counters`) to its controller, which adds them to
  its own (:meth:`Metrics.absorb_proxy`), so ``plane serve --proxy-workers N``
  exports what its workers relayed, summed;
* the API: requests by route and status;
* the event store: appended events (:meth:`Metrics.observe_append`).

``GET /metrics`` serves :meth:`Metrics.render`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from plane.actors.lifecycle import BackendState
from plane.events.types import BackendReady, Event, Status

SPAWN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every metric plane exports; one instance per plane process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.backends = Gauge(
            "plane_backends", "Backends by lifecycle status", ["status"], registry=r
        )
        self.spawn_seconds = Histogram(
            "plane_spawn_seconds",
            "Time from request to ready",
            buckets=SPAWN_BUCKETS,
            registry=r,
        )
        self.proxy_connections = Counter(
            "plane_proxy_connections", "Client connections accepted by the proxy", registry=r
        )
        self.proxy_requests = Counter(
            "plane_proxy_requests", "Requests relayed by the proxy, by status", ["code"], registry=r
        )
        self.proxy_upgrades = Counter(
            "plane_proxy_upgrades", "WebSocket/upgrade connections relayed", registry=r
        )
        self.proxy_open = Gauge(
            "plane_proxy_open_connections", "Client connections open at the proxy", registry=r
        )
        self.api_requests = Counter(
            "plane_api_requests", "API requests by route and status", ["route", "code"], registry=r
        )
        self.log_appends = Counter(
            "plane_log_appended_events", "Events appended to the log", registry=r
        )
        self._statuses: dict[str, Status | None] = {}  # live backends only
        for status in Status:
            self.backends.labels(status.value).set(0)

    def observe_backend(self, state: BackendState, events: list[Event]) -> None:
        """Supervisor observer: keep the by-status gauge and spawn latency current."""
        previous = self._statuses.get(state.backend_id)
        if previous is not state.status:
            if previous is not None:
                self.backends.labels(previous.value).dec()
            if state.status is not None:
                self.backends.labels(state.status.value).inc()
            if state.status is Status.TERMINATED:  # counted; nothing kept per backend
                self._statuses.pop(state.backend_id, None)
            else:
                self._statuses[state.backend_id] = state.status
        for event in events:
            if isinstance(event, BackendReady):
                # a claimed warm backend: from its claim (what the client waited)
                began = state.claimed_at if state.claimed_at is not None else state.requested_at
                self.spawn_seconds.observe(max(0.0, event.at - began))

    def load_statuses(self, states: list[BackendState], terminated: int = 0) -> None:
        """Seed the gauge from recovered live states and the count of terminated
        backends the history holds (they are not kept per backend)."""
        tally = Tally(s.status for s in states if s.status is not None)
        tally[Status.TERMINATED] += terminated
        for status in Status:
            self.backends.labels(status.value).set(tally.get(status, 0))
        self._statuses = {
            s.backend_id: s.status for s in states if s.status is not Status.TERMINATED
        }

    def proxy_counters(self) -> dict[str, Any]:
        """The proxy's counters so far, as plain data (what a proxy process
        reports to its controller)."""
        return {
            "connections": _total(self.proxy_connections),
            "upgrades": _total(self.proxy_upgrades),
            "requests": {
                sample.labels["code"]: int(sample.value)
                for metric in self.proxy_requests.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            },
        }

    def absorb_proxy(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        """Add what a proxy process counted between two of its reports
        (:meth:`proxy_counters`; a count lower than before: it counts from 0
        again).  What is not a count is ignored."""
        self.proxy_connections.inc(_grown(before.get("connections"), after.get("connections")))
        self.proxy_upgrades.inc(_grown(before.get("upgrades"), after.get("upgrades")))
        old, new = before.get("requests"), after.get("requests")
        if not isinstance(new, Mapping):
            return
        old = old if isinstance(old, Mapping) else {}
        for code, count in new.items():
            grown = _grown(old.get(code), count)
            if grown and isinstance(code, str) and code.isdigit() and len(code) == 3:
                self.proxy_requests.labels(code).inc(grown)

    def observe_append(self, count: int) -> None:
        self.log_appends.inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _total(counter: Counter) -> int:
    return sum(
        int(sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def _grown(before: object, after: object) -> int:
    """How much a count reported twice grew (all of it after a restart to 0)."""
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        return 0
    if not isinstance(before, int) or isinstance(before, bool) or after < before:
        return after
    return after - before
