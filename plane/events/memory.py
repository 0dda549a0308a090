"""The in-memory event store: the SQLite store's twin, for tests and fakes.

This module owns :class:`MemoryEventStore`, which keeps the log in a list and
keeps exactly the contract of :mod:`plane.events.store` (both stores pass
``tests/contract/test_store_contract.py``): gap-free ``seq`` from 1, versions
1, 2, 3... per stream, :class:`~plane.events.store.ConcurrencyError` on a stale
expected version, atomic appends, and :meth:`~MemoryEventStore.tail` woken by
appends without polling.  Every event goes through the wire format on its way
in (encoded, then decoded), so an event the SQLite store could not store or
would not give back equal fails here too.

Resource handling:
    :func:`open_memory_store` yields a store that lives as long as its
    ``async with`` block; on exit the store is closed and every waiting
    :meth:`~MemoryEventStore.tail` is woken with
    :class:`~plane.events.store.StoreClosedError`.  It holds no other
    resources.

Error handling:
    The same errors as the SQLite store: ``ConcurrencyError`` (nothing
    written), ``StoreClosedError`` after close, ``ValueError`` for a bad
    argument (empty stream name, negative version, no events), ``TypeError``
    for an object that is not a plane event.  Every method is a trio
    checkpoint, so a cancelled append writes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from plane.events import wire
from plane.events.store import (
    ConcurrencyError,
    RecordedEvent,
    StoreClosedError,
    check_append,
    check_limit,
)
from plane.events.types import Event

__all__ = ["MemoryEventStore", "open_memory_store"]

_TAIL_BATCH = 1000


class MemoryEventStore:
    """An :class:`~plane.events.store.EventStore` in a list; see :func:`open_memory_store`."""

    def __init__(self) -> None:
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._changed = trio.Event()
        self._closed = False

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        """Append ``events`` atomically at ``expected_version``; returns them recorded."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        check_append(stream, expected_version, events)
        copies = [_through_the_wire(event) for event in events]
        history = self._streams.get(stream, [])
        if len(history) != expected_version:
            raise ConcurrencyError(stream, expected_version, len(history))
        seq = len(self._log)
        recorded = [
            RecordedEvent(seq + i, stream, expected_version + i, event)
            for i, event in enumerate(copies, start=1)
        ]
        self._log.extend(recorded)
        self._streams.setdefault(stream, []).extend(recorded)
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return recorded

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._streams.get(stream, [])[max(after_version, 0) :]

    async def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of all streams with seq > ``after_seq``, in order, at most ``limit``."""
        check_limit(limit)
        await trio.lowlevel.checkpoint()
        self._check_open()
        start = max(after_seq, 0)
        end = None if limit is None else start + limit
        return self._log[start:end]

    def read_all_now(self, after_seq: int = 0) -> list[RecordedEvent]:
        """:meth:`read_all` without its checkpoint: what the log holds at this
        instant, for a harness that looks between two steps of the tasks it runs
        (the simulator's checks).  Works on a closed store too."""
        return self._log[max(after_seq, 0) :]

    async def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return len(self._log)

    async def tail(self, after_seq: int = 0) -> AsyncGenerator[RecordedEvent, None]:
        """Every event after ``after_seq``, then new ones as they land.

        Never ends while the store is open; raises :class:`StoreClosedError`
        when it closes.
        """
        cursor = max(after_seq, 0)
        while True:
            self._check_open()
            if cursor < len(self._log):
                batch = self._log[cursor : cursor + _TAIL_BATCH]
                await trio.lowlevel.checkpoint()
                for recorded in batch:
                    yield recorded
                    cursor = recorded.seq
            else:
                # No await between the check above and this wait: nothing is missed.
                await self._changed.wait()

    def close(self) -> None:
        """Refuse appends and reads from now on; wake every tail."""
        self._closed = True
        self._changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the in-memory event store is closed")


def _through_the_wire(event: Event) -> Event:
    try:
        tag = wire.tag_of(event)
    except KeyError:
        raise TypeError(f"not a plane event: {type(event).__name__}") from None
    return wire.loads(tag, wire.dumps(event))


@asynccontextmanager
async def open_memory_store() -> AsyncIterator[MemoryEventStore]:
    """A fresh, empty in-memory store, closed when the block exits."""
    store = MemoryEventStore()
    try:
        yield store
    finally:
        store.close()
