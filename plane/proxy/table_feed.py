"""The shell that keeps the routing table current: it tails the event store.

This module owns :class:`TableFeed`, the only writer of the proxy's
:class:`~plane.proxy.routes.RouteTable`.  :meth:`TableFeed.run` seeds the table
with the startup fold's route records when given
(:meth:`~plane.events.snapshot.StartupState.route_records`: the routing
events of every unfinished backend, from the snapshot plus the log's tail),
reads the log from there (else from the start), sets
:attr:`TableFeed.synced` and reports started (requests wait for
``synced``, so the proxy never routes before it knows every token that
existed when it started; ``GET /ready`` answers 503 until then), then applies
each new event as the store announces it, and wakes every request waiting for
a change (a backend still starting waits on :attr:`TableFeed.changed`).
Tokens that expired long ago are pruned once an hour.

Resource handling
-----------------
:meth:`TableFeed.run` runs until cancelled; it holds nothing but the tail.

Error handling
--------------
Store errors propagate (and so end the proxy): a proxy whose table went stale
would keep routing revoked tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from plane.actors.clock import TrioClock
from plane.events.store import EventStore, RecordedEvent
from plane.proxy.routes import RouteTable

PRUNE_EVERY = 3600.0
PRUNE_AFTER = 86400.0
"""Tokens expired more than this long ago are forgotten (then look unknown)."""


class RouteFeed(Protocol):
    """What the relay reads of whatever keeps its table current: this
    module's :class:`TableFeed` in ``plane serve``,
    :class:`~plane.proxy.remote.RemoteFeed` in ``plane proxy``."""

    wait_for_sync: bool
    """Requests before the first sync wait for it (else 503)."""

    @property
    def synced(self) -> trio.Event:
        """Set once the table has the history (requests wait for it)."""
        ...

    @property
    def changed(self) -> trio.Event:
        """Set at the next change of the table."""
        ...

    def serving(self) -> bool:
        """True while the table may be used (synced and not stale)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def drain(self) -> None:
        """The proxy stops cleanly and its client connections are closed: hand
        over what is still to be sent (``run`` is cancelled right after)."""
        ...


class TableFeed:
    """Feeds ``table`` from ``store``; see the module docstring."""

    wait_for_sync = True

    def __init__(
        self,
        store: EventStore,
        table: RouteTable,
        clock: TrioClock,
        seed: tuple[Sequence[RecordedEvent], int] | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self.clock = clock
        self._seed = seed
        """(route records, the seq they cover) to start from instead of the log's start."""
        self._changed = trio.Event()
        self.synced = trio.Event()
        """Set once the log's history is in the table."""

    @property
    def changed(self) -> trio.Event:
        """Set at the next change of the table (take it *before* the lookup
        whose answer you want to wait on)."""
        return self._changed

    def serving(self) -> bool:
        """In-process: fresh once synced (the store cannot be cut off)."""
        return self.synced.is_set()

    async def drain(self) -> None:
        """Nothing to hand over: ``emit`` told the supervisor directly."""

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        table = self.table
        if self._seed is not None:
            records, covered = self._seed
            self._seed = None  # not kept
            for recorded in records:
                table.apply(recorded)
            table.seq = max(table.seq, covered)
        for recorded in await self.store.read_all(after_seq=table.seq):
            table.apply(recorded)
        self._notify()
        self.synced.set()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prune)
            async for recorded in self.store.tail(after_seq=table.seq):
                table.apply(recorded)
                self._notify()

    async def _prune(self) -> None:
        while True:
            await trio.sleep(PRUNE_EVERY)
            self.table.forget_before(self.clock.now() - PRUNE_AFTER)
