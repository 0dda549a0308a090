"""The proxy's connection deadlines, kept in time buckets (a timer wheel).

This module owns :class:`Deadlines`: which sessions must be ended when (the
header and keep-alive timeouts of :mod:`plane.proxy.relay`).  Sessions are
filed under the tick their deadline falls in, so arming, re-arming and
disarming are O(1) and collecting the expired ones costs O(expired + ticks
passed), never a scan of every connection: an idle WebSocket (no deadline)
costs nothing here, and tens of thousands of them do not slow the watchdog.

Pure: no trio, no clock; every call takes the time (trio's clock, seconds).
An entry is collected up to one ``tick`` late, never early.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    """What can be filed: an object with a writable ``bucket`` slot (the
    tick it is filed under, or None)."""

    bucket: int | None


T = TypeVar("T", bound=Timed)


class Deadlines(Generic[T]):
    """Entries by the tick of their deadline; see the module docstring."""

    def __init__(self, tick: float) -> None:
        if not tick > 0:
            raise ValueError(f"tick must be > 0, not {tick!r}")
        self.tick = tick
        self._buckets: dict[int, set[T]] = {}
        self._next = -1
        """No bucket below this tick is left (set by :meth:`expired`)."""

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def arm(self, entry: T, when: float) -> None:
        """File ``entry`` to expire at ``when`` (``inf``: disarm it)."""
        if when == math.inf:
            self.disarm(entry)
            return
        slot = max(math.ceil(when / self.tick), self._next)
        old = entry.bucket
        if old == slot:
            return
        if old is not None:
            self._remove(entry, old)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
        bucket.add(entry)
        entry.bucket = slot

    def disarm(self, entry: T) -> None:
        old = entry.bucket
        if old is not None:
            self._remove(entry, old)
            entry.bucket = None

    def expired(self, now: float) -> list[T]:
        """Remove and return every entry whose tick has passed at ``now``."""
        last = math.floor(now / self.tick)
        buckets = self._buckets
        out: list[T] = []
        if not buckets:
            self._next = last + 1
            return out
        start = self._next if self._next >= 0 else min(buckets)
        if last - start > len(buckets):  # a long gap: visit the buckets, not the ticks
            slots = sorted(s for s in buckets if s <= last)
        else:
            slots = [s for s in range(start, last + 1) if s in buckets]
        for slot in slots:
            for entry in buckets.pop(slot):
                entry.bucket = None
                out.append(entry)
        self._next = last + 1
        return out

    def _remove(self, entry: T, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(entry)
            if not bucket:
                del self._buckets[slot]
