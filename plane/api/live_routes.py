"""The controller's current routing table, kept for the proxies it feeds.

This module owns :class:`LiveRoutes`: per unfinished backend, its recorded
events that a proxy's route table folds (:mod:`plane.proxy.routes`), by the
startup fold's rule (:attr:`plane.events.snapshot.StartupState.routes`: a
backend's records are dropped once it is terminating), kept current by
tailing the log, and where the live log may have lost history
(:attr:`LiveRoutes.horizon`: the seq of the latest ``HistoryArchived``; an
archived stream's events all come before it).

A proxy that connects to ``/ctrl/proxy-feed`` without a usable resume point
is sent these records at :attr:`LiveRoutes.seq` (:mod:`plane.api.proxies`)
instead of the log from its start, so what a proxy's (re)sync costs follows
the live backends, not the log's length (issue #11).

Resource handling: :meth:`LiveRoutes.run` tails the store until cancelled;
the memory held is the routing records of the unfinished backends (as the
startup fold's).  Error handling: store errors propagate (a table that went
stale would hand proxies revoked tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from plane.events.store import EventStore, RecordedEvent
from plane.events.types import SYSTEM_STREAM, HistoryArchived
from plane.proxy.routes import ENDING_TYPES, KEPT_TYPES


class LiveRoutes:
    """See the module docstring."""

    def __init__(
        self, records: Iterable[RecordedEvent] = (), seq: int = 0, horizon: int = 0
    ) -> None:
        self.routes: dict[str, list[RecordedEvent]] = {}
        self.seq = 0
        """The seq of the last event applied."""
        self.horizon = horizon
        """The seq of the latest ``HistoryArchived`` seen (0: none)."""
        for record in records:
            self.apply(record)
        self.seq = max(self.seq, seq)

    def apply(self, record: RecordedEvent) -> None:
        """Fold one recorded event (one already covered is ignored)."""
        seq, stream, _, event = record
        if seq <= self.seq:
            return
        self.seq = seq
        if stream == SYSTEM_STREAM:
            if isinstance(event, HistoryArchived):
                self.horizon = seq
            return
        if isinstance(event, ENDING_TYPES):
            self.routes.pop(stream, None)
        elif isinstance(event, KEPT_TYPES):
            self.routes.setdefault(stream, []).append(record)

    def records(self) -> list[RecordedEvent]:
        """The current table as records in seq order (a copy: valid at :attr:`seq`)."""
        return sorted((r for rs in self.routes.values() for r in rs), key=lambda r: r.seq)

    async def run(
        self, store: EventStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Find the latest archiving, then follow the log from :attr:`seq` until
        cancelled (reports started once caught up)."""
        for record in await store.read_stream(SYSTEM_STREAM):
            if isinstance(record.event, HistoryArchived):
                self.horizon = max(self.horizon, record.seq)
        last = await store.last_seq()
        waiting = True
        if self.seq >= last:
            task_status.started()
            waiting = False
        async for record in store.tail(after_seq=self.seq):
            self.apply(record)
            if waiting and self.seq >= last:
                task_status.started()
                waiting = False
