"""The simulated disk: a full log for a while, then space again.

This module owns :class:`Disk` (when the disk is full, in trio time) and
:class:`FaultyStore`, an :class:`~plane.events.store.EventStore` that forwards
to a real store (the in-memory twin or SQLite) except that an append while the
disk is full raises :data:`LOG_FULL` and writes nothing.  This is the one place
the simulator injects store failures.  (A dedicated ``LogFull`` error type is
on its way to the stores; until then the stores' own
:class:`~plane.events.store.StoreFullError` is the error, as SQLite raises it.)
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import trio

from plane.events.store import EventStore, RecordedEvent, StoreFullError
from plane.events.types import Event

LOG_FULL = StoreFullError
"""What an append on a full simulated disk raises."""


class Disk:
    """Whether the simulated disk has room; shared by every incarnation's store."""

    def __init__(self) -> None:
        self.full_until = -math.inf
        self.refusals = 0

    def fill(self, seconds: float) -> None:
        self.full_until = max(self.full_until, trio.current_time() + seconds)

    def free(self) -> None:
        self.full_until = -math.inf

    def is_full(self) -> bool:
        return trio.current_time() < self.full_until


class ClockHold:
    """Keeps trio's run queue busy while held, so ``MockClock``'s autojump (which
    jumps when every task waits) cannot jump while a thread works: the SQLite
    store's disk work takes no simulated time, as the in-memory store's.  Run
    :meth:`run` in a nursery that outlives every holder."""

    def __init__(self) -> None:
        self.holds = 0
        self._wake = trio.Event()

    async def run(self) -> None:
        while True:
            if self.holds:
                await trio.lowlevel.checkpoint()
            else:
                await self._wake.wait()
                self._wake = trio.Event()

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holds += 1
        self._wake.set()
        try:
            yield
        finally:
            self.holds -= 1


T = TypeVar("T")


class FaultyStore:
    """``inner`` behind a :class:`Disk` that may be full.  With ``hold`` (an inner
    store that works in a thread: SQLite) its calls hold the simulated clock."""

    def __init__(self, inner: EventStore, disk: Disk, hold: ClockHold | None = None) -> None:
        self.inner = inner
        self.disk = disk
        self.hold = hold

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        if self.hold is None:
            return await call()
        with self.hold.held():
            return await call()

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        if self.disk.is_full():
            await trio.lowlevel.checkpoint()
            self.disk.refusals += 1
            raise LOG_FULL("simulated: the disk is full; nothing was written")
        return await self._call(lambda: self.inner.append(stream, expected_version, events))

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        return await self._call(lambda: self.inner.read_stream(stream, after_version))

    async def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        return await self._call(lambda: self.inner.read_all(after_seq, limit))

    async def last_seq(self) -> int:
        return await self._call(self.inner.last_seq)

    def tail(self, after_seq: int = 0) -> AsyncGenerator[RecordedEvent, None]:
        return self.inner.tail(after_seq)
