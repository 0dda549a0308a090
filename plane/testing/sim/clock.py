"""The simulator's clock: simulated time that jumps as soon as every task waits.

This module owns :class:`JumpClock`, a :class:`trio.abc.Clock` that behaves as
``trio.testing.MockClock(autojump_threshold=0)`` for a run with no I/O (the
simulator's histories on the in-memory store), at half the scheduler's work.

``MockClock`` autojumps in two passes of trio's run loop: in one, every task
waits, the loop polls for I/O with a zero timeout and then moves the clock to
the next deadline; only in the next pass does that deadline expire and its task
run.  A history is mostly such waits (timers, sleeps between steps, health
pings), so those empty passes were a third of its cost.  :class:`JumpClock`
moves the clock when trio asks how long to sleep (which it asks only when no
task can run): the deadline then expires in the same pass.  ``current_time``
is a plain attribute read (``MockClock`` reads the real clock each time).

Only for runs that wait on nothing but time: with I/O or threads (the SQLite
store's writer thread), a wake-up that arrives during the zero-timeout poll
must stop the jump, which only ``MockClock``'s autojump does; those runs keep
``MockClock``.
"""

from __future__ import annotations

import math

import trio

_FOREVER = 86400.0
"""What trio sleeps when nothing will ever wake (no deadline): trio's own cap."""


class JumpClock(trio.abc.Clock):
    """See the module docstring.  Time starts at 0 and never goes backwards."""

    def __init__(self) -> None:
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if deadline == math.inf:
            return _FOREVER  # a deadlock: as MockClock, do not jump to infinity
        if deadline > self.now:
            self.now = deadline
        return 0.0
