"""Wall-clock time for the shells, derived from trio's clock so tests can mock it.

This module owns the one place where plane turns trio time into the epoch
seconds that events carry.  :class:`TrioClock` fixes ``offset = epoch - trio
time`` once; afterwards ``now()`` is ``trio.current_time() + offset``, and a
deadline in epoch seconds is slept on as ``deadline - offset``.  Under
``trio.testing.MockClock`` (optionally with a fixed ``offset``) every timer in
plane runs in zero real time and fires exactly on its deadline.
"""

from __future__ import annotations

import math
import time

import trio


class TrioClock:
    """Epoch seconds on top of trio's clock; create it inside ``trio.run``."""

    def __init__(self, offset: float | None = None) -> None:
        self.offset = time.time() - trio.current_time() if offset is None else offset

    def now(self) -> float:
        return trio.current_time() + self.offset

    def to_trio(self, epoch: float | None) -> float:
        """The trio deadline for an epoch time; ``inf`` for None."""
        return math.inf if epoch is None else epoch - self.offset

    async def sleep_until(self, epoch: float) -> None:
        await trio.sleep_until(self.to_trio(epoch))
